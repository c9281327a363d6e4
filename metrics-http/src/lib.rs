//! A minimal `/metrics` HTTP endpoint, shared by the messenger (`Messenger::serve_metrics`) and
//! `ringwire-trace --metrics`: one small thread, one scraper at a time, bounded reads.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

/// Serves `GET /metrics` from a small thread, answering each scrape with what `render`
/// returns (Prometheus text format), until it returns `None`. Returns the bound address.
pub fn serve_text(
    addr: SocketAddr,
    mut render: impl FnMut() -> Option<String> + Send + 'static,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("ringwire-metrics".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                // One scraper at a time: a slow or endless client cannot hold the thread or
                // make it buffer without bound.
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
                let mut reader = BufReader::new((&stream).take(8192));
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                // Drain the headers; the request has no body.
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let response = if request_line.starts_with("GET /metrics") {
                    let Some(body) = render() else { return };
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
                };
                let _ = stream.write_all(response.as_bytes());
            }
        })?;
    Ok(local)
}
