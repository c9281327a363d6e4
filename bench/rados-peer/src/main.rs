//! `rados-peer`: rados-rs (the `rados` crate's own msgr2 on tokio; crc mode, auth none) as a
//! peer of `ringwire bench`, in a process of its own so that the `ringwire` binary does not
//! link tokio. `ringwire bench` starts it (it inherits the benchmark's CPU pinning) and drives
//! it over its standard input and output, one line each way per command:
//!
//! ```text
//! rados-peer SMALL LARGE CONNECTIONS   → ready              (server up, connections open)
//! pingpong task ITERS                  → rtts NS NS ...     (each round trip, in order)
//! pingpong thread ITERS                → rtts NS NS ...
//! stream COUNT                         → bps BYTES_PER_SECOND
//! rate SECONDS                         → rate MESSAGES_PER_SECOND
//! sizes                                → sizes mismatches=N TYPE=MIN-MAX ...
//! ```
//!
//! or `error WHAT`. End of input ends the process. Messages carry the bytes `ringwire bench`
//! sends (`ringwire_bench::wire`); rados-rs client against rados-rs server, both in here.

mod client;
mod server;

use std::io::{BufRead, Write};
use std::sync::Arc;

use rados::msgr2::{ConnectionConfig, ConnectionMode};
use ringwire_bench::wire::{self, Seen};

/// Auth none, crc mode (no encryption, no compression), as Ringwire speaks.
pub(crate) fn config(lossy: bool) -> ConnectionConfig {
    ConnectionConfig {
        preferred_modes: vec![ConnectionMode::Crc],
        is_lossy: lossy,
        ..ConnectionConfig::with_no_auth()
    }
}

fn args() -> Result<(usize, usize, usize), String> {
    let v: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse::<usize>().map_err(|e| format!("{a:?}: {e}")))
        .collect::<Result<_, _>>()?;
    match v[..] {
        [small, large, conns] if small >= wire::MIN_PING && large > 0 => Ok((small, large, conns)),
        _ => Err("usage: rados-peer SMALL(>=8) LARGE(>=1) CONNECTIONS".into()),
    }
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            println!("error {e}");
            eprintln!("rados-peer: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let (small, large, conns) = args()?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let server_seen = Arc::new(Seen::default());
    server::start(listener, server_seen.clone()).map_err(|e| e.to_string())?;
    let mut peer = client::Client::start(addr, small, large, conns)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready").map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())?;
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| e.to_string())?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = match words[..] {
            ["pingpong", "task", n] => number(n).and_then(|n| peer.pingpong_task(n)).map(rtts),
            ["pingpong", "thread", n] => number(n).and_then(|n| peer.pingpong_thread(n)).map(rtts),
            ["stream", n] => number(n)
                .and_then(|n| peer.stream(n))
                .map(|bps| format!("bps {bps}")),
            ["rate", secs] => secs
                .parse::<f64>()
                .map_err(|e| format!("{secs:?}: {e}"))
                .and_then(|s| peer.rate(std::time::Duration::from_secs_f64(s)))
                .map(|r| format!("rate {r}")),
            ["sizes"] => Ok(sizes(peer.mismatches(), &server_seen, peer.seen())),
            _ => Err(format!("unknown command {line:?}")),
        };
        match answer {
            Ok(a) => writeln!(out, "{a}"),
            Err(e) => writeln!(out, "error {e}"),
        }
        .and_then(|()| out.flush())
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn number(s: &str) -> Result<usize, String> {
    s.parse().map_err(|e| format!("{s:?}: {e}"))
}

fn rtts(v: Vec<std::time::Duration>) -> String {
    let mut s = String::with_capacity(8 * v.len() + 5);
    s.push_str("rtts");
    for d in v {
        s.push(' ');
        s.push_str(&d.as_nanos().to_string());
    }
    s
}

/// Echo mismatches seen by the client, then the payload sizes of each message type: the
/// requests as the server saw them, the replies as the client saw them.
fn sizes(mismatches: u64, server: &Seen, client: &Seen) -> String {
    let mut s = format!("sizes mismatches={mismatches}");
    for ty in [wire::PING, wire::DATA, wire::MANY_PING] {
        for (ty, seen) in [(ty, server), (ty + 1, client)] {
            if let Some((min, max)) = seen.range(ty) {
                s.push_str(&format!(" {ty:#06x}={min}-{max}"));
            }
        }
    }
    s
}
