//! `ringwire bench --scale`: how Ringwire's figures grow with the message size and the number
//! of connections. Each point is a run of this same binary (`bench --json --rounds 1`, no
//! peers, pinned as the parent is), so a point is measured exactly as the main run measures
//! its figures, with its io_uring baseline beside it; the grid's largest connection count is
//! what one process holding both ends of every connection can open (10 000 connections to
//! one server process are `messenger/tests/many_connections.rs`'s).

use std::path::Path;
use std::process::{Command, Stdio};

use serde::Serialize;

/// Message sizes: ping-pong and stream messages of each, on every side.
const SIZES: [usize; 5] = [64, 4 << 10, 64 << 10, 1 << 20, 16 << 20];
/// Connection counts of the rate phase (64 B messages).
const CONNECTIONS: [usize; 5] = [1, 10, 100, 1_000, 5_000];

#[derive(Debug, Serialize)]
pub struct Scale {
    pub sizes: Vec<SizePoint>,
    pub connections: Vec<ConnectionsPoint>,
}

#[derive(Debug, Serialize)]
pub struct SizePoint {
    pub bytes: usize,
    pub p50_us: f64,
    pub uring_p50_us: f64,
    pub stream_mbps: f64,
    pub uring_stream_mbps: f64,
}

#[derive(Debug, Serialize)]
pub struct ConnectionsPoint {
    pub connections: usize,
    /// Round trips per second over all the connections.
    pub msgs_per_sec: f64,
    /// Resident bytes per idle connection end (measured from 100 connections up).
    pub idle_bytes_per_end: Option<u64>,
}

/// Runs the grid with `exe`, pinned to `cpu` (or not).
pub fn sweep(exe: &Path, cpu: Option<usize>) -> Result<Scale, String> {
    let mut sizes = Vec::new();
    for bytes in SIZES {
        // About 200 MiB each way per ping-pong phase, at least 50 round trips.
        let iters = ((200 << 20) / bytes).clamp(50, 2_000);
        let v = run(exe, cpu, bytes, bytes, 1, iters)?;
        let m = &v["median"];
        sizes.push(SizePoint {
            bytes,
            p50_us: number(m, "rw_p50_us")?,
            uring_p50_us: number(m, "uring_p50_us")?,
            stream_mbps: number(m, "rw_stream_mbps")?,
            uring_stream_mbps: number(m, "uring_stream_mbps")?,
        });
    }
    let mut connections = Vec::new();
    for n in CONNECTIONS {
        let v = run(exe, cpu, 64, 64 << 10, n, 500)?;
        connections.push(ConnectionsPoint {
            connections: n,
            msgs_per_sec: number(&v["median"], "rw_many_msgs_per_sec")?,
            idle_bytes_per_end: v["idle_connection_bytes"].as_u64(),
        });
    }
    Ok(Scale { sizes, connections })
}

fn run(
    exe: &Path,
    cpu: Option<usize>,
    small: usize,
    large: usize,
    connections: usize,
    iters: usize,
) -> Result<serde_json::Value, String> {
    let mut cmd = Command::new(exe);
    cmd.args([
        "bench",
        "--json",
        "--rounds",
        "1",
        "--no-rados",
        "--no-ceph",
    ])
    .args(["--size", &small.to_string(), "--large", &large.to_string()])
    .args(["--connections", &connections.to_string()])
    .args(["--iters", &iters.to_string(), "--duration", "0.5"]);
    match cpu {
        Some(c) => cmd.args(["--cpu", &c.to_string()]),
        None => cmd.arg("--no-pin"),
    };
    let what = format!("the --scale point of {small} B, {connections} connections");
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("{what}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{what} failed: {}", out.status));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("{what}: its report: {e}"))
}

fn number(v: &serde_json::Value, key: &str) -> Result<f64, String> {
    v[key]
        .as_f64()
        .ok_or_else(|| format!("a --scale point's report lacks {key}"))
}

/// The grid as two tables.
pub fn print(s: &Scale) {
    println!();
    println!(
        "{:<12} {:>12} {:>12} {:>8} {:>12} {:>12} {:>8}",
        "message", "p50", "io_uring", "ratio", "stream", "io_uring", "ratio"
    );
    for p in &s.sizes {
        println!(
            "{:<12} {:>9.1} us {:>9.1} us {:>7.2}x {:>7.0} MB/s {:>7.0} MB/s {:>7.2}x",
            super::report::human_bytes(p.bytes),
            p.p50_us,
            p.uring_p50_us,
            p.p50_us / p.uring_p50_us,
            p.stream_mbps,
            p.uring_stream_mbps,
            p.stream_mbps / p.uring_stream_mbps
        );
    }
    println!();
    println!(
        "{:<12} {:>14} {:>22}",
        "connections", "64 B rate", "memory per idle end"
    );
    for p in &s.connections {
        let mem = p
            .idle_bytes_per_end
            .map_or("-".to_string(), |b| format!("{:.1} KiB", b as f64 / 1024.0));
        println!(
            "{:<12} {:>12.0}/s {:>22}",
            p.connections, p.msgs_per_sec, mem
        );
    }
}
