//! Loading and attaching the BPF programs, and reading what they collect.

use std::num::NonZeroU32;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::maps::{Array, HashMap, MapData, PerCpuHashMap, RingBuf};
use aya::programs::uprobe::UProbeScope;
use aya::programs::{TracePoint, UProbe};
use aya::Ebpf;
use ringwire_trace_common::*;

/// What to trace.
#[derive(Clone, Debug)]
pub enum Target {
    /// These processes (their executables carry the probes).
    Pids(Vec<u32>),
    /// Every process running this executable, now or later.
    Binary(PathBuf),
}

/// (BPF program, probe symbol). `msg_queued` is attached only for message events: the
/// queued-to-sent latency comes with `ringwire_msg_sent`, so one uprobe hit per message fewer.
const PROBES: [(&str, &str); 8] = [
    ("conn_socket", "ringwire_conn_socket"),
    ("conn_state", "ringwire_conn_state"),
    ("session_state", "ringwire_session_state"),
    ("msg_sent", "ringwire_msg_sent"),
    ("msg_dispatched", "ringwire_msg_dispatched"),
    ("fault", "ringwire_fault"),
    ("reconnect", "ringwire_reconnect"),
    ("msg_queued", "ringwire_msg_queued"),
];

/// (program, category, tracepoint); the io_uring ones last, attached on request.
const TRACEPOINTS: [(&str, &str, &str); 4] = [
    ("tcp_state", "sock", "inet_sock_set_state"),
    ("tcp_retransmit", "tcp", "tcp_retransmit_skb"),
    ("io_uring_submit", "io_uring", "io_uring_submit_req"),
    ("io_uring_complete", "io_uring", "io_uring_complete"),
];

/// (OFFSETS index, category, tracepoint, field).
const FIELDS: [(u32, &str, &str, &str); OFFSETS_LEN as usize] = [
    (
        OFF_SET_STATE_OLDSTATE,
        "sock",
        "inet_sock_set_state",
        "oldstate",
    ),
    (
        OFF_SET_STATE_NEWSTATE,
        "sock",
        "inet_sock_set_state",
        "newstate",
    ),
    (OFF_SET_STATE_SPORT, "sock", "inet_sock_set_state", "sport"),
    (OFF_SET_STATE_DPORT, "sock", "inet_sock_set_state", "dport"),
    (
        OFF_SET_STATE_PROTOCOL,
        "sock",
        "inet_sock_set_state",
        "protocol",
    ),
    (OFF_RETRANSMIT_STATE, "tcp", "tcp_retransmit_skb", "state"),
    (OFF_RETRANSMIT_SPORT, "tcp", "tcp_retransmit_skb", "sport"),
    (OFF_RETRANSMIT_DPORT, "tcp", "tcp_retransmit_skb", "dport"),
    (OFF_COMPLETE_RES, "io_uring", "io_uring_complete", "res"),
];

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Pids(pids) => {
                let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
                write!(f, "pid {}", pids.join(", "))
            }
            Target::Binary(path) => write!(f, "every process running {}", path.display()),
        }
    }
}

pub struct Tracer {
    // Keeps the programs attached.
    _ebpf: Ebpf,
    ring: RingBuf<MapData>,
    sessions: HashMap<MapData, SessionKey, SessionStats>,
    io_uring: PerCpuHashMap<MapData, u32, IoUringStats>,
    targets: HashMap<MapData, u32, u8>,
    pub target: Target,
}

fn err(what: &str) -> impl Fn(aya::maps::MapError) -> String + '_ {
    move |e| format!("{what}: {e}")
}

impl Tracer {
    /// Loads the programs, configures the maps and attaches them. `message_events`: one
    /// ring-buffer event per sampled message queued, sent and dispatched (counters and
    /// histograms are kept either way). `io_uring`: count the processes' io_uring submissions
    /// and completions (a tracepoint hit per request, measurable on a busy messenger).
    pub fn attach(target: Target, message_events: bool, io_uring: bool) -> Result<Tracer, String> {
        if let Target::Pids(pids) = &target {
            for pid in pids {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    return Err(format!("no process {pid}"));
                }
            }
        }
        // Loading first: without privileges that is the error to report.
        let mut ebpf = Ebpf::load(aya::include_bytes_aligned!(concat!(
            env!("OUT_DIR"),
            "/ringwire-trace.bpf.o"
        )))
        .map_err(|e| {
            // SAFETY: a plain libc call.
            match unsafe { libc::geteuid() } {
                0 => format!("cannot load the BPF programs: {e}"),
                _ => format!(
                    "cannot load the BPF programs ({e}): run as root or with CAP_BPF and CAP_PERFMON"
                ),
            }
        })?;
        ensure_tracefs()?;
        {
            let mut config: Array<_, u32> =
                Array::try_from(ebpf.map_mut("CONFIG").ok_or("no CONFIG map")?)
                    .map_err(err("CONFIG"))?;
            let follow = matches!(target, Target::Binary(_));
            config
                .set(CONFIG_FOLLOW, follow as u32, 0)
                .map_err(err("CONFIG"))?;
            config
                .set(CONFIG_MESSAGE_EVENTS, message_events as u32, 0)
                .map_err(err("CONFIG"))?;
            let mut offsets: Array<_, u32> =
                Array::try_from(ebpf.map_mut("OFFSETS").ok_or("no OFFSETS map")?)
                    .map_err(err("OFFSETS"))?;
            for (i, category, name, field) in FIELDS {
                offsets
                    .set(i, field_offset(category, name, field)?, 0)
                    .map_err(err("OFFSETS"))?;
            }
        }
        let mut targets: HashMap<_, u32, u8> =
            HashMap::try_from(ebpf.take_map("TARGETS").ok_or("no TARGETS map")?)
                .map_err(err("TARGETS"))?;
        let pids = match &target {
            Target::Pids(pids) => pids.clone(),
            Target::Binary(path) => processes_running(path),
        };
        for pid in &pids {
            targets.insert(pid, 1, 0).map_err(err("TARGETS"))?;
        }
        let probes = if message_events {
            &PROBES[..]
        } else {
            &PROBES[..PROBES.len() - 1]
        };
        for (prog, symbol) in probes {
            let p: &mut UProbe = ebpf
                .program_mut(prog)
                .ok_or_else(|| format!("program {prog} missing from the object"))?
                .try_into()
                .map_err(|e| format!("{prog}: {e}"))?;
            p.load().map_err(|e| format!("loading {prog}: {e}"))?;
            let attach = |p: &mut UProbe, binary: &Path, scope| {
                p.attach(*symbol, binary, scope).map(|_| ()).map_err(|e| {
                    format!(
                        "{} has no Ringwire probes ({symbol}: {e}): is it a Ringwire binary built \
                         with the `probes` feature, with its symbols?",
                        binary.display()
                    )
                })
            };
            match &target {
                Target::Pids(pids) => {
                    for &pid in pids {
                        let exe = PathBuf::from(format!("/proc/{pid}/exe"));
                        let scope = UProbeScope::OneProcess(NonZeroU32::new(pid).ok_or("pid 0")?);
                        attach(p, &exe, scope)?;
                    }
                }
                Target::Binary(path) => attach(p, path, UProbeScope::AllProcesses)?,
            }
        }
        let tracepoints = if io_uring {
            &TRACEPOINTS[..]
        } else {
            &TRACEPOINTS[..2]
        };
        for &(prog, category, name) in tracepoints {
            let tp: &mut TracePoint = ebpf
                .program_mut(prog)
                .ok_or_else(|| format!("program {prog} missing from the object"))?
                .try_into()
                .map_err(|e| format!("{prog}: {e}"))?;
            tp.load().map_err(|e| format!("loading {prog}: {e}"))?;
            tp.attach(category, name)
                .map_err(|e| format!("attaching to tracepoint {category}/{name}: {e}"))?;
        }
        let ring = RingBuf::try_from(ebpf.take_map("EVENTS").ok_or("no EVENTS map")?)
            .map_err(err("EVENTS"))?;
        let sessions = HashMap::try_from(ebpf.take_map("SESSIONS").ok_or("no SESSIONS map")?)
            .map_err(err("SESSIONS"))?;
        let io_uring = PerCpuHashMap::try_from(ebpf.take_map("IO_URING").ok_or("no IO_URING")?)
            .map_err(err("IO_URING"))?;
        Ok(Tracer {
            _ebpf: ebpf,
            ring,
            sessions,
            io_uring,
            targets,
            target,
        })
    }

    /// Hands every event waiting in the ring buffer to `f`, waiting up to `timeout` for the
    /// first.
    pub fn poll(&mut self, timeout: Duration, mut f: impl FnMut(&Event)) {
        let mut pfd = libc::pollfd {
            fd: self.ring.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
        while let Some(item) = self.ring.next() {
            if item.len() < size_of::<Event>() {
                continue;
            }
            // SAFETY: the BPF side writes whole `Event`s; read_unaligned copes with alignment.
            let e: Event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            f(&e);
        }
    }

    /// Every session's counters and histograms.
    pub fn sessions(&self) -> Vec<(SessionKey, SessionStats)> {
        self.sessions.iter().filter_map(Result::ok).collect()
    }

    /// Forgets a closed session's counters (after they were read).
    pub fn forget_session(&mut self, key: &SessionKey) {
        let _ = self.sessions.remove(key);
    }

    /// Each traced process's io_uring counters, summed over CPUs.
    pub fn io_uring(&self) -> Vec<(u32, IoUringStats)> {
        self.io_uring
            .iter()
            .filter_map(Result::ok)
            .map(|(pid, per_cpu)| {
                let mut sum = IoUringStats::default();
                for v in per_cpu.iter() {
                    sum.submitted += v.submitted;
                    sum.completed += v.completed;
                    sum.failed += v.failed;
                }
                (pid, sum)
            })
            .collect()
    }

    /// Whether anything is left to trace: for pids, one of them still runs; a binary may
    /// always be started again.
    pub fn alive(&mut self) -> bool {
        match &self.target {
            Target::Pids(pids) => pids
                .iter()
                .any(|pid| Path::new(&format!("/proc/{pid}")).exists()),
            Target::Binary(path) => {
                // Processes that started since, and have not reached a probe yet, still get
                // their socket and io_uring events.
                for pid in processes_running(path) {
                    let _ = self.targets.insert(pid, 1, 0);
                }
                true
            }
        }
    }
}

/// The processes whose executable is `path`.
fn processes_running(path: &Path) -> Vec<u32> {
    let Ok(want) = std::fs::canonicalize(path) else {
        return Vec::new();
    };
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|d| d.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e == want))
        .collect()
}

fn tracefs() -> &'static Path {
    if Path::new("/sys/kernel/tracing/events").exists() {
        Path::new("/sys/kernel/tracing")
    } else {
        Path::new("/sys/kernel/debug/tracing")
    }
}

/// A field's offset in a tracepoint's record, from its `format` file.
fn field_offset(category: &str, name: &str, field: &str) -> Result<u32, String> {
    let path = tracefs().join(format!("events/{category}/{name}/format"));
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "reading {}: {e} (this kernel lacks the tracepoint?)",
            path.display()
        )
    })?;
    parse_offset(&text, field).ok_or_else(|| format!("no field {field} in {}", path.display()))
}

/// `field:unsigned short sport; offset:24; size:2; signed:0;` (tab-separated) → 24 for `sport`.
fn parse_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let decl = line.trim().strip_prefix("field:")?;
        let (decl, rest) = decl.split_once(';')?;
        let name = decl.rsplit(' ').next()?.split('[').next()?;
        if name != field {
            return None;
        }
        rest.split(';')
            .find_map(|kv| kv.trim().strip_prefix("offset:"))?
            .parse()
            .ok()
    })
}

/// Classic tracepoints need tracefs: mount it if it is missing, or say how.
fn ensure_tracefs() -> Result<(), String> {
    let events = Path::new("/sys/kernel/tracing/events");
    if events.exists() || Path::new("/sys/kernel/debug/tracing/events").exists() {
        return Ok(());
    }
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
        .status()
        .is_ok_and(|s| s.success());
    if mounted && events.exists() {
        Ok(())
    } else {
        Err("tracefs is not mounted and could not be: run `mount -t tracefs nodev /sys/kernel/tracing` as root".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_come_from_the_format() {
        let format = "name: tcp_retransmit_skb\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\n\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;\n\tfield:__u16 sport;\toffset:28;\tsize:2;\tsigned:0;\n\tfield:__u8 saddr[4];\toffset:34;\tsize:4;\tsigned:0;\n";
        assert_eq!(parse_offset(format, "state"), Some(24));
        assert_eq!(parse_offset(format, "sport"), Some(28));
        assert_eq!(parse_offset(format, "saddr"), Some(34));
        assert_eq!(parse_offset(format, "dport"), None);
    }
}
