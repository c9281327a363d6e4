//! A peer that says anything: the input picks our role, then is a list of control frames
//! (`peer_frames.rs`), with occasional raw bytes. The endpoint must never panic.
#![no_main]

use std::net::SocketAddr;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use ringwire::proto::{
    EntityAddr, EntityAddrVec, EntityName, EntityType, Endpoint, EndpointConfig, Io, Policy, Time,
};

#[path = "peer_frames.rs"]
mod peer_frames;

fn endpoint(client: bool, policy_pick: u8) -> Endpoint {
    let me: SocketAddr = "127.0.0.1:6800".parse().unwrap();
    let policy = match policy_pick % 4 {
        0 => Policy::lossy_client(),
        1 => Policy::lossless_client(),
        2 => Policy::stateful_server(),
        _ => Policy::lossless_peer(),
    };
    let mut cfg = EndpointConfig::new(
        EntityName { ty: if client { EntityType::CLIENT } else { EntityType::OSD }, id: "0".into() },
        if client { EntityAddrVec::default() } else { EntityAddrVec(vec![EntityAddr::msgr2(me, 0)]) },
    );
    cfg.default_policy = policy;
    Endpoint::new(cfg)
}

fuzz_target!(|data: &[u8]| {
    let [role, policy, rest @ ..] = data else {
        return;
    };
    let client = role & 1 == 1;
    let mut ep = endpoint(client, *policy);
    let mut now = Time(1);
    let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let conn = if client {
        let target = EntityAddr::msgr2("127.0.0.1:6801".parse().unwrap(), 0);
        let _session = ep.connect(now, target, EntityType::OSD);
        let Some(Io::Connect { conn, .. }) = ep.poll_io() else { panic!("connect expected") };
        ep.on_connected(now, conn);
        conn
    } else {
        ep.accept(now, peer)
    };
    let bytes = peer_frames::peer_bytes(rest);
    for chunk in bytes.chunks(1 + (*role as usize >> 1)) {
        ep.on_input(now, conn, chunk);
        while ep.poll_io().is_some() {}
        while ep.poll_event().is_some() {}
        if let Some(q) = ep.tx_queue(conn) {
            q.clear();
        }
        now = now.after(Duration::from_millis(100));
        ep.handle_timeout(now);
    }
    ep.on_closed(now, conn);
    ep.handle_timeout(Time(u64::MAX / 2));
    while ep.poll_io().is_some() {}
    while ep.poll_event().is_some() {}
});
