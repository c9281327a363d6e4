//! A bare protocol core ([`Endpoint`]) driven over a blocking socket: a real msgr2 peer whose
//! every step the test controls (flood without reading, read without acknowledging).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use ringwire::proto::{ConnId, Endpoint, Event, Io, SessionId, Time};

/// Writes everything `ep` has queued for its connections to `s`. Returns the bytes written,
/// or the error of the write that failed.
pub fn flush(s: &mut TcpStream, ep: &mut Endpoint) -> std::io::Result<usize> {
    let mut written = 0;
    while let Some(io) = ep.poll_io() {
        if let Io::Transmit { conn } = io {
            let out = ep.tx_queue(conn).unwrap().take_all();
            s.write_all(&out)?;
            written += out.len();
        }
    }
    Ok(written)
}

/// Runs the handshake of `conn` (dialled with `on_connected`, or taken with `accept`) over
/// `s` until its session is ready, and returns the session. Input that arrives with the last
/// handshake frame is fed as well; events after READY are left for the caller.
pub fn handshake(s: &mut TcpStream, ep: &mut Endpoint, conn: ConnId) -> SessionId {
    let now = Time(1);
    let mut buf = vec![0u8; 65536];
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    loop {
        flush(s, ep).expect("handshake write");
        while let Some(ev) = ep.poll_event() {
            if let Event::Connected { session, .. } | Event::Accepted { session, .. } = ev {
                return session;
            }
        }
        let n = s.read(&mut buf).expect("handshake read");
        assert!(n > 0, "peer closed during the handshake");
        ep.on_input(now, conn, &buf[..n]);
    }
}
