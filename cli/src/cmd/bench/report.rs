//! What `ringwire bench` reports: the figures of each round, their medians and paired ratios,
//! the sizes every side sent, the integrity count; serialised as they are by `--json`
//! (field names are read by scripts and by `cargo xtask`), or printed as a table.

use std::time::Duration;

use serde::Serialize;

/// One round's figures: Ringwire's phases, the baselines' and the peers', measured back to
/// back.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Round {
    /// Ringwire ping-pong, each ping sent from the dispatcher on the worker.
    pub rw_p50_us: f64,
    pub rw_p99_us: f64,
    pub rw_p999_us: f64,
    /// Ringwire ping-pong, each ping sent from an application thread, to which the dispatcher
    /// hands the echo.
    pub rw_app_p50_us: f64,
    pub rw_app_p99_us: f64,
    /// Ringwire ping-pong from a task on the client's worker (`Connection::spawn`), to which
    /// the dispatcher hands the echo.
    pub rw_task_p50_us: f64,
    pub rw_task_p99_us: f64,
    pub std_p50_us: f64,
    pub uring_p50_us: f64,
    pub rw_stream_mbps: f64,
    pub std_stream_mbps: f64,
    pub uring_stream_mbps: f64,
    pub rw_many_msgs_per_sec: f64,
    pub std_one_msgs_per_sec: f64,
    /// CRC32C over the stream's payload on this CPU: msgr2's crc mode computes it over every
    /// byte on both ends, so it bounds the stream where checksumming is slow (emulated CPUs).
    pub crc32c_mbps: f64,
    /// rados-rs (bench/rados-peer), when measured.
    pub rados: Option<RadosRound>,
    /// KEEPALIVE2 round trips from one Ringwire client, when ceph-mon was measured.
    pub keepalive: Option<KeepaliveRound>,
    /// `--mode secure`: the ping-pong p50 and the stream of the cephx/secure messengers.
    pub secure_p50_us: Option<f64>,
    pub secure_stream_mbps: Option<f64>,
}

/// rados-rs client against rados-rs server, the same workloads and bytes as Ringwire's.
#[derive(Debug, Default, Clone, Serialize)]
pub struct RadosRound {
    /// Ping-pong from a tokio task on the runtime thread that drives the connection.
    pub task_p50_us: f64,
    pub task_p99_us: f64,
    /// Ping-pong from a plain OS thread, each round trip run with `Handle::block_on`.
    pub thread_p50_us: f64,
    pub thread_p99_us: f64,
    pub stream_mbps: f64,
    /// On as many connections as Ringwire's rate phase.
    pub many_msgs_per_sec: f64,
}

/// KEEPALIVE2 round trips from the same Ringwire client to each server.
#[derive(Debug, Default, Clone, Serialize)]
pub struct KeepaliveRound {
    pub ringwire_p50_us: f64,
    pub ringwire_p99_us: f64,
    pub ceph_mon_p50_us: f64,
    pub ceph_mon_p99_us: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct Integrity {
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub injected_faults: u64,
    /// Echoes (pongs) whose sequence number is not the one of the ping they answer.
    pub echo_mismatches: u64,
}

/// Bytes per message of one phase, for every side. Rates count payload bytes only.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseSizes {
    /// Payload bytes (front + middle + data) of each Ringwire message, as the receiving
    /// messenger saw them (every message of the phase had this size, or the run fails).
    pub ringwire: usize,
    /// Payload bytes of each Ringwire application-thread ping (ping-pong phase only), as
    /// received.
    pub ringwire_app_thread: Option<usize>,
    /// Bytes of each message of the blocking std baseline.
    pub std: usize,
    /// Bytes of each message of the io_uring baseline (the rate phase has none).
    pub io_uring: Option<usize>,
    /// Payload bytes of each Ringwire reply, as received (the echo, or the stream's empty
    /// acknowledgement). The baselines echo their ping-pong messages and acknowledge a whole
    /// stream with one byte.
    pub ringwire_reply: usize,
    /// Bytes a Ringwire message occupies on a TCP connection beyond its payload: the msgr2
    /// frame's preamble, message header, CRCs and epilogue (the session's ACK frames are not
    /// included). Not counted in any rate; the baselines have no framing.
    pub ringwire_frame_overhead: usize,
    /// Payload bytes of each rados-rs message as its server saw them, and of each reply as
    /// its client saw them (absent when rados-rs was not measured).
    pub rados_rs: Option<usize>,
    pub rados_rs_reply: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Sizes {
    pub ping_pong: PhaseSizes,
    pub stream: PhaseSizes,
    /// Ringwire on `connections` connections against the std ping-pong on one.
    pub rate: PhaseSizes,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub policy: String,
    /// `crc`, or `secure` (the secure figures measured beside the crc ones).
    pub mode: String,
    pub transport: String,
    pub pinned_cpu: Option<usize>,
    /// Payload bytes of each ping-pong and rate-phase message, Ringwire and baselines alike.
    pub small_bytes: usize,
    /// Payload bytes of each stream message, Ringwire (data segment) and baselines alike.
    pub large_bytes: usize,
    /// Per phase and per side, as measured.
    pub sizes: Sizes,
    pub connections: usize,
    pub rounds: Vec<Round>,
    pub median: Round,
    /// Median over rounds of the paired ratios.
    pub ratio_p50_vs_std: f64,
    pub ratio_p50_vs_uring: f64,
    pub ratio_stream_vs_uring: f64,
    pub ratio_stream_vs_std: f64,
    pub ratio_many_vs_one_std: f64,
    /// `--mode secure`: secure mode's p50 over crc mode's, and its stream over crc's (paired
    /// within each round; the targets: p50 at most 1.10, stream at least 0.85).
    pub ratio_secure_p50_vs_crc: Option<f64>,
    pub ratio_secure_stream_vs_crc: Option<f64>,
    pub idle_connection_bytes: Option<u64>,
    pub integrity: Integrity,
    /// `--mode secure`: the same count for the secure messengers' session.
    pub secure_integrity: Option<Integrity>,
    /// Every Ringwire figure as a ratio to each baseline and peer.
    pub ratios: Ratios,
    /// Which peers were measured, how, or why not.
    pub peers: Peers,
    /// Each ping-pong's round trips over all rounds, as quantiles (for `--report`'s CDF).
    pub latency_cdf: Vec<Cdf>,
    /// With `--scale`: the figures over message sizes and connection counts.
    pub scale: Option<super::scale::Scale>,
}

/// One series' round trips: `quantiles_us[k]` is the `k / CDF_STEPS` quantile.
#[derive(Debug, Serialize)]
pub struct Cdf {
    pub series: &'static str,
    pub samples: usize,
    pub quantiles_us: Vec<f64>,
}

/// Quantile steps of a `Cdf` (201 points: every half percent).
pub const CDF_STEPS: usize = 200;

/// Round trips of each series, gathered over the rounds.
#[derive(Default)]
pub(super) struct Samples(Vec<(&'static str, Vec<Duration>)>);

impl Samples {
    pub(super) fn add(&mut self, series: &'static str, rtts: &[Duration]) {
        match self.0.iter_mut().find(|(s, _)| *s == series) {
            Some((_, v)) => v.extend_from_slice(rtts),
            None => self.0.push((series, rtts.to_vec())),
        }
    }

    pub(super) fn cdfs(self) -> Vec<Cdf> {
        self.0
            .into_iter()
            .map(|(series, mut v)| {
                v.sort();
                Cdf {
                    series,
                    samples: v.len(),
                    quantiles_us: (0..=CDF_STEPS)
                        .map(|k| {
                            let p = k as f64 / CDF_STEPS as f64;
                            ringwire_bench::percentile(&v, p).as_secs_f64() * 1e6
                        })
                        .collect(),
                }
            })
            .collect()
    }
}

/// A peer's column: measured (and how), or why not.
#[derive(Debug, Serialize)]
pub struct Peer {
    pub measured: bool,
    pub note: String,
}

#[derive(Debug, Serialize)]
pub struct Peers {
    pub rados_rs: Peer,
    pub ceph_mon: Peer,
}

/// A Ringwire latency (lower is better) over each reference's, medians of per-round ratios.
#[derive(Debug, Serialize)]
pub struct LatencyRatios {
    pub std: f64,
    pub io_uring: f64,
    pub rados_rs_task: Option<f64>,
    pub rados_rs_thread: Option<f64>,
}

/// A Ringwire rate (higher is better) over each reference's.
#[derive(Debug, Serialize)]
pub struct RateRatios {
    /// One blocking std connection's for the rate phase.
    pub std: f64,
    pub io_uring: Option<f64>,
    /// rados-rs's, its tasks on the same number of connections for the rate phase.
    pub rados_rs: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Ratios {
    pub ping_pong_p50_worker: LatencyRatios,
    pub ping_pong_p50_app_thread: LatencyRatios,
    pub ping_pong_p50_task: LatencyRatios,
    pub stream: RateRatios,
    pub rate: RateRatios,
    /// KEEPALIVE2 p50 through the Ringwire server over through ceph-mon.
    pub keepalive_p50_ringwire_vs_ceph_mon: Option<f64>,
}

impl Ratios {
    pub(super) fn of(rounds: &[Round]) -> Ratios {
        let r = |f: fn(&Round) -> f64| median_of(rounds, f);
        let rados = |f: fn(&Round, &RadosRound) -> f64| {
            median_where(rounds, |x| x.rados.as_ref().map(|p| f(x, p)))
        };
        Ratios {
            ping_pong_p50_worker: LatencyRatios {
                std: r(|x| x.rw_p50_us / x.std_p50_us),
                io_uring: r(|x| x.rw_p50_us / x.uring_p50_us),
                rados_rs_task: rados(|x, p| x.rw_p50_us / p.task_p50_us),
                rados_rs_thread: rados(|x, p| x.rw_p50_us / p.thread_p50_us),
            },
            ping_pong_p50_app_thread: LatencyRatios {
                std: r(|x| x.rw_app_p50_us / x.std_p50_us),
                io_uring: r(|x| x.rw_app_p50_us / x.uring_p50_us),
                rados_rs_task: rados(|x, p| x.rw_app_p50_us / p.task_p50_us),
                rados_rs_thread: rados(|x, p| x.rw_app_p50_us / p.thread_p50_us),
            },
            ping_pong_p50_task: LatencyRatios {
                std: r(|x| x.rw_task_p50_us / x.std_p50_us),
                io_uring: r(|x| x.rw_task_p50_us / x.uring_p50_us),
                rados_rs_task: rados(|x, p| x.rw_task_p50_us / p.task_p50_us),
                rados_rs_thread: rados(|x, p| x.rw_task_p50_us / p.thread_p50_us),
            },
            stream: RateRatios {
                std: r(|x| x.rw_stream_mbps / x.std_stream_mbps),
                io_uring: Some(r(|x| x.rw_stream_mbps / x.uring_stream_mbps)),
                rados_rs: rados(|x, p| x.rw_stream_mbps / p.stream_mbps),
            },
            rate: RateRatios {
                std: r(|x| x.rw_many_msgs_per_sec / x.std_one_msgs_per_sec),
                io_uring: None,
                rados_rs: rados(|x, p| x.rw_many_msgs_per_sec / p.many_msgs_per_sec),
            },
            keepalive_p50_ringwire_vs_ceph_mon: median_where(rounds, |x| {
                x.keepalive
                    .as_ref()
                    .map(|k| k.ringwire_p50_us / k.ceph_mon_p50_us)
            }),
        }
    }
}

impl Round {
    /// Each figure's median over `rounds`, figure by figure.
    pub(super) fn median(rounds: &[Round]) -> Round {
        let col = |f: fn(&Round) -> f64| median_of(rounds, f);
        Round {
            rw_p50_us: col(|r| r.rw_p50_us),
            rw_p99_us: col(|r| r.rw_p99_us),
            rw_p999_us: col(|r| r.rw_p999_us),
            std_p50_us: col(|r| r.std_p50_us),
            uring_p50_us: col(|r| r.uring_p50_us),
            rw_stream_mbps: col(|r| r.rw_stream_mbps),
            std_stream_mbps: col(|r| r.std_stream_mbps),
            uring_stream_mbps: col(|r| r.uring_stream_mbps),
            rw_many_msgs_per_sec: col(|r| r.rw_many_msgs_per_sec),
            crc32c_mbps: col(|r| r.crc32c_mbps),
            std_one_msgs_per_sec: col(|r| r.std_one_msgs_per_sec),
            rw_app_p50_us: col(|r| r.rw_app_p50_us),
            rw_app_p99_us: col(|r| r.rw_app_p99_us),
            rw_task_p50_us: col(|r| r.rw_task_p50_us),
            rw_task_p99_us: col(|r| r.rw_task_p99_us),
            rados: rounds.iter().any(|r| r.rados.is_some()).then(|| {
                let col = |f: fn(&RadosRound) -> f64| {
                    median_where(rounds, |r| r.rados.as_ref().map(f)).unwrap_or(0.0)
                };
                RadosRound {
                    task_p50_us: col(|p| p.task_p50_us),
                    task_p99_us: col(|p| p.task_p99_us),
                    thread_p50_us: col(|p| p.thread_p50_us),
                    thread_p99_us: col(|p| p.thread_p99_us),
                    stream_mbps: col(|p| p.stream_mbps),
                    many_msgs_per_sec: col(|p| p.many_msgs_per_sec),
                }
            }),
            keepalive: rounds.iter().any(|r| r.keepalive.is_some()).then(|| {
                let col = |f: fn(&KeepaliveRound) -> f64| {
                    median_where(rounds, |r| r.keepalive.as_ref().map(f)).unwrap_or(0.0)
                };
                KeepaliveRound {
                    ringwire_p50_us: col(|k| k.ringwire_p50_us),
                    ringwire_p99_us: col(|k| k.ringwire_p99_us),
                    ceph_mon_p50_us: col(|k| k.ceph_mon_p50_us),
                    ceph_mon_p99_us: col(|k| k.ceph_mon_p99_us),
                }
            }),
            secure_p50_us: median_where(rounds, |r| r.secure_p50_us),
            secure_stream_mbps: median_where(rounds, |r| r.secure_stream_mbps),
        }
    }
}

/// The median over `rounds` of `f`: one figure, or a ratio paired within each round.
pub(super) fn median_of(rounds: &[Round], f: fn(&Round) -> f64) -> f64 {
    median_where(rounds, |r| Some(f(r))).unwrap_or(0.0)
}

/// The median of `f` over the rounds where it has a value (a peer was measured), if any.
fn median_where(rounds: &[Round], f: impl Fn(&Round) -> Option<f64>) -> Option<f64> {
    let mut v: Vec<f64> = rounds.iter().filter_map(f).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

/// `n` bytes as the docs write them: 64 B, 4 KiB, 4 MiB, 1000 B.
pub(super) fn human_bytes(n: usize) -> String {
    match n {
        0 => "0 B".into(),
        n if n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} B"),
    }
}

/// A cell of `width` characters: `value` formatted by `f`, or blank.
fn cell(value: Option<f64>, f: impl Fn(f64) -> String) -> String {
    value.map(f).unwrap_or_default()
}

fn us_cell(v: Option<f64>) -> String {
    cell(v, |v| format!("{v:.1} us"))
}

fn ratio_cell(v: Option<f64>) -> String {
    cell(v, |v| format!("{v:.2}"))
}

/// The report as two tables on standard output: the figures (medians over rounds), then
/// every Ringwire figure as a ratio to each baseline and peer.
pub fn print(r: &Report) {
    let m = &r.median;
    let z = &r.sizes;
    let small = human_bytes(z.ping_pong.ringwire);
    let large = human_bytes(z.stream.ringwire);
    println!(
        "ringwire bench: {} transport, policy {}, {} connections, {} rounds{}",
        r.transport,
        r.policy,
        r.connections,
        r.rounds.len(),
        r.pinned_cpu
            .map(|c| format!(", pinned to CPU {c}"))
            .unwrap_or_default()
    );
    let (ping, stream) = (
        z.ping_pong.ringwire_frame_overhead,
        z.stream.ringwire_frame_overhead,
    );
    let framing = if ping == stream {
        format!("{ping} B per message")
    } else {
        format!("{ping} B per ping, {stream} B per stream message")
    };
    println!(
        "payload per message, every side alike: ping-pong and rate {small} (echoed), stream {large}; \
         msgr2 framing (Ringwire {framing}) not counted"
    );
    for (name, p) in [
        ("rados-rs", &r.peers.rados_rs),
        ("ceph-mon", &r.peers.ceph_mon),
    ] {
        println!("{name}: {}", p.note);
    }
    let rados = m.rados.as_ref();
    let ka = m.keepalive.as_ref();
    println!();
    println!(
        "{:<36} {:>11} {:>11} {:>11} {:>11} {:>11}",
        "figure (median)", "ringwire", "std", "io_uring", "rados-rs", "ceph-mon"
    );
    let row = |what: String, cells: [String; 5]| {
        println!(
            "{what:<36} {:>11} {:>11} {:>11} {:>11} {:>11}",
            cells[0], cells[1], cells[2], cells[3], cells[4]
        );
    };
    let none = String::new;
    row(
        format!("{small} ping-pong p50, worker"),
        [
            us_cell(Some(m.rw_p50_us)),
            us_cell(Some(m.std_p50_us)),
            us_cell(Some(m.uring_p50_us)),
            us_cell(rados.map(|p| p.task_p50_us)),
            none(),
        ],
    );
    row(
        format!("{small} ping-pong p99, worker"),
        [
            us_cell(Some(m.rw_p99_us)),
            none(),
            none(),
            us_cell(rados.map(|p| p.task_p99_us)),
            none(),
        ],
    );
    row(
        format!("{small} ping-pong p999, worker"),
        [us_cell(Some(m.rw_p999_us)), none(), none(), none(), none()],
    );
    row(
        format!("{small} ping-pong p50, app thread"),
        [
            us_cell(Some(m.rw_app_p50_us)),
            none(),
            none(),
            us_cell(rados.map(|p| p.thread_p50_us)),
            none(),
        ],
    );
    row(
        format!("{small} ping-pong p99, app thread"),
        [
            us_cell(Some(m.rw_app_p99_us)),
            none(),
            none(),
            us_cell(rados.map(|p| p.thread_p99_us)),
            none(),
        ],
    );
    row(
        format!("{small} ping-pong p50, task on worker"),
        [
            us_cell(Some(m.rw_task_p50_us)),
            none(),
            none(),
            us_cell(rados.map(|p| p.task_p50_us)),
            none(),
        ],
    );
    row(
        format!("{small} ping-pong p99, task on worker"),
        [
            us_cell(Some(m.rw_task_p99_us)),
            none(),
            none(),
            us_cell(rados.map(|p| p.task_p99_us)),
            none(),
        ],
    );
    let mbps = |v: Option<f64>| cell(v, |v| format!("{v:.0} MB/s"));
    row(
        format!("{large} stream, one connection"),
        [
            mbps(Some(m.rw_stream_mbps)),
            mbps(Some(m.std_stream_mbps)),
            mbps(Some(m.uring_stream_mbps)),
            mbps(rados.map(|p| p.stream_mbps)),
            none(),
        ],
    );
    let per_sec = |v: Option<f64>| cell(v, |v| format!("{v:.0}/s"));
    row(
        format!(
            "{} rate, {} conns (std: 1)",
            human_bytes(z.rate.ringwire),
            r.connections
        ),
        [
            per_sec(Some(m.rw_many_msgs_per_sec)),
            per_sec(Some(m.std_one_msgs_per_sec)),
            none(),
            per_sec(rados.map(|p| p.many_msgs_per_sec)),
            none(),
        ],
    );
    row(
        "KEEPALIVE2 p50, Ringwire client to".into(),
        [
            us_cell(ka.map(|k| k.ringwire_p50_us)),
            none(),
            none(),
            none(),
            us_cell(ka.map(|k| k.ceph_mon_p50_us)),
        ],
    );
    row(
        "KEEPALIVE2 p99, Ringwire client to".into(),
        [
            us_cell(ka.map(|k| k.ringwire_p99_us)),
            none(),
            none(),
            none(),
            us_cell(ka.map(|k| k.ceph_mon_p99_us)),
        ],
    );
    if let (Some(p50), Some(stream), Some(rp), Some(rs)) = (
        m.secure_p50_us,
        m.secure_stream_mbps,
        r.ratio_secure_p50_vs_crc,
        r.ratio_secure_stream_vs_crc,
    ) {
        println!(
            "{:<34} {:>9.1} us {:>38.2} x crc",
            format!("{small} ping-pong p50, secure"),
            p50,
            rp
        );
        println!(
            "{:<34} {:>7.0} MB/s {:>38.2} x crc",
            format!("{large} stream, secure"),
            stream,
            rs
        );
    }
    println!(
        "{:<36} {:>6.0} MB/s",
        format!("CRC32C over {large}, one CPU"),
        m.crc32c_mbps
    );
    if let Some(b) = r.idle_connection_bytes {
        println!(
            "{:<36} {:>8.1} KiB",
            "memory per idle connection",
            b as f64 / 1024.0
        );
    }
    let q = &r.ratios;
    println!();
    println!(
        "{:<36} {:>11} {:>11} {:>11} {:>11} {:>11}",
        "ringwire / reference (median ratio)",
        "std",
        "io_uring",
        "rados task",
        "rados thrd",
        "ceph-mon"
    );
    let ratios = |what: &str, cells: [Option<f64>; 5]| {
        row(what.into(), cells.map(ratio_cell));
    };
    for (what, l) in [
        ("ping-pong p50, worker", &q.ping_pong_p50_worker),
        ("ping-pong p50, app thread", &q.ping_pong_p50_app_thread),
        ("ping-pong p50, task on worker", &q.ping_pong_p50_task),
    ] {
        ratios(
            what,
            [
                Some(l.std),
                Some(l.io_uring),
                l.rados_rs_task,
                l.rados_rs_thread,
                None,
            ],
        );
    }
    ratios(
        "stream (higher is better)",
        [
            Some(q.stream.std),
            q.stream.io_uring,
            q.stream.rados_rs,
            None,
            None,
        ],
    );
    ratios(
        "rate (higher is better)",
        [Some(q.rate.std), None, q.rate.rados_rs, None, None],
    );
    ratios(
        "KEEPALIVE2 p50, Ringwire server",
        [None, None, None, None, q.keepalive_p50_ringwire_vs_ceph_mon],
    );
    for (what, i) in [
        ("messages", Some(&r.integrity)),
        ("secure", r.secure_integrity.as_ref()),
    ] {
        let Some(i) = i else { continue };
        println!(
            "{what}: {} sent, {} received, {} lost, {} duplicated, {} reordered, {} echoes mismatched ({} injected socket failures)",
            i.sent, i.received, i.lost, i.duplicated, i.reordered, i.echo_mismatches, i.injected_faults
        );
    }
    if let Some(scale) = &r.scale {
        super::scale::print(scale);
    }
}

#[cfg(test)]
mod tests {
    use super::human_bytes;

    #[test]
    fn labels_name_the_sizes() {
        assert_eq!(human_bytes(64), "64 B");
        assert_eq!(human_bytes(1000), "1000 B");
        assert_eq!(human_bytes(4096), "4 KiB");
        assert_eq!(human_bytes(4 << 20), "4 MiB");
        assert_eq!(human_bytes((4 << 20) + 8), "4194312 B");
    }
}
