//! The record on the topic.
//!
//! Kafka key: the counter's key as UTF-8 bytes. Kafka value: one version byte followed by the
//! bincode 1.3 (pinned) encoding of the versioned body. bincode has no schema evolution of its
//! own, so the version byte is what lets a future format coexist with records already in the log.

use bincode::Options as _;
use serde::{Deserialize, Serialize};

/// The version byte of the only record format so far.
pub const RECORD_V1: u8 = 1;
/// Longest key ingest accepts, in bytes.
pub const MAX_KEY_BYTES: usize = 256;
/// Kafka header of records written before [`REQUEST_HEADER`]: a client's idempotency key as
/// is (`K` for a single increment, `K#i` for record `i` of a batch). Still read, never written.
pub const IDEMPOTENCY_HEADER: &str = "tally-idempotency-key";
/// Kafka header that ties a record to the client request it came from: one version byte, then
/// the bincode encoding of [`RequestV1`]. Written on every record of a request that carries an
/// idempotency key.
pub const REQUEST_HEADER: &str = "tally-request";
/// The version byte of the only request header format so far.
pub const REQUEST_V1: u8 = 1;
/// Most records one request may hold: a record index at or beyond it is refused, which bounds
/// what the fold remembers per request (one bit per index).
pub const MAX_REQUEST_RECORDS: u32 = 1_000_000;

/// Body of a version-1 record: the signed increment for the record's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncrementV1 {
    pub delta: i64,
}

/// Body of a version-1 request header: the client's idempotency key, the record's index in its
/// request (0 for a single increment), and a fingerprint of the request's whole content
/// ([`request_fingerprint`]), so that a key reused for another request is told from a retry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestV1 {
    pub key: String,
    pub index: u32,
    pub fingerprint: [u8; 16],
}

/// The request a record belongs to, as the fold sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestTag<'a> {
    pub key: &'a [u8],
    pub index: u32,
    /// `None` for records with the old header, which carried no fingerprint.
    pub fingerprint: Option<[u8; 16]>,
}

/// Why a record's bytes could not be turned into an increment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record has no key")]
    MissingKey,
    #[error("record key is not valid utf-8")]
    KeyNotUtf8,
    #[error("record key is empty or longer than {MAX_KEY_BYTES} bytes")]
    KeyLength,
    #[error("record has no value")]
    MissingValue,
    #[error("unknown record version {0}")]
    UnknownVersion(u8),
    #[error("record body does not decode: {0}")]
    Body(String),
    #[error("request header does not decode: {0}")]
    RequestHeader(String),
}

impl DecodeError {
    /// Short machine-readable reason, stored with quarantined records.
    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::MissingKey => "missing_key",
            DecodeError::KeyNotUtf8 => "key_not_utf8",
            DecodeError::KeyLength => "key_length",
            DecodeError::MissingValue => "missing_value",
            DecodeError::UnknownVersion(_) => "unknown_version",
            DecodeError::Body(_) => "undecodable_body",
            DecodeError::RequestHeader(_) => "bad_request_header",
        }
    }
}

/// Encodes an increment as a record value (version byte + bincode body).
pub fn encode_value(delta: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(9);
    out.push(RECORD_V1);
    options()
        .serialize_into(&mut out, &IncrementV1 { delta })
        .expect("serializing an i64 into a Vec cannot fail");
    out
}

/// The one bincode configuration of format version 1: fixed-width little-endian integers, no
/// trailing bytes. Changing it means a new version byte.
fn options() -> impl bincode::Options {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
        .reject_trailing_bytes()
}

/// Decodes a record value; trailing bytes are an error so that garbage cannot pass as a record.
pub fn decode_value(value: Option<&[u8]>) -> Result<IncrementV1, DecodeError> {
    let value = value.ok_or(DecodeError::MissingValue)?;
    let (&version, body) = value.split_first().ok_or(DecodeError::MissingValue)?;
    if version != RECORD_V1 {
        return Err(DecodeError::UnknownVersion(version));
    }
    options()
        .deserialize::<IncrementV1>(body)
        .map_err(|e| DecodeError::Body(e.to_string()))
}

/// Encodes a request header value (version byte + bincode body).
pub fn encode_request(key: &str, index: u32, fingerprint: &[u8; 16]) -> Vec<u8> {
    let body = RequestV1 {
        key: key.to_owned(),
        index,
        fingerprint: *fingerprint,
    };
    let mut out = Vec::with_capacity(1 + 8 + key.len() + 4 + 16);
    out.push(REQUEST_V1);
    options()
        .serialize_into(&mut out, &body)
        .expect("serializing into a Vec cannot fail");
    out
}

/// Decodes a request header value; an unknown version, trailing bytes or an index at or past
/// [`MAX_REQUEST_RECORDS`] is an error.
pub fn decode_request(value: &[u8]) -> Result<RequestV1, DecodeError> {
    let (&version, body) = value
        .split_first()
        .ok_or_else(|| DecodeError::RequestHeader("empty".into()))?;
    if version != REQUEST_V1 {
        return Err(DecodeError::RequestHeader(format!(
            "unknown version {version}"
        )));
    }
    let r: RequestV1 = options()
        .with_limit(1 + 8 + 1024 + 4 + 16)
        .deserialize(body)
        .map_err(|e| DecodeError::RequestHeader(e.to_string()))?;
    if r.index >= MAX_REQUEST_RECORDS {
        return Err(DecodeError::RequestHeader(format!(
            "record index {} is not below {MAX_REQUEST_RECORDS}",
            r.index
        )));
    }
    Ok(r)
}

/// The fingerprint of a request's content: the first 16 bytes of the SHA-1 of every
/// increment's key and value in request order, lengths included so that no two contents
/// share an encoding. A retry sends the same content, so it has the same fingerprint.
pub fn request_fingerprint<'a>(incs: impl IntoIterator<Item = (&'a str, i64)>) -> [u8; 16] {
    use sha1::Digest as _;
    let mut h = sha1::Sha1::new();
    for (key, value) in incs {
        h.update((key.len() as u64).to_le_bytes());
        h.update(key.as_bytes());
        h.update(value.to_le_bytes());
    }
    let digest = h.finalize();
    let mut out = [0; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

/// Validates a record key as Tally's key rules say (non-empty UTF-8, at most [`MAX_KEY_BYTES`] bytes).
pub fn decode_key(key: Option<&[u8]>) -> Result<&str, DecodeError> {
    let key = key.ok_or(DecodeError::MissingKey)?;
    let key = std::str::from_utf8(key).map_err(|_| DecodeError::KeyNotUtf8)?;
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(DecodeError::KeyLength);
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_extremes() {
        for delta in [0, 1, -1, i64::MAX, i64::MIN] {
            let bytes = encode_value(delta);
            assert_eq!(bytes.len(), 9);
            assert_eq!(bytes[0], RECORD_V1);
            assert_eq!(decode_value(Some(&bytes)).unwrap().delta, delta);
        }
    }

    #[test]
    fn layout_is_version_then_little_endian_i64() {
        assert_eq!(encode_value(258), vec![1, 2, 1, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(decode_value(None), Err(DecodeError::MissingValue));
        assert_eq!(decode_value(Some(&[])), Err(DecodeError::MissingValue));
        assert_eq!(
            decode_value(Some(&[7, 0, 0, 0, 0, 0, 0, 0, 0])),
            Err(DecodeError::UnknownVersion(7))
        );
        assert!(matches!(
            decode_value(Some(&[1, 0, 0])),
            Err(DecodeError::Body(_))
        ));
        let mut long = encode_value(5);
        long.push(0);
        assert!(matches!(
            decode_value(Some(&long)),
            Err(DecodeError::Body(_))
        ));
        assert!(matches!(
            decode_value(Some(b"hello world")),
            Err(DecodeError::UnknownVersion(b'h'))
        ));
    }

    #[test]
    fn request_headers_round_trip_and_refuse_garbage() {
        let fp = request_fingerprint([("a", 1), ("b", -2)]);
        let bytes = encode_request("req-1", 7, &fp);
        assert_eq!(bytes[0], REQUEST_V1);
        let r = decode_request(&bytes).unwrap();
        assert_eq!((r.key.as_str(), r.index, r.fingerprint), ("req-1", 7, fp));
        assert!(matches!(
            decode_request(&[]),
            Err(DecodeError::RequestHeader(_))
        ));
        let mut v2 = bytes.clone();
        v2[0] = 2;
        assert!(decode_request(&v2).is_err());
        let mut long = bytes.clone();
        long.push(0);
        assert!(decode_request(&long).is_err(), "trailing bytes");
        assert!(decode_request(&bytes[..bytes.len() - 1]).is_err(), "short");
        let huge = encode_request("r", MAX_REQUEST_RECORDS, &fp);
        assert!(decode_request(&huge).is_err(), "index past the bound");
        assert_eq!(
            DecodeError::RequestHeader(String::new()).code(),
            "bad_request_header"
        );
    }

    #[test]
    fn fingerprints_tell_contents_apart() {
        let one = request_fingerprint([("a", 1)]);
        assert_eq!(one, request_fingerprint([("a", 1)]), "a retry matches");
        assert_ne!(one, request_fingerprint([("a", 2)]), "another value");
        assert_ne!(one, request_fingerprint([("b", 1)]), "another counter key");
        assert_ne!(one, request_fingerprint([("a", 1), ("a", 1)]));
        // Lengths are part of the encoding: ("ab", _) is not ("a", _) followed by "b".
        assert_ne!(
            request_fingerprint([("ab", 1)]),
            request_fingerprint([("a", 1)])
        );
    }

    /// The fingerprint is in every record on disk: a library upgrade must not change it, or a
    /// retry across the upgrade would be quarantined as a reused key. The bytes are the first
    /// 16 of SHA-1 over the encoding, computed apart from this crate.
    #[test]
    fn fingerprints_are_stable_bytes() {
        let fp = request_fingerprint([("a", 1), ("b", -2)]);
        let hex: String = fp.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "b423d40d41f406c768d1713747eec99f");
    }

    #[test]
    fn key_rules() {
        assert_eq!(decode_key(Some(b"k")), Ok("k"));
        assert_eq!(decode_key(None), Err(DecodeError::MissingKey));
        assert_eq!(decode_key(Some(b"")), Err(DecodeError::KeyLength));
        assert_eq!(decode_key(Some(&[0xff])), Err(DecodeError::KeyNotUtf8));
        assert_eq!(
            decode_key(Some(&[b'a'; MAX_KEY_BYTES + 1])),
            Err(DecodeError::KeyLength)
        );
        assert!(decode_key(Some(&[b'a'; MAX_KEY_BYTES])).is_ok());
    }
}
