//! Handshake outcomes between two cores over an in-memory pipe, and against captured Ceph
//! bytes.

use ringwire::proto::control::{AUTH_METHOD_CEPHX, AUTH_METHOD_NONE, CON_MODE_CRC};
use ringwire::proto::frame::Banner;
use ringwire::proto::{
    Control, Endpoint, EndpointConfig, EntityAddr, EntityAddrVec, EntityName, EntityType, Event,
    FaultReason, FrameDecoder, FrameLimits, Io, Message, Policy, SessionId, Time, TxQueue,
};

use ringwire::pipe::{Pipe, CLIENT, SERVER};

fn server_addr() -> EntityAddr {
    EntityAddr::msgr2("127.0.0.1:6800".parse().unwrap(), 7)
}

fn config(server: bool, policy: Policy) -> EndpointConfig {
    let (ty, addrs) = if server {
        (EntityType::OSD, EntityAddrVec(vec![server_addr()]))
    } else {
        (EntityType::CLIENT, EntityAddrVec::default())
    };
    let mut c = EndpointConfig::new(
        EntityName {
            ty,
            id: if server { "0" } else { "admin" }.into(),
        },
        addrs,
    );
    c.default_policy = policy;
    c
}

fn pipe(client: EndpointConfig, server: EndpointConfig) -> Pipe {
    Pipe::new(client, server)
}

fn connect(p: &mut Pipe) -> SessionId {
    p.eps[CLIENT].connect(p.now, server_addr(), EntityType::OSD)
}

#[test]
fn clean_handshake_then_messages_both_ways() {
    let mut p = pipe(
        config(false, Policy::lossless_client()),
        config(true, Policy::stateful_server()),
    );
    let s = connect(&mut p);
    p.eps[CLIENT]
        .send(p.now, s, Message::new(2).with_front(&b"ping"[..]))
        .unwrap();
    assert!(p.run(1000));
    assert!(p.eps[CLIENT].is_connected(s));
    let accepted = p.events[SERVER]
        .iter()
        .find_map(|e| match e {
            Event::Accepted { session, peer, .. } => Some((*session, peer.clone())),
            _ => None,
        })
        .expect("server accepted");
    assert_eq!(accepted.1.ty, EntityType::CLIENT);
    let got = p.events[SERVER].iter().find_map(|e| match e {
        Event::Message { msg, .. } => Some(msg.clone()),
        _ => None,
    });
    let got = got.expect("message delivered");
    assert_eq!((got.seq, &got.front[..]), (1, &b"ping"[..]));
    p.eps[SERVER]
        .send(p.now, accepted.0, Message::new(3).with_front(&b"pong"[..]))
        .unwrap();
    assert!(p.run(1000));
    assert!(p.events[CLIENT]
        .iter()
        .any(|e| matches!(e, Event::Message { msg, .. } if &msg.front[..] == b"pong")));
    // Both ACKed: nothing left unacknowledged on either side.
    assert_eq!(p.eps[CLIENT].session_seqs(s), Some((1, 1, 0, 0)));
    assert_eq!(p.eps[SERVER].session_seqs(accepted.0), Some((1, 1, 0, 0)));
    // Keepalive round trip.
    assert!(p.eps[CLIENT].keepalive(Time(123_000_000_007), s));
    assert!(p.run(1000));
    assert!(p.events[CLIENT].iter().any(
        |e| matches!(e, Event::KeepaliveAck { stamp, .. } if stamp.as_nanos() == 123_000_000_007)
    ));
}

#[test]
fn server_requiring_features_refuses_the_client() {
    let mut server = config(true, Policy::stateful_server().requiring(1 << 13));
    server.default_policy = server.default_policy.requiring(1 << 13);
    let client = config(
        false,
        Policy::lossy_client().supporting(ringwire::proto::policy::FEATURE_MSG_ADDR2),
    );
    let mut p = pipe(client, server);
    let s = connect(&mut p);
    assert!(p.run(1000));
    assert!(!p.eps[CLIENT].is_connected(s));
    assert!(p.events[CLIENT].iter().any(|e| matches!(
        e,
        Event::Refused {
            reason: FaultReason::MissingFeatures(m),
            ..
        } if *m == 1 << 13
    )));
}

/// Bytes a cephx-only peer would send: banner, HELLO, then AUTH_BAD_METHOD for none.
fn cephx_only_peer_bytes() -> Vec<u8> {
    let mut tx = TxQueue::default();
    tx.push_small(&Banner::RINGWIRE.encode());
    Control::Hello {
        entity_type: EntityType::OSD,
        peer_addr: EntityAddr::msgr2("127.0.0.1:40000".parse().unwrap(), 0),
    }
    .encode_frame(&mut tx);
    Control::AuthBadMethod {
        method: AUTH_METHOD_NONE,
        result: -95,
        allowed_methods: vec![AUTH_METHOD_CEPHX],
        allowed_modes: vec![2, 1],
    }
    .encode_frame(&mut tx);
    tx.take_all()
}

#[test]
fn client_gets_a_clear_error_when_the_peer_wants_cephx() {
    let mut ep = Endpoint::new(config(false, Policy::lossy_client()));
    let s = ep.connect(Time(1), server_addr(), EntityType::OSD);
    let Some(Io::Connect { conn, .. }) = ep.poll_io() else {
        panic!("connect expected")
    };
    ep.on_connected(Time(1), conn);
    ep.on_input(Time(1), conn, &cephx_only_peer_bytes());
    let mut refused = None;
    while let Some(ev) = ep.poll_event() {
        if let Event::Refused { session, reason } = ev {
            refused = Some((session, reason));
        }
    }
    let (session, reason) = refused.expect("refused");
    assert_eq!(session, s);
    assert_eq!(
        reason,
        FaultReason::AuthMethodRefused {
            allowed: vec![AUTH_METHOD_CEPHX]
        }
    );
    assert!(reason.to_string().contains("cephx needs a keyring"));
    assert!(ep.is_closed(s), "lossy session ends");
}

/// A capture from `shared/fixtures/msgr2`; a missing one fails the test, naming its path.
fn fixture(file: &str) -> Vec<u8> {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/msgr2")
        .join(file);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

#[test]
fn server_answers_cephx_requests_with_auth_bad_method() {
    // The captured client asking an auth-none monitor for cephx (badmethod fixture), replayed
    // against a Ringwire server: it must answer as the real monitor did.
    let captured = fixture("badmethod-stream0-client-to-server.bin");
    let mut cfg = config(true, Policy::stateless_server());
    cfg.name.ty = EntityType::MON;
    cfg.addrs = EntityAddrVec(vec![EntityAddr::msgr2(
        "127.0.0.1:3300".parse().unwrap(),
        0,
    )]);
    let mut ep = Endpoint::new(cfg);
    let conn = ep.accept(Time(1), "127.0.0.1:39086".parse().unwrap());
    ep.on_input(Time(1), conn, &captured);
    let out = ep.tx_queue(conn).unwrap().take_all();
    let mut dec = FrameDecoder::new(FrameLimits::default(), 26);
    let mut input = &out[26..];
    let mut replies = Vec::new();
    while let Some(f) = dec.feed(&mut input).unwrap() {
        replies.push(Control::decode_frame(f.tag(), f.payload()).unwrap());
    }
    assert_eq!(
        replies.last(),
        Some(&Control::AuthBadMethod {
            method: AUTH_METHOD_CEPHX,
            result: -95,
            allowed_methods: vec![AUTH_METHOD_NONE],
            allowed_modes: vec![CON_MODE_CRC],
        })
    );
    assert!(matches!(
        replies.first(),
        Some(Control::Hello { entity_type, .. }) if *entity_type == EntityType::MON
    ));
}

#[test]
fn handshake_with_a_captured_ceph_client() {
    // `ceph -s` as captured: a real client's bytes up to its first messages, fed to a Ringwire
    // monitor-typed server. It must accept the session and dispatch MON_GET_MAP as seq 1.
    let captured = fixture("ceph_s-stream0-client-to-server.bin");
    let mut cfg = config(true, Policy::stateless_server());
    cfg.name.ty = EntityType::MON;
    cfg.addrs = EntityAddrVec(vec![EntityAddr::msgr2(
        "127.0.0.1:3300".parse().unwrap(),
        0,
    )]);
    let mut ep = Endpoint::new(cfg);
    let conn = ep.accept(Time(1), "127.0.0.1:59760".parse().unwrap());
    ep.on_input(Time(1), conn, &captured);
    let mut messages = Vec::new();
    let mut accepted = false;
    while let Some(ev) = ep.poll_event() {
        match ev {
            Event::Accepted { peer, .. } => {
                accepted = true;
                assert_eq!(peer.ty, EntityType::CLIENT);
            }
            Event::Message { msg, .. } => messages.push((msg.seq, msg.ty)),
            Event::Fault { reason, .. } => panic!("fault: {reason}"),
            _ => {}
        }
    }
    assert!(accepted);
    assert_eq!(messages, vec![(1, 5), (2, 15)]);
}

/// Pauses every connection at one step, recording which connections it held.
struct PauseAt(
    ringwire::proto::Step,
    std::rc::Rc<std::cell::RefCell<Vec<ringwire::proto::ConnId>>>,
);

impl ringwire::proto::Interceptor for PauseAt {
    fn intercept(
        &mut self,
        conn: ringwire::proto::ConnId,
        step: ringwire::proto::Step,
    ) -> ringwire::proto::Action {
        if step == self.0 {
            self.1.borrow_mut().push(conn);
            ringwire::proto::Action::Pause
        } else {
            ringwire::proto::Action::Continue
        }
    }
}

#[test]
fn interceptor_pause_holds_the_step_until_resumed() {
    let mut p = pipe(
        config(false, Policy::lossless_client()),
        config(true, Policy::stateful_server()),
    );
    let held = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    p.eps[SERVER].set_interceptor(Some(Box::new(PauseAt(
        ringwire::proto::Step::SendServerIdentity,
        held.clone(),
    ))));
    let s = connect(&mut p);
    p.eps[CLIENT]
        .send(p.now, s, Message::new(2).with_front(&b"held"[..]))
        .unwrap();
    assert!(p.run(1000));
    assert!(!p.eps[CLIENT].is_connected(s), "paused before SERVER_IDENT");
    let conn = *held.borrow().first().expect("paused once");
    // The client's message waits in its queue until the session is ready.
    assert!(!p.events[SERVER]
        .iter()
        .any(|e| matches!(e, Event::Message { .. })));
    p.eps[SERVER].set_interceptor(None);
    let now = p.now;
    p.eps[SERVER].resume(now, conn);
    assert!(p.run(1000));
    assert!(p.eps[CLIENT].is_connected(s));
    assert!(p.events[SERVER]
        .iter()
        .any(|e| matches!(e, Event::Message { msg, .. } if &msg.front[..] == b"held")));
}

/// The server's queued bytes, fed to the client as one input (its events stay queued).
fn server_to_client(p: &mut Pipe) {
    while let Some(io) = p.eps[SERVER].poll_io() {
        if let Io::Transmit { conn } = io {
            let bytes = p.eps[SERVER].tx_queue(conn).unwrap().take_all();
            p.eps[CLIENT].on_input(p.now, p.conns[CLIENT].unwrap(), &bytes);
        }
    }
}

fn client_messages(p: &mut Pipe) -> Vec<Vec<u8>> {
    std::iter::from_fn(|| p.eps[CLIENT].poll_event())
        .filter_map(|e| match e {
            Event::Message { msg, .. } => Some(msg.front.to_vec()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_message_decoded_before_mark_down_is_not_delivered_after_it() {
    // The RDMA markdown stall (docs/rdma.md): a worker decoded an echo, the application had
    // already asked (from an earlier dispatch) to mark its session down, and the echo was
    // then dispatched anyway, on a handle made up for a session that no longer existed.
    let mut p = pipe(
        config(false, Policy::lossy_client()),
        config(true, Policy::stateless_server()),
    );
    let s = connect(&mut p);
    assert!(p.run(1000));
    assert!(p.eps[CLIENT].is_connected(s));
    let accepted = p.events[SERVER]
        .iter()
        .find_map(|e| match e {
            Event::Accepted { session, .. } => Some(*session),
            _ => None,
        })
        .expect("server accepted");
    let echo = |n: &'static [u8]| Message::new(0x11).with_front(n);
    p.eps[SERVER].send(p.now, accepted, echo(b"one")).unwrap();
    server_to_client(&mut p);
    assert_eq!(client_messages(&mut p), vec![b"one".to_vec()]);
    // Decoded (its event queued), then the session is marked down before the event is taken.
    p.eps[SERVER].send(p.now, accepted, echo(b"two")).unwrap();
    server_to_client(&mut p);
    p.eps[CLIENT].mark_down(p.now, s);
    assert!(p.eps[CLIENT].is_closed(s));
    assert_eq!(client_messages(&mut p), Vec::<Vec<u8>>::new());
}
