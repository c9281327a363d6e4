//! The one record Ringwire's BPF programs write to their ring buffer, shared by the BPF side
//! (`no_std`) and `ringwire-trace` (with the `user` feature).
#![no_std]

/// One event. `kind` says what `a`..`d` hold (see the constants).
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
}

/// `ringwire_conn_state`: a = conn, b = session, c = role, d = old << 32 | new.
pub const CONN_STATE: u32 = 1;
/// `ringwire_session_state`: a = session, b = old, c = new.
pub const SESSION_STATE: u32 = 2;
/// `ringwire_msg_queued`: a = session, c = type, d = length.
pub const MSG_QUEUED: u32 = 3;
/// `ringwire_msg_sent`: a = session, b = seq, c = type, d = length.
pub const MSG_SENT: u32 = 4;
/// `ringwire_msg_dispatched`: a = session, b = seq, c = type, d = length.
pub const MSG_DISPATCHED: u32 = 5;
/// `ringwire_fault`: a = conn, b = session, c = reason.
pub const FAULT: u32 = 6;
/// `ringwire_reconnect`: a = session, b = connect_seq, c = outcome.
pub const RECONNECT: u32 = 7;

/// `ringwire_conn_socket`: a = conn, b = local port, c = peer port.
pub const CONN_SOCKET: u32 = 8;
/// Tracepoint `sock/inet_sock_set_state` (TCP): a = source port, b = destination port,
/// c = old state, d = new state (the kernel's TCP_* numbers).
pub const TCP_STATE: u32 = 9;

#[cfg(feature = "user")]
// SAFETY: plain `repr(C)` integers, no padding (4 + 4 + 5 × 8 bytes).
unsafe impl aya::Pod for Event {}
