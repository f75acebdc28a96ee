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
/// Kafka header that carries a client's idempotency key.
pub const IDEMPOTENCY_HEADER: &str = "tally-idempotency-key";

/// Body of a version-1 record: the signed increment for the record's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncrementV1 {
    pub delta: i64,
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

/// Validates a record key as Tally's key rules say (non-empty UTF-8, at most 256 bytes).
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
    fn key_rules() {
        assert_eq!(decode_key(Some(b"k")), Ok("k"));
        assert_eq!(decode_key(None), Err(DecodeError::MissingKey));
        assert_eq!(decode_key(Some(b"")), Err(DecodeError::KeyLength));
        assert_eq!(decode_key(Some(&[0xff])), Err(DecodeError::KeyNotUtf8));
        assert_eq!(decode_key(Some(&[b'a'; 257])), Err(DecodeError::KeyLength));
        assert!(decode_key(Some(&[b'a'; 256])).is_ok());
    }
}
