//! Ringwire's BPF programs: uprobes on the messenger's probe functions
//! (`messenger/src/proto/hooks.rs`) and the tracepoints `sock/inet_sock_set_state`,
//! `tcp/tcp_retransmit_skb`, `io_uring/io_uring_submit_req` and `io_uring/io_uring_complete`,
//! all filtered in the kernel to the traced processes (or, for socket events that run in
//! another task's context, to the ports their connections use).
//!
//! State changes go to the `EVENTS` ring buffer. Message counters come from the messenger
//! itself (with each session and socket report); the per-message probes fire for a sample of
//! messages and feed latency histograms in the kernel (`SESSIONS`), so tracing a busy
//! messenger costs little, and no per-message wake-up of the tracer unless message events are
//! asked for.
#![no_std]
#![no_main]

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user};
use aya_ebpf::macros::{map, tracepoint, uprobe};
use aya_ebpf::maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf};
use aya_ebpf::programs::{ProbeContext, TracePointContext};
use ringwire_trace_common::*;

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// The traced processes.
#[map]
static TARGETS: HashMap<u32, u8> = HashMap::with_max_entries(1024, 0);

#[map]
static CONFIG: Array<u32> = Array::with_max_entries(CONFIG_LEN, 0);

#[map]
static OFFSETS: Array<u32> = Array::with_max_entries(OFFSETS_LEN, 0);

/// Local ports of the traced connections: socket transitions and retransmits often run in
/// softirq context, under another pid. Entries stay (a port is reused rarely and the map is
/// bounded by the port space).
#[map]
static PORTS: HashMap<u16, u8> = HashMap::with_max_entries(65536, 0);

/// Each live connection's ports, so a session learns them when the connection joins it.
#[map]
static CONN_PORTS: HashMap<ConnKey, u32> = HashMap::with_max_entries(65536, 0);

#[map]
static SESSIONS: HashMap<SessionKey, SessionStats> = HashMap::with_max_entries(65536, 0);

/// When each message was sent, for the receiver's sent-to-dispatched latency.
#[map]
static SENT_AT: LruHashMap<WireKey, u64> = LruHashMap::with_max_entries(65536, 0);

/// Per CPU, so the threads of one process count without atomics (the BPF target has none).
#[map]
static IO_URING: PerCpuHashMap<u32, IoUringStats> = PerCpuHashMap::with_max_entries(1024, 0);

/// A zeroed `SessionStats` to insert from: it is larger than the BPF stack allows.
#[map]
static ZERO_STATS: PerCpuArray<SessionStats> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn current_pid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

#[inline(always)]
fn config(i: u32) -> bool {
    CONFIG.get(i).copied().unwrap_or(0) != 0
}

#[inline(always)]
fn offset(i: u32) -> usize {
    OFFSETS.get(i).copied().unwrap_or(0) as usize
}

#[inline(always)]
fn is_target(pid: u32) -> bool {
    // SAFETY: a lookup of a plain key.
    unsafe { TARGETS.get(&pid).is_some() }
}

/// The process of a uprobe hit, if traced: with `CONFIG_FOLLOW` every process that reaches a
/// probe joins the traced set (the uprobes are attached to the binary, not to one pid).
#[inline(always)]
fn uprobe_target() -> Option<u32> {
    let pid = current_pid();
    if is_target(pid) {
        return Some(pid);
    }
    if config(CONFIG_FOLLOW) {
        let _ = TARGETS.insert(&pid, &1, 0);
        return Some(pid);
    }
    None
}

#[inline(always)]
fn push(kind: u32, pid: u32, v: [u64; 5], addr: [u8; 16]) {
    // SAFETY: a plain helper call.
    let ts_ns = unsafe { bpf_ktime_get_ns() };
    if let Some(mut entry) = EVENTS.reserve::<Event>(0) {
        entry.write(Event {
            kind,
            pid,
            ts_ns,
            a: v[0],
            b: v[1],
            c: v[2],
            d: v[3],
            e: v[4],
            addr,
        });
        entry.submit(0);
    }
}

#[inline(always)]
fn emit(kind: u32, v: [u64; 5]) {
    if let Some(pid) = uprobe_target() {
        push(kind, pid, v, [0; 16]);
    }
}

fn u64_arg(ctx: &ProbeContext, n: usize) -> u64 {
    ctx.arg::<u64>(n).unwrap_or(0)
}

fn u32_arg(ctx: &ProbeContext, n: usize) -> u64 {
    ctx.arg::<u32>(n).unwrap_or(0) as u64
}

/// The session's stats entry, created on first use.
#[inline(always)]
fn session_stats(pid: u32, session: u64) -> Option<*mut SessionStats> {
    let key = SessionKey {
        pid,
        _pad: 0,
        session,
    };
    if let Some(p) = SESSIONS.get_ptr_mut(&key) {
        return Some(p);
    }
    let zero = ZERO_STATS.get_ptr(0)?;
    // SAFETY: a valid pointer into the per-CPU array, never written.
    let _ = SESSIONS.insert(&key, unsafe { &*zero }, 0);
    SESSIONS.get_ptr_mut(&key)
}

/// Copies a session's counters (a `SessionCounters` in the traced process) into its stats.
#[inline(always)]
fn take_counters(pid: u32, session: u64, counters: Option<*const [u64; 4]>) {
    let Some(ptr) = counters.filter(|p| !p.is_null()) else {
        return;
    };
    if session == 0 {
        return;
    }
    // SAFETY: reads 32 bytes of the traced process's memory, checked by the helper.
    let Ok(c) = (unsafe { bpf_probe_read_user(ptr) }) else {
        return;
    };
    if let Some(st) = session_stats(pid, session) {
        // SAFETY: a map value pointer, written only from this session's thread.
        unsafe {
            (*st).msgs_out = c[0];
            (*st).bytes_out = c[1];
            (*st).msgs_in = c[2];
            (*st).bytes_in = c[3];
        }
    }
}

#[uprobe]
pub fn conn_state(ctx: ProbeContext) -> u32 {
    let Some(pid) = uprobe_target() else {
        return 0;
    };
    let (conn, session, new) = (u64_arg(&ctx, 0), u64_arg(&ctx, 1), u32_arg(&ctx, 4));
    let key = ConnKey {
        pid,
        _pad: 0,
        session: conn,
    };
    // SAFETY: a lookup of a plain key.
    if let Some(&ports) = unsafe { CONN_PORTS.get(&key) } {
        if session != 0 {
            if let Some(st) = session_stats(pid, session) {
                // SAFETY: a map value pointer, written only from this session's thread.
                unsafe { (*st).ports = ports };
            }
        }
    }
    const CLOSED: u64 = 7;
    if new == CLOSED {
        let _ = CONN_PORTS.remove(&key);
    }
    let d = (u32_arg(&ctx, 3) << 32) | new;
    push(CONN_STATE, pid, [conn, session, u32_arg(&ctx, 2), d, 0], [0; 16]);
    0
}

#[uprobe]
pub fn session_state(ctx: ProbeContext) -> u32 {
    let (session, new) = (u64_arg(&ctx, 0), u32_arg(&ctx, 2));
    let Some(pid) = uprobe_target() else {
        return 0;
    };
    take_counters(pid, session, ctx.arg(4));
    let v = [session, u32_arg(&ctx, 1), new, u32_arg(&ctx, 3), 0];
    push(SESSION_STATE, pid, v, [0; 16]);
    0
}

#[uprobe]
pub fn msg_queued(ctx: ProbeContext) -> u32 {
    if config(CONFIG_MESSAGE_EVENTS) {
        emit(
            MSG_QUEUED,
            [u64_arg(&ctx, 0), 0, u32_arg(&ctx, 1), u64_arg(&ctx, 2), 0],
        );
    }
    0
}

#[uprobe]
pub fn msg_sent(ctx: ProbeContext) -> u32 {
    let Some(pid) = uprobe_target() else {
        return 0;
    };
    let (session, seq, len, queued_ns) = (
        u64_arg(&ctx, 0),
        u64_arg(&ctx, 1),
        u64_arg(&ctx, 3),
        u64_arg(&ctx, 4),
    );
    if let Some(st) = session_stats(pid, session) {
        // SAFETY: a map value pointer, written only from this session's thread; the bucket
        // index is below HIST_BUCKETS.
        let ports = unsafe {
            let b = bucket(queued_ns);
            if b < HIST_BUCKETS {
                (*st).queued_to_sent[b] += 1;
            }
            (*st).ports
        };
        if ports != 0 {
            let key = WireKey {
                sport: (ports >> 16) as u16,
                dport: ports as u16,
                _pad: 0,
                seq,
            };
            // SAFETY: a plain helper call.
            let now = unsafe { bpf_ktime_get_ns() };
            let _ = SENT_AT.insert(&key, &now, 0);
        }
    }
    if config(CONFIG_MESSAGE_EVENTS) {
        let v = [session, seq, u32_arg(&ctx, 2), len, queued_ns];
        push(MSG_SENT, pid, v, [0; 16]);
    }
    0
}

#[uprobe]
pub fn msg_dispatched(ctx: ProbeContext) -> u32 {
    let Some(pid) = uprobe_target() else {
        return 0;
    };
    let (session, seq, len) = (u64_arg(&ctx, 0), u64_arg(&ctx, 1), u64_arg(&ctx, 3));
    let mut wire_ns = 0;
    if let Some(st) = session_stats(pid, session) {
        // SAFETY: as in msg_sent.
        let ports = unsafe { (*st).ports };
        if ports != 0 {
            // The sender's ports are ours swapped.
            let key = WireKey {
                sport: ports as u16,
                dport: (ports >> 16) as u16,
                _pad: 0,
                seq,
            };
            // SAFETY: a lookup of a plain key.
            if let Some(&sent) = unsafe { SENT_AT.get(&key) } {
                // SAFETY: a plain helper call.
                wire_ns = unsafe { bpf_ktime_get_ns() }.saturating_sub(sent);
                let b = bucket(wire_ns);
                if b < HIST_BUCKETS {
                    // SAFETY: as above.
                    unsafe { (*st).sent_to_dispatched[b] += 1 };
                }
                let _ = SENT_AT.remove(&key);
            }
        }
    }
    if config(CONFIG_MESSAGE_EVENTS) {
        let v = [session, seq, u32_arg(&ctx, 2), len, wire_ns];
        push(MSG_DISPATCHED, pid, v, [0; 16]);
    }
    0
}

#[uprobe]
pub fn fault(ctx: ProbeContext) -> u32 {
    emit(
        FAULT,
        [u64_arg(&ctx, 0), u64_arg(&ctx, 1), u32_arg(&ctx, 2), 0, 0],
    );
    0
}

#[uprobe]
pub fn reconnect(ctx: ProbeContext) -> u32 {
    emit(
        RECONNECT,
        [u64_arg(&ctx, 0), u64_arg(&ctx, 1), u32_arg(&ctx, 2), 0, 0],
    );
    0
}

#[uprobe]
pub fn conn_socket(ctx: ProbeContext) -> u32 {
    let Some(pid) = uprobe_target() else {
        return 0;
    };
    let (conn, session, info, ports) = (
        u64_arg(&ctx, 0),
        u64_arg(&ctx, 1),
        u32_arg(&ctx, 2),
        u32_arg(&ctx, 3) as u32,
    );
    let local_port = (ports >> 16) as u16;
    if local_port != 0 {
        let _ = PORTS.insert(&local_port, &1, 0);
    }
    let key = ConnKey {
        pid,
        _pad: 0,
        session: conn,
    };
    let _ = CONN_PORTS.insert(&key, &ports, 0);
    if session != 0 {
        if let Some(st) = session_stats(pid, session) {
            // SAFETY: a map value pointer, written only from this session's thread.
            unsafe { (*st).ports = ports };
        }
    }
    take_counters(pid, session, ctx.arg(5));
    let peer = ctx.arg::<*const [u8; 16]>(4).unwrap_or(core::ptr::null());
    // SAFETY: reads 16 bytes of the traced process's memory, checked by the helper.
    let addr = unsafe { bpf_probe_read_user(peer) }.unwrap_or([0; 16]);
    push(
        CONN_SOCKET,
        pid,
        [conn, session, info, ports as u64, 0],
        addr,
    );
    0
}

const IPPROTO_TCP: u16 = 6;

/// A socket event belongs to a traced process: in its context, or on one of its ports.
#[inline(always)]
fn ours(pid: u32, sport: u16, dport: u16) -> bool {
    // SAFETY: lookups of plain keys.
    is_target(pid) || unsafe { PORTS.get(&sport).is_some() || PORTS.get(&dport).is_some() }
}

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn tcp_state(ctx: TracePointContext) -> u32 {
    // SAFETY: reads within the tracepoint record, at the offsets its format gave.
    let read = |i: u32| -> Option<u16> { unsafe { ctx.read_at::<u16>(offset(i)).ok() } };
    let (Some(protocol), Some(sport), Some(dport)) = (
        read(OFF_SET_STATE_PROTOCOL),
        read(OFF_SET_STATE_SPORT),
        read(OFF_SET_STATE_DPORT),
    ) else {
        return 0;
    };
    let pid = current_pid();
    if protocol != IPPROTO_TCP || !ours(pid, sport, dport) {
        return 0;
    }
    if sport != 0 && is_target(pid) {
        // A listening or dialled socket of a traced process: its later transitions often run
        // in softirq context, under another pid.
        let _ = PORTS.insert(&sport, &1, 0);
    }
    // SAFETY: as above.
    let old: i32 = unsafe { ctx.read_at(offset(OFF_SET_STATE_OLDSTATE)).unwrap_or(0) };
    // SAFETY: as above.
    let new: i32 = unsafe { ctx.read_at(offset(OFF_SET_STATE_NEWSTATE)).unwrap_or(0) };
    let v = [sport as u64, dport as u64, old as u64, new as u64, 0];
    push(TCP_STATE, pid, v, [0; 16]);
    0
}

#[tracepoint(category = "tcp", name = "tcp_retransmit_skb")]
pub fn tcp_retransmit(ctx: TracePointContext) -> u32 {
    // SAFETY: reads within the tracepoint record, at the offsets its format gave.
    let read = |i: u32| -> Option<u16> { unsafe { ctx.read_at::<u16>(offset(i)).ok() } };
    let (Some(sport), Some(dport)) = (read(OFF_RETRANSMIT_SPORT), read(OFF_RETRANSMIT_DPORT))
    else {
        return 0;
    };
    let pid = current_pid();
    if !ours(pid, sport, dport) {
        return 0;
    }
    // SAFETY: as above.
    let state: i32 = unsafe { ctx.read_at(offset(OFF_RETRANSMIT_STATE)).unwrap_or(0) };
    let v = [sport as u64, dport as u64, state as u64, 0, 0];
    push(TCP_RETRANSMIT, pid, v, [0; 16]);
    0
}

/// The process's io_uring counters, created on first use.
#[inline(always)]
fn io_uring_stats() -> Option<*mut IoUringStats> {
    let pid = current_pid();
    if !is_target(pid) {
        return None;
    }
    if let Some(p) = IO_URING.get_ptr_mut(&pid) {
        return Some(p);
    }
    let _ = IO_URING.insert(&pid, &IoUringStats::default(), 0);
    IO_URING.get_ptr_mut(&pid)
}

#[tracepoint(category = "io_uring", name = "io_uring_submit_req")]
pub fn io_uring_submit(_ctx: TracePointContext) -> u32 {
    if let Some(st) = io_uring_stats() {
        // SAFETY: this CPU's map value.
        unsafe { (*st).submitted += 1 };
    }
    0
}

#[tracepoint(category = "io_uring", name = "io_uring_complete")]
pub fn io_uring_complete(ctx: TracePointContext) -> u32 {
    if let Some(st) = io_uring_stats() {
        // SAFETY: reads within the tracepoint record, at the offset its format gave.
        let res: i32 = unsafe { ctx.read_at(offset(OFF_COMPLETE_RES)).unwrap_or(0) };
        // SAFETY: this CPU's map value.
        unsafe {
            if res < 0 {
                (*st).failed += 1;
            } else {
                (*st).completed += 1;
            }
        }
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach here; it is never taken.
    loop {}
}
