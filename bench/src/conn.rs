//! The load generator's HTTP/1.1 client: one keep-alive connection per worker, requests written
//! as preformatted bytes, answers parsed with `httparse` and read by their `Content-Length`.
//! It exists because the load generator shares the machine's cores with ingest and the broker:
//! a general client (reqwest: URL parsing, header maps, a connection pool) cost about as much
//! CPU per request as ingest itself, and that CPU was taken from what is measured. It speaks
//! only what ingest answers: no chunked bodies, no 1xx; anything else is an error.

use std::io;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Longest answer head accepted.
const MAX_HEAD: usize = 16 * 1024;

/// An answer: its status and body.
pub struct Answer<'a> {
    pub status: u16,
    pub body: &'a [u8],
}

pub struct Conn {
    addr: String,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Conn {
    /// A client of `host:port`; it connects on first use and again after an error.
    pub fn new(addr: &str) -> Self {
        Conn {
            addr: addr.to_owned(),
            stream: None,
            buf: Vec::with_capacity(4096),
        }
    }

    /// Sends one request (complete bytes, head and body) and reads its answer. On an error the
    /// connection is dropped; the next call opens a new one.
    pub async fn exchange(&mut self, request: &[u8]) -> io::Result<Answer<'_>> {
        match self.try_exchange(request).await {
            Ok((status, start, len)) => Ok(Answer {
                status,
                body: &self.buf[start..start + len],
            }),
            Err(e) => {
                self.stream = None;
                Err(e)
            }
        }
    }

    async fn try_exchange(&mut self, request: &[u8]) -> io::Result<(u16, usize, usize)> {
        if self.stream.is_none() {
            let s = TcpStream::connect(&self.addr).await?;
            s.set_nodelay(true)?;
            self.stream = Some(s);
        }
        let stream = self.stream.as_mut().expect("connected above");
        stream.write_all(request).await?;
        self.buf.clear();
        let (status, head, len, close) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut answer = httparse::Response::new(&mut headers);
            match answer.parse(&self.buf).map_err(io::Error::other)? {
                httparse::Status::Complete(head) => {
                    let header = |name: &str| {
                        answer
                            .headers
                            .iter()
                            .find(|h| h.name.eq_ignore_ascii_case(name))
                            .map(|h| h.value)
                    };
                    let len = header("content-length")
                        .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse::<usize>().ok())
                        .ok_or_else(|| io::Error::other("answer without a Content-Length"))?;
                    let close =
                        header("connection").is_some_and(|v| v.eq_ignore_ascii_case(b"close"));
                    break (answer.code.unwrap_or(0), head, len, close);
                }
                httparse::Status::Partial if self.buf.len() < MAX_HEAD => {
                    read_more(stream, &mut self.buf).await?;
                }
                httparse::Status::Partial => return Err(io::Error::other("answer head too long")),
            }
        };
        while self.buf.len() < head + len {
            read_more(stream, &mut self.buf).await?;
        }
        if close {
            self.stream = None;
        }
        Ok((status, head, len))
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.reserve(4096);
    if stream.read_buf(buf).await? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// The `host:port` of a base URL `http://host:port[/...]`.
pub fn authority(base: &str) -> Option<&str> {
    let rest = base.strip_prefix("http://")?;
    Some(rest.split('/').next().unwrap_or(rest))
}

/// A complete request: method, path, headers and body.
pub fn request(method: &str, path: &str, host: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + body.len());
    out.extend_from_slice(format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\n").as_bytes());
    if !body.is_empty() || method == "POST" {
        out.extend_from_slice(
            format!(
                "content-type: {content_type}\r\ncontent-length: {}\r\n",
                body.len()
            )
            .as_bytes(),
        );
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_well_formed_and_authorities_parsed() {
        let r = request(
            "POST",
            "/increment",
            "h:1",
            "application/x-www-form-urlencoded",
            b"key=a&value=1",
        );
        assert_eq!(
            r,
            b"POST /increment HTTP/1.1\r\nhost: h:1\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: 13\r\n\r\nkey=a&value=1"
        );
        let g = request("GET", "/healthz", "h:1", "", b"");
        assert_eq!(g, b"GET /healthz HTTP/1.1\r\nhost: h:1\r\n\r\n");
        assert_eq!(authority("http://127.0.0.1:8080"), Some("127.0.0.1:8080"));
        assert_eq!(authority("http://127.0.0.1:8080/x"), Some("127.0.0.1:8080"));
        assert_eq!(authority("https://x"), None);
    }
}
