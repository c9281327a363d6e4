//! rados-rs as a peer: the `rados-peer` program (bench/rados-peer), a rados-rs client and
//! server in a child process, driven over its standard input and output (its module doc
//! states the protocol). A child keeps tokio out of the `ringwire` binary; it inherits the
//! benchmark's CPU pinning, so every side shares the one CPU as Ringwire's do.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::Duration;

use ringwire_bench::wire;

/// Where `ringwire bench` looks for `rados-peer` unless told: beside its own binary, where
/// cargo builds it (`cargo build --release -p ringwire-rados-peer`).
pub fn default_path() -> Option<PathBuf> {
    Some(std::env::current_exe().ok()?.with_file_name("rados-peer"))
}

/// Which application pattern a rados-rs ping-pong uses (see bench/rados-peer's client).
#[derive(Clone, Copy)]
pub(super) enum Pattern {
    /// A tokio task on the runtime that drives the connection sends and awaits.
    Task,
    /// A plain OS thread runs each round trip with `Handle::block_on`.
    Thread,
}

/// How long one answer may take: a stalled peer fails the run instead of hanging it. (The
/// watch is here, not in the peer, so that no timer sits in its timed paths.)
const ANSWER_LIMIT: Duration = Duration::from_secs(180);

pub(super) struct RadosPeer {
    child: Child,
    stdin: ChildStdin,
    /// The peer's output lines, read by a thread of their own so that waiting can time out.
    lines: Receiver<std::io::Result<String>>,
}

/// Payload sizes rados-rs moved, per phase: (requests as its server saw them, replies as its
/// client saw them), and echoes that did not answer their ping.
pub(super) struct RadosSizes {
    pub ping_pong: (usize, usize),
    pub stream: (usize, usize),
    pub rate: (usize, usize),
    pub echo_mismatches: u64,
}

impl RadosPeer {
    /// Starts `path` with the benchmark's sizes and connection count; returns once its server
    /// is up and its connections are open.
    pub(super) fn start(
        path: &Path,
        small: usize,
        large: usize,
        connections: usize,
    ) -> Result<RadosPeer, String> {
        if !path.exists() {
            return Err(format!(
                "not measured: {} not found (build it with `cargo build --release -p ringwire-rados-peer`, or give --rados-peer PATH)",
                path.display()
            ));
        }
        let mut child = Command::new(path)
            .args([small, large, connections].map(|n| n.to_string()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", path.display()))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("rados-peer: no pipes".into());
        };
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut peer = RadosPeer {
            child,
            stdin,
            lines,
        };
        match peer.line()?.as_str() {
            "ready" => Ok(peer),
            other => Err(format!("rados-peer did not start: {other}")),
        }
    }

    fn line(&mut self) -> Result<String, String> {
        match self.lines.recv_timeout(ANSWER_LIMIT) {
            Ok(Ok(line)) => Ok(line),
            Ok(Err(e)) => Err(format!("reading from rados-peer: {e}")),
            Err(RecvTimeoutError::Disconnected) => {
                Err("rados-peer exited (see its standard error)".into())
            }
            Err(RecvTimeoutError::Timeout) => Err(format!(
                "rados-peer stalled: no answer in {} s",
                ANSWER_LIMIT.as_secs()
            )),
        }
    }

    /// Sends `command`; returns the answer after its leading `word`.
    fn ask(&mut self, command: &str, word: &str) -> Result<String, String> {
        writeln!(self.stdin, "{command}")
            .and_then(|()| self.stdin.flush())
            .map_err(|e| format!("writing to rados-peer: {e}"))?;
        let answer = self.line()?;
        if let Some(rest) = answer.strip_prefix(word).and_then(|r| r.strip_prefix(' ')) {
            return Ok(rest.to_string());
        }
        Err(format!("rados-peer, {command}: {answer}"))
    }

    /// `iters` round trips (after the peer's warm-up), sorted.
    pub(super) fn pingpong(
        &mut self,
        pattern: Pattern,
        iters: usize,
    ) -> Result<Vec<Duration>, String> {
        let how = match pattern {
            Pattern::Task => "task",
            Pattern::Thread => "thread",
        };
        let answer = self.ask(&format!("pingpong {how} {iters}"), "rtts")?;
        let mut rtts = answer
            .split_whitespace()
            .map(|ns| ns.parse().map(Duration::from_nanos))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("rados-peer round trips: {e}"))?;
        rtts.sort();
        Ok(rtts)
    }

    /// `count` stream messages (4 in flight); payload bytes per second.
    pub(super) fn stream(&mut self, count: u64) -> Result<f64, String> {
        let answer = self.ask(&format!("stream {count}"), "bps")?;
        answer
            .parse()
            .map_err(|e| format!("rados-peer stream: {e}"))
    }

    /// Ping-pong on all its rate-phase connections for `duration`; round trips per second.
    pub(super) fn rate(&mut self, duration: Duration) -> Result<f64, String> {
        let answer = self.ask(&format!("rate {}", duration.as_secs_f64()), "rate")?;
        answer.parse().map_err(|e| format!("rados-peer rate: {e}"))
    }

    /// The one payload size of each phase's requests and replies.
    pub(super) fn sizes(&mut self) -> Result<RadosSizes, String> {
        let answer = self.ask("sizes", "sizes")?;
        let mut echo_mismatches = None;
        let mut ranges = std::collections::HashMap::new();
        for field in answer.split_whitespace() {
            let (k, v) = field.split_once('=').ok_or("rados-peer sizes: bad field")?;
            if k == "mismatches" {
                echo_mismatches = v.parse().ok();
                continue;
            }
            let ty = u16::from_str_radix(k.trim_start_matches("0x"), 16);
            let range = v
                .split_once('-')
                .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)));
            match (ty, range) {
                (Ok(ty), Some(range)) => ranges.insert(ty, range),
                _ => return Err(format!("rados-peer sizes: bad field {field:?}")),
            };
        }
        let one = |ty: u16, what: &str| wire::one_size(ranges.get(&ty).copied(), what);
        let phase = |ty: u16, what: &str| -> Result<(usize, usize), String> {
            Ok((
                one(ty, &format!("rados-rs {what} messages"))?,
                one(ty + 1, &format!("rados-rs {what} replies"))?,
            ))
        };
        Ok(RadosSizes {
            ping_pong: phase(wire::PING, "ping-pong")?,
            stream: phase(wire::DATA, "stream")?,
            rate: phase(wire::MANY_PING, "rate-phase")?,
            echo_mismatches: echo_mismatches.ok_or("rados-peer sizes: no mismatch count")?,
        })
    }
}

impl Drop for RadosPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
