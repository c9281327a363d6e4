//! cephx and secure mode against real Ceph 16.2.15 captures (`shared/fixtures/msgr2-cephx`),
//! recomputed from the client's keyring: the challenge proof, the session keys and
//! connection secrets, both AUTH_SIGNATUREs, and every secure-mode frame, decrypted and then
//! sealed again to the very bytes Ceph sent.

use std::ops::Range;
use std::path::PathBuf;

use bytes::Bytes;
use ringwire::proto::cephx::client::{answer_challenge, read_auth_done, read_authorize_reply};
use ringwire::proto::cephx::msgs::{decode_authorize_challenge, encode_authorizer};
use ringwire::proto::cephx::{CephxError, CryptoKey, Keyring};
use ringwire::proto::frame::{encode_frame, BANNER_LEN, SECURE_HEAD_LEN};
use ringwire::proto::secure::{streams, SecureError};
use ringwire::proto::{
    AuthConfig, AuthMethod, Control, Endpoint, EndpointConfig, EntityAddr, EntityName, EntityType,
    Event, FaultReason, Frame, FrameDecoder, FrameError, FrameLimits, Io, Policy, Tag, Time,
    TxQueue,
};

fn dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/msgr2-cephx");
    assert!(
        dir.is_dir(),
        "cephx fixtures not found at {}",
        dir.display()
    );
    dir
}

fn stream(name: &str, n: u32, dir_: &str) -> Vec<u8> {
    let path = dir().join(format!("{name}-stream{n}-{dir_}.bin"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

fn client_key() -> CryptoKey {
    let admin = EntityName::new(EntityType::CLIENT, "admin");
    Keyring::load_key(&dir().join("client.admin.keyring"), &admin).unwrap()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Frames from `start` on, each with the range of stream bytes it came from, until `stop`
/// says so (after the frame it accepted) or the bytes end. The decoder is returned so a
/// cipher can be installed for the rest.
fn frames(
    bytes: &[u8],
    dec: &mut FrameDecoder,
    start: usize,
    mut stop: impl FnMut(&Frame) -> bool,
) -> (Vec<(Frame, Range<usize>)>, usize) {
    let mut out = Vec::new();
    let mut at = start;
    // Odd-sized pieces, so units straddle reads.
    let mut piece = 7;
    while at < bytes.len() {
        let from = at;
        let frame = loop {
            let end = (at + piece).min(bytes.len());
            piece = piece % 97 + 13;
            let mut input = &bytes[at..end];
            let f = dec.feed(&mut input).unwrap();
            at = end - input.len();
            if let Some(f) = f {
                break Some(f);
            }
            if at == bytes.len() {
                break None;
            }
        };
        let Some(frame) = frame else { break };
        let done = stop(&frame);
        out.push((frame, from..at));
        if done {
            break;
        }
    }
    (out, at)
}

fn control(f: &Frame) -> Control {
    Control::decode(f.tag(), f.payload()).unwrap()
}

fn sha(f: &Frame) -> [u8; 32] {
    match control(f) {
        Control::AuthSignature { sha256 } => sha256,
        other => panic!("not AUTH_SIGNATURE: {other:?}"),
    }
}

/// The monitor half of a cephx exchange, plaintext up to and including AUTH_DONE.
struct MonExchange {
    c2s: Vec<u8>,
    s2c: Vec<u8>,
    client: Vec<(Frame, Range<usize>)>,
    server: Vec<(Frame, Range<usize>)>,
    c_end: usize,
    s_end: usize,
    c_dec: FrameDecoder,
    s_dec: FrameDecoder,
}

fn mon_exchange(name: &str, n: u32) -> MonExchange {
    let c2s = stream(name, n, "client-to-server");
    let s2c = stream(name, n, "server-to-client");
    let limits = FrameLimits::default();
    let mut c_dec = FrameDecoder::new(limits, BANNER_LEN as u64);
    let mut s_dec = FrameDecoder::new(limits, BANNER_LEN as u64);
    let (client, c_end) = frames(&c2s, &mut c_dec, BANNER_LEN, |f| {
        f.tag() == Tag::AuthRequestMore
    });
    let (server, s_end) = frames(&s2c, &mut s_dec, BANNER_LEN, |f| f.tag() == Tag::AuthDone);
    MonExchange {
        c2s,
        s2c,
        client,
        server,
        c_end,
        s_end,
        c_dec,
        s_dec,
    }
}

impl MonExchange {
    /// The client's first sealed frame, its AUTH_SIGNATURE (secure mode).
    fn c_dec_first_signature(&self) -> Frame {
        let done = read_auth_done(&client_key(), &payload(&self.server[2].0)).unwrap();
        let (_, rx) = streams(done.connection_secret.expose(), true).unwrap();
        let mut d = FrameDecoder::new(FrameLimits::default(), self.c_end as u64);
        d.set_cipher(rx);
        let (f, _) = frames(&self.c2s, &mut d, self.c_end, |_| true);
        f.into_iter().next().expect("a sealed frame").0
    }
}

fn payload(f: &Frame) -> Bytes {
    match control(f) {
        Control::AuthReplyMore { auth_payload }
        | Control::AuthRequestMore { auth_payload }
        | Control::AuthDone { auth_payload, .. } => auth_payload,
        other => panic!("no auth payload: {other:?}"),
    }
}

#[test]
fn the_challenge_answer_is_the_one_ceph_sent() {
    for (name, n) in [
        ("cephx-crc", 0),
        ("cephx-crc", 1),
        ("cephx-secure", 0),
        ("cephx-badkey", 0),
    ] {
        let x = mon_exchange(name, n);
        let more = payload(&x.client[2].0);
        let challenge = payload(&x.server[1].0);
        let client_challenge = u64::from_le_bytes(more[3..11].try_into().unwrap());
        let ours = answer_challenge(&client_key(), &challenge, client_challenge).unwrap();
        // The same but for `other_keys` (the last 4 bytes): which tickets to ask for.
        let same = ours[..ours.len() - 4] == more[..more.len() - 4];
        // The bad-key client used another key: its proof must not be ours.
        assert_eq!(same, name != "cephx-badkey", "{name} stream {n}");
    }
}

#[test]
fn auth_done_gives_the_session_keys_tickets_and_signatures_ceph_computed() {
    let cases = [
        (
            "cephx-crc",
            0,
            "0b4d4f00b7e0f15b2350d462be8159b6",
            0,
            &[][..],
        ),
        (
            "cephx-crc",
            1,
            "d6b0566f3ea3ebc45708f6e483a6ceab",
            0,
            &[1u8, 4, 16][..],
        ),
        (
            "cephx-secure",
            0,
            "a50f8640425a2b051746b5470677ac5f",
            64,
            &[][..],
        ),
    ];
    for (name, n, session, secret_len, services) in cases {
        let x = mon_exchange(name, n);
        let done = read_auth_done(&client_key(), &payload(&x.server[2].0)).unwrap();
        assert_eq!(
            hex(done.auth.session_key.secret().expose()),
            session,
            "{name} {n}"
        );
        assert_eq!(done.connection_secret.len(), secret_len);
        let got: Vec<u8> = done.tickets.iter().map(|t| t.service.0).collect();
        assert_eq!(got, services);
        if secret_len == 0 {
            // crc mode: the signatures are the next plain frames.
            let key = &done.auth.session_key;
            let mut c_dec = x.c_dec;
            let mut s_dec = x.s_dec;
            let (c, _) = frames(&x.c2s, &mut c_dec, x.c_end, |_| true);
            let (s, _) = frames(&x.s2c, &mut s_dec, x.s_end, |_| true);
            assert_eq!(sha(&c[0].0), key.hmac_sha256(&x.s2c[..x.s_end]));
            assert_eq!(sha(&s[0].0), key.hmac_sha256(&x.c2s[..x.c_end]));
            assert!(key.verify_hmac_sha256(&x.s2c[..x.s_end], &sha(&c[0].0)));
            assert!(!key.verify_hmac_sha256(&x.s2c[..x.s_end - 1], &sha(&c[0].0)));
        }
    }
}

/// Every frame of both directions after AUTH_DONE decrypts (tags and preamble CRCs checked),
/// starts with the right AUTH_SIGNATURE, and sealed again with our encoder gives exactly the
/// bytes on the wire: key, nonces, layout, padding and tags all agree with Ceph's.
#[test]
fn secure_frames_decrypt_and_seal_again_to_cephs_bytes() {
    for n in [0, 1] {
        let x = mon_exchange("cephx-secure", n);
        let done = read_auth_done(&client_key(), &payload(&x.server[2].0)).unwrap();
        let secret = done.connection_secret.clone();
        let (_, s) = check_sealed(
            x,
            secret.expose(),
            &done.auth.session_key,
            &format!("mon {n}"),
        );
        assert!(s
            .iter()
            .any(|(f, _)| f.segments.len() > 1 && f.segments[1].len() > 48));
    }
}

/// Both directions of a secure connection after auth: every frame decrypts and covers the
/// stream; each side's AUTH_SIGNATURE signs what it received under `key`; every client frame
/// sealed again gives Ceph's bytes. Returns the decrypted frames (client's, server's).
fn check_sealed(x: MonExchange, secret: &[u8], key: &CryptoKey, what: &str) -> (Framed, Framed) {
    let (client_tx, client_rx) = streams(secret, false).unwrap();
    let (_, server_rx) = streams(secret, true).unwrap();
    let mut c_dec = x.c_dec;
    c_dec.set_cipher(server_rx);
    let (c, c_end) = frames(&x.c2s, &mut c_dec, x.c_end, |_| false);
    let mut s_dec = x.s_dec;
    s_dec.set_cipher(client_rx);
    let (s, s_end) = frames(&x.s2c, &mut s_dec, x.s_end, |_| false);
    assert_eq!(
        (c_end, s_end),
        (x.c2s.len(), x.s2c.len()),
        "{what}: all bytes"
    );
    assert_eq!(sha(&c[0].0), key.hmac_sha256(&x.s2c[..x.s_end]), "{what}");
    assert_eq!(sha(&s[0].0), key.hmac_sha256(&x.c2s[..x.c_end]), "{what}");
    let mut tx = TxQueue::default();
    tx.set_cipher(client_tx);
    for (f, range) in &c {
        let segs: Vec<Vec<Bytes>> = f.segments.iter().map(|s| vec![s.clone()]).collect();
        let segs: Vec<(&[Bytes], u16)> = segs
            .iter()
            .zip(&f.preamble.segments)
            .map(|(s, d)| (&s[..], d.align))
            .collect();
        encode_frame(&mut tx, f.tag(), &segs);
        let at = range.start;
        assert_eq!(
            tx.take_all(),
            &x.c2s[range.clone()],
            "{what}: frame at {at}"
        );
    }
    (c, s)
}

type Framed = Vec<(Frame, Range<usize>)>;

/// The OSD scenario in secure mode: the OSD ticket from the monitor's AUTH_DONE (crc mode),
/// then our authorizer, its answer to the OSD's challenge, and our reading of the OSD's reply
/// are byte for byte or value for value Ceph's; the connection secret so found opens every
/// sealed frame, the 100 kB object's among them, and our encoder seals them identically.
#[test]
fn the_authorizer_and_the_osds_answers_are_cephs() {
    for (mon, osd) in [(2, 3), (6, 7)] {
        let m = mon_exchange("cephx-osd-secure", mon);
        let Control::AuthDone { global_id, .. } = control(&m.server[2].0) else {
            panic!("AUTH_DONE")
        };
        let done = read_auth_done(&client_key(), &payload(&m.server[2].0)).unwrap();
        let ticket = done
            .tickets
            .iter()
            .find(|t| t.service == EntityType::OSD)
            .expect("an osd ticket");
        let x = mon_exchange("cephx-osd-secure", osd);
        let Control::AuthRequest { auth_payload, .. } = control(&x.client[1].0) else {
            panic!("AUTH_REQUEST")
        };
        // The nonce is inside the sealed CephXAuthorize at the end (le32 32 + ciphertext).
        let sealed = &auth_payload[auth_payload.len() - 32..];
        let authorize = ticket.session_key.open_envelope(sealed).unwrap();
        let nonce = u64::from_le_bytes(authorize.expose()[1..9].try_into().unwrap());
        let first = encode_authorizer(global_id, ticket, nonce, None);
        assert_eq!(first, auth_payload, "osd stream {osd}: AUTH_REQUEST");
        let challenge =
            decode_authorize_challenge(&ticket.session_key, &payload(&x.server[1].0)).unwrap();
        let again = encode_authorizer(global_id, ticket, nonce, Some(challenge));
        assert_eq!(
            again,
            payload(&x.client[2].0),
            "osd stream {osd}: AUTH_REQUEST_MORE"
        );
        let secret = read_authorize_reply(ticket, nonce, &payload(&x.server[2].0)).unwrap();
        assert_eq!(secret.len(), 64);
        assert_eq!(
            read_authorize_reply(ticket, nonce + 1, &payload(&x.server[2].0)),
            Err(CephxError::BadNonce)
        );
        let (c, s) = check_sealed(
            x,
            secret.expose(),
            &ticket.session_key,
            &format!("osd {osd}"),
        );
        let data = c.iter().chain(&s).filter_map(|(f, _)| f.segments.get(3));
        assert!(
            data.clone().any(|d| d.len() == 100_000),
            "the 100 kB object"
        );
    }
}

/// The server-to-client bytes of `cephx-secure` stream `n` after AUTH_DONE, the frame
/// boundaries there, and a decoder ready for them (the client's receiving cipher).
fn sealed_server_frames(n: u32) -> (Vec<u8>, Vec<Range<usize>>, FrameDecoder) {
    let x = mon_exchange("cephx-secure", n);
    let done = read_auth_done(&client_key(), &payload(&x.server[2].0)).unwrap();
    let fresh = || {
        let (_, rx) = streams(done.connection_secret.expose(), false).unwrap();
        let mut d = FrameDecoder::new(FrameLimits::default(), x.s_end as u64);
        d.set_cipher(rx);
        d
    };
    let mut probe = fresh();
    let (frames, _) = frames(&x.s2c, &mut probe, x.s_end, |_| false);
    let ranges = frames.into_iter().map(|(_, r)| r).collect();
    (x.s2c, ranges, fresh())
}

fn feed_all(d: &mut FrameDecoder, mut bytes: &[u8]) -> Result<usize, FrameError> {
    let mut n = 0;
    while !bytes.is_empty() {
        if d.feed(&mut bytes)?.is_some() {
            n += 1;
        }
    }
    Ok(n)
}

/// Hostile secure-mode input, each case its own error value and none a panic: a flipped
/// bit in a frame's first operation, in its tag, in its tail; the stream cut inside a
/// sealed frame; a frame sent again.
#[test]
fn altered_truncated_and_replayed_sealed_frames_fail_each_with_its_own_error() {
    let (bytes, ranges, _) = sealed_server_frames(1);
    // A frame with all three operations' kinds: a multi-segment MESSAGE.
    let multi = ranges
        .iter()
        .position(|r| r.len() > SECURE_HEAD_LEN + 16 + 48)
        .expect("a long frame");
    let start = ranges[multi].start;
    let end = ranges[multi].end;
    let head_op = Err(FrameError::Secure(SecureError::BadTag {
        op: "encrypted preamble",
    }));
    let tail_op = Err(FrameError::Secure(SecureError::BadTag {
        op: "encrypted segments and epilogue",
    }));
    let cases = [
        (
            "ciphertext bit of the first operation",
            start + 3,
            head_op.clone(),
        ),
        (
            "tag bit of the first operation",
            start + SECURE_HEAD_LEN - 1,
            head_op,
        ),
        (
            "ciphertext bit of the last operation",
            end - 20,
            tail_op.clone(),
        ),
        ("tag bit of the last operation", end - 1, tail_op),
    ];
    for (what, at, want) in cases {
        let (_, _, mut d) = sealed_server_frames(1);
        let mut altered = bytes.clone();
        altered[at] ^= 0x10;
        let got = feed_all(&mut d, &altered[ranges[0].start..end]).map(|_| ());
        assert_eq!(got, want, "{what}");
    }

    // Cut 10 bytes before the end of a frame: nothing decodes, and the end of the stream
    // says where it stopped.
    let (_, _, mut d) = sealed_server_frames(1);
    assert_eq!(
        feed_all(&mut d, &bytes[ranges[0].start..end - 10]),
        Ok(multi)
    );
    assert!(matches!(
        d.finish(),
        Err(FrameError::Truncated { have, need, .. }) if need - have == 10
    ));

    // The first frame, then the first frame again.
    let (_, _, mut d) = sealed_server_frames(1);
    let first = &bytes[ranges[0].clone()];
    assert_eq!(feed_all(&mut d, first), Ok(1));
    assert_eq!(
        feed_all(&mut d, first),
        Err(FrameError::Secure(SecureError::Replayed { behind: 1 }))
    );
}

/// A Ringwire client against the monitor's captured bytes: cephx and secure mode go all the
/// way to the monitor's sealed AUTH_SIGNATURE, which signs what Ceph's client sent, not what
/// we sent: the connection fails on the signature. With that frame altered, it fails on the
/// GCM tag instead.
#[test]
fn a_client_refuses_a_signature_over_other_bytes_and_an_altered_sealed_frame() {
    let x = mon_exchange("cephx-secure", 0);
    for (alter, want) in [
        (None, FaultReason::BadSignature),
        (
            Some(x.s_end + 40),
            FaultReason::Frame(FrameError::Secure(SecureError::BadTag {
                op: "encrypted preamble",
            })),
        ),
    ] {
        let mut cfg = EndpointConfig::new(
            EntityName::new(EntityType::CLIENT, "admin"),
            Default::default(),
        );
        cfg.default_policy = Policy::lossy_client();
        cfg.auth = AuthConfig {
            client_required: vec![AuthMethod::Cephx],
            key: Some(client_key()),
            ..AuthConfig::default()
        };
        let mut ep = Endpoint::new(cfg);
        let mon = EntityAddr::msgr2("127.0.0.1:13300".parse().unwrap(), 0);
        let s = ep.connect(Time(1), mon, EntityType::MON);
        let Some(Io::Connect { conn, .. }) = ep.poll_io() else {
            panic!("connect expected")
        };
        ep.on_connected(Time(1), conn);
        let mut input = x.s2c.clone();
        if let Some(at) = alter {
            input[at] ^= 1;
        }
        ep.on_input(Time(2), conn, &input[..x.s_end]);
        // Up to AUTH_DONE: HELLO, AUTH_REQUEST and our proof in the clear, then our
        // AUTH_SIGNATURE sealed. It signs the monitor's bytes, so it is the one Ceph's client
        // sent, and the monitor's side of the secret opens it.
        let sent = ep.tx_queue(conn).unwrap().take_all();
        let mut d = FrameDecoder::new(FrameLimits::default(), BANNER_LEN as u64);
        let (plain, end) = frames(&sent, &mut d, BANNER_LEN, |f| {
            f.tag() == Tag::AuthRequestMore
        });
        let tags: Vec<Tag> = plain.iter().map(|(f, _)| f.tag()).collect();
        assert_eq!(tags, [Tag::Hello, Tag::AuthRequest, Tag::AuthRequestMore]);
        assert_ne!(
            payload(&plain[2].0),
            payload(&x.client[2].0),
            "our own challenge"
        );
        let done = read_auth_done(&client_key(), &payload(&x.server[2].0)).unwrap();
        let (_, monitor_rx) = streams(done.connection_secret.expose(), true).unwrap();
        d.set_cipher(monitor_rx);
        let (sealed, _) = frames(&sent, &mut d, end, |_| false);
        assert_eq!(sealed.len(), 1);
        assert_eq!(sha(&sealed[0].0), sha(&x.c_dec_first_signature()));
        ep.on_input(Time(3), conn, &input[x.s_end..]);
        let mut faults = Vec::new();
        while let Some(ev) = ep.poll_event() {
            if let Event::Fault { reason, .. } = ev {
                faults.push(reason);
            }
        }
        assert_eq!(faults, vec![want]);
        assert!(ep.is_closed(s), "lossy session ends");
    }
}
