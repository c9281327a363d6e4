//! rados-rs's client side and the benchmark's phases on it. The client's connections are
//! driven by a single-threaded runtime on a thread of its own (its IO driver); the caller's
//! thread is the application thread. Two application patterns, both through rados-rs's
//! public `Connection` (`send_message`, then `recv_message`, one `&mut` owner):
//!
//! - task: a tokio task on the client runtime sends each ping and awaits its echo, so the
//!   application runs on the thread that drives the IO (as Ringwire's dispatcher does);
//! - thread: a plain OS thread (the caller) runs each round trip with `Handle::block_on`:
//!   it writes the ping itself and sleeps until the runtime's thread, woken by the echo,
//!   wakes it (one hand-off, for the reply).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rados::msgr2::{Connection, Message};
use ringwire_bench::wire::{self, Seen};
use tokio::runtime::Handle;

use crate::config;

/// Unrecorded round trips before each ping-pong, as the raw baselines do.
const WARMUP: usize = 200;
/// Stream messages in flight, as Ringwire's stream phase keeps.
const IN_FLIGHT: usize = 4;

/// What a connection's answers are checked and counted against.
#[derive(Default)]
struct Tally {
    seen: Seen,
    /// Echoes whose sequence number (or type) is not the one of the ping they answer.
    mismatches: AtomicU64,
}

pub struct Client {
    rt: Handle,
    /// Taken by a phase while it runs (rados-rs connections have one `&mut` owner).
    main: Option<Connection>,
    many: Vec<Connection>,
    small: usize,
    data: Bytes,
    next_seq: u64,
    tally: Arc<Tally>,
}

async fn connect(addr: SocketAddr, lossy: bool) -> rados::msgr2::Result<Connection> {
    let mut c = Connection::connect(addr, config(lossy)).await?;
    c.establish_session().await?;
    Ok(c)
}

/// One ping of `small` bytes numbered `seq` (split off `slab`, one allocation per many).
fn ping(slab: &mut BytesMut, ty: u16, seq: u64, small: usize) -> Message {
    if slab.capacity() < small {
        slab.reserve(small.max(64 << 10));
    }
    slab.resize(small, 0);
    wire::ping(seq, &mut slab[..]);
    Message::new(ty, slab.split().freeze())
}

/// Sends ping `seq` and awaits its echo.
async fn round_trip(
    conn: &mut Connection,
    slab: &mut BytesMut,
    ty: u16,
    seq: u64,
    small: usize,
    tally: &Tally,
) -> rados::msgr2::Result<()> {
    conn.send_message(ping(slab, ty, seq, small)).await?;
    let echo = conn.recv_message().await?;
    tally
        .seen
        .record(echo.msg_type(), echo.front.len() + echo.data.len());
    if echo.msg_type() != ty + 1 || wire::ping_seq(&echo.front) != seq {
        tally.mismatches.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

impl Client {
    /// Starts the client runtime and opens the ping-pong and stream connection (lossless)
    /// and `conns` lossy connections for the rate phase, all to `addr`.
    pub fn start(
        addr: SocketAddr,
        small: usize,
        large: usize,
        conns: usize,
    ) -> Result<Client, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let handle = rt.handle().clone();
        std::thread::Builder::new()
            .name("rados-client".into())
            .spawn(move || rt.block_on(std::future::pending::<()>()))
            .map_err(|e| e.to_string())?;
        let (main, many) = handle
            .block_on(handle.spawn(async move {
                let main = connect(addr, false).await?;
                let mut many = Vec::with_capacity(conns);
                for _ in 0..conns {
                    many.push(connect(addr, true).await?);
                }
                Ok::<_, rados::msgr2::Msgr2Error>((main, many))
            }))
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("connecting to the rados-rs server: {e}"))?;
        Ok(Client {
            rt: handle,
            main: Some(main),
            many,
            small,
            data: Bytes::from(wire::stream_payload(large)),
            next_seq: 0,
            tally: Arc::default(),
        })
    }

    /// Runs `f` on the client runtime (the IO thread) and waits for its result.
    fn on_runtime<T: Send + 'static>(
        &self,
        f: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Result<T, String> {
        self.rt
            .block_on(self.rt.spawn(f))
            .map_err(|e| e.to_string())
    }

    fn take_main(&mut self) -> Result<Connection, String> {
        self.main
            .take()
            .ok_or_else(|| "the main connection failed in an earlier phase".to_string())
    }

    /// `iters` round trips (after `WARMUP`), each awaited by a task on the runtime.
    pub fn pingpong_task(&mut self, iters: usize) -> Result<Vec<Duration>, String> {
        let mut conn = self.take_main()?;
        let (small, first, tally) = (self.small, self.next_seq, self.tally.clone());
        let (conn, rtts) = self.on_runtime(async move {
            let mut slab = BytesMut::new();
            let mut rtts = Vec::with_capacity(iters);
            for i in 0..WARMUP + iters {
                let t = Instant::now();
                let seq = first + 1 + i as u64;
                if let Err(e) =
                    round_trip(&mut conn, &mut slab, wire::PING, seq, small, &tally).await
                {
                    return (None, Err(e.to_string()));
                }
                if i >= WARMUP {
                    rtts.push(t.elapsed());
                }
            }
            (Some(conn), Ok(rtts))
        })?;
        self.next_seq += (WARMUP + iters) as u64;
        self.main = conn;
        rtts
    }

    /// `iters` round trips (after `WARMUP`), each run by this thread with `block_on`.
    pub fn pingpong_thread(&mut self, iters: usize) -> Result<Vec<Duration>, String> {
        let mut conn = self.take_main()?;
        let mut slab = BytesMut::new();
        let mut rtts = Vec::with_capacity(iters);
        for i in 0..WARMUP + iters {
            self.next_seq += 1;
            let seq = self.next_seq;
            let t = Instant::now();
            self.rt
                .block_on(round_trip(
                    &mut conn,
                    &mut slab,
                    wire::PING,
                    seq,
                    self.small,
                    &self.tally,
                ))
                .map_err(|e| e.to_string())?;
            if i >= WARMUP {
                rtts.push(t.elapsed());
            }
        }
        self.main = Some(conn);
        Ok(rtts)
    }

    /// `count` stream messages with `IN_FLIGHT` in flight, each acknowledged; returns payload
    /// bytes per second.
    pub fn stream(&mut self, count: usize) -> Result<f64, String> {
        let mut conn = self.take_main()?;
        let (data, tally) = (self.data.clone(), self.tally.clone());
        let first = self.next_seq;
        let (conn, secs) = self.on_runtime(async move {
            let result = async {
                let message = |seq: u64| {
                    let mut m = Message::new(wire::DATA, Bytes::new()).with_tid(seq);
                    m.data = data.clone();
                    m
                };
                let t = Instant::now();
                let mut sent = 0;
                while sent < IN_FLIGHT.min(count) {
                    sent += 1;
                    conn.send_message(message(first + sent as u64)).await?;
                }
                for _ in 0..count {
                    let ack = conn.recv_message().await?;
                    tally
                        .seen
                        .record(ack.msg_type(), ack.front.len() + ack.data.len());
                    if ack.msg_type() != wire::DATA_ACK {
                        tally.mismatches.fetch_add(1, Ordering::Relaxed);
                    }
                    if sent < count {
                        sent += 1;
                        conn.send_message(message(first + sent as u64)).await?;
                    }
                }
                Ok::<_, rados::msgr2::Msgr2Error>(t.elapsed().as_secs_f64())
            }
            .await;
            match result {
                Ok(secs) => (Some(conn), Ok(secs)),
                Err(e) => (None, Err(e.to_string())),
            }
        })?;
        self.next_seq += count as u64;
        self.main = conn;
        Ok((count * self.data.len()) as f64 / secs?)
    }

    /// Ping-pong on every rate-phase connection at once, one task each, for `duration`;
    /// returns round trips per second over all of them.
    pub fn rate(&mut self, duration: Duration) -> Result<f64, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let t = Instant::now();
        let tasks: Vec<_> = std::mem::take(&mut self.many)
            .into_iter()
            .map(|mut conn| {
                let (stop, done, tally, small) =
                    (stop.clone(), done.clone(), self.tally.clone(), self.small);
                self.rt.spawn(async move {
                    let mut slab = BytesMut::new();
                    let mut seq = 0;
                    while !stop.load(Ordering::Relaxed) {
                        seq += 1;
                        round_trip(&mut conn, &mut slab, wire::MANY_PING, seq, small, &tally)
                            .await?;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok::<_, rados::msgr2::Msgr2Error>(conn)
                })
            })
            .collect();
        std::thread::sleep(duration);
        let n = done.load(Ordering::Relaxed);
        let secs = t.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            let conn = self
                .rt
                .block_on(task)
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("rate phase: {e}"))?;
            self.many.push(conn);
        }
        Ok(n as f64 / secs)
    }

    pub fn mismatches(&self) -> u64 {
        self.tally.mismatches.load(Ordering::Relaxed)
    }

    /// The replies' sizes, as this client received them.
    pub fn seen(&self) -> &Seen {
        &self.tally.seen
    }
}
