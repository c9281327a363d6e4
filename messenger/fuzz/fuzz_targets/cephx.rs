//! cephx and secure mode under hostile input; nothing may panic.
//! - Auth exchange: an endpoint doing cephx (a client with a key talking to a monitor, a
//!   monitor holding client keys, or an OSD holding its service secret) meets the control
//!   frames of `peer_frames.rs`, which reach the cephx parsers and decryptions.
//! - Ticket renewal: the MAuth and MAuthReply parsers.
//! - Secure decoder: blocks the input chooses, sealed with the connection's real sending
//!   stream (so they pass the GCM tag and reach the preamble and segment logic), with bytes
//!   the input flips or cuts in between.
#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use ringwire::proto::cephx::keyring::key_from_base64;
use ringwire::proto::cephx::renewal::{read_renewal_reply, read_renewal_request};
use ringwire::proto::cephx::Keyring;
use ringwire::proto::endpoint::Entropy;
use ringwire::proto::secure::streams;
use ringwire::proto::{
    AuthConfig, AuthMethod, EntityAddr, EntityAddrVec, EntityName, EntityType, Endpoint,
    EndpointConfig, FrameDecoder, FrameLimits, Io, ModeName, Policy, Time,
};

#[path = "peer_frames.rs"]
mod peer_frames;

const KEY: &str = "AQD7eQ9rfHEnHxAAhkY81mHWFP2qDwHj8lgDLA==";
const OSD_SECRET: &str = "AQD7eQ9rYr35HxAAmFm80tOU+9ry0arfTf3K5A==";

fn endpoint(role: u8) -> (Endpoint, bool) {
    let me: SocketAddr = "127.0.0.1:6800".parse().unwrap();
    let keyring = Keyring::parse(&format!("[client.admin]\nkey = {KEY}\n[osd.]\nkey = {OSD_SECRET}\n")).unwrap();
    let auth = AuthConfig {
        client_required: vec![AuthMethod::Cephx],
        mon_client_mode: vec![ModeName::Secure, ModeName::Crc],
        key: Some(key_from_base64(KEY).unwrap()),
        service_required: vec![AuthMethod::Cephx],
        cluster_required: vec![AuthMethod::Cephx],
        service_mode: vec![ModeName::Secure, ModeName::Crc],
        keyring: Some(keyring),
        entropy: Entropy([role; 32]),
        ..AuthConfig::default()
    };
    let (name, client) = match role % 3 {
        0 => (EntityName::new(EntityType::CLIENT, "admin"), true),
        1 => (EntityName::new(EntityType::MON, "a"), false),
        _ => (EntityName::new(EntityType::OSD, "0"), false),
    };
    let addrs = if client { EntityAddrVec::default() } else { EntityAddrVec(vec![EntityAddr::msgr2(me, 0)]) };
    let mut cfg = EndpointConfig::new(name, addrs);
    cfg.default_policy = Policy::lossy_client();
    cfg.auth = auth;
    (Endpoint::new(cfg), client)
}

fn auth_exchange(role: u8, rest: &[u8]) {
    let (mut ep, client) = endpoint(role);
    let now = Time(1);
    let conn = if client {
        let target = EntityAddr::msgr2("127.0.0.1:6801".parse().unwrap(), 0);
        let _ = ep.connect(now, target, EntityType::MON);
        let Some(Io::Connect { conn, .. }) = ep.poll_io() else { panic!("connect expected") };
        ep.on_connected(now, conn);
        conn
    } else {
        ep.accept(now, "127.0.0.1:40000".parse().unwrap())
    };
    ep.on_input(now, conn, &peer_frames::peer_bytes(rest));
    while ep.poll_io().is_some() {}
    while ep.poll_event().is_some() {}
    ep.on_closed(now, conn);
}

fn secure_decoder(mode: u8, rest: &[u8]) {
    let secret: Vec<u8> = (0..64).map(|i| i as u8 ^ mode).collect();
    let (mut tx, _) = streams(&secret, false).unwrap();
    let (_, rx) = streams(&secret, true).unwrap();
    let limits = FrameLimits { max_segment: 1 << 16, max_frame: 1 << 17, max_control: 4096 };
    let mut dec = FrameDecoder::new(limits, 0);
    dec.set_cipher(rx);
    // Each block: a control byte (bit 0: seal it, bits 1-2: alter it), a length, bytes.
    let mut wire = Vec::new();
    let mut input = rest;
    while let [ctl, len, tail @ ..] = input {
        let len = (*len as usize * 4).min(tail.len());
        let (block, tail) = tail.split_at(len);
        let start = wire.len();
        wire.extend_from_slice(block);
        if ctl & 1 == 1 {
            let Ok(tag) = tx.seal(&mut wire[start..]) else { return };
            wire.extend_from_slice(&tag);
        }
        match (ctl >> 1) & 3 {
            1 if wire.len() > start => {
                let at = start + (*ctl as usize * 7) % (wire.len() - start);
                wire[at] ^= 1;
            }
            2 => wire.truncate(start + (wire.len() - start) / 2),
            _ => {}
        }
        input = tail;
    }
    let step = 1 + (mode as usize >> 2);
    for chunk in wire.chunks(step) {
        let mut c = chunk;
        while !c.is_empty() {
            match dec.feed(&mut c) {
                Ok(_) => {}
                Err(_) => return,
            }
        }
    }
    let _ = dec.finish();
}

fuzz_target!(|data: &[u8]| {
    let [which, role, rest @ ..] = data else {
        return;
    };
    match which % 3 {
        0 => auth_exchange(*role, rest),
        1 => secure_decoder(*role, rest),
        _ => renewal(rest),
    }
});

/// Ticket renewal's codecs: a monitor reading a client's MAuth, a client reading an
/// MAuthReply (decrypted with its session key when the lengths let the input get that far).
fn renewal(data: &[u8]) {
    let _ = read_renewal_request(data);
    let _ = read_renewal_reply(&key_from_base64(KEY).unwrap(), data);
}
