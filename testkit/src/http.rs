//! A minimal HTTP/1.1 GET client for tests of `switchyard run --metrics` (std only, bounded).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// `GET path` on `addr`: the status code and the body. Every step is bounded (5 s).
pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let t = Some(Duration::from_secs(5));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(t)?;
    s.set_write_timeout(t)?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let bad =
        || std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not an HTTP answer: {text:?}"));
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(bad)?;
    Ok((status, body.to_string()))
}
