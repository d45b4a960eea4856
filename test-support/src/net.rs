//! Loopback ports and a minimal HTTP GET (for `/metrics`).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

/// A free loopback port (bind :0, read it, release it).
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` distinct free loopback ports: all are held until every one is
/// picked, so none is handed out twice.
pub fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<_> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

/// GET `path` from `addr` (HOST:PORT) over HTTP/1.1; returns the whole
/// response, status line and headers included.
pub fn http_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_and_bindable() {
        let ports = free_ports(8);
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), ports.len(), "{ports:?}");
        for p in ports {
            TcpListener::bind(("127.0.0.1", p)).unwrap();
        }
        assert_ne!(free_port(), 0);
    }

    #[test]
    fn http_get_returns_the_response() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            // Read the whole request first: closing with unread bytes
            // would reset the connection.
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.ends_with(b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "request cut short");
                req.extend_from_slice(&buf[..n]);
            }
            let req = String::from_utf8(req).unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .unwrap();
            req
        });
        let resp = http_get(&addr, "/metrics");
        assert!(
            resp.starts_with("HTTP/1.1 200 OK") && resp.ends_with("ok"),
            "{resp}"
        );
        assert!(server
            .join()
            .unwrap()
            .starts_with("GET /metrics HTTP/1.1\r\n"));
    }
}
