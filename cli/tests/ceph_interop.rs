//! Interop with real Ceph 16.2 (Debian's ceph-mon and ceph CLI), both directions, over
//! loopback. `.ci/run` installs Ceph; without it these tests fail and say how to install it.

#[path = "../../messenger/tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use ringwire::proto::{EntityAddr, EntityType, Message, ModeName, Policy};
use ringwire::{Messenger, Options};
use ringwire_bench::ceph_mon::{self, CephMon, MonAuth};

use ringwire::proto::message::{
    MSG_MON_GET_MAP as MON_GET_MAP, MSG_MON_GET_VERSION as MON_GET_VERSION,
    MSG_MON_GET_VERSION_REPLY as MON_GET_VERSION_REPLY, MSG_MON_MAP as MON_MAP,
};

/// A throw-away monitor (`ringwire_bench::ceph_mon`) authenticating as `auth` says; the test
/// fails, saying how to install Ceph, where it is missing.
fn start_mon(auth: MonAuth) -> CephMon {
    CephMon::start_with(auth).unwrap_or_else(|e| panic!("{e}"))
}

fn require(tool: &str) {
    if let Err(e) = ceph_mon::require(tool) {
        panic!("{e}");
    }
}

fn mon_addr(mon: &CephMon) -> EntityAddr {
    EntityAddr::parse(&mon.addr()).unwrap()
}

/// A new keyring at `path` with a fresh key for `name`.
fn new_keyring(path: &std::path::Path, name: &str) {
    ceph_mon::new_keyring(path, name, &[]).unwrap_or_else(|e| panic!("{e}"));
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
    let mon = start_mon(MonAuth::None);
    get_maps(&mon, None, "none/crc");
}

/// The same exchange with a monitor requiring cephx and secure mode: every MESSAGE frame
/// both ways sealed, the monmap's fsid intact.
#[test]
fn ringwire_client_gets_maps_from_a_real_monitor_over_cephx_in_secure_mode() {
    init_tracing();
    let mon = start_mon(MonAuth::CephxSecure);
    get_maps(&mon, Some(mon.admin_keyring()), "cephx/secure");
}

/// MON_GET_MAP and MON_GET_VERSION to `mon` as client.admin (with `keyring`, if given);
/// the connection's security must read `security`.
fn get_maps(mon: &CephMon, keyring: Option<PathBuf>, security: &str) {
    let rec = Arc::new(Recorder::default());
    let client = Messenger::builder(name(EntityType::CLIENT, "admin"))
        .policy(EntityType::MON, Policy::lossy_client())
        .options(Options {
            workers: 1,
            keyring,
            ..Options::default()
        })
        .start(rec.clone())
        .unwrap();
    let conn = client.connect(mon_addr(mon), EntityType::MON);
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
    assert_eq!(conn.security().unwrap().to_string(), security);
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
    let (first, security) = ceph_cli_to_ringwire_monitor(MonAuth::None, false).unwrap();
    assert_eq!(
        first,
        (1, MON_GET_MAP),
        "MonClient starts with MON_GET_MAP as seq 1"
    );
    assert_eq!(security.0.ty, EntityType::CLIENT);
    assert_eq!(security.1, "none/crc");
}

/// The real `ceph` CLI, with client.admin's keyring and secure mode required, against a
/// Ringwire monitor holding that key: the handshake completes in cephx/secure, its first
/// message arrives with seq 1 from client.admin. A key the monitor does not hold is refused:
/// nothing is dispatched and the CLI fails.
#[test]
fn real_ceph_client_authenticates_to_a_ringwire_monitor_with_cephx_in_secure_mode() {
    require("ceph-authtool");
    let (first, security) = ceph_cli_to_ringwire_monitor(MonAuth::CephxSecure, false).unwrap();
    assert_eq!(first, (1, MON_GET_MAP));
    assert_eq!(security.0.to_string(), "client.admin");
    assert_eq!(security.1, "cephx/secure");
    let refused = ceph_cli_to_ringwire_monitor(MonAuth::CephxSecure, true);
    assert_eq!(refused, None, "a wrong key must not get a session");
}

/// Runs `ceph mon stat` against a Ringwire monitor whose keyring (cephx) holds client.admin's
/// key; with `wrong_key`, the CLI uses another key under the same name. Returns the first
/// message (seq, type) and who sent it how (name, security), or None if the CLI got no
/// session (it then must have failed).
fn ceph_cli_to_ringwire_monitor(
    auth: MonAuth,
    wrong_key: bool,
) -> Option<((u64, u16), (ringwire::proto::EntityName, String))> {
    require("ceph");
    let dir = std::env::temp_dir().join(format!(
        "ringwire-cli-{}-{}",
        std::process::id(),
        ceph_mon::free_port()
    ));
    std::fs::create_dir_all(dir.join("run")).unwrap();
    std::fs::create_dir_all(dir.join("log")).unwrap();
    let admin = dir.join("client.admin.keyring");
    let mut options = Options {
        workers: 2,
        ..Options::default()
    };
    if auth == MonAuth::CephxSecure {
        new_keyring(&admin, "client.admin");
        options.keyring = Some(admin.clone());
        options.ms_mon_service_mode = vec![ModeName::Secure];
    }
    let rec = Arc::new(Recorder::default());
    let server = Messenger::builder(name(EntityType::MON, "a"))
        .bind(loopback())
        .policy(EntityType::CLIENT, Policy::stateless_server())
        .options(options)
        .start(rec.clone())
        .unwrap();
    assert_eq!(
        server.addrs().0[0].nonce,
        0,
        "monitors listen with nonce 0, as Ceph's do"
    );
    if wrong_key {
        // The monitor has read the keyring; the CLI reads it next (its conf names it).
        new_keyring(&admin, "client.admin");
    }
    let port = server.addrs().0[0].addr.unwrap().port();
    let mon_host = format!("[v2:127.0.0.1:{port}]");
    let conf = ceph_mon::conf(&dir, &ceph_mon::uuid_v4(), &mon_host, auth, "").unwrap();
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
    let got_message = || {
        rec.seen
            .lock()
            .unwrap()
            .iter()
            .any(|x| matches!(x, Seen::Message { .. }))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut exited = None;
    while Instant::now() < deadline && !got_message() && exited.is_none() {
        exited = cli.try_wait().unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = cli.kill();
    let _ = cli.wait();
    let _ = std::fs::remove_dir_all(&dir);
    if !got_message() {
        let status = exited.expect("the CLI neither sent a message nor gave up in 20 s");
        assert!(!status.success(), "the CLI succeeded without a session?");
        assert!(rec.conns.lock().unwrap().is_empty(), "no session accepted");
        return None;
    }
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
    let conn = rec.conns.lock().unwrap()[0].clone();
    Some((
        first,
        (conn.peer().unwrap(), conn.security().unwrap().to_string()),
    ))
}

#[test]
fn ringwire_ping_measures_round_trips_to_a_real_monitor() {
    let mon = start_mon(MonAuth::None);
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

/// `ringwire ping` to `mon` with `args`: exit status, stdout and stderr.
fn ping(mon: &CephMon, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ringwire"))
        .args(["ping", &format!("v2:127.0.0.1:{}", mon.port)])
        .args(["--peer-type", "mon", "--count", "5", "--interval-ms", "10"])
        .args(args)
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

/// A monitor requiring cephx and secure mode on every connection: `ringwire ping` with
/// client.admin's keyring authenticates, says so, and completes its round trips; with a key
/// the cluster does not know, and without one, it fails naming authentication.
#[test]
fn ringwire_ping_authenticates_with_cephx_in_secure_mode() {
    let mon = start_mon(MonAuth::CephxSecure);
    let admin = mon.admin_keyring();
    let (ok, stdout, stderr) = ping(&mon, &["-n", "client.admin", "-k", admin.to_str().unwrap()]);
    assert!(ok, "{stdout}{stderr}");
    let first = stdout.lines().next().unwrap();
    assert!(
        first.contains("(mon.") && first.contains("cephx/secure"),
        "{first}"
    );
    let summary = stdout.lines().last().unwrap();
    assert!(summary.starts_with("5 sent, 5 received"), "{summary}");

    let wrong = mon.dir.join("wrong.keyring");
    new_keyring(&wrong, "client.admin");
    let (ok, stdout, stderr) = ping(&mon, &["-n", "client.admin", "-k", wrong.to_str().unwrap()]);
    assert!(!ok, "a wrong key must fail: {stdout}");
    assert!(
        stderr.contains("authentication") && stderr.contains("rejected our key"),
        "{stderr}"
    );

    let (ok, _, stderr) = ping(&mon, &[]);
    assert!(!ok);
    assert!(stderr.contains("refused authentication"), "{stderr}");
}

/// client.admin with the monitor's admin keyring, offering secure mode only to daemons.
fn cephx_client(mon: &CephMon, rec: Arc<Recorder>) -> Messenger {
    Messenger::builder(name(EntityType::CLIENT, "admin"))
        .policy(EntityType::MON, Policy::lossy_client())
        .policy(EntityType::OSD, Policy::lossy_client())
        .options(Options {
            workers: 1,
            keyring: Some(mon.admin_keyring()),
            ms_client_mode: vec![ModeName::Secure],
            ..Options::default()
        })
        .start(rec)
        .unwrap()
}

/// A secure cephx session with the real OSD at `osd` (its ticket, its challenge answered),
/// shown by a keepalive round trip.
fn secure_session_with_osd(client: &Messenger, osd: &str, rec: &Recorder) {
    let osd = EntityAddr::parse(&format!("v2:{osd}")).unwrap();
    let to_osd = client.connect(osd, EntityType::OSD);
    to_osd.wait_ready(Duration::from_secs(20)).unwrap();
    assert_eq!(to_osd.security().unwrap().to_string(), "cephx/secure");
    assert_eq!(to_osd.peer().unwrap().ty, EntityType::OSD);
    to_osd.keepalive();
    rec.wait_for(Duration::from_secs(10), "the OSD's KEEPALIVE2_ACK", |s| {
        s.iter().any(|x| matches!(x, Seen::KeepaliveAck(_)))
    });
}

/// Tickets end to end: a Ringwire client authenticates with a real monitor (cephx, secure),
/// takes the OSD ticket it was given to a real OSD requiring cephx and secure mode, answers
/// the OSD's challenge, and completes a sealed session with it (a keepalive round trip).
#[test]
fn ringwire_client_uses_its_osd_ticket_with_a_real_osd_in_secure_mode() {
    init_tracing();
    let mon = start_mon(MonAuth::CephxSecure);
    let osd = mon.start_osd().unwrap_or_else(|e| panic!("{e}"));
    let rec = Arc::new(Recorder::default());
    let client = cephx_client(&mon, rec.clone());
    let to_mon = client.connect(mon_addr(&mon), EntityType::MON);
    to_mon.wait_ready(Duration::from_secs(20)).unwrap();
    secure_session_with_osd(&client, &osd, &rec);
}

/// Renewal with a real monitor: its service tickets last 20 s (`auth service ticket ttl`),
/// the Ringwire client renews them on its monitor session after 15 s (MAuth,
/// CEPHX_GET_PRINCIPAL_SESSION_KEY), and 22 s in, when the first OSD ticket has expired, it
/// still completes a secure session with a real OSD. The application sees no MAuthReply.
#[test]
fn ringwire_client_renews_its_tickets_on_a_real_monitor_session() {
    init_tracing();
    let mon = CephMon::start_with_conf(MonAuth::CephxSecure, "auth service ticket ttl = 20")
        .unwrap_or_else(|e| panic!("{e}"));
    let osd = mon.start_osd().unwrap_or_else(|e| panic!("{e}"));
    let rec = Arc::new(Recorder::default());
    let client = cephx_client(&mon, rec.clone());
    let to_mon = client.connect(mon_addr(&mon), EntityType::MON);
    to_mon.wait_ready(Duration::from_secs(20)).unwrap();
    std::thread::sleep(Duration::from_secs(22));
    assert!(to_mon.is_connected(), "the monitor session lasted");
    secure_session_with_osd(&client, &osd, &rec);
    let seen = rec.seen.lock().unwrap();
    assert!(
        !seen
            .iter()
            .any(|x| matches!(x, Seen::Message { content, .. } if content.ty == 18)),
        "an MAuthReply reached the dispatcher"
    );
}
