//! A bare protocol core ([`Endpoint`]) driven over a blocking socket: a real msgr2 peer whose
//! every step the test controls (flood without reading, read without acknowledging, stop in
//! the middle of a frame).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use ringwire::proto::{
    ConnId, Endpoint, EndpointConfig, EntityAddr, EntityAddrVec, EntityType, Event, Io, Policy,
    SessionId, Time,
};

/// The bytes `ep` has queued for its connections, taken from its queues (for a caller that
/// writes them its own way: in part, or a byte at a time).
pub fn take_output(ep: &mut Endpoint) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(io) = ep.poll_io() {
        if let Io::Transmit { conn } = io {
            out.extend_from_slice(&ep.tx_queue(conn).unwrap().take_all());
        }
    }
    out
}

/// Writes everything `ep` has queued for its connections to `s`. Returns the bytes written,
/// or the error of the write that failed.
pub fn flush(s: &mut TcpStream, ep: &mut Endpoint) -> std::io::Result<usize> {
    let out = take_output(ep);
    s.write_all(&out)?;
    Ok(out.len())
}

/// A client `Endpoint` named `client.<id>` with `policy`, connected to the OSD at `target`
/// over `s` and through the handshake: its connection and ready session.
pub fn dial(
    s: &mut TcpStream,
    id: &str,
    policy: Policy,
    target: EntityAddr,
) -> (Endpoint, ConnId, SessionId) {
    let me = super::name(EntityType::CLIENT, id);
    let mut cfg = EndpointConfig::new(me, EntityAddrVec::default());
    cfg.default_policy = policy;
    let mut ep = Endpoint::new(cfg);
    let now = Time(1);
    ep.connect(now, target, EntityType::OSD);
    let Some(Io::Connect { conn, .. }) = ep.poll_io() else {
        panic!("connect")
    };
    ep.on_connected(now, conn);
    let sid = handshake(s, &mut ep, conn);
    (ep, conn, sid)
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
