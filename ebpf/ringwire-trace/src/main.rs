//! `ringwire-trace`: attaches Ringwire's BPF programs to running messengers and shows what
//! their connections do, live, without restarting them.
//!
//! - `ringwire-trace events --pid PID`: one line per event (time, pid, what, details).
//! - `ringwire-trace top --binary /usr/bin/ceph-osd`: a live table of connections.
//! - `--metrics ADDR` on either: Prometheus text format at `http://ADDR/metrics`.

mod metrics;
mod model;
mod tracer;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use ringwire_trace_common::{Event, CONN_SOCKET};

use model::{ConnView, Model, ProcessTotals};
use tracer::{Target, Tracer};

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

#[derive(Args)]
struct Common {
    /// A process to trace (repeatable).
    #[arg(long, required_unless_present = "binary")]
    pid: Vec<u32>,
    /// Trace every process running this executable, including ones started later.
    #[arg(long, conflicts_with = "pid")]
    binary: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Stop after this many seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// JSON lines instead of text.
    #[arg(long)]
    json: bool,
    /// Also count io_uring submissions and completions (tracepoints hit per request).
    #[arg(long)]
    io_uring: bool,
}

#[derive(Subcommand)]
enum Command {
    /// One line per event: connection and session states, TCP states and retransmits,
    /// faults, reconnects (and every message, with --messages).
    Events {
        #[command(flatten)]
        common: Common,
        /// Also one event per sampled message queued, sent and dispatched (every message when
        /// the messenger's `probe_sample` is 1).
        #[arg(long)]
        messages: bool,
    },
    /// A live table of connections: peer, policy, states, traffic, retransmits, reconnects and
    /// message latencies.
    Top {
        #[command(flatten)]
        common: Common,
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
    },
}

/// What the metrics endpoint reads: refreshed by the main loop.
type Shared = Arc<Mutex<(Vec<(u32, ProcessTotals)>, Vec<ConnView>)>>;

fn print_event(e: &Event, json: bool, out: &mut impl Write) -> std::io::Result<()> {
    let (what, fields) = model::describe(e);
    if json {
        let mut obj = serde_json::Map::new();
        obj.insert("ts_ns".into(), e.ts_ns.into());
        obj.insert("pid".into(), e.pid.into());
        obj.insert("event".into(), what.into());
        for (k, v) in fields {
            obj.insert(k.into(), v.into());
        }
        writeln!(out, "{}", serde_json::Value::Object(obj))
    } else {
        let f: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
        writeln!(
            out,
            "{:>14.6} {:>7} {:<15} {}",
            e.ts_ns as f64 / 1e9,
            e.pid,
            what,
            f.join(" ")
        )
    }
}

fn table(rows: &[ConnView], out: &mut impl Write) -> std::io::Result<()> {
    let us = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
    writeln!(
        out,
        "{:>7} {:>16} {:<6} {:<21} {:<19} {:<10} {:<11} {:>8} {:>8} {:>10} {:>10} {:>5} {:>5} {:>15} {:>15}",
        "PID", "CONN", "ROLE", "PEER", "POLICY", "STATE", "TCP", "MSG_OUT", "MSG_IN",
        "BYTES_OUT", "BYTES_IN", "RETX", "RECON", "Q→SENT p50/99µs", "SENT→DISP p50/99"
    )?;
    for c in rows {
        writeln!(
            out,
            "{:>7} {:>16x} {:<6} {:<21} {:<19} {:<10} {:<11} {:>8} {:>8} {:>10} {:>10} {:>5} {:>5} {:>15} {:>15}",
            c.pid,
            c.conn,
            c.role,
            c.peer,
            c.policy,
            c.state,
            c.tcp_state,
            c.msgs_out,
            c.msgs_in,
            c.bytes_out,
            c.bytes_in,
            c.retransmits,
            c.reconnects,
            format!("{}/{}", us(c.queued_to_sent_p50_us), us(c.queued_to_sent_p99_us)),
            format!("{}/{}", us(c.sent_to_dispatched_p50_us), us(c.sent_to_dispatched_p99_us)),
        )?;
    }
    Ok(())
}

fn run(command: Command) -> Result<(), String> {
    let (common, messages, interval) = match command {
        Command::Events { common, messages } => (common, messages, None),
        Command::Top { common, interval } => (common, false, Some(interval)),
    };
    let target = match common.binary {
        Some(path) => Target::Binary(path),
        None => Target::Pids(common.pid),
    };
    let mut tracer = Tracer::attach(target, messages, common.io_uring)?;
    let shared: Shared = Arc::default();
    if let Some(addr) = common.metrics {
        let shared = shared.clone();
        let bound = ringwire_metrics_http::serve_text(addr, move || {
            let (totals, conns) = &*shared.lock().unwrap_or_else(|p| p.into_inner());
            Some(metrics::render(totals, conns))
        })
        .map_err(|e| format!("serving metrics on {addr}: {e}"))?;
        eprintln!("metrics at http://{bound}/metrics");
    }
    eprintln!("tracing {}", tracer.target);
    let started = Instant::now();
    let until = common
        .duration
        .map(|d| started + Duration::from_secs_f64(d));
    let refresh = Duration::from_secs_f64(interval.unwrap_or(1.0).max(0.05));
    let mut next_refresh = started + refresh;
    let mut model = Model::default();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    // Socket reports repeat every second; `events` prints each connection's first.
    let mut reported = std::collections::HashSet::new();
    loop {
        let mut failed = Ok(());
        tracer.poll(Duration::from_millis(100), |e| {
            model.event(e);
            if interval.is_none()
                && (e.kind != CONN_SOCKET || reported.insert((e.pid, e.a, e.b)))
                && failed.is_ok()
            {
                failed = print_event(e, common.json, &mut out);
            }
        });
        let now = Instant::now();
        let done = until.is_some_and(|u| now >= u) || !tracer.alive();
        if now >= next_refresh || done {
            next_refresh = now + refresh;
            let forget = model.sessions(&tracer.sessions());
            for key in &forget {
                tracer.forget_session(key);
            }
            model.io_uring(&tracer.io_uring());
            let rows = model.rows();
            if interval.is_some() {
                failed = failed.and_then(|_| {
                    if common.json {
                        let snapshot = serde_json::json!({
                            "elapsed_s": started.elapsed().as_secs_f64(),
                            "connections": rows,
                        });
                        writeln!(out, "{snapshot}")
                    } else {
                        // Clear the screen, then the table.
                        write!(out, "\x1b[2J\x1b[H")?;
                        table(&rows, &mut out)
                    }
                });
            }
            *shared.lock().unwrap_or_else(|p| p.into_inner()) = (model.totals(), rows);
        }
        failed
            .and_then(|_| out.flush())
            .map_err(|e| format!("writing: {e}"))?;
        if done {
            return Ok(());
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringwire-trace: {e}");
            ExitCode::FAILURE
        }
    }
}
