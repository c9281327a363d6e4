//! cephx and secure mode between two Ringwire cores over the in-memory pipe: a client and a
//! server acting as monitor, with keys from a keyring. What the handshake settles on for each
//! combination of keys and modes, and 4 MiB payloads both ways through sealed frames.

use bytes::Bytes;
use ringwire::pipe::{Pipe, CLIENT, SERVER};
use ringwire::proto::cephx::keyring::key_from_base64;
use ringwire::proto::cephx::Keyring;
use ringwire::proto::endpoint::UnixClock;
use ringwire::proto::{
    AuthConfig, AuthMethod, EndpointConfig, EntityAddr, EntityAddrVec, EntityName, EntityType,
    Event, FaultReason, Message, ModeName, Policy, SessionId, Time,
};

/// client.admin's key of the fixtures, and another one.
const ADMIN: &str = "AQD7eQ9rfHEnHxAAhkY81mHWFP2qDwHj8lgDLA==";
const OTHER: &str = "AQD7eQ9rxUbIIBAAuRFL8xeNo6DyCwHeCwcODw==";
/// The OSDs' service secret (the fixtures' osd.0 key), as the keyring entry `osd.`.
const OSD_SECRET: &str = "AQD7eQ9rYr35HxAAmFm80tOU+9ry0arfTf3K5A==";

fn mon_addr() -> EntityAddr {
    EntityAddr::msgr2("127.0.0.1:3300".parse().unwrap(), 0)
}

fn client(name: &str, key: Option<&str>, modes: &[ModeName]) -> EndpointConfig {
    let mut c = EndpointConfig::new(name.parse().unwrap(), EntityAddrVec::default());
    c.default_policy = Policy::lossy_client();
    c.seed = 1;
    let key = key.map(|k| key_from_base64(k).unwrap());
    c.auth = AuthConfig {
        client_required: vec![if key.is_some() {
            AuthMethod::Cephx
        } else {
            AuthMethod::None
        }],
        mon_client_mode: modes.to_vec(),
        key,
        entropy: ringwire::proto::endpoint::Entropy([7; 32]),
        ..AuthConfig::default()
    };
    c
}

fn monitor(modes: &[ModeName]) -> EndpointConfig {
    server(
        EntityName::new(EntityType::MON, "a"),
        modes,
        &format!("[client.admin]\n\tkey = {ADMIN}\n[osd.]\n\tkey = {OSD_SECRET}\n"),
    )
}

fn osd_addr() -> EntityAddr {
    EntityAddr::msgr2("127.0.0.1:6800".parse().unwrap(), 0)
}

/// osd.0 holding `secret` as its service secret.
fn osd(secret: &str) -> EndpointConfig {
    let mut c = server(
        EntityName::new(EntityType::OSD, "0"),
        &[ModeName::Secure],
        &format!("[osd.]\n\tkey = {secret}\n"),
    );
    c.addrs = EntityAddrVec(vec![osd_addr()]);
    c
}

fn server(name: EntityName, modes: &[ModeName], keyring: &str) -> EndpointConfig {
    let mut c = EndpointConfig::new(name, EntityAddrVec(vec![mon_addr()]));
    c.default_policy = Policy::stateless_server();
    c.seed = 2;
    c.auth = AuthConfig {
        service_required: vec![AuthMethod::Cephx],
        cluster_required: vec![AuthMethod::Cephx],
        service_mode: modes.to_vec(),
        cluster_mode: modes.to_vec(),
        keyring: Some(Keyring::parse(keyring).unwrap()),
        entropy: ringwire::proto::endpoint::Entropy([9; 32]),
        ..AuthConfig::default()
    };
    c
}

fn accepted(p: &Pipe) -> Option<(SessionId, EntityName, String)> {
    p.events[SERVER].iter().find_map(|e| match e {
        Event::Accepted {
            session,
            peer,
            security,
            ..
        } => Some((*session, peer.clone(), security.to_string())),
        _ => None,
    })
}

fn outcome(p: &Pipe) -> Result<String, FaultReason> {
    for e in &p.events[CLIENT] {
        match e {
            Event::Connected { security, .. } => return Ok(security.to_string()),
            Event::Refused { reason, .. } => return Err(reason.clone()),
            _ => {}
        }
    }
    panic!("neither connected nor refused: {:?}", p.events[CLIENT])
}

/// Each row: who the client is, its key, the modes it offers and the modes the monitor
/// allows; what the client ends with.
#[test]
fn keys_and_modes_decide_the_outcome() {
    use ModeName::{Crc, Secure};
    type Row = (
        &'static str,
        Option<&'static str>,
        &'static [ModeName],
        &'static [ModeName],
        Result<&'static str, FaultReason>,
    );
    #[rustfmt::skip]
    let rows: [Row; 7] = [
        ("client.admin", Some(ADMIN), &[Secure, Crc], &[Secure, Crc], Ok("cephx/secure")),
        // The client's preference wins among the modes both allow (Ceph's pick_mode).
        ("client.admin", Some(ADMIN), &[Crc, Secure], &[Secure, Crc], Ok("cephx/crc")),
        ("client.admin", Some(ADMIN), &[Secure], &[Secure], Ok("cephx/secure")),
        ("client.admin", Some(ADMIN), &[Crc], &[Secure],
         Err(FaultReason::ConModeRefused { allowed: vec![2] })),
        ("client.admin", Some(OTHER), &[Secure], &[Secure],
         Err(FaultReason::AuthRejected { result: -13 })),
        // A name the monitor has no key for is refused as a wrong key is.
        ("client.bob", Some(ADMIN), &[Secure], &[Secure],
         Err(FaultReason::AuthRejected { result: -13 })),
        ("client.admin", None, &[Crc], &[Secure],
         Err(FaultReason::AuthMethodRefused { allowed: vec![2] })),
    ];
    for (name, key, offered, allowed, want) in rows {
        let mut p = Pipe::new(client(name, key, offered), monitor(allowed));
        let s = p.eps[CLIENT].connect(p.now, mon_addr(), EntityType::MON);
        assert!(p.run(1000));
        let what = format!(
            "{name} key={:?} {offered:?} vs {allowed:?}",
            key.map(|k| &k[..8])
        );
        assert_eq!(outcome(&p), want.clone().map(String::from), "{what}");
        match want {
            Ok(security) => {
                assert!(p.eps[CLIENT].is_connected(s), "{what}");
                let (_, peer, on_server) = accepted(&p).expect("accepted");
                assert_eq!(
                    peer.to_string(),
                    name,
                    "the server knows who proved it: {what}"
                );
                assert_eq!(on_server, security, "{what}");
            }
            Err(_) => assert!(accepted(&p).is_none(), "{what}"),
        }
    }
}

fn first_message(events: &[Event]) -> Message {
    events
        .iter()
        .find_map(|e| match e {
            Event::Message { msg, .. } => Some(msg.clone()),
            _ => None,
        })
        .expect("a message delivered")
}

/// Messages through sealed frames both ways: small ones, and 4 MiB data segments whose
/// every byte arrives (the receiver decrypts them in place).
#[test]
fn secure_sessions_carry_4_mib_payloads_both_ways() {
    let mut p = Pipe::new(
        client("client.admin", Some(ADMIN), &[ModeName::Secure]),
        monitor(&[ModeName::Secure]),
    );
    let s = p.eps[CLIENT].connect(p.now, mon_addr(), EntityType::MON);
    let big: Bytes = (0..4u32 << 20).map(|i| (i * 7 + i / 4096) as u8).collect();
    p.eps[CLIENT]
        .send(
            p.now,
            s,
            Message::new(2)
                .with_front(&b"ping"[..])
                .with_data(big.clone()),
        )
        .unwrap();
    assert!(p.run(1000));
    let (sid, _, security) = accepted(&p).expect("accepted");
    assert_eq!(security, "cephx/secure");
    let got = first_message(&p.events[SERVER]);
    assert_eq!((got.seq, &got.front[..]), (1, &b"ping"[..]));
    assert!(
        got.data_contiguous() == big,
        "4 MiB intact client to server"
    );
    let back: Bytes = big.iter().rev().copied().collect();
    p.eps[SERVER]
        .send(
            p.now,
            sid,
            Message::new(3)
                .with_front(&b"pong"[..])
                .with_data(back.clone()),
        )
        .unwrap();
    assert!(p.run(1000));
    let got = first_message(&p.events[CLIENT]);
    assert_eq!(&got.front[..], b"pong");
    assert!(
        got.data_contiguous() == back,
        "4 MiB intact server to client"
    );
    assert!(
        p.bytes[0] > 4 << 20 && p.bytes[1] > 4 << 20,
        "each way once"
    );
}

/// Tickets between Ringwire cores: the client authenticates with the monitor, then presents
/// its OSD ticket to an OSD holding the OSDs' service secret, which challenges it and admits
/// it as client.admin in secure mode. An OSD with another secret cannot open the ticket and
/// refuses it, as does one for which it has expired; a client without a ticket for the OSD, or whose ticket expired, has no cephx
/// to offer it.
#[test]
fn an_osd_admits_the_ticket_the_monitor_issued_and_refuses_a_foreign_or_expired_one() {
    let client_cfg = client("client.admin", Some(ADMIN), &[ModeName::Secure]);
    let mut with_osd = client_cfg.clone();
    with_osd.auth.client_mode = vec![ModeName::Secure];
    // Before any monitor: no ticket, so nothing to offer the OSD.
    let mut p = Pipe::new(with_osd.clone(), osd(OSD_SECRET));
    p.eps[CLIENT].connect(p.now, osd_addr(), EntityType::OSD);
    assert!(p.run(1000));
    assert_eq!(outcome(&p), Err(FaultReason::NoAuthMethod));

    let mut p = Pipe::new(client_cfg, monitor(&[ModeName::Secure]));
    p.eps[CLIENT].connect(p.now, mon_addr(), EntityType::MON);
    assert!(p.run(1000));
    assert_eq!(outcome(&p), Ok("cephx/secure".to_string()));
    // The same messenger's ticket store (configs share it), a connection to the OSD; an OSD
    // whose wall clock is two hours on finds the (one-hour) ticket expired.
    let now = UnixClock::default();
    let two_hours_on = UnixClock(|| UnixClock::default().now() + 7200);
    for (secret, clock, want) in [
        (OSD_SECRET, now, Ok("cephx/secure".to_string())),
        (OTHER, now, Err(FaultReason::AuthRejected { result: -13 })),
        (
            OSD_SECRET,
            two_hours_on,
            Err(FaultReason::AuthRejected { result: -13 }),
        ),
    ] {
        let mut osd = osd(secret);
        osd.auth.clock = clock;
        let mut p = Pipe::new(with_osd.clone(), osd);
        let s = p.eps[CLIENT].connect(p.now, osd_addr(), EntityType::OSD);
        p.eps[CLIENT]
            .send(p.now, s, Message::new(42).with_front(&b"op"[..]))
            .unwrap();
        assert!(p.run(1000));
        assert_eq!(outcome(&p), want, "OSD secret {}", &secret[..8]);
        if want.is_ok() {
            let (_, peer, security) = accepted(&p).expect("accepted");
            assert_eq!(
                (peer.to_string(), security.as_str()),
                ("client.admin".into(), "cephx/secure")
            );
            assert_eq!(&first_message(&p.events[SERVER]).front[..], b"op");
        } else {
            assert!(accepted(&p).is_none());
        }
    }
    // An hour on (a service ticket's validity), the ticket is not presented any more: the
    // client says to authenticate again rather than have the OSD refuse it.
    let mut p = Pipe::new(with_osd.clone(), osd(OSD_SECRET));
    p.now = Time(p.now.0 + 3601 * 1_000_000_000);
    p.eps[CLIENT].connect(p.now, osd_addr(), EntityType::OSD);
    assert!(p.run(1000));
    assert_eq!(outcome(&p), Err(FaultReason::NoAuthMethod));
}

fn secs(s: u64) -> Time {
    Time(1 + s * 1_000_000_000)
}

/// Both endpoints' timers at `now`, then the bytes they move.
fn tick(p: &mut Pipe, now: Time) {
    p.now = now;
    p.eps[CLIENT].handle_timeout(now);
    p.eps[SERVER].handle_timeout(now);
    assert!(p.run(1000));
}

/// The client, holding tickets, reaches the OSD at `at`: what the connection ends with.
fn osd_session_at(client: &EndpointConfig, at: Time) -> Result<String, FaultReason> {
    let mut p = Pipe::new(client.clone(), osd(OSD_SECRET));
    p.now = at;
    p.eps[CLIENT].connect(p.now, osd_addr(), EntityType::OSD);
    assert!(p.run(1000));
    outcome(&p)
}

fn messages(events: &[Event]) -> Vec<u16> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Message { msg, .. } => Some(msg.ty),
            _ => None,
        })
        .collect()
}

/// Renewal on the monitor session, as Ceph's MonClient does it: with 20 s service tickets
/// the client asks its monitor for new ones once 15 s have passed (MAuth and MAuthReply,
/// which neither dispatcher sees), so 25 s in, past the first tickets' expiry, its OSD
/// ticket still opens a session with the OSD. Once the monitor session is gone nothing
/// renews them, and past the renewed tickets' expiry there is no ticket to present.
#[test]
fn tickets_are_renewed_on_the_monitor_session_before_they_expire() {
    let client_cfg = client("client.admin", Some(ADMIN), &[ModeName::Secure]);
    let mut with_osd = client_cfg.clone();
    with_osd.auth.client_mode = vec![ModeName::Secure];
    let mut mon = monitor(&[ModeName::Secure]);
    mon.auth.service_ticket_ttl = std::time::Duration::from_secs(20);
    let mut p = Pipe::new(client_cfg, mon);
    p.eps[CLIENT].connect(p.now, mon_addr(), EntityType::MON);
    assert!(p.run(1000));
    assert_eq!(outcome(&p), Ok("cephx/secure".to_string()));
    // Three quarters of 20 s: a request and its reply at 15 s, not before; the renewed
    // tickets are due again 15 s later.
    for (at, renews) in [(14, false), (15, true), (29, false), (30, true)] {
        let before = p.bytes;
        tick(&mut p, secs(at));
        let moved = p.bytes[0] > before[0] && p.bytes[1] > before[1];
        assert_eq!(moved, renews, "at {at} s");
    }
    assert!(
        messages(&p.events[CLIENT]).is_empty(),
        "{:?}",
        p.events[CLIENT]
    );
    assert!(
        messages(&p.events[SERVER]).is_empty(),
        "{:?}",
        p.events[SERVER]
    );
    assert_eq!(
        osd_session_at(&with_osd, secs(45)),
        Ok("cephx/secure".to_string())
    );
    drop(p);
    assert_eq!(
        osd_session_at(&with_osd, secs(51)),
        Err(FaultReason::NoAuthMethod)
    );
}

/// A renewal whose auth ticket the monitor did not seal (a forged one) is answered with
/// -EACCES, and the monitor's dispatcher never sees it.
#[test]
fn a_monitor_refuses_a_renewal_with_a_forged_auth_ticket() {
    use ringwire::proto::cephx::msgs::{Ticket, TicketBlob};
    use ringwire::proto::cephx::renewal::{renewal_request, MSG_AUTH_REPLY};
    let mut p = Pipe::new(
        client("client.admin", Some(ADMIN), &[ModeName::Secure]),
        monitor(&[ModeName::Secure]),
    );
    let s = p.eps[CLIENT].connect(p.now, mon_addr(), EntityType::MON);
    let forged = Ticket {
        service: EntityType::AUTH,
        session_key: key_from_base64(OTHER).unwrap(),
        validity: std::time::Duration::from_secs(3600),
        blob: TicketBlob {
            secret_id: 1,
            blob: Bytes::from(key_from_base64(OTHER).unwrap().seal_envelope(b"forged")),
        },
    };
    p.eps[CLIENT]
        .send(p.now, s, renewal_request(4100, &forged, 1, 0x04))
        .unwrap();
    assert!(p.run(1000));
    assert!(messages(&p.events[SERVER]).is_empty());
    let reply = first_message(&p.events[CLIENT]);
    assert_eq!(reply.ty, MSG_AUTH_REPLY);
    let result = i32::from_le_bytes(reply.front[4..8].try_into().unwrap());
    assert_eq!(result, -13);
}
