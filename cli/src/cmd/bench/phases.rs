//! Ringwire's side of each phase, on messengers `peers` started: each takes what it measures
//! on and returns the figure. The baselines' phases are `ringwire-bench`'s functions.

use std::sync::mpsc::channel;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringwire::{Connection, Mailbox};

use ringwire_bench::wire::{DATA, MANY_PING, PING};

use super::peers::{wait_connected, Client, Pair};

/// Bytes of memory per idle connection, while `main` and the rate phase's `many` connections
/// come up (both ends of each live in this process); below 100 connections the noise of the
/// resident set would swamp the figure, and there is none.
pub(super) fn idle_memory(
    p: &Pair,
    main: &Connection,
    many: &mut [Connection],
) -> Result<Option<u64>, String> {
    let rss_before = rss_bytes();
    wait_connected(std::slice::from_ref(main), Duration::from_secs(10))?;
    p.refresh(many)?;
    Ok((many.len() >= 100)
        .then(|| rss_bytes().saturating_sub(rss_before) / (2 * many.len() as u64)))
}

/// `iters` round trips of one ping at a time on `conn`: returns them sorted.
pub(super) fn pingpong(
    c: &Client,
    conn: &Connection,
    iters: usize,
) -> Result<Vec<Duration>, String> {
    let (tx, rx) = channel();
    c.arm(Some(iters), iters as u64 - 1, Some(tx));
    c.start(conn, PING, 1);
    rx.recv_timeout(Duration::from_secs(120))
        .map_err(|_| "ping-pong stalled".to_string())?;
    Ok(c.take_rtts())
}

/// `iters` round trips of one ping at a time on `conn` (after `warmup` unrecorded ones), each
/// sent from this thread, which is not a worker: the dispatcher hands each echo back to it
/// (`handoff`). Returns them sorted.
pub(super) fn pingpong_app_thread(
    c: &Client,
    conn: &Connection,
    warmup: usize,
    iters: usize,
) -> Result<Vec<Duration>, String> {
    let mut rtts = Vec::with_capacity(iters);
    for i in 0..warmup + iters {
        let t = Instant::now();
        let seq = c.send_app_ping(conn);
        let echo = c
            .handoff
            .recv_timeout(Duration::from_secs(30))
            .ok_or("application-thread ping-pong stalled")?;
        let rtt = t.elapsed();
        c.check_echo(&echo, seq);
        if i >= warmup {
            rtts.push(rtt);
        }
    }
    rtts.sort();
    Ok(rtts)
}

/// Ping-pong from application code run on the client's worker (`Connection::spawn`): each
/// echo reaches the task through the same mailbox as the application thread's, with no thread
/// switch. Returns the round trips after `warmup`, sorted.
pub(super) fn pingpong_task(
    c: &Arc<Client>,
    conn: &Connection,
    warmup: usize,
    iters: usize,
) -> Result<Vec<Duration>, String> {
    let finished = Arc::new(Mailbox::new());
    let (client, task_conn, done) = (c.clone(), conn.clone(), finished.clone());
    conn.spawn(async move {
        let mut rtts = Vec::with_capacity(iters);
        for i in 0..warmup + iters {
            let t = Instant::now();
            let seq = client.send_app_ping(&task_conn);
            let echo = client.handoff.recv().await;
            let rtt = t.elapsed();
            client.check_echo(&echo, seq);
            if i >= warmup {
                rtts.push(rtt);
            }
        }
        done.put(rtts);
    });
    let mut rtts = finished
        .recv_timeout(Duration::from_secs(120))
        .ok_or("task ping-pong stalled")?;
    rtts.sort();
    Ok(rtts)
}

/// Stream messages in flight at once on the main connection.
pub(super) const STREAM_IN_FLIGHT: u64 = 4;

/// `count` stream messages of `large` bytes on `conn` with `STREAM_IN_FLIGHT` in flight, each
/// acknowledged; returns payload bytes per second.
pub(super) fn stream(
    c: &Client,
    conn: &Connection,
    count: u64,
    large: usize,
) -> Result<f64, String> {
    let (tx, rx) = channel();
    let in_flight = STREAM_IN_FLIGHT.min(count);
    c.arm(None, count - in_flight, Some(tx));
    let acks_at_start = c.replies();
    let t = Instant::now();
    c.start(conn, DATA, in_flight as usize);
    rx.recv_timeout(Duration::from_secs(120))
        .map_err(|_| "stream stalled".to_string())?;
    // `done` fires when the last message is sent; wait for every acknowledgement.
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.replies() < acks_at_start + count {
        if Instant::now() > deadline {
            return Err("stream acknowledgements stalled".into());
        }
        std::thread::yield_now();
    }
    let secs = t.elapsed().as_secs_f64();
    Ok((count as usize * large) as f64 / secs)
}

/// Ping-pong on all `conns` at once for `duration`; returns messages per second.
pub(super) fn many(c: &Client, conns: &[Connection], duration: Duration) -> f64 {
    c.arm(None, u64::MAX, None);
    let before = c.replies();
    let t = Instant::now();
    for conn in conns {
        c.start(conn, MANY_PING, 1);
    }
    std::thread::sleep(duration);
    let n = c.replies() - before;
    let secs = t.elapsed().as_secs_f64();
    c.stop();
    // Let the last round trips drain before the next phase.
    std::thread::sleep(Duration::from_millis(50));
    n as f64 / secs
}

/// Megabytes per second of CRC32C over `data` (a few passes, timed together).
pub(super) fn crc32c_rate(data: &[u8]) -> f64 {
    let passes = ((64 << 20) / data.len().max(1)).clamp(1, 64);
    let t = Instant::now();
    for _ in 0..passes {
        std::hint::black_box(ringwire::proto::crc::ceph_crc32c(0, data));
    }
    (passes * data.len()) as f64 / t.elapsed().as_secs_f64() / 1e6
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}
