//! Sequence numbers near u64::MAX from a peer: connect_seq (SESSION_RETRY, SESSION_RECONNECT),
//! global_seq (SESSION_RETRY_GLOBAL, SERVER_IDENT, CLIENT_IDENT, SESSION_RECONNECT) and message
//! seqs. Each faults the connection with `FaultReason::SeqOverflow` naming the value, and
//! nothing panics (CI runs this with overflow checks on: `cargo test --profile ci`).
//!
//! A scripted peer: the frames a real one would send, fed to one endpoint.

use std::net::SocketAddr;

use bytes::Bytes;
use ringwire::proto::control::{
    AuthNonePayload, ClientIdent, Reconnect, ServerIdent, AUTH_METHOD_NONE, CON_MODE_CRC,
};
use ringwire::proto::frame::Banner;
use ringwire::proto::policy::FEATURES_PACIFIC;
use ringwire::proto::{
    ConnId, Control, Endpoint, EndpointConfig, EntityAddr, EntityAddrVec, EntityName, EntityType,
    Event, FaultReason, FrameDecoder, FrameLimits, Io, Message, Policy, SessionId, Time, TxQueue,
};

const NEAR_MAX: u64 = u64::MAX - 1;

fn server_addr() -> EntityAddr {
    EntityAddr::msgr2("127.0.0.1:6800".parse().unwrap(), 7)
}

fn client_addr() -> EntityAddr {
    EntityAddr::msgr2("127.0.0.1:40000".parse().unwrap(), 9)
}

fn overflow(what: &'static str) -> FaultReason {
    FaultReason::SeqOverflow { what }
}

/// Bytes of `controls` as frames, after the banner when `banner`.
fn wire(banner: bool, controls: &[Control]) -> Vec<u8> {
    let mut tx = TxQueue::default();
    if banner {
        tx.push_small(&Banner::RINGWIRE.encode());
    }
    for c in controls {
        c.encode_frame(&mut tx);
    }
    tx.take_all()
}

/// The control frames `ep` queued on `conn` since last asked (its banner skipped).
fn sent(ep: &mut Endpoint, conn: ConnId) -> Vec<Control> {
    let bytes = ep.tx_queue(conn).map(|q| q.take_all()).unwrap_or_default();
    let mut input = bytes
        .strip_prefix(&Banner::RINGWIRE.encode()[..])
        .unwrap_or(&bytes);
    let mut dec = FrameDecoder::new(FrameLimits::default(), 0);
    let mut out = Vec::new();
    while !input.is_empty() {
        if let Some(f) = dec.feed(&mut input).expect("well-formed frames") {
            out.push(Control::decode_frame(f.tag(), f.payload()).expect("a control frame"));
        }
    }
    out
}

/// The reasons of the faults among the events so far.
fn faults(ep: &mut Endpoint) -> Vec<FaultReason> {
    std::iter::from_fn(|| ep.poll_event())
        .filter_map(|e| match e {
            Event::Fault { reason, .. } => Some(reason),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------- client side

fn client() -> Endpoint {
    let mut cfg = EndpointConfig::new(
        EntityName::new(EntityType::CLIENT, "admin"),
        EntityAddrVec::default(),
    );
    cfg.default_policy = Policy::lossless_client();
    Endpoint::new(cfg)
}

/// What a server sends up to (not including) its answer to our ident.
fn server_handshake() -> Vec<Control> {
    vec![
        Control::Hello {
            entity_type: EntityType::OSD,
            peer_addr: client_addr(),
        },
        Control::AuthDone {
            global_id: 4100,
            con_mode: CON_MODE_CRC,
            auth_payload: Bytes::new(),
        },
        Control::AuthSignature { sha256: [0; 32] },
    ]
}

fn server_ident(global_seq: u64) -> Control {
    Control::ServerIdent(ServerIdent {
        addrs: EntityAddrVec(vec![server_addr()]),
        gid: 0,
        global_seq,
        features_supported: FEATURES_PACIFIC,
        features_required: 0,
        flags: 0,
        server_cookie: 5,
    })
}

/// The next connection `ep` dials, connected.
fn dialled(ep: &mut Endpoint, now: Time) -> ConnId {
    loop {
        match ep.poll_io().expect("a connect") {
            Io::Connect { conn, .. } => {
                ep.on_connected(now, conn);
                return conn;
            }
            _ => continue,
        }
    }
}

/// A client session that was ready once, now on a second connection at the point where it
/// has sent SESSION_RECONNECT (checked) and waits for the answer.
fn reconnecting() -> (Endpoint, SessionId, ConnId) {
    let mut ep = client();
    let now = Time(1);
    let s = ep.connect(now, server_addr(), EntityType::OSD);
    let first = dialled(&mut ep, now);
    let mut script = server_handshake();
    script.push(server_ident(3));
    ep.on_input(now, first, &wire(true, &script));
    assert!(ep.is_connected(s));
    ep.on_closed(now, first);
    assert_eq!(faults(&mut ep), vec![FaultReason::SocketClosed]);
    let second = dialled(&mut ep, now);
    sent(&mut ep, second);
    ep.on_input(now, second, &wire(true, &server_handshake()));
    let out = sent(&mut ep, second);
    assert!(
        matches!(out.last(), Some(Control::SessionReconnect(r)) if r.connect_seq == 1),
        "{out:?}"
    );
    (ep, s, second)
}

#[test]
fn session_retry_counts_on_from_the_servers_connect_seq() {
    let (mut ep, _, conn) = reconnecting();
    ep.on_input(
        Time(2),
        conn,
        &wire(false, &[Control::SessionRetry { connect_seq: 3 }]),
    );
    let out = sent(&mut ep, conn);
    assert!(
        matches!(out.as_slice(), [Control::SessionReconnect(r)] if r.connect_seq == 4),
        "{out:?}"
    );
    assert!(faults(&mut ep).is_empty());
}

#[test]
fn session_retry_near_max_is_a_fault() {
    for cs in [NEAR_MAX, u64::MAX] {
        let (mut ep, s, conn) = reconnecting();
        ep.on_input(
            Time(2),
            conn,
            &wire(false, &[Control::SessionRetry { connect_seq: cs }]),
        );
        assert_eq!(faults(&mut ep), vec![overflow("connect_seq")], "cs {cs}");
        assert!(
            !ep.is_closed(s),
            "a lossless session outlives the connection"
        );
    }
}

#[test]
fn session_retry_global_near_max_is_a_fault() {
    for gs in [NEAR_MAX, u64::MAX] {
        let (mut ep, _, conn) = reconnecting();
        let retry = Control::SessionRetryGlobal { global_seq: gs };
        ep.on_input(Time(2), conn, &wire(false, &[retry]));
        assert_eq!(faults(&mut ep), vec![overflow("global_seq")], "gs {gs}");
        // Our global_seq is untouched: the next connection still counts from where it was.
        let next = dialled_after_backoff(&mut ep);
        ep.on_input(Time(10_000_000_000), next, &wire(true, &server_handshake()));
        let out = sent(&mut ep, next);
        assert!(
            matches!(out.last(), Some(Control::SessionReconnect(r)) if r.global_seq < 10),
            "{out:?}"
        );
    }
}

/// The connection a session in backoff dials when its timer fires.
fn dialled_after_backoff(ep: &mut Endpoint) -> ConnId {
    let at = ep.poll_timeout().expect("a reconnect timer");
    ep.handle_timeout(at);
    dialled(ep, at)
}

#[test]
fn server_ident_global_seq_near_max_is_a_fault() {
    let mut ep = client();
    let now = Time(1);
    let s = ep.connect(now, server_addr(), EntityType::OSD);
    let conn = dialled(&mut ep, now);
    let mut script = server_handshake();
    script.push(server_ident(NEAR_MAX));
    ep.on_input(now, conn, &wire(true, &script));
    assert_eq!(faults(&mut ep), vec![overflow("global_seq")]);
    assert!(!ep.is_connected(s));
}

// ---------------------------------------------------------------- server side

fn server() -> Endpoint {
    let mut cfg = EndpointConfig::new(
        EntityName::new(EntityType::OSD, "0"),
        EntityAddrVec(vec![server_addr()]),
    );
    cfg.default_policy = Policy::stateful_server();
    Endpoint::new(cfg)
}

/// What a client sends before its ident.
fn client_handshake() -> Vec<Control> {
    let auth = AuthNonePayload::Authorizer {
        struct_v: 1,
        name: EntityName::new(EntityType::CLIENT, "admin"),
        global_id: 0,
    };
    vec![
        Control::Hello {
            entity_type: EntityType::CLIENT,
            peer_addr: server_addr(),
        },
        Control::AuthRequest {
            method: AUTH_METHOD_NONE,
            preferred_modes: vec![CON_MODE_CRC],
            auth_payload: auth.encode(),
        },
        Control::AuthSignature { sha256: [0; 32] },
    ]
}

fn client_ident(global_seq: u64) -> Control {
    Control::ClientIdent(ClientIdent {
        addrs: EntityAddrVec(vec![client_addr()]),
        target_addr: server_addr(),
        gid: -1,
        global_seq,
        features_supported: FEATURES_PACIFIC,
        features_required: 0,
        flags: 0,
        client_cookie: 11,
    })
}

fn reconnect(global_seq: u64, connect_seq: u64) -> Control {
    Control::SessionReconnect(Reconnect {
        addrs: EntityAddrVec(vec![client_addr()]),
        client_cookie: 11,
        server_cookie: 22,
        global_seq,
        connect_seq,
        msg_seq: 0,
    })
}

/// A server connection fed a client's handshake and then `then`.
fn accepted(ep: &mut Endpoint, then: Control) -> ConnId {
    let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let conn = ep.accept(Time(1), peer);
    let mut script = client_handshake();
    script.push(then);
    ep.on_input(Time(1), conn, &wire(true, &script));
    conn
}

#[test]
fn client_ident_global_seq_near_max_is_a_fault() {
    let mut ep = server();
    accepted(&mut ep, client_ident(NEAR_MAX));
    assert_eq!(faults(&mut ep), vec![overflow("global_seq")]);
    assert_eq!(ep.open_sessions(), 0);
}

#[test]
fn session_reconnect_seqs_near_max_are_faults() {
    let cases = [
        (reconnect(1, NEAR_MAX), "connect_seq"),
        (reconnect(1, u64::MAX), "connect_seq"),
        (reconnect(NEAR_MAX, 1), "global_seq"),
        (reconnect(u64::MAX, u64::MAX), "global_seq"),
    ];
    for (frame, what) in cases {
        let mut ep = server();
        accepted(&mut ep, frame.clone());
        assert_eq!(faults(&mut ep), vec![overflow(what)], "{frame:?}");
    }
}

#[test]
fn message_seq_near_max_is_a_fault() {
    for seq in [NEAR_MAX, u64::MAX] {
        let mut ep = server();
        let conn = accepted(&mut ep, client_ident(1));
        let session = std::iter::from_fn(|| ep.poll_event())
            .find_map(|e| match e {
                Event::Accepted { session, .. } => Some(session),
                _ => None,
            })
            .expect("accepted");
        let mut tx = TxQueue::default();
        Message::new(2).encode_frame(&mut tx, 1, 0);
        Message::new(2).encode_frame(&mut tx, seq, 0);
        ep.on_input(Time(2), conn, &tx.take_all());
        let events: Vec<Event> = std::iter::from_fn(|| ep.poll_event()).collect();
        let delivered: Vec<u64> = events
            .iter()
            .filter_map(|e| match e {
                Event::Message { msg, .. } => Some(msg.seq),
                _ => None,
            })
            .collect();
        assert_eq!(delivered, vec![1], "seq {seq}: only the first is delivered");
        assert!(
            events.iter().any(|e| matches!(
                e,
                Event::Fault { reason, .. } if *reason == overflow("message seq")
            )),
            "seq {seq}: {events:?}"
        );
        assert_eq!(
            ep.session_seqs(session).map(|s| s.0),
            Some(1),
            "in_seq kept"
        );
    }
}
