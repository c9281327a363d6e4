//! `ringwire bench`: server and client messengers in one process on loopback, measured against
//! raw baselines (`ringwire-bench`: blocking std and io_uring, same bytes) in the same run.
//! Each round measures Ringwire and the baselines back to back; ratios are paired within a
//! round and the median over rounds is reported. By default everything is pinned to one CPU
//! (as `shared/recipes/baselines.md` measured): on a shared 2-vCPU machine, spreading client
//! and server across CPUs mostly measures the neighbours.
//!
//! Two msgr2 peers are measured in the same rounds, with the same bytes: rados-rs (`rados`,
//! a child process) on every workload, and Ceph's AsyncMessenger (`keepalive`, a throw-away
//! ceph-mon) on KEEPALIVE2 round trips.
//!
//! `peers` holds Ringwire's messengers and what they send, `phases` Ringwire's measurement of
//! each phase, `report` the figures and
//! how they are shown (`html` as a page); `run` orders rounds and phases.

mod html;
mod keepalive;
mod peers;
mod phases;
mod rados;
mod report;
mod scale;

use std::io::{IsTerminal, Write};
use std::time::Duration;

use ringwire::proto::{EntityName, EntityType};
use ringwire::Connection;
use ringwire_bench as baseline;

pub use html::page as html_page;
use keepalive::Keepalive;
use peers::{wait_connected, Pair};
pub use rados::default_path as default_rados_peer;
use rados::{Pattern, RadosPeer};
use report::{median_of, KeepaliveRound, Peer, Peers, RadosRound, Ratios, Round, Samples};
pub use report::{print, Report};

pub struct BenchArgs {
    pub policy: String,
    /// Payload bytes of each ping-pong and rate-phase message, on every side (at least 8: the
    /// first 8 carry Ringwire's sequence number).
    pub small: usize,
    /// Payload bytes of each stream message, on every side (Ringwire: the data segment).
    pub large: usize,
    pub connections: usize,
    pub duration: Duration,
    pub rounds: usize,
    pub iters: usize,
    pub inject: u32,
    pub cpu: Option<usize>,
    pub metrics: Option<std::net::SocketAddr>,
    /// `tcp` or `rdma`: how the messengers reach each other (the baselines are TCP).
    pub transport: String,
    pub busy_poll: Duration,
    /// The `rados-peer` program, or `None` not to measure rados-rs (`--no-rados`).
    pub rados_peer: Option<std::path::PathBuf>,
    /// Whether to measure ceph-mon (`--no-ceph` not to).
    pub ceph: bool,
    /// `crc`, or `secure`: then a second set of messengers authenticates with cephx (its own
    /// monitor, keys made for the run) and runs the ping-pong and the stream in secure mode
    /// too, each round right after the crc ones.
    pub mode: String,
    /// `-n`: the client's name (default: client.1, or osd.1 for the peer policy).
    pub name: Option<EntityName>,
    /// `-k`: the keyring holding the client's key, for the secure run.
    pub keyring: Option<std::path::PathBuf>,
}

impl BenchArgs {
    /// Rejects sizes the benchmark cannot send as asked (nothing is rounded up behind the
    /// caller's back: every side sends exactly these sizes).
    pub fn validate(&self) -> Result<(), String> {
        if self.small < 8 {
            return Err(format!(
                "--size {}: ping-pong messages carry at least 8 bytes (the first 8 hold the sequence number the integrity check reads)",
                self.small
            ));
        }
        if self.large == 0 {
            return Err("--large 0: stream messages carry at least 1 byte".into());
        }
        if self.connections == 0 {
            return Err("--connections 0: the rate phase needs at least 1 connection".into());
        }
        if !matches!(self.mode.as_str(), "crc" | "secure") {
            return Err(format!("--mode {}: crc or secure", self.mode));
        }
        if self.keyring.is_some() && self.mode != "secure" {
            return Err("-k/--keyring is for --mode secure (crc mode runs with auth none)".into());
        }
        let want = self.client_type();
        if let Some(n) = self.name.as_ref().filter(|n| n.ty != want) {
            return Err(format!(
                "-n {n}: the --policy {} client is a {}",
                self.policy,
                want.name().unwrap_or("daemon")
            ));
        }
        Ok(())
    }

    /// What the benchmark's client is: a client, or an OSD for the peer policy.
    pub(super) fn client_type(&self) -> EntityType {
        if self.policy == "peer" {
            EntityType::OSD
        } else {
            EntityType::CLIENT
        }
    }

    /// The client's name: `-n`, or client.1 / osd.1.
    pub(super) fn client_name(&self) -> EntityName {
        self.name
            .clone()
            .unwrap_or_else(|| EntityName::new(self.client_type(), "1"))
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// The `p`-th percentile of sorted round trips, in microseconds.
fn pct_us(sorted: &[Duration], p: f64) -> f64 {
    us(baseline::percentile(sorted, p))
}

/// Unrecorded round trips before each ping-pong that starts on its own (the application
/// thread's, the peers'), as the raw baselines do.
const WARMUP: usize = 200;

/// rados-rs's child process, or why there is none.
fn start_rados(args: &BenchArgs) -> Result<RadosPeer, String> {
    let path = args
        .rados_peer
        .as_ref()
        .ok_or("not measured (--no-rados)")?;
    if args.transport != "tcp" {
        return Err(format!(
            "not measured: rados-rs speaks TCP, this run {}",
            args.transport
        ));
    }
    RadosPeer::start(path, args.small, args.large, args.connections)
}

/// ceph-mon and the Ringwire server it is compared with, or why there are none.
fn start_keepalive(args: &BenchArgs) -> Result<Keepalive, String> {
    if !args.ceph {
        return Err("not measured (--no-ceph)".into());
    }
    if args.transport != "tcp" {
        return Err(format!(
            "not measured: ceph-mon speaks TCP, this run {}",
            args.transport
        ));
    }
    Keepalive::start().map_err(|e| format!("not measured: {e}"))
}

/// One round of KEEPALIVE2 round trips, to the Ringwire server and to ceph-mon.
fn keepalive_round(
    k: &Keepalive,
    iters: usize,
    samples: &mut Samples,
) -> Result<KeepaliveRound, String> {
    let (ringwire, mon) = k.measure(WARMUP, iters)?;
    samples.add("KEEPALIVE2, Ringwire server", &ringwire);
    samples.add("KEEPALIVE2, ceph-mon", &mon);
    Ok(KeepaliveRound {
        ringwire_p50_us: pct_us(&ringwire, 0.5),
        ringwire_p99_us: pct_us(&ringwire, 0.99),
        ceph_mon_p50_us: pct_us(&mon, 0.5),
        ceph_mon_p99_us: pct_us(&mon, 0.99),
    })
}

/// One round of rados-rs's phases, the same workloads as Ringwire's.
fn rados_round(
    peer: &mut RadosPeer,
    args: &BenchArgs,
    stream_count: u64,
    samples: &mut Samples,
) -> Result<RadosRound, String> {
    let task = peer.pingpong(Pattern::Task, args.iters)?;
    let thread = peer.pingpong(Pattern::Thread, args.iters)?;
    samples.add("rados-rs, task", &task);
    samples.add("rados-rs, blocking thread", &thread);
    Ok(RadosRound {
        task_p50_us: pct_us(&task, 0.5),
        task_p99_us: pct_us(&task, 0.99),
        thread_p50_us: pct_us(&thread, 0.5),
        thread_p99_us: pct_us(&thread, 0.99),
        stream_mbps: peer.stream(stream_count)? / 1e6,
        many_msgs_per_sec: peer.rate(args.duration)?,
    })
}

/// A progress bar on standard error, drawn only on a terminal (the report goes to standard
/// output).
struct Progress {
    tty: bool,
    total: usize,
    done: usize,
}

impl Progress {
    fn step(&mut self, what: &str) {
        self.done += 1;
        if self.tty {
            let width = 30;
            let filled = width * self.done / self.total;
            eprint!(
                "\r[{}{}] {:>3}% {what:<40}",
                "#".repeat(filled),
                " ".repeat(width - filled),
                100 * self.done / self.total
            );
            let _ = std::io::stderr().flush();
        }
    }
    fn finish(&self) {
        if self.tty {
            eprint!("\r{}\r", " ".repeat(80));
        }
    }
}

/// Starts the messengers and their connections, then runs each round's phases, Ringwire's
/// and the baselines' back to back.
pub fn run(args: BenchArgs) -> Result<Report, String> {
    args.validate()?;
    if let Some(cpu) = args.cpu {
        if !baseline::pin_to_cpu(cpu) {
            return Err(format!(
                "cannot pin to CPU {cpu} (use --no-pin or another --cpu)"
            ));
        }
    }
    let fds = baseline::raise_fd_limit();
    if (fds as usize) < 2 * args.connections + 64 {
        return Err(format!(
            "{} connections need about {} file descriptors; the limit is {fds} (raise ulimit -n)",
            args.connections,
            2 * args.connections + 64
        ));
    }
    let p = Pair::start(&args, false)?;
    let secure = match args.mode.as_str() {
        "secure" => {
            let s = Pair::start(&args, true)?;
            let main = s.connect();
            wait_connected(std::slice::from_ref(&main), Duration::from_secs(10))?;
            Some((s, main))
        }
        _ => None,
    };
    if let Some(addr) = args.metrics {
        let at = p
            .serve_metrics(addr)
            .map_err(|e| format!("metrics on {addr}: {e}"))?;
        eprintln!("server metrics at http://{at}/metrics");
    }
    let main = p.connect();
    let mut many: Vec<Connection> = (0..args.connections).map(|_| p.connect_anon()).collect();
    let idle_connection_bytes = phases::idle_memory(&p, &main, &mut many)?;
    // The peers start after the memory figure, which counts this process's growth.
    let mut rados = start_rados(&args);
    let keepalive = start_keepalive(&args);
    let stream_count = ((512 << 20) / args.large.max(1)).clamp(8, 4096) as u64;
    let mut progress = Progress {
        tty: std::io::stderr().is_terminal(),
        total: args.rounds * (10 + 2 * usize::from(secure.is_some())) + 1,
        done: 0,
    };
    progress.step("warm-up");
    phases::pingpong(p.client(), &main, 500)?;
    if let Some((s, main)) = &secure {
        phases::pingpong(s.client(), main, 500)?;
    }
    let mut rounds = Vec::new();
    let mut samples = Samples::default();
    for r in 0..args.rounds {
        let round = format!("round {}/{}", r + 1, args.rounds);
        let rtts = phases::pingpong(p.client(), &main, args.iters)?;
        progress.step(&format!("{round}: ringwire ping-pong"));
        let app_rtts = phases::pingpong_app_thread(p.client(), &main, WARMUP, args.iters)?;
        progress.step(&format!("{round}: ringwire app-thread ping-pong"));
        let task_rtts = phases::pingpong_task(p.client_shared(), &main, WARMUP, args.iters)?;
        progress.step(&format!("{round}: ringwire task ping-pong"));
        let mut std_rtts = baseline::std_pingpong(args.small, WARMUP, args.iters);
        std_rtts.sort();
        progress.step(&format!("{round}: std ping-pong"));
        let mut uring_rtts = baseline::uring_pingpong(args.small, WARMUP, args.iters);
        uring_rtts.sort();
        progress.step(&format!("{round}: io_uring ping-pong"));
        samples.add("Ringwire, worker", &rtts);
        samples.add("Ringwire, application thread", &app_rtts);
        samples.add("Ringwire, task on the worker", &task_rtts);
        samples.add("std", &std_rtts);
        samples.add("io_uring", &uring_rtts);
        let rw_bps = phases::stream(p.client(), &main, stream_count, args.large)?;
        progress.step(&format!("{round}: ringwire stream"));
        let mut secure_figures = None;
        if let Some((s, main)) = &secure {
            let rtts = phases::pingpong(s.client(), main, args.iters)?;
            progress.step(&format!("{round}: ringwire secure ping-pong"));
            let bps = phases::stream(s.client(), main, stream_count, args.large)?;
            progress.step(&format!("{round}: ringwire secure stream"));
            secure_figures = Some((us(baseline::percentile(&rtts, 0.5)), bps / 1e6));
        }
        let uring_bps = baseline::uring_stream(args.large, stream_count as usize);
        let std_bps = baseline::std_stream(args.large, stream_count as usize);
        progress.step(&format!("{round}: baseline streams"));
        // Injected failures end lossy connections (by design): replace those that ended.
        p.refresh(&mut many)?;
        let rate = phases::many(p.client(), &many, args.duration);
        let std_total: Duration = std_rtts.iter().sum();
        progress.step(&format!("{round}: ringwire many connections"));
        let rados_figures = match &mut rados {
            Ok(peer) => Some(rados_round(peer, &args, stream_count, &mut samples)?),
            Err(_) => None,
        };
        progress.step(&format!("{round}: rados-rs"));
        let keepalive_figures = match &keepalive {
            Ok(k) => Some(keepalive_round(k, args.iters, &mut samples)?),
            Err(_) => None,
        };
        progress.step(&format!("{round}: KEEPALIVE2, ceph-mon"));
        rounds.push(Round {
            rw_p50_us: pct_us(&rtts, 0.5),
            rw_p99_us: pct_us(&rtts, 0.99),
            rw_p999_us: pct_us(&rtts, 0.999),
            rw_app_p50_us: pct_us(&app_rtts, 0.5),
            rw_app_p99_us: pct_us(&app_rtts, 0.99),
            rw_task_p50_us: pct_us(&task_rtts, 0.5),
            rw_task_p99_us: pct_us(&task_rtts, 0.99),
            std_p50_us: pct_us(&std_rtts, 0.5),
            uring_p50_us: pct_us(&uring_rtts, 0.5),
            rw_stream_mbps: rw_bps / 1e6,
            std_stream_mbps: std_bps / 1e6,
            uring_stream_mbps: uring_bps / 1e6,
            rw_many_msgs_per_sec: rate,
            std_one_msgs_per_sec: std_rtts.len() as f64 / std_total.as_secs_f64(),
            crc32c_mbps: phases::crc32c_rate(p.client().payload()),
            rados: rados_figures,
            keepalive: keepalive_figures,
            secure_p50_us: secure_figures.map(|f| f.0),
            secure_stream_mbps: secure_figures.map(|f| f.1),
        });
    }
    progress.finish();
    let med = Round::median(&rounds);
    // Quiesce, then account for every message the client sent.
    std::thread::sleep(Duration::from_millis(200));
    let integrity = p.integrity();
    let secure_integrity = secure.as_ref().map(|(s, _)| s.integrity());
    let rados_sizes = match &mut rados {
        Ok(peer) => Some(peer.sizes()?),
        Err(_) => None,
    };
    if let Some(n) = rados_sizes
        .as_ref()
        .map(|s| s.echo_mismatches)
        .filter(|n| *n > 0)
    {
        return Err(format!("rados-rs: {n} echoes did not answer their ping"));
    }
    let sizes = p.sizes(args.small, args.large, rados_sizes.as_ref())?;
    let peers = Peers {
        rados_rs: match &rados {
            Ok(_) => Peer {
                measured: true,
                note: "rados 0.1.4 client and server (bench/rados-peer, a child process, one \
                       current-thread tokio runtime each), crc mode, auth none; worker row: a \
                       task on the runtime, app-thread row: a blocking thread (Handle::block_on)"
                    .into(),
            },
            Err(why) => Peer {
                measured: false,
                note: why.clone(),
            },
        },
        ceph_mon: match &keepalive {
            Ok(_) => Peer {
                measured: true,
                note: "a throw-away ceph-mon (auth none), KEEPALIVE2 from the same Ringwire \
                       client as to a Ringwire server messenger (one worker) in this process"
                    .into(),
            },
            Err(why) => Peer {
                measured: false,
                note: why.clone(),
            },
        },
    };
    let ratio = |f: fn(&Round) -> f64| median_of(&rounds, f);
    Ok(Report {
        policy: args.policy.clone(),
        mode: args.mode.clone(),
        transport: args.transport.clone(),
        pinned_cpu: args.cpu,
        small_bytes: args.small,
        large_bytes: args.large,
        sizes,
        connections: args.connections,
        ratio_p50_vs_std: ratio(|r| r.rw_p50_us / r.std_p50_us),
        ratio_p50_vs_uring: ratio(|r| r.rw_p50_us / r.uring_p50_us),
        ratio_stream_vs_uring: ratio(|r| r.rw_stream_mbps / r.uring_stream_mbps),
        ratio_stream_vs_std: ratio(|r| r.rw_stream_mbps / r.std_stream_mbps),
        ratio_many_vs_one_std: ratio(|r| r.rw_many_msgs_per_sec / r.std_one_msgs_per_sec),
        ratios: Ratios::of(&rounds),
        peers,
        ratio_secure_p50_vs_crc: secure
            .as_ref()
            .map(|_| ratio(|r| r.secure_p50_us.unwrap_or(f64::NAN) / r.rw_p50_us)),
        ratio_secure_stream_vs_crc: secure
            .as_ref()
            .map(|_| ratio(|r| r.secure_stream_mbps.unwrap_or(f64::NAN) / r.rw_stream_mbps)),
        rounds,
        median: med,
        idle_connection_bytes,
        integrity,
        latency_cdf: samples.cdfs(),
        scale: None,
        secure_integrity,
    })
}

/// `--scale`: adds the figures over message sizes and connection counts to `report`, each
/// point a run of `exe` (this binary), pinned as `report` was.
pub fn add_scale(report: &mut Report, exe: &std::path::Path) -> Result<(), String> {
    report.scale = Some(scale::sweep(exe, report.pinned_cpu)?);
    Ok(())
}
