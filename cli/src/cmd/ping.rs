//! `ringwire ping`: round-trip times measured with KEEPALIVE2 / KEEPALIVE2_ACK, which every
//! msgr2 peer answers, real Ceph daemons included.

use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ringwire::proto::{EntityAddr, EntityName, EntityType, FaultReason, Message, Policy};
use ringwire::{Connection, Dispatcher, Messenger, Options};

enum Heard {
    Ready,
    Rtt(Duration),
    Failed(String),
}

struct Pinger(Mutex<Sender<Heard>>);

impl Pinger {
    fn tell(&self, h: Heard) {
        let _ = self.0.lock().expect("not poisoned").send(h);
    }
}

impl Dispatcher for Pinger {
    fn dispatch(&self, _conn: &Connection, _msg: Message) {}
    fn on_connect(&self, _conn: &Connection) {
        self.tell(Heard::Ready);
    }
    fn on_keepalive_ack(&self, _conn: &Connection, rtt: Duration) {
        self.tell(Heard::Rtt(rtt));
    }
    fn on_reset(&self, _conn: &Connection) {
        self.tell(Heard::Failed(
            "connection reset by the peer (is the address right, nonce included, e.g. v2:IP:PORT/NONCE?)".into(),
        ));
    }
    fn on_refused(&self, _conn: &Connection, reason: &FaultReason) {
        self.tell(Heard::Failed(format!("refused: {reason}")));
    }
}

pub struct PingArgs {
    pub addr: EntityAddr,
    pub peer_type: EntityType,
    pub name: EntityName,
    pub count: usize,
    pub interval: Duration,
    pub timeout: Duration,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

pub fn run(a: PingArgs) -> Result<(), String> {
    let (tx, rx) = channel();
    let m = Messenger::builder(a.name)
        .default_policy(Policy::lossy_client())
        .options(Options {
            workers: 1,
            ..Options::default()
        })
        .start(Arc::new(Pinger(Mutex::new(tx))))
        .map_err(|e| e.to_string())?;
    let conn = m.connect(a.addr, a.peer_type);
    match rx.recv_timeout(a.timeout) {
        Ok(Heard::Ready) => {}
        Ok(Heard::Failed(why)) => return Err(format!("{}: {why}", a.addr)),
        Ok(Heard::Rtt(_)) => unreachable!("no keepalive before the handshake"),
        Err(_) => return Err(format!("{}: no handshake within {:?}", a.addr, a.timeout)),
    }
    let peer = conn.peer().map(|p| p.to_string()).unwrap_or_default();
    println!("PING {} ({peer}): KEEPALIVE2 round trips", a.addr);
    let mut rtts = Vec::with_capacity(a.count);
    for seq in 1..=a.count {
        conn.keepalive();
        match rx.recv_timeout(a.timeout) {
            Ok(Heard::Rtt(rtt)) => {
                println!("seq={seq} rtt={:.1} us", us(rtt));
                rtts.push(rtt);
            }
            Ok(Heard::Failed(why)) => return Err(why),
            Ok(Heard::Ready) => {}
            Err(_) => println!("seq={seq} timeout"),
        }
        if seq < a.count {
            std::thread::sleep(a.interval);
        }
    }
    if rtts.is_empty() {
        return Err("no reply".into());
    }
    rtts.sort();
    println!(
        "{} sent, {} received, rtt min {:.1} us, p50 {:.1} us, p99 {:.1} us",
        a.count,
        rtts.len(),
        us(rtts[0]),
        us(percentile(&rtts, 0.50)),
        us(percentile(&rtts, 0.99))
    );
    conn.mark_down();
    Ok(())
}
