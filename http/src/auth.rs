//! The bearer token a request must carry (`Authorization: Bearer TOKEN`): ingest's write token
//! and the aggregator's read token are each one [`Bearer`]. The comparison takes the same time
//! whatever the header holds (`subtle`), so answers do not tell how much of a guess was right;
//! a refusal is 401 `unauthorized` with `WWW-Authenticate: Bearer` and never quotes the token.

use std::fmt;

use subtle::ConstantTimeEq;
use warp::http::{HeaderMap, StatusCode};

use crate::{ApiError, Common};

/// An expected token. `Debug` does not show it.
#[derive(Clone)]
pub struct Bearer {
    /// The whole expected header value, `Bearer TOKEN`.
    expected: Vec<u8>,
    /// What a refusal tells the client to send.
    hint: &'static str,
}

impl fmt::Debug for Bearer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Bearer(<hidden>)")
    }
}

impl Bearer {
    /// The check for `token`; `None` when it is empty (no token configured: nothing checked).
    /// `what` names the token in the refusal ("write", "read").
    pub fn new(token: &str, hint: &'static str) -> Option<Bearer> {
        (!token.is_empty()).then(|| Bearer {
            expected: format!("Bearer {token}").into_bytes(),
            hint,
        })
    }

    /// The header value that passes the check (for clients of the same deployment: members
    /// forwarding reads to each other).
    pub fn header_value(&self) -> &[u8] {
        &self.expected
    }

    /// Whether `headers` carry the token.
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        let got = headers
            .get(warp::http::header::AUTHORIZATION)
            .map_or(&b""[..], |v| v.as_bytes());
        bool::from(got.ct_eq(&self.expected))
    }

    /// [`Bearer::admits`], or the 401 answer.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        if self.admits(headers) {
            return Ok(());
        }
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            Common::Unauthorized,
            self.hint,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warp::Reply as _;

    fn headers(value: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(v) = value {
            h.insert(warp::http::header::AUTHORIZATION, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn only_the_exact_header_passes() {
        assert!(Bearer::new("", "x").is_none());
        let b = Bearer::new("s3cret", "send Authorization: Bearer <token>").unwrap();
        assert!(b.admits(&headers(Some("Bearer s3cret"))));
        for bad in [
            None,
            Some("Bearer s3cre"),
            Some("bearer s3cret"),
            Some("s3cret"),
            Some("Bearer s3cret "),
        ] {
            assert!(!b.admits(&headers(bad)), "{bad:?}");
        }
        assert!(!format!("{b:?}").contains("s3cret"));
    }

    #[tokio::test]
    async fn a_refusal_is_401_json_with_www_authenticate() {
        let b = Bearer::new("s3cret", "send Authorization: Bearer <token>").unwrap();
        let r = b.check(&headers(None)).unwrap_err().into_response();
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        let body = warp::hyper::body::to_bytes(r.into_body()).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "unauthorized");
        assert!(!v.to_string().contains("s3cret"));
    }
}
