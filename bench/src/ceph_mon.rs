//! A throw-away Ceph monitor (Debian's `ceph-mon`, auth none, msgr2 only, on 127.0.0.1) for
//! the interop tests and for `ringwire bench`'s AsyncMessenger column: created in a temporary
//! directory, stopped and removed on drop. As shared/recipes/start-mon.sh does it, without
//! the msgr1 port.

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

/// Writes `dir/ceph.conf` for a cluster `fsid` whose monitor is at `mon_addr` (auth none,
/// everything under `dir`), with `extra` lines in `[global]`; returns its path.
pub fn conf(dir: &Path, fsid: &str, mon_addr: &str, extra: &str) -> std::io::Result<PathBuf> {
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
auth cluster required = none
auth service required = none
auth client required = none
auth allow insecure global id reclaim = true
mon warn on insecure global id reclaim allowed = false
run dir = {d}/run
admin socket = {d}/run/$name.asok
pid file = {d}/run/$name.pid
log file = {d}/log/$name.log
keyring = /dev/null
{extra}
[mon]
mon data = {d}/mon/ceph-$id
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

impl CephMon {
    /// Creates and starts the monitor, and waits (up to a minute) until it answers the ceph
    /// CLI.
    pub fn start() -> Result<CephMon, String> {
        for tool in ["ceph-mon", "monmaptool", "ceph"] {
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
        let conf = conf(&mon.dir, &mon.fsid, &addr, "").map_err(|e| e.to_string())?;
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
        run(&["ceph-mon", "-c", c, "--mkfs", "-i", "a", "--monmap", monmap])?;
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
}

impl Drop for CephMon {
    fn drop(&mut self) {
        if std::env::var_os("RINGWIRE_KEEP_MON_LOG").is_some() {
            let log = std::fs::read_to_string(self.dir.join("log/mon.a.log")).unwrap_or_default();
            eprintln!("{log}");
        }
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("run/mon.a.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
