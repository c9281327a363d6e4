//! What Ringwire's BPF programs and `ringwire-trace` share (`no_std`; the `user` feature adds
//! the loader's `Pod` impls): the ring-buffer event, the map keys and values, and the indices
//! of the configuration arrays.
#![no_std]

/// One event on the ring buffer. `kind` says what `a`..`e` and `addr` hold (see the constants).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: u32,
    pub pid: u32,
    pub ts_ns: u64,
    pub a: u64,
    pub b: u64,
    pub c: u64,
    pub d: u64,
    pub e: u64,
    pub addr: [u8; 16],
}

/// `ringwire_conn_state`: a = conn, b = session, c = role, d = old << 32 | new.
pub const CONN_STATE: u32 = 1;
/// `ringwire_session_state`: a = session, b = old, c = new, d = policy bits.
pub const SESSION_STATE: u32 = 2;
/// `ringwire_msg_queued` (only with message events on): a = session, c = type, d = length.
pub const MSG_QUEUED: u32 = 3;
/// `ringwire_msg_sent` (only with message events on): a = session, b = seq, c = type,
/// d = length, e = nanoseconds since it was queued.
pub const MSG_SENT: u32 = 4;
/// `ringwire_msg_dispatched` (only with message events on): a = session, b = seq, c = type,
/// d = length, e = nanoseconds since the peer sent it (0 when the sender is not traced).
pub const MSG_DISPATCHED: u32 = 5;
/// `ringwire_fault`: a = conn, b = session, c = reason.
pub const FAULT: u32 = 6;
/// `ringwire_reconnect`: a = session, b = connect_seq, c = outcome.
pub const RECONNECT: u32 = 7;
/// `ringwire_conn_socket`: a = conn, b = session, c = info (role | state << 8 | session
/// state << 16 | policy << 24), d = local port << 16 | peer port, addr = peer IP (IPv6 or
/// v4-mapped).
pub const CONN_SOCKET: u32 = 8;
/// Tracepoint `sock/inet_sock_set_state` (TCP): a = source port, b = destination port,
/// c = old state, d = new state (the kernel's TCP_* numbers).
pub const TCP_STATE: u32 = 9;
/// Tracepoint `tcp/tcp_retransmit_skb`: a = source port, b = destination port, c = TCP state.
pub const TCP_RETRANSMIT: u32 = 10;

/// Latency histograms: bucket `i` counts latencies in [2^i, 2^(i+1)) ns, the last one
/// everything above (2^31 ns ≈ 2.1 s).
pub const HIST_BUCKETS: usize = 32;

/// The bucket of a latency in nanoseconds: floor(log2), without a loop or `ctlz` (neither
/// suits the BPF verifier).
#[inline(always)]
pub fn bucket(ns: u64) -> usize {
    let mut v = ns;
    let mut b = 0usize;
    if v >= 1 << 32 {
        v >>= 32;
        b += 32;
    }
    if v >= 1 << 16 {
        v >>= 16;
        b += 16;
    }
    if v >= 1 << 8 {
        v >>= 8;
        b += 8;
    }
    if v >= 1 << 4 {
        v >>= 4;
        b += 4;
    }
    if v >= 1 << 2 {
        v >>= 2;
        b += 2;
    }
    if v >= 1 << 1 {
        b += 1;
    }
    if b >= HIST_BUCKETS {
        HIST_BUCKETS - 1
    } else {
        b
    }
}

/// A session of one process (`SESSIONS` map key).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SessionKey {
    pub pid: u32,
    pub _pad: u32,
    pub session: u64,
}

/// A connection of one process (`CONN_PORTS` map key).
pub type ConnKey = SessionKey;

/// Per-session counters and latency histograms, kept in the kernel (`SESSIONS` map). Written
/// only from the session's own worker thread, so plain increments suffice. The counters are
/// the messenger's own (every message), as of its last session or socket report.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SessionStats {
    pub msgs_out: u64,
    pub bytes_out: u64,
    pub msgs_in: u64,
    pub bytes_in: u64,
    /// The current connection's local port << 16 | peer port (0 until known).
    pub ports: u32,
    pub _pad: u32,
    /// From the worker taking a message in to writing it, per sampled message.
    pub queued_to_sent: [u64; HIST_BUCKETS],
    /// From the peer's `ringwire_msg_sent` to this side's `ringwire_msg_dispatched`, per sampled
    /// message: only when both ends are traced by the same tracer.
    pub sent_to_dispatched: [u64; HIST_BUCKETS],
}

/// A message on the wire (`SENT_AT` key): the sender's ports and the sequence number.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WireKey {
    pub sport: u16,
    pub dport: u16,
    pub _pad: u32,
    pub seq: u64,
}

/// io_uring activity of one process (`IO_URING` map, per pid).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct IoUringStats {
    pub submitted: u64,
    pub completed: u64,
    pub failed: u64,
}

/// `CONFIG` indices. Follow: a uprobe hit adds its process to the traced set (the uprobes are
/// attached to a binary for every process running it).
pub const CONFIG_FOLLOW: u32 = 0;
/// Message events: per-message events on the ring buffer, not only counters and histograms.
pub const CONFIG_MESSAGE_EVENTS: u32 = 1;
pub const CONFIG_LEN: u32 = 2;

/// `OFFSETS` indices: tracepoint field offsets, read by `ringwire-trace` from tracefs at
/// attach time so the programs do not depend on one kernel's layout.
pub const OFF_SET_STATE_OLDSTATE: u32 = 0;
pub const OFF_SET_STATE_NEWSTATE: u32 = 1;
pub const OFF_SET_STATE_SPORT: u32 = 2;
pub const OFF_SET_STATE_DPORT: u32 = 3;
pub const OFF_SET_STATE_PROTOCOL: u32 = 4;
pub const OFF_RETRANSMIT_STATE: u32 = 5;
pub const OFF_RETRANSMIT_SPORT: u32 = 6;
pub const OFF_RETRANSMIT_DPORT: u32 = 7;
pub const OFF_COMPLETE_RES: u32 = 8;
pub const OFFSETS_LEN: u32 = 9;

/// The policy bits the probes report (`ringwire_session_state`'s d, `ringwire_conn_socket`'s
/// c >> 24). The messenger's `Policy::probe_bits` builds them from these.
pub mod policy {
    pub const LOSSY: u32 = 1 << 0;
    pub const SERVER: u32 = 1 << 1;
    pub const STANDBY: u32 = 1 << 2;
    pub const RESETCHECK: u32 = 1 << 3;

    /// Ceph's policy factories by the bits they report. `stateless_registered_server`
    /// differs from `stateless_server` only in what the probes do not report, so the latter
    /// names both; the messenger tests that every factory finds its name here.
    pub const FACTORIES: [(&str, u32); 6] = [
        ("lossy_client", LOSSY),
        ("stateless_server", LOSSY | SERVER),
        ("lossless_client", RESETCHECK),
        ("stateful_server", SERVER | STANDBY | RESETCHECK),
        ("lossless_peer", STANDBY),
        ("lossless_peer_reuse", STANDBY | RESETCHECK),
    ];

    /// The factory whose policy reports `bits`, or "?".
    pub fn name(bits: u64) -> &'static str {
        let mut i = 0;
        while i < FACTORIES.len() {
            if FACTORIES[i].1 as u64 == bits {
                return FACTORIES[i].0;
            }
            i += 1;
        }
        "?"
    }
}

/// `ringwire_fault`'s reason codes: the messenger's `FaultReason::code()`, named.
pub mod fault {
    pub const NAMES: [&str; 29] = [
        "unknown",
        "socket_closed",
        "connect_failed",
        "frame",
        "control",
        "message",
        "unexpected_frame",
        "wrong_peer_type",
        "auth_method_refused",
        "unsupported_con_mode",
        "bad_signature",
        "missing_features",
        "peer_missing_features",
        "bad_ident",
        "handshake_timeout",
        "idle_timeout",
        "injected",
        "intercepted",
        "wait",
        "stale",
        "ident_refused",
        "replaced",
        "seq_overflow",
        "standby_timeout",
        "auth_rejected",
        "con_mode_refused",
        "cephx",
        "secure",
        "no_auth_method",
    ];

    pub fn name(code: u32) -> &'static str {
        match NAMES.get(code as usize) {
            Some(n) => n,
            None => "unknown",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY (all): `repr(C)` integers and byte arrays with explicit padding fields, so no
    // uninitialised bytes.
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::SessionKey {}
    unsafe impl aya::Pod for super::SessionStats {}
    unsafe impl aya::Pod for super::WireKey {}
    unsafe impl aya::Pod for super::IoUringStats {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_floor_log2() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(1), 0);
        assert_eq!(bucket(2), 1);
        assert_eq!(bucket(3), 1);
        assert_eq!(bucket(1023), 9);
        assert_eq!(bucket(1024), 10);
        assert_eq!(bucket(10_000), 13);
        assert_eq!(bucket(u64::MAX), HIST_BUCKETS - 1);
    }
}
