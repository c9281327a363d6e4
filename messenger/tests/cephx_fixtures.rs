//! cephx and secure mode against real Ceph 16.2.15 captures (`shared/fixtures/msgr2-cephx`),
//! recomputed from the client's keyring: the challenge proof, the session keys and
//! connection secrets, both AUTH_SIGNATUREs, and every secure-mode frame, decrypted and then
//! sealed again to the very bytes Ceph sent.

use std::ops::Range;
use std::path::PathBuf;

use bytes::Bytes;
use ringwire::proto::cephx::client::{answer_challenge, read_auth_done};
use ringwire::proto::cephx::{CryptoKey, Keyring};
use ringwire::proto::frame::{encode_frame, BANNER_LEN};
use ringwire::proto::secure::streams;
use ringwire::proto::{
    Control, EntityName, EntityType, Frame, FrameDecoder, FrameLimits, Tag, TxQueue,
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
        let secret = done.connection_secret.expose();
        let (client_tx, client_rx) = streams(secret, false).unwrap();
        let (_, server_rx) = streams(secret, true).unwrap();
        let key = &done.auth.session_key;
        let mut c_dec = x.c_dec;
        c_dec.set_cipher(server_rx);
        let (c, c_end) = frames(&x.c2s, &mut c_dec, x.c_end, |_| false);
        let mut s_dec = x.s_dec;
        s_dec.set_cipher(client_rx);
        let (s, s_end) = frames(&x.s2c, &mut s_dec, x.s_end, |_| false);
        assert_eq!(
            (c_end, s_end),
            (x.c2s.len(), x.s2c.len()),
            "stream {n}: all bytes"
        );
        assert_eq!(sha(&c[0].0), key.hmac_sha256(&x.s2c[..x.s_end]));
        assert_eq!(sha(&s[0].0), key.hmac_sha256(&x.c2s[..x.c_end]));
        assert!(s
            .iter()
            .any(|(f, _)| f.segments.len() > 1 && f.segments[1].len() > 48));
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
            assert_eq!(
                tx.take_all(),
                &x.c2s[range.clone()],
                "stream {n} frame at {}",
                range.start
            );
        }
    }
}
