//! Ceph's AsyncMessenger as a peer: KEEPALIVE2 round trips from one Ringwire client to a
//! throw-away ceph-mon and to a Ringwire server messenger in this process. Both answer in
//! their messenger thread (ceph-mon's AsyncConnection, Ringwire's worker), so the ratio
//! compares the two servers' messengers; the client, its connection policy (lossy client to a
//! monitor) and the frames it sends are the same. Each acknowledgement sends the next
//! keepalive from the client's worker, as the worker ping-pong does.

use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringwire::proto::{EntityAddr, EntityName, EntityType, Policy};
use ringwire::{Connection, Dispatcher, Incoming, Messenger, Options};
use ringwire_bench::ceph_mon::CephMon;

#[derive(Default)]
struct Chain {
    sent_at: Option<Instant>,
    rtts: Vec<Duration>,
    remaining: usize,
    done: Option<Sender<()>>,
}

/// The client's dispatcher: times each acknowledgement and sends the next keepalive.
#[derive(Default)]
struct Probe(Mutex<Chain>);

impl Dispatcher for Probe {
    fn dispatch(&self, _conn: &Connection, _msg: Incoming) {}
    fn on_keepalive_ack(&self, conn: &Connection, _rtt: Duration) {
        let mut c = self.0.lock().expect("not poisoned");
        if let Some(t) = c.sent_at.take() {
            c.rtts.push(t.elapsed());
        }
        if c.remaining > 0 {
            c.remaining -= 1;
            c.sent_at = Some(Instant::now());
            conn.keepalive();
        } else if let Some(done) = c.done.take() {
            let _ = done.send(());
        }
    }
}

/// The server messenger's dispatcher: the messenger answers keepalives itself.
struct Silent;

impl Dispatcher for Silent {
    fn dispatch(&self, _conn: &Connection, _msg: Incoming) {}
}

pub(super) struct Keepalive {
    probe: Arc<Probe>,
    to_ringwire: Connection,
    to_mon: Connection,
    // Held for their connections' lifetime; the monitor stops on drop.
    _client: Messenger,
    _server: Messenger,
    _mon: CephMon,
}

fn one_worker() -> Options {
    Options {
        workers: 1,
        ..Options::default()
    }
}

impl Keepalive {
    /// Starts ceph-mon (a minute at most) and the Ringwire server, and connects the client to
    /// both.
    pub(super) fn start() -> Result<Keepalive, String> {
        let mon = CephMon::start()?;
        let server = Messenger::builder(EntityName {
            ty: EntityType::MON,
            id: "bench".into(),
        })
        .bind(EntityAddr::parse("v2:127.0.0.1:0").expect("valid"))
        .policy(EntityType::CLIENT, Policy::stateless_server())
        .options(one_worker())
        .start(Arc::new(Silent))
        .map_err(|e| e.to_string())?;
        let probe = Arc::new(Probe::default());
        let client = Messenger::builder(EntityName {
            ty: EntityType::CLIENT,
            id: "bench-keepalive".into(),
        })
        .policy(EntityType::MON, Policy::lossy_client())
        .options(one_worker())
        .start(probe.clone())
        .map_err(|e| e.to_string())?;
        let mon_addr = EntityAddr::parse(&mon.addr()).map_err(|e| e.to_string())?;
        let to_mon = client.connect(mon_addr, EntityType::MON);
        let to_ringwire = client.connect(server.addrs().0[0], EntityType::MON);
        for (c, what) in [(&to_mon, "ceph-mon"), (&to_ringwire, "the Ringwire server")] {
            c.wait_ready(Duration::from_secs(20))
                .map_err(|e| format!("connecting to {what}: {e}"))?;
        }
        Ok(Keepalive {
            probe,
            to_ringwire,
            to_mon,
            _client: client,
            _server: server,
            _mon: mon,
        })
    }

    /// `iters` round trips (after `warmup`) to the Ringwire server, then to ceph-mon; each
    /// sorted.
    pub(super) fn measure(
        &self,
        warmup: usize,
        iters: usize,
    ) -> Result<(Vec<Duration>, Vec<Duration>), String> {
        Ok((
            self.chain(&self.to_ringwire, warmup, iters)?,
            self.chain(&self.to_mon, warmup, iters)?,
        ))
    }

    fn chain(
        &self,
        conn: &Connection,
        warmup: usize,
        iters: usize,
    ) -> Result<Vec<Duration>, String> {
        if conn.is_closed() {
            return Err(format!(
                "keepalive connection closed: {}",
                conn.last_fault()
                    .map_or_else(|| "no fault".into(), |f| f.to_string())
            ));
        }
        let (tx, rx) = channel();
        {
            let mut c = self.probe.0.lock().expect("not poisoned");
            *c = Chain {
                sent_at: Some(Instant::now()),
                rtts: Vec::with_capacity(warmup + iters),
                remaining: warmup + iters - 1,
                done: Some(tx),
            };
            conn.keepalive();
        }
        rx.recv_timeout(Duration::from_secs(60))
            .map_err(|_| "KEEPALIVE2 round trips stalled".to_string())?;
        let mut c = self.probe.0.lock().expect("not poisoned");
        let at = warmup.min(c.rtts.len());
        let mut rtts = c.rtts.split_off(at);
        rtts.sort();
        Ok(rtts)
    }
}
