//! What `ringwire bench` reports: the figures of each round, their medians and paired ratios,
//! the sizes every side sent, the integrity count; serialised as they are by `--json`
//! (field names are read by scripts and by `cargo xtask`), or printed as a table.

use serde::Serialize;

/// One round's figures: Ringwire's phases and the baselines', measured back to back.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Round {
    pub rw_p50_us: f64,
    pub rw_p99_us: f64,
    pub rw_p999_us: f64,
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
    /// `--mode secure`: the ping-pong p50 and the stream of the cephx/secure messengers.
    pub secure_p50_us: Option<f64>,
    pub secure_stream_mbps: Option<f64>,
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
            secure_p50_us: rounds[0]
                .secure_p50_us
                .map(|_| col(|r| r.secure_p50_us.unwrap_or(f64::NAN))),
            secure_stream_mbps: rounds[0]
                .secure_stream_mbps
                .map(|_| col(|r| r.secure_stream_mbps.unwrap_or(f64::NAN))),
        }
    }
}

/// The median over `rounds` of `f`: one figure, or a ratio paired within each round.
pub(super) fn median_of(rounds: &[Round], f: fn(&Round) -> f64) -> f64 {
    let mut v: Vec<f64> = rounds.iter().map(f).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `n` bytes as the docs write them: 64 B, 4 KiB, 4 MiB, 1000 B.
fn human_bytes(n: usize) -> String {
    match n {
        0 => "0 B".into(),
        n if n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} B"),
    }
}

/// The report as a table on standard output: one row per figure, medians over rounds.
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
        "payload per message, Ringwire and baselines alike: ping-pong and rate {small} (echoed), stream {large}; \
         Ringwire's msgr2 framing adds {framing}, not counted"
    );
    println!(
        "{:<34} {:>12} {:>12} {:>12} {:>16}",
        "figure (median)", "ringwire", "std", "io_uring", "ratio"
    );
    println!(
        "{:<34} {:>9.1} us {:>9.1} us {:>9.1} us {:>9.2} x std",
        format!("{small} ping-pong p50"),
        m.rw_p50_us,
        m.std_p50_us,
        m.uring_p50_us,
        r.ratio_p50_vs_std
    );
    println!(
        "{:<34} {:>9.1} us",
        format!("{small} ping-pong p99"),
        m.rw_p99_us
    );
    println!(
        "{:<34} {:>9.1} us",
        format!("{small} ping-pong p999"),
        m.rw_p999_us
    );
    println!(
        "{:<34} {:>7.0} MB/s {:>7.0} MB/s {:>7.0} MB/s {:>7.2} x uring",
        format!("{large} stream, one connection"),
        m.rw_stream_mbps,
        m.std_stream_mbps,
        m.uring_stream_mbps,
        r.ratio_stream_vs_uring
    );
    println!(
        "{:<34} {:>9.0}/s {:>9.0}/s {:>12} {:>9.2} x std",
        format!(
            "{} rate, {} conns vs 1",
            human_bytes(z.rate.ringwire),
            r.connections
        ),
        m.rw_many_msgs_per_sec,
        m.std_one_msgs_per_sec,
        "",
        r.ratio_many_vs_one_std
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
        "{:<34} {:>6.0} MB/s",
        format!("CRC32C over {large}, one CPU"),
        m.crc32c_mbps
    );
    if let Some(b) = r.idle_connection_bytes {
        println!(
            "{:<34} {:>9.1} KiB",
            "memory per idle connection",
            b as f64 / 1024.0
        );
    }
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
