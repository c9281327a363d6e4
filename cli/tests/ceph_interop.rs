//! Interop with real Ceph 16.2 (Debian's ceph-mon and ceph CLI), both directions, over
//! loopback. `.ci/run` installs Ceph; without it these tests fail and say how to install it.

#[path = "../../messenger/tests/common/mod.rs"]
mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use ringwire::proto::{EntityAddr, EntityType, Message, ModeName, Policy};
use ringwire::{Messenger, Options};

use ringwire::proto::message::{
    MSG_MON_GET_MAP as MON_GET_MAP, MSG_MON_GET_VERSION as MON_GET_VERSION,
    MSG_MON_GET_VERSION_REPLY as MON_GET_VERSION_REPLY, MSG_MON_MAP as MON_MAP,
};

fn require(tool: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{tool} not found: install Ceph with `apt-get install ceph-mon ceph-common` (.ci/run does)"
    );
}

/// A port below the ephemeral range (32768+), so that no client socket of a concurrent test
/// takes it between this check and ceph-mon's bind.
fn free_port() -> u16 {
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut seed = now
        ^ (std::process::id() as u64) << 32
        ^ CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) << 48;
    loop {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let port = 20_000 + (seed >> 33) as u16 % 10_000;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// How a test monitor authenticates: auth none, or cephx with secure mode required on every
/// connection (the keyrings in its directory).
#[derive(Clone, Copy, PartialEq, Eq)]
enum MonAuth {
    None,
    CephxSecure,
}

/// The `ceph.conf` lines of `auth` (`dir` holds the keyrings).
fn auth_conf(dir: &Path, auth: MonAuth) -> String {
    let d = dir.display();
    match auth {
        MonAuth::None => "auth cluster required = none
auth service required = none
auth client required = none
keyring = /dev/null
"
        .into(),
        MonAuth::CephxSecure => format!(
            "auth cluster required = cephx
auth service required = cephx
auth client required = cephx
ms cluster mode = secure
ms service mode = secure
ms client mode = secure
ms mon cluster mode = secure
ms mon service mode = secure
ms mon client mode = secure
keyring = {d}/client.admin.keyring
"
        ),
    }
}

fn conf(dir: &Path, fsid: &str, mon_addr: &str, auth: &str) -> PathBuf {
    let path = dir.join("ceph.conf");
    let d = dir.display();
    std::fs::write(
        &path,
        format!(
            "[global]
fsid = {fsid}
mon host = {mon_addr}
mon initial members = a
public network = 127.0.0.0/8
ms bind ipv4 = true
ms bind ipv6 = false
{auth}auth allow insecure global id reclaim = true
mon warn on insecure global id reclaim allowed = false
run dir = {d}/run
admin socket = {d}/run/$name.asok
pid file = {d}/run/$name.pid
log file = {d}/log/$name.log
[mon]
mon data = {d}/mon/ceph-$id
keyring = {d}/mon/ceph-$id/keyring
[osd]
osd objectstore = memstore
osd data = {d}/osd/ceph-$id
keyring = {d}/osd/ceph-$id/keyring
memstore device bytes = 268435456
osd memory target = 939524096
"
        ),
    )
    .unwrap();
    path
}

/// A throw-away monitor on 127.0.0.1 (msgr2 only), stopped on drop.
struct CephMon {
    dir: PathBuf,
    port: u16,
    fsid: String,
}

/// Runs a setup command; a failure fails the test with its stderr.
fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A new keyring at `path` with a fresh key for `name` (and `caps`).
fn new_keyring(path: &Path, name: &str, caps: &[&str]) {
    let p = path.to_str().unwrap();
    let mut args = vec![
        "ceph-authtool",
        "--create-keyring",
        p,
        "--gen-key",
        "-n",
        name,
    ];
    args.extend_from_slice(caps);
    run(&args);
}

impl CephMon {
    fn start() -> CephMon {
        CephMon::start_with(MonAuth::None)
    }

    fn start_with(auth: MonAuth) -> CephMon {
        require("ceph-mon");
        require("monmaptool");
        require("ceph");
        require("ceph-authtool");
        let dir = std::env::temp_dir().join(format!(
            "ringwire-mon-{}-{}",
            std::process::id(),
            free_port()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["mon", "run", "log"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let port = free_port();
        let fsid = uuid_v4();
        let addr = format!("[v2:127.0.0.1:{port}]");
        let conf = conf(&dir, &fsid, &addr, &auth_conf(&dir, auth));
        // The monitor's key and client.admin's, both in the keyring --mkfs seeds it with.
        let initial = dir.join("initial.keyring");
        let mut mkfs_keyring = vec![];
        if auth == MonAuth::CephxSecure {
            let all = ["--cap", "mon", "allow *", "--cap", "osd", "allow *"];
            new_keyring(&initial, "mon.", &["--cap", "mon", "allow *"]);
            new_keyring(&dir.join("client.admin.keyring"), "client.admin", &all);
            let admin = dir.join("client.admin.keyring");
            run(&[
                "ceph-authtool",
                initial.to_str().unwrap(),
                "--import-keyring",
                admin.to_str().unwrap(),
            ]);
            mkfs_keyring = vec!["--keyring", initial.to_str().unwrap()];
        }
        let monmap = dir.join("monmap");
        run(&[
            "monmaptool",
            "--create",
            "--fsid",
            &fsid,
            "--addv",
            "a",
            &addr,
            monmap.to_str().unwrap(),
        ]);
        let c = conf.to_str().unwrap();
        let mut mkfs = vec![
            "ceph-mon",
            "-c",
            c,
            "--mkfs",
            "-i",
            "a",
            "--monmap",
            monmap.to_str().unwrap(),
        ];
        mkfs.extend_from_slice(&mkfs_keyring);
        run(&mkfs);
        run(&["ceph-mon", "-c", c, "-i", "a"]);
        // Until it has formed a quorum a monitor refuses authentication (-EBUSY), so wait
        // until it answers a real client.
        let answers = || {
            Command::new("timeout")
                .args([
                    "10",
                    "ceph",
                    "-c",
                    c,
                    "--connect-timeout",
                    "5",
                    "mon",
                    "stat",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        let what = format!("ceph-mon to come up (see {}/log)", dir.display());
        wait_until(Instant::now() + Duration::from_secs(60), &what, answers);
        CephMon { dir, port, fsid }
    }

    fn addr(&self) -> EntityAddr {
        EntityAddr::parse(&format!("v2:127.0.0.1:{}", self.port)).unwrap()
    }

    /// client.admin's keyring (cephx monitors).
    fn admin_keyring(&self) -> PathBuf {
        self.dir.join("client.admin.keyring")
    }

    /// `ceph` with this cluster's conf (client.admin); its stdout, or the test fails.
    fn ceph(&self, args: &[&str]) -> String {
        let conf = self.dir.join("ceph.conf");
        let out = Command::new("ceph")
            .args(["-c", conf.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ceph {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Adds a memstore OSD (osd.0) with its own key, as `shared/recipes/start-osd.sh` does
    /// with auth none; returns its msgr2 address once the monitor has it up.
    fn start_osd(&self) -> EntityAddr {
        require("ceph-osd");
        let conf = self.dir.join("ceph.conf");
        let c = conf.to_str().unwrap();
        let uuid = uuid_v4();
        let id = self.ceph(&["osd", "new", &uuid]).trim().to_string();
        let data = self.dir.join(format!("osd/ceph-{id}"));
        std::fs::create_dir_all(&data).unwrap();
        let keyring = data.join("keyring");
        let name = format!("osd.{id}");
        new_keyring(&keyring, &name, &[]);
        let caps = [
            "osd",
            "allow *",
            "mon",
            "allow profile osd",
            "mgr",
            "allow profile osd",
        ];
        let mut add = vec!["auth", "add", &name];
        add.extend_from_slice(&caps);
        add.extend_from_slice(&["-i", keyring.to_str().unwrap()]);
        self.ceph(&add);
        run(&[
            "ceph-osd",
            "-c",
            c,
            "-i",
            &id,
            "--mkfs",
            "--osd-uuid",
            &uuid,
        ]);
        run(&["ceph-osd", "-c", c, "-i", &id]);
        let prefix = format!("{name} up ");
        let mut addr = None;
        let what = format!("{name} to come up (see {}/log)", self.dir.display());
        wait_until(Instant::now() + Duration::from_secs(90), &what, || {
            let dump = self.ceph(&["osd", "dump"]);
            // "osd.0 up   in  weight 1 ... [v2:127.0.0.1:6800/1234,v1:...] ..."
            addr = dump
                .lines()
                .find(|l| l.starts_with(&prefix))
                .and_then(|l| l.split("[v2:").nth(1))
                .and_then(|rest| rest.split([',', ']']).next())
                .and_then(|a| EntityAddr::parse(&format!("v2:{a}")).ok());
            addr.is_some()
        });
        addr.unwrap()
    }
}

impl Drop for CephMon {
    fn drop(&mut self) {
        if std::env::var_os("RINGWIRE_KEEP_MON_LOG").is_some() {
            let log = std::fs::read_to_string(self.dir.join("log/mon.a.log")).unwrap_or_default();
            eprintln!("{log}");
        }
        for daemon in ["osd.0", "mon.a"] {
            let pid = self.dir.join(format!("run/{daemon}.pid"));
            if let Ok(pid) = std::fs::read_to_string(pid) {
                let _ = Command::new("kill").arg(pid.trim()).status();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn uuid_v4() -> String {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .unwrap();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        h[0..4].concat(),
        h[4..6].concat(),
        h[6..8].concat(),
        h[8..10].concat(),
        h[10..16].concat()
    )
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
    let mon = CephMon::start();
    get_maps(&mon, None, "none/crc");
}

/// The same exchange with a monitor requiring cephx and secure mode: every MESSAGE frame
/// both ways sealed, the monmap's fsid intact.
#[test]
fn ringwire_client_gets_maps_from_a_real_monitor_over_cephx_in_secure_mode() {
    init_tracing();
    let mon = CephMon::start_with(MonAuth::CephxSecure);
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
    let conn = client.connect(mon.addr(), EntityType::MON);
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
        free_port()
    ));
    std::fs::create_dir_all(dir.join("run")).unwrap();
    std::fs::create_dir_all(dir.join("log")).unwrap();
    let admin = dir.join("client.admin.keyring");
    let mut options = Options {
        workers: 2,
        ..Options::default()
    };
    if auth == MonAuth::CephxSecure {
        new_keyring(&admin, "client.admin", &[]);
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
        new_keyring(&admin, "client.admin", &[]);
    }
    let port = server.addrs().0[0].addr.unwrap().port();
    let auth = auth_conf(&dir, auth);
    let conf = conf(&dir, &uuid_v4(), &format!("[v2:127.0.0.1:{port}]"), &auth);
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
    let mon = CephMon::start();
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
    let mon = CephMon::start_with(MonAuth::CephxSecure);
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
    new_keyring(&wrong, "client.admin", &[]);
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

/// Tickets end to end: a Ringwire client authenticates with a real monitor (cephx, secure),
/// takes the OSD ticket it was given to a real OSD requiring cephx and secure mode, answers
/// the OSD's challenge, and completes a sealed session with it (a keepalive round trip).
#[test]
fn ringwire_client_uses_its_osd_ticket_with_a_real_osd_in_secure_mode() {
    init_tracing();
    let mon = CephMon::start_with(MonAuth::CephxSecure);
    let osd = mon.start_osd();
    let rec = Arc::new(Recorder::default());
    let client = Messenger::builder(name(EntityType::CLIENT, "admin"))
        .policy(EntityType::MON, Policy::lossy_client())
        .policy(EntityType::OSD, Policy::lossy_client())
        .options(Options {
            // Tickets are kept per worker: the OSD connection must live where the monitor's did.
            workers: 1,
            keyring: Some(mon.admin_keyring()),
            ms_client_mode: vec![ModeName::Secure],
            ..Options::default()
        })
        .start(rec.clone())
        .unwrap();
    let to_mon = client.connect(mon.addr(), EntityType::MON);
    to_mon.wait_ready(Duration::from_secs(20)).unwrap();
    let to_osd = client.connect(osd, EntityType::OSD);
    to_osd.wait_ready(Duration::from_secs(20)).unwrap();
    assert_eq!(to_osd.security().unwrap().to_string(), "cephx/secure");
    assert_eq!(to_osd.peer().unwrap().ty, EntityType::OSD);
    to_osd.keepalive();
    rec.wait_for(Duration::from_secs(10), "the OSD's KEEPALIVE2_ACK", |s| {
        s.iter().any(|x| matches!(x, Seen::KeepaliveAck(_)))
    });
}
