//! USDT-style probe points for the eBPF companion: `#[no_mangle]`, `#[inline(never)]`,
//! `extern "C"` functions with a stable name and argument list (the ABI in
//! `docs/observability.md`). They do nothing; a uprobe on their symbol sees every call and its
//! arguments.
//!
//! Ids are unique within a process: messenger (8 bits) | worker (8 bits) | counter (40 bits),
//! so connections of different workers and messengers never collide.

/// Defines one probe. On x86-64 its body is a 5-byte NOP, a distinct `mov` and `ret`: a uprobe
/// placed on a 5-byte NOP is turned by Linux ≥ 6.18 into a call through a trampoline and the
/// `uprobe` syscall, several times cheaper than the int3 trap an ordinary instruction costs
/// (docs/observability.md measures both). The `mov` keeps the compiler and linker from merging
/// two probes into one address.
macro_rules! probe {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) = $tag:literal;) => {
        $(#[$doc])*
        #[cfg(all(feature = "probes", target_arch = "x86_64"))]
        #[no_mangle]
        #[unsafe(naked)]
        pub extern "C" fn $name($($arg: $ty),*) {
            core::arch::naked_asm!(
                ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
                "mov eax, {tag}",
                "ret",
                tag = const $tag,
            )
        }

        $(#[$doc])*
        #[cfg(all(feature = "probes", not(target_arch = "x86_64")))]
        #[no_mangle]
        #[inline(never)]
        pub extern "C" fn $name($($arg: $ty),*) {
            std::hint::black_box(($tag, $($arg),*));
        }

        /// Without the `probes` feature: no symbol, and calls compile to nothing.
        #[cfg(not(feature = "probes"))]
        #[inline(always)]
        pub fn $name($($arg: $ty),*) {
            let _ = ($($arg),*);
        }
    };
}

/// A session's message counters as the probes report them (by pointer, to
/// `ringwire_session_state` and `ringwire_conn_socket`): every message, where the per-message
/// probes fire only for a sample.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionCounters {
    pub msgs_out: u64,
    pub bytes_out: u64,
    pub msgs_in: u64,
    pub bytes_in: u64,
}

/// Whether the per-message probes fire for the message numbered `n`: one in `every`
/// (`Tuning::probe_sample`; 0: none). Both ends sample by sequence number, so a sampled
/// message is sampled on both.
pub fn sampled(n: u64, every: u32) -> bool {
    every != 0 && n % every as u64 == 0
}

probe! {
    /// A connection (one socket) changed state. States: 0 CONNECTING, 1 BANNER, 2 HELLO, 3 AUTH,
    /// 4 AUTH_SIGN, 5 SESSION, 6 READY, 7 CLOSED. `role`: 0 client, 1 server.
    fn ringwire_conn_state(conn: u64, session: u64, role: u32, old: u32, new: u32) = 1;
}

probe! {
    /// A session changed state. States: 0 CONNECTING, 1 READY, 2 STANDBY, 3 CLOSED.
    /// `policy`: `Policy::probe_bits` (lossy, server, standby, resetcheck); `counters`: its
    /// [`SessionCounters`] (final ones at CLOSED).
    fn ringwire_session_state(
        session: u64,
        old: u32,
        new: u32,
        policy: u32,
        counters: *const SessionCounters
    ) = 2;
}

probe! {
    /// The application queued a message (its sequence number is assigned when it is sent).
    /// Sampled: the n-th message queued on a session, when [`sampled`]`(n)`.
    fn ringwire_msg_queued(session: u64, ty: u32, len: u64) = 3;
}

probe! {
    /// A message was encoded onto a connection with sequence number `seq` (again on a resend),
    /// `queued_ns` after the worker took it in. Sampled by `seq` ([`sampled`]).
    fn ringwire_msg_sent(session: u64, seq: u64, ty: u32, len: u64, queued_ns: u64) = 4;
}

probe! {
    /// A message was handed to the dispatcher. Sampled by `seq` ([`sampled`]).
    fn ringwire_msg_dispatched(session: u64, seq: u64, ty: u32, len: u64) = 5;
}

probe! {
    /// A connection failed; `reason` is `FaultReason::code()`.
    fn ringwire_fault(conn: u64, session: u64, reason: u32) = 6;
}

probe! {
    /// A SESSION_RECONNECT was answered (server: decided; client: received). Outcomes: 1 OK,
    /// 2 RETRY, 3 RETRY_GLOBAL, 4 RESET full, 5 RESET partial, 6 WAIT.
    fn ringwire_reconnect(session: u64, connect_seq: u64, outcome: u32) = 7;
}

probe! {
    /// A connection's socket: reported when it is established (dialled or accepted) and again
    /// every second while it lives, so a tracer attached late still learns every connection and
    /// can join the kernel's socket events (keyed by ports) with it. `info`: role | conn state
    /// << 8 | session state << 16 | policy bits << 24 (session state and policy 0 while the
    /// connection has no session); `ports`: local << 16 | peer; `peer_ip`: 16 bytes, IPv4 as
    /// v4-mapped IPv6; `counters`: the session's [`SessionCounters`] (null without one).
    fn ringwire_conn_socket(
        conn: u64,
        session: u64,
        info: u32,
        ports: u32,
        peer_ip: *const u8,
        counters: *const SessionCounters
    ) = 8;
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
    #[cfg(feature = "probes")]
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
