//! A throw-away Ceph monitor (Debian's `ceph-mon`, msgr2 only, on 127.0.0.1) for the interop
//! tests and for `ringwire bench`'s AsyncMessenger column: auth none, or cephx with secure
//! mode required on every connection; optionally a memstore OSD beside it. Created in a
//! temporary directory, stopped and removed on drop. As shared/recipes/start-mon.sh and
//! start-osd.sh do it, without the msgr1 port.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Whether `tool` is on the PATH; the error says how to install Ceph.
pub fn require(tool: &str) -> Result<(), String> {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        Ok(())
    } else {
        Err(format!(
            "{tool} not found: install Ceph with `apt-get install ceph-mon ceph-common` (cargo xtask ci does)"
        ))
    }
}

/// A port below the ephemeral range (32768+), so that no client socket of a concurrent test
/// takes it between this check and ceph-mon's bind.
pub fn free_port() -> u16 {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut seed =
        now ^ (std::process::id() as u64) << 32 ^ CALLS.fetch_add(1, Ordering::Relaxed) << 48;
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

/// How the monitor authenticates: auth none, or cephx with secure mode required on every
/// connection (the keyrings in its directory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MonAuth {
    None,
    CephxSecure,
}

/// The `ceph.conf` lines of `auth` (`dir` holds the keyrings).
fn auth_conf(dir: &Path, auth: MonAuth) -> String {
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
keyring = {}/client.admin.keyring
",
            dir.display()
        ),
    }
}

/// Writes `dir/ceph.conf` for a cluster `fsid` whose monitor is at `mon_addr` (everything
/// under `dir`, authenticating as `auth` says), with `extra` lines in `[global]`; returns its
/// path.
pub fn conf(
    dir: &Path,
    fsid: &str,
    mon_addr: &str,
    auth: MonAuth,
    extra: &str,
) -> std::io::Result<PathBuf> {
    let path = dir.join("ceph.conf");
    let d = dir.display();
    let auth = auth_conf(dir, auth);
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
{extra}
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
    )?;
    Ok(path)
}

/// A random (version 4) UUID, as Ceph writes an fsid.
pub fn uuid_v4() -> String {
    let mut b = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
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

/// A monitor `a` on 127.0.0.1:`port` (msgr2 only), stopped on drop. It inherits the CPU
/// affinity of the process that starts it.
pub struct CephMon {
    pub dir: PathBuf,
    pub port: u16,
    pub fsid: String,
}

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A new keyring at `path` with a fresh key for `name` (and `caps`).
pub fn new_keyring(path: &Path, name: &str, caps: &[&str]) -> Result<(), String> {
    let p = path.to_str().ok_or("temporary path is not UTF-8")?;
    let mut args = vec![
        "ceph-authtool",
        "--create-keyring",
        p,
        "--gen-key",
        "-n",
        name,
    ];
    args.extend_from_slice(caps);
    run(&args)
}

impl CephMon {
    /// Creates and starts a monitor with auth none, and waits (up to a minute) until it
    /// answers the ceph CLI.
    pub fn start() -> Result<CephMon, String> {
        CephMon::start_with(MonAuth::None)
    }

    /// [`start`](Self::start), authenticating as `auth` says; with cephx the monitor's and
    /// client.admin's keys are made for it (client.admin's: [`admin_keyring`](Self::admin_keyring)).
    pub fn start_with(auth: MonAuth) -> Result<CephMon, String> {
        CephMon::start_with_conf(auth, "")
    }

    /// [`start_with`](Self::start_with), with `extra` lines in `[global]` of its `ceph.conf`
    /// (which OSDs started by [`start_osd`](Self::start_osd) read too).
    pub fn start_with_conf(auth: MonAuth, extra: &str) -> Result<CephMon, String> {
        for tool in ["ceph-mon", "monmaptool", "ceph", "ceph-authtool"] {
            require(tool)?;
        }
        let dir = std::env::temp_dir().join(format!(
            "ringwire-mon-{}-{}",
            std::process::id(),
            free_port()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["mon", "run", "log"] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        // From here on, drop removes the directory (and stops the monitor once it runs).
        let mon = CephMon {
            port: free_port(),
            fsid: uuid_v4(),
            dir,
        };
        let addr = format!("[v2:127.0.0.1:{}]", mon.port);
        let conf = conf(&mon.dir, &mon.fsid, &addr, auth, extra).map_err(|e| e.to_string())?;
        // The monitor's key and client.admin's, both in the keyring --mkfs seeds it with.
        let initial = mon.dir.join("initial.keyring");
        let initial = initial.to_str().ok_or("temporary path is not UTF-8")?;
        if auth == MonAuth::CephxSecure {
            let all = ["--cap", "mon", "allow *", "--cap", "osd", "allow *"];
            new_keyring(Path::new(initial), "mon.", &["--cap", "mon", "allow *"])?;
            let admin = mon.admin_keyring();
            new_keyring(&admin, "client.admin", &all)?;
            let admin = admin.to_str().ok_or("temporary path is not UTF-8")?;
            run(&["ceph-authtool", initial, "--import-keyring", admin])?;
        }
        let monmap = mon.dir.join("monmap");
        let monmap = monmap.to_str().ok_or("temporary path is not UTF-8")?;
        run(&[
            "monmaptool",
            "--create",
            "--fsid",
            &mon.fsid,
            "--addv",
            "a",
            &addr,
            monmap,
        ])?;
        let c = conf.to_str().ok_or("temporary path is not UTF-8")?;
        let mut mkfs = vec!["ceph-mon", "-c", c, "--mkfs", "-i", "a", "--monmap", monmap];
        if auth == MonAuth::CephxSecure {
            mkfs.extend_from_slice(&["--keyring", initial]);
        }
        run(&mkfs)?;
        run(&["ceph-mon", "-c", c, "-i", "a"])?;
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
        let deadline = Instant::now() + Duration::from_secs(60);
        while !answers() {
            if Instant::now() > deadline {
                return Err(format!(
                    "ceph-mon did not come up in 60 s (see {}/log)",
                    mon.dir.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(mon)
    }

    /// The monitor's msgr2 address, as Ringwire writes it.
    pub fn addr(&self) -> String {
        format!("v2:127.0.0.1:{}", self.port)
    }

    /// client.admin's keyring (a cephx monitor's).
    pub fn admin_keyring(&self) -> PathBuf {
        self.dir.join("client.admin.keyring")
    }

    /// `ceph ARGS` with this cluster's conf (as client.admin): its standard output.
    pub fn ceph(&self, args: &[&str]) -> Result<String, String> {
        let conf = self.dir.join("ceph.conf");
        let out = Command::new("ceph")
            .arg("-c")
            .arg(&conf)
            .args(args)
            .output()
            .map_err(|e| format!("ceph: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "ceph {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Adds a memstore OSD (osd.0) with its own key, as shared/recipes/start-osd.sh does;
    /// returns its msgr2 address (`IP:PORT/NONCE`) once the monitor has it up.
    pub fn start_osd(&self) -> Result<String, String> {
        require("ceph-osd")?;
        let conf = self.dir.join("ceph.conf");
        let c = conf.to_str().ok_or("temporary path is not UTF-8")?;
        let uuid = uuid_v4();
        let id = self.ceph(&["osd", "new", &uuid])?.trim().to_string();
        let data = self.dir.join(format!("osd/ceph-{id}"));
        std::fs::create_dir_all(&data).map_err(|e| format!("{}: {e}", data.display()))?;
        let keyring = data.join("keyring");
        let name = format!("osd.{id}");
        new_keyring(&keyring, &name, &[])?;
        let keyring = keyring.to_str().ok_or("temporary path is not UTF-8")?;
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
        add.extend_from_slice(&["-i", keyring]);
        self.ceph(&add)?;
        let mkfs = [
            "ceph-osd",
            "-c",
            c,
            "-i",
            &id,
            "--mkfs",
            "--osd-uuid",
            &uuid,
        ];
        run(&mkfs)?;
        run(&["ceph-osd", "-c", c, "-i", &id])?;
        let prefix = format!("{name} up ");
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            // "osd.0 up   in  weight 1 ... [v2:127.0.0.1:6800/1234,v1:...] ..."
            let dump = self.ceph(&["osd", "dump"])?;
            let addr = dump
                .lines()
                .find(|l| l.starts_with(&prefix))
                .and_then(|l| l.split("[v2:").nth(1))
                .and_then(|rest| rest.split([',', ']']).next());
            if let Some(addr) = addr {
                return Ok(addr.to_string());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{name} did not come up in 90 s (see {}/log)",
                    self.dir.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for CephMon {
    fn drop(&mut self) {
        if std::env::var_os("RINGWIRE_KEEP_MON_LOG").is_some() {
            let log = std::fs::read_to_string(self.dir.join("log/mon.a.log")).unwrap_or_default();
            eprintln!("{log}");
        }
        for daemon in ["osd.0", "mon.a"] {
            if let Ok(pid) = std::fs::read_to_string(self.dir.join(format!("run/{daemon}.pid"))) {
                let _ = Command::new("kill").arg(pid.trim()).status();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
