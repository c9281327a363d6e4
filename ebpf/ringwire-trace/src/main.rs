//! `ringwire-trace`: attaches Ringwire's BPF programs to a running messenger and streams what
//! its connections do, live, without restarting it.
//!
//! `ringwire-trace events --pid PID` prints one line per event: time, pid, what, ids, details.

use std::num::NonZeroU32;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use aya::maps::{Array, HashMap, RingBuf};
use aya::programs::uprobe::UProbeScope;
use aya::programs::{TracePoint, UProbe};
use aya::Ebpf;
use clap::{Parser, Subcommand};
use ringwire_trace_common::*;

#[derive(Parser)]
#[command(
    name = "ringwire-trace",
    version,
    about = "Live eBPF tracing of Ringwire messengers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One line per event (connection and session states, messages, faults, reconnects).
    Events {
        /// The process to trace.
        #[arg(long)]
        pid: u32,
        /// Its executable (default: /proc/PID/exe).
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Stop after this many seconds.
        #[arg(long)]
        duration: Option<f64>,
        /// JSON lines instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// (BPF program, probe symbol).
const PROBES: [(&str, &str); 8] = [
    ("conn_socket", "ringwire_conn_socket"),
    ("conn_state", "ringwire_conn_state"),
    ("session_state", "ringwire_session_state"),
    ("msg_queued", "ringwire_msg_queued"),
    ("msg_sent", "ringwire_msg_sent"),
    ("msg_dispatched", "ringwire_msg_dispatched"),
    ("fault", "ringwire_fault"),
    ("reconnect", "ringwire_reconnect"),
];

const CONN_STATES: [&str; 8] = [
    "CONNECTING",
    "BANNER",
    "HELLO",
    "AUTH",
    "AUTH_SIGN",
    "SESSION",
    "READY",
    "CLOSED",
];
const SESSION_STATES: [&str; 4] = ["CONNECTING", "READY", "STANDBY", "CLOSED"];
/// The kernel's TCP states (include/net/tcp_states.h), index = number.
const TCP_STATES: [&str; 13] = [
    "?",
    "ESTABLISHED",
    "SYN_SENT",
    "SYN_RECV",
    "FIN_WAIT1",
    "FIN_WAIT2",
    "TIME_WAIT",
    "CLOSE",
    "CLOSE_WAIT",
    "LAST_ACK",
    "LISTEN",
    "CLOSING",
    "NEW_SYN_RECV",
];
const OUTCOMES: [&str; 7] = [
    "?",
    "OK",
    "RETRY",
    "RETRY_GLOBAL",
    "RESET_FULL",
    "RESET_PARTIAL",
    "WAIT",
];

fn name(table: &[&'static str], i: u64) -> &'static str {
    table.get(i as usize).copied().unwrap_or("?")
}

/// The event as (what, fields) for text or JSON.
fn describe(e: &Event) -> (&'static str, Vec<(&'static str, String)>) {
    let s = |v: u64| v.to_string();
    match e.kind {
        CONN_STATE => (
            "conn_state",
            vec![
                ("conn", format!("{:#x}", e.a)),
                ("session", format!("{:#x}", e.b)),
                ("role", if e.c == 0 { "client" } else { "server" }.into()),
                ("old", name(&CONN_STATES, e.d >> 32).into()),
                ("new", name(&CONN_STATES, e.d & 0xffff_ffff).into()),
            ],
        ),
        SESSION_STATE => (
            "session_state",
            vec![
                ("session", format!("{:#x}", e.a)),
                ("old", name(&SESSION_STATES, e.b).into()),
                ("new", name(&SESSION_STATES, e.c).into()),
            ],
        ),
        MSG_QUEUED | MSG_SENT | MSG_DISPATCHED => (
            match e.kind {
                MSG_QUEUED => "msg_queued",
                MSG_SENT => "msg_sent",
                _ => "msg_dispatched",
            },
            vec![
                ("session", format!("{:#x}", e.a)),
                ("seq", s(e.b)),
                ("type", format!("{:#x}", e.c)),
                ("len", s(e.d)),
            ],
        ),
        FAULT => (
            "fault",
            vec![
                ("conn", format!("{:#x}", e.a)),
                ("session", format!("{:#x}", e.b)),
                ("reason", s(e.c)),
            ],
        ),
        RECONNECT => (
            "reconnect",
            vec![
                ("session", format!("{:#x}", e.a)),
                ("connect_seq", s(e.b)),
                ("outcome", name(&OUTCOMES, e.c).into()),
            ],
        ),
        CONN_SOCKET => (
            "conn_socket",
            vec![
                ("conn", format!("{:#x}", e.a)),
                ("local_port", s(e.b)),
                ("peer_port", s(e.c)),
            ],
        ),
        TCP_STATE => (
            "tcp_state",
            vec![
                ("sport", s(e.a)),
                ("dport", s(e.b)),
                ("old", name(&TCP_STATES, e.c).into()),
                ("new", name(&TCP_STATES, e.d).into()),
            ],
        ),
        _ => ("unknown", vec![("kind", s(e.kind as u64))]),
    }
}

fn events(
    pid: u32,
    binary: Option<PathBuf>,
    duration: Option<f64>,
    json: bool,
) -> Result<(), String> {
    let binary = binary.unwrap_or_else(|| PathBuf::from(format!("/proc/{pid}/exe")));
    if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
        return Err(format!("no process {pid}"));
    }
    let mut ebpf = Ebpf::load(aya::include_bytes_aligned!(concat!(
        env!("OUT_DIR"),
        "/ringwire-trace.bpf.o"
    )))
    .map_err(|e| match unsafe { libc::geteuid() } {
        0 => format!("cannot load the BPF programs: {e}"),
        _ => format!(
            "cannot load the BPF programs ({e}): run as root or with CAP_BPF and CAP_PERFMON"
        ),
    })?;
    let mut target: Array<_, u32> = Array::try_from(ebpf.map_mut("TARGET").ok_or("no TARGET map")?)
        .map_err(|e| e.to_string())?;
    target.set(0, pid, 0).map_err(|e| e.to_string())?;
    let scope = UProbeScope::OneProcess(NonZeroU32::new(pid).ok_or("pid 0")?);
    for (prog, symbol) in PROBES {
        let p: &mut UProbe = ebpf
            .program_mut(prog)
            .ok_or_else(|| format!("program {prog} missing from the object"))?
            .try_into()
            .map_err(|e| format!("{prog}: {e}"))?;
        p.load().map_err(|e| format!("loading {prog}: {e}"))?;
        p.attach(symbol, &binary, scope).map_err(|e| {
            format!(
                "attaching to {symbol} in {}: {e} (is it a Ringwire binary with its symbols?)",
                binary.display()
            )
        })?;
    }
    ensure_tracefs()?;
    let tp: &mut TracePoint = ebpf
        .program_mut("tcp_state")
        .ok_or("program tcp_state missing from the object")?
        .try_into()
        .map_err(|e| format!("tcp_state: {e}"))?;
    tp.load().map_err(|e| format!("loading tcp_state: {e}"))?;
    tp.attach("sock", "inet_sock_set_state")
        .map_err(|e| format!("attaching to sock/inet_sock_set_state: {e}"))?;
    let mut ring = RingBuf::try_from(ebpf.take_map("EVENTS").ok_or("no EVENTS map")?)
        .map_err(|e| e.to_string())?;
    let mut ports: HashMap<_, u16, u8> =
        HashMap::try_from(ebpf.map_mut("PORTS").ok_or("no PORTS map")?)
            .map_err(|e| e.to_string())?;
    eprintln!("tracing pid {pid} ({})", binary.display());
    let started = Instant::now();
    let until = duration.map(|d| started + Duration::from_secs_f64(d));
    loop {
        while let Some(item) = ring.next() {
            if item.len() < size_of::<Event>() {
                continue;
            }
            // SAFETY: the BPF side writes whole `Event`s; read_unaligned copes with alignment.
            let e: Event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            if e.kind == CONN_SOCKET && e.b != 0 {
                // From now on the kernel also keeps this connection's socket events that run
                // under another task (softirq).
                let _ = ports.insert(e.b as u16, 1, 0);
            }
            let (what, fields) = describe(&e);
            if json {
                let mut obj = serde_json::Map::new();
                obj.insert("ts_ns".into(), e.ts_ns.into());
                obj.insert("pid".into(), e.pid.into());
                obj.insert("event".into(), what.into());
                for (k, v) in fields {
                    obj.insert(k.into(), v.into());
                }
                println!("{}", serde_json::Value::Object(obj));
            } else {
                let f: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!(
                    "{:>14.6} {:>7} {:<15} {}",
                    e.ts_ns as f64 / 1e9,
                    e.pid,
                    what,
                    f.join(" ")
                );
            }
        }
        if until.is_some_and(|u| Instant::now() >= u)
            || !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            return Ok(());
        }
        let mut pfd = libc::pollfd {
            fd: ring.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, 100) };
    }
}

/// Classic tracepoints need tracefs: mount it if it is missing, or say how.
fn ensure_tracefs() -> Result<(), String> {
    let events = std::path::Path::new("/sys/kernel/tracing/events");
    if events.exists() || std::path::Path::new("/sys/kernel/debug/tracing/events").exists() {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Events {
            pid,
            binary,
            duration,
            json,
        } => events(pid, binary, duration, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringwire-trace: {e}");
            ExitCode::FAILURE
        }
    }
}
