//! Interop with real Ceph 16.2 (Debian's ceph-mon and ceph CLI), both directions, over
//! loopback. `.ci/run` installs Ceph; without it these tests fail and say how to install it.

#[path = "../../messenger/tests/common/mod.rs"]
mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use ringwire::proto::{EntityAddr, EntityType, Message, Policy};
use ringwire::{Messenger, Options};
use ringwire_bench::ceph_mon::{self, CephMon};

use ringwire::proto::message::{
    MSG_MON_GET_MAP as MON_GET_MAP, MSG_MON_GET_VERSION as MON_GET_VERSION,
    MSG_MON_GET_VERSION_REPLY as MON_GET_VERSION_REPLY, MSG_MON_MAP as MON_MAP,
};

/// A throw-away monitor (`ringwire_bench::ceph_mon`); the test fails, saying how to install
/// Ceph, where it is missing.
fn start_mon() -> CephMon {
    CephMon::start().unwrap_or_else(|e| panic!("{e}"))
}

fn require(tool: &str) {
    if let Err(e) = ceph_mon::require(tool) {
        panic!("{e}");
    }
}

fn mon_addr(mon: &CephMon) -> EntityAddr {
    EntityAddr::parse(&mon.addr()).unwrap()
}

fn uuid_bytes(s: &str) -> Vec<u8> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    (0..16)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

#[test]
fn ringwire_client_talks_to_a_real_monitor() {
    init_tracing();
    let mon = start_mon();
    let rec = Arc::new(Recorder::default());
    let client = Messenger::builder(name(EntityType::CLIENT, "admin"))
        .policy(EntityType::MON, Policy::lossy_client())
        .options(Options {
            workers: 1,
            ..Options::default()
        })
        .start(rec.clone())
        .unwrap();
    let conn = client.connect(mon_addr(&mon), EntityType::MON);
    conn.send(Message::new(MON_GET_MAP)).unwrap();
    let mut what = Vec::new();
    what.extend_from_slice(&7u64.to_le_bytes()); // handle
    what.extend_from_slice(&6u32.to_le_bytes());
    what.extend_from_slice(b"osdmap");
    conn.send(Message::new(MON_GET_VERSION).with_front(what))
        .unwrap();
    rec.wait_for(
        Duration::from_secs(20),
        "MON_MAP and GET_VERSION_REPLY",
        |s| {
            let has = |ty| {
                s.iter()
                    .any(|x| matches!(x, Seen::Message { content, .. } if content.ty == ty))
            };
            has(MON_MAP) && has(MON_GET_VERSION_REPLY)
        },
    );
    assert!(conn.is_connected());
    assert_eq!(conn.peer().unwrap().ty, EntityType::MON);
    let seen = rec.seen.lock().unwrap().clone();
    for s in &seen {
        let Seen::Message { content, seq, .. } = s else {
            continue;
        };
        let (ty, front) = (content.ty, &content.front);
        assert!(*seq >= 1);
        if ty == MON_MAP {
            // MMonMap: bufferlist(monmap); MonMap::encode: ENCODE_START (6 bytes), fsid, ...
            let bl_len = u32::from_le_bytes(front[0..4].try_into().unwrap()) as usize;
            assert_eq!(bl_len + 4, front.len());
            assert_eq!(
                &front[4 + 6..4 + 6 + 16],
                &uuid_bytes(&mon.fsid)[..],
                "our cluster's fsid"
            );
        }
        if ty == MON_GET_VERSION_REPLY {
            let handle = u64::from_le_bytes(front[0..8].try_into().unwrap());
            let version = u64::from_le_bytes(front[8..16].try_into().unwrap());
            assert_eq!(handle, 7);
            assert!(version >= 1, "the osdmap exists from epoch 1");
        }
    }
}

#[test]
fn real_ceph_client_talks_to_a_ringwire_monitor() {
    require("ceph");
    let rec = Arc::new(Recorder::default());
    let server = Messenger::builder(name(EntityType::MON, "a"))
        .bind(loopback())
        .policy(EntityType::CLIENT, Policy::stateless_server())
        .options(Options {
            workers: 2,
            ..Options::default()
        })
        .start(rec.clone())
        .unwrap();
    assert_eq!(
        server.addrs().0[0].nonce,
        0,
        "monitors listen with nonce 0, as Ceph's do"
    );
    let port = server.addrs().0[0].addr.unwrap().port();
    let dir = std::env::temp_dir().join(format!("ringwire-cli-{}-{port}", std::process::id()));
    std::fs::create_dir_all(dir.join("run")).unwrap();
    std::fs::create_dir_all(dir.join("log")).unwrap();
    let conf = ceph_mon::conf(
        &dir,
        &ceph_mon::uuid_v4(),
        &format!("[v2:127.0.0.1:{port}]"),
        "",
    )
    .unwrap();
    let mut cli: Child = Command::new("ceph")
        .args([
            "-c",
            conf.to_str().unwrap(),
            "--connect-timeout",
            "15",
            "mon",
            "stat",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    rec.wait_for(
        Duration::from_secs(20),
        "the ceph CLI's first message",
        |s| s.iter().any(|x| matches!(x, Seen::Message { .. })),
    );
    let _ = cli.kill();
    let _ = cli.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let first = rec
        .seen
        .lock()
        .unwrap()
        .iter()
        .find_map(|s| match s {
            Seen::Message { seq, content, .. } => Some((*seq, content.ty)),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        first,
        (1, MON_GET_MAP),
        "MonClient starts with MON_GET_MAP as seq 1"
    );
    let peer = rec.conns.lock().unwrap()[0].peer().unwrap();
    assert_eq!(peer.ty, EntityType::CLIENT);
}

#[test]
fn ringwire_ping_measures_round_trips_to_a_real_monitor() {
    let mon = start_mon();
    let out = Command::new(env!("CARGO_BIN_EXE_ringwire"))
        .args([
            "ping",
            &format!("v2:127.0.0.1:{}", mon.port),
            "--peer-type",
            "mon",
        ])
        .args(["--count", "5", "--interval-ms", "10"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("(mon."), "the peer is a monitor: {stdout}");
    let summary = stdout.lines().last().unwrap();
    assert!(
        summary.starts_with("5 sent, 5 received, rtt min "),
        "{summary}"
    );
    assert!(
        summary.contains(" p50 ") && summary.contains(" p99 "),
        "{summary}"
    );
}
