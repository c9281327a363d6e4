//! `ringwire bench`: server and client messengers in one process on loopback, measured against
//! raw baselines (`ringwire-bench`: blocking std and io_uring, same bytes) in the same run.
//! Each round measures Ringwire and the baselines back to back; ratios are paired within a
//! round and the median over rounds is reported. By default everything is pinned to one CPU
//! (as `shared/recipes/baselines.md` measured): on a shared 2-vCPU machine, spreading client
//! and server across CPUs mostly measures the neighbours.
//!
//! `peers` holds the messengers and what they send, `phases` Ringwire's measurement of each
//! phase, `report` the figures and how they are shown; `run` orders rounds and phases.

mod peers;
mod phases;
mod report;

use std::io::{IsTerminal, Write};
use std::time::Duration;

use ringwire::Connection;
use ringwire_bench as baseline;

use peers::{wait_connected, Pair};
use report::{median_of, Round};
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
    /// `crc`, or `secure`: then a second set of messengers authenticates with cephx (its own
    /// monitor, keys made for the run) and runs the ping-pong and the stream in secure mode
    /// too, each round right after the crc ones.
    pub mode: String,
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
        Ok(())
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
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
    let stream_count = ((512 << 20) / args.large.max(1)).clamp(8, 4096) as u64;
    let mut progress = Progress {
        tty: std::io::stderr().is_terminal(),
        total: args.rounds * (6 + 2 * usize::from(secure.is_some())) + 1,
        done: 0,
    };
    progress.step("warm-up");
    phases::pingpong(p.client(), &main, 500)?;
    if let Some((s, main)) = &secure {
        phases::pingpong(s.client(), main, 500)?;
    }
    let mut rounds = Vec::new();
    for r in 0..args.rounds {
        let round = format!("round {}/{}", r + 1, args.rounds);
        let rtts = phases::pingpong(p.client(), &main, args.iters)?;
        progress.step(&format!("{round}: ringwire ping-pong"));
        let mut std_rtts = baseline::std_pingpong(args.small, 200, args.iters);
        std_rtts.sort();
        progress.step(&format!("{round}: std ping-pong"));
        let mut uring_rtts = baseline::uring_pingpong(args.small, 200, args.iters);
        uring_rtts.sort();
        progress.step(&format!("{round}: io_uring ping-pong"));
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
        rounds.push(Round {
            rw_p50_us: us(baseline::percentile(&rtts, 0.5)),
            rw_p99_us: us(baseline::percentile(&rtts, 0.99)),
            rw_p999_us: us(baseline::percentile(&rtts, 0.999)),
            std_p50_us: us(baseline::percentile(&std_rtts, 0.5)),
            uring_p50_us: us(baseline::percentile(&uring_rtts, 0.5)),
            rw_stream_mbps: rw_bps / 1e6,
            std_stream_mbps: std_bps / 1e6,
            uring_stream_mbps: uring_bps / 1e6,
            rw_many_msgs_per_sec: rate,
            std_one_msgs_per_sec: std_rtts.len() as f64 / std_total.as_secs_f64(),
            crc32c_mbps: phases::crc32c_rate(p.client().payload()),
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
    let sizes = p.sizes(args.small, args.large)?;
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
        secure_integrity,
    })
}
