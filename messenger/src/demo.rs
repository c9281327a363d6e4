//! `ringwire demo`: a lossless client and a stateful server exchanging messages over an
//! in-memory pipe, measured against the floor any msgr2 implementation has on that pipe
//! (copying each byte twice and checksumming it twice), in the same run. It exercises the
//! whole protocol core; sockets arrive with the io_uring runtime.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::pipe::{Pipe, CLIENT, SERVER};
use crate::proto::crc::{ceph_crc32c, SEGMENT_SEED};
use crate::proto::{
    EndpointConfig, EntityAddr, EntityAddrVec, EntityName, EntityType, Event, Message, Policy,
};

/// What one demo round measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DemoRound {
    pub messages: u64,
    pub payload_bytes: u64,
    pub wire_bytes: u64,
    pub core_secs: f64,
    pub baseline_secs: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct DemoReport {
    pub rounds: Vec<DemoRound>,
    /// Median over rounds of core time / baseline time (1.0 = as fast as the floor).
    pub median_ratio: f64,
    pub median_msgs_per_sec: f64,
}

fn configs() -> (EndpointConfig, EndpointConfig) {
    let server_addr = EntityAddr::msgr2(([127, 0, 0, 1], 6800).into(), 1);
    let mut client = EndpointConfig::new(
        EntityName {
            ty: EntityType::CLIENT,
            id: "demo".into(),
        },
        EntityAddrVec::default(),
    );
    client.policies = vec![(EntityType::OSD, Policy::lossless_client())];
    let mut server = EndpointConfig::new(
        EntityName {
            ty: EntityType::OSD,
            id: "0".into(),
        },
        EntityAddrVec(vec![server_addr]),
    );
    server.policies = vec![(EntityType::CLIENT, Policy::stateful_server())];
    (client, server)
}

/// One round: `messages` messages of `size` payload bytes, sent in batches of `batch`.
/// Returns an error if any message is lost, duplicated or reordered.
pub fn round(messages: u64, size: usize, batch: u64) -> Result<DemoRound, String> {
    let (client, server) = configs();
    let target = server.addrs.0[0];
    let mut pipe = Pipe::new(client, server);
    let payload = Bytes::from(vec![0xa5u8; size]);
    let started = Instant::now();
    let session = pipe.eps[CLIENT].connect(pipe.now, target, EntityType::OSD);
    let mut sent = 0;
    let mut received = 0u64;
    while sent < messages {
        for _ in 0..batch.min(messages - sent) {
            sent += 1;
            let msg = Message::new(42).with_tid(sent).with_data(payload.clone());
            pipe.eps[CLIENT]
                .send(pipe.now, session, msg)
                .map_err(|_| "session closed".to_string())?;
        }
        if !pipe.run(1_000_000) {
            return Err("pipe did not settle".into());
        }
        for ev in pipe.events[SERVER].drain(..) {
            if let Event::Message { msg, .. } = ev {
                received += 1;
                if msg.tid != received || msg.data_len() != size {
                    return Err(format!("message {received} arrived as tid {}", msg.tid));
                }
            }
        }
    }
    let core = started.elapsed();
    if received != messages {
        return Err(format!("{received} of {messages} messages arrived"));
    }
    let baseline = floor(messages, &payload);
    Ok(DemoRound {
        messages,
        payload_bytes: messages * size as u64,
        wire_bytes: pipe.bytes[CLIENT],
        core_secs: core.as_secs_f64(),
        baseline_secs: baseline.as_secs_f64(),
    })
}

/// The same payload bytes copied twice and checksummed twice.
fn floor(messages: u64, payload: &[u8]) -> Duration {
    let mut a = vec![0u8; payload.len()];
    let mut b = vec![0u8; payload.len()];
    let started = Instant::now();
    let mut crc = 0;
    for _ in 0..messages {
        a.copy_from_slice(payload);
        crc ^= ceph_crc32c(SEGMENT_SEED, &a);
        b.copy_from_slice(std::hint::black_box(&a));
        crc ^= ceph_crc32c(SEGMENT_SEED, &b);
    }
    std::hint::black_box(crc);
    started.elapsed()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(rounds: usize, messages: u64, size: usize) -> Result<DemoReport, String> {
    let rounds: Vec<DemoRound> = (0..rounds.max(1))
        .map(|_| round(messages, size, 64))
        .collect::<Result<_, _>>()?;
    Ok(DemoReport {
        median_ratio: median(
            rounds
                .iter()
                .map(|r| r.core_secs / r.baseline_secs)
                .collect(),
        ),
        median_msgs_per_sec: median(
            rounds
                .iter()
                .map(|r| r.messages as f64 / r.core_secs)
                .collect(),
        ),
        rounds,
    })
}
