//! USDT-style probe points for the eBPF companion: `#[no_mangle]`, `#[inline(never)]`,
//! `extern "C"` functions with a stable name and argument list (the ABI in
//! `docs/observability.md`). They do nothing; a uprobe on their symbol sees every call and its
//! arguments. `black_box` keeps the optimiser from deleting calls to an empty function, and a
//! distinct constant in each body keeps the linker from folding two probes into one address.
//!
//! Ids are unique within a process: messenger (8 bits) | worker (8 bits) | counter (40 bits),
//! so connections of different workers and messengers never collide.

use std::hint::black_box;

/// A connection (one socket) changed state. States: 0 CONNECTING, 1 BANNER, 2 HELLO, 3 AUTH,
/// 4 AUTH_SIGN, 5 SESSION, 6 READY, 7 CLOSED. `role`: 0 client, 1 server.
#[no_mangle]
#[inline(never)]
pub extern "C" fn ringwire_conn_state(conn: u64, session: u64, role: u32, old: u32, new: u32) {
    black_box((1u32, conn, session, role, old, new));
}

/// A session changed state. States: 0 CONNECTING, 1 READY, 2 STANDBY, 3 CLOSED.
#[no_mangle]
#[inline(never)]
pub extern "C" fn ringwire_session_state(session: u64, old: u32, new: u32) {
    black_box((2u32, session, old, new));
}

/// The application queued a message (its sequence number is assigned when it is sent).
#[no_mangle]
#[inline(never)]
pub extern "C" fn ringwire_msg_queued(session: u64, ty: u32, len: u64) {
    black_box((3u32, session, ty, len));
}

/// A message was encoded onto a connection with sequence number `seq` (again on a resend).
#[no_mangle]
#[inline(never)]
pub extern "C" fn ringwire_msg_sent(session: u64, seq: u64, ty: u32, len: u64) {
    black_box((4u32, session, seq, ty, len));
}

/// A message was handed to the dispatcher.
#[no_mangle]
#[inline(never)]
pub extern "C" fn ringwire_msg_dispatched(session: u64, seq: u64, ty: u32, len: u64) {
    black_box((5u32, session, seq, ty, len));
}

/// A connection failed; `reason` is `FaultReason::code()`.
#[no_mangle]
#[inline(never)]
pub extern "C" fn ringwire_fault(conn: u64, session: u64, reason: u32) {
    black_box((6u32, conn, session, reason));
}

/// A SESSION_RECONNECT was answered (server: decided; client: received). Outcomes: 1 OK,
/// 2 RETRY, 3 RETRY_GLOBAL, 4 RESET full, 5 RESET partial, 6 WAIT.
#[no_mangle]
#[inline(never)]
pub extern "C" fn ringwire_reconnect(session: u64, connect_seq: u64, outcome: u32) {
    black_box((7u32, session, connect_seq, outcome));
}

/// A connection's TCP socket is established (dialled or accepted): its ports, so a tracer can
/// join the kernel's socket events (keyed by ports) with the connection.
#[no_mangle]
#[inline(never)]
pub extern "C" fn ringwire_conn_socket(conn: u64, local_port: u32, peer_port: u32) {
    black_box((8u32, conn, local_port, peer_port));
}

pub const RECONNECT_OK: u32 = 1;
pub const RECONNECT_RETRY: u32 = 2;
pub const RECONNECT_RETRY_GLOBAL: u32 = 3;
pub const RECONNECT_RESET_FULL: u32 = 4;
pub const RECONNECT_RESET_PARTIAL: u32 = 5;
pub const RECONNECT_WAIT: u32 = 6;

/// The outcome code of a reply to SESSION_RECONNECT, if it is one.
pub fn reconnect_outcome(reply: &super::Control) -> Option<u32> {
    use super::Control::*;
    Some(match reply {
        SessionReconnectOk { .. } => RECONNECT_OK,
        SessionRetry { .. } => RECONNECT_RETRY,
        SessionRetryGlobal { .. } => RECONNECT_RETRY_GLOBAL,
        SessionReset { full: true } => RECONNECT_RESET_FULL,
        SessionReset { full: false } => RECONNECT_RESET_PARTIAL,
        Wait => RECONNECT_WAIT,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_probe_has_its_own_address() {
        // A folded probe would make one uprobe fire for two kinds of event.
        let mut addrs = [
            ringwire_conn_state as *const () as usize,
            ringwire_session_state as *const () as usize,
            ringwire_msg_queued as *const () as usize,
            ringwire_msg_sent as *const () as usize,
            ringwire_msg_dispatched as *const () as usize,
            ringwire_fault as *const () as usize,
            ringwire_reconnect as *const () as usize,
            ringwire_conn_socket as *const () as usize,
        ];
        addrs.sort();
        assert!(addrs.windows(2).all(|w| w[0] != w[1]), "{addrs:x?}");
    }
}
