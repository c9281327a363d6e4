//! Ringwire's BPF programs: uprobes on the messenger's probe functions
//! (`messenger/src/proto/hooks.rs`) and the `sock/inet_sock_set_state` tracepoint, filtered in
//! the kernel to the traced process (or, for socket events that run in another task's
//! context, to the ports its connections use), writing [`Event`]s to one ring buffer.
#![no_std]
#![no_main]

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns};
use aya_ebpf::macros::{map, tracepoint, uprobe};
use aya_ebpf::maps::{Array, HashMap, RingBuf};
use aya_ebpf::programs::{ProbeContext, TracePointContext};
use ringwire_trace_common::*;

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Index 0: the traced process id (0: every process).
#[map]
static TARGET: Array<u32> = Array::with_max_entries(1, 0);

/// Local ports of the traced process's connections (filled by ringwire-trace from
/// CONN_SOCKET events): socket transitions often run in softirq context, under another pid.
#[map]
static PORTS: HashMap<u16, u8> = HashMap::with_max_entries(65536, 0);

#[inline(always)]
fn traced(pid: u32) -> bool {
    let target = TARGET.get(0).copied().unwrap_or(0);
    target == 0 || target == pid
}

#[inline(always)]
fn emit(kind: u32, a: u64, b: u64, c: u64, d: u64) {
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !traced(pid) {
        return;
    }
    push(kind, pid, a, b, c, d);
}

#[inline(always)]
fn push(kind: u32, pid: u32, a: u64, b: u64, c: u64, d: u64) {
    // SAFETY: a plain helper call.
    let ts_ns = unsafe { bpf_ktime_get_ns() };
    if let Some(mut entry) = EVENTS.reserve::<Event>(0) {
        entry.write(Event { kind, pid, ts_ns, a, b, c, d });
        entry.submit(0);
    }
}

fn u64_arg(ctx: &ProbeContext, n: usize) -> u64 {
    ctx.arg::<u64>(n).unwrap_or(0)
}

fn u32_arg(ctx: &ProbeContext, n: usize) -> u64 {
    ctx.arg::<u32>(n).unwrap_or(0) as u64
}

#[uprobe]
pub fn conn_state(ctx: ProbeContext) -> u32 {
    let d = (u32_arg(&ctx, 3) << 32) | u32_arg(&ctx, 4);
    emit(CONN_STATE, u64_arg(&ctx, 0), u64_arg(&ctx, 1), u32_arg(&ctx, 2), d);
    0
}

#[uprobe]
pub fn session_state(ctx: ProbeContext) -> u32 {
    emit(SESSION_STATE, u64_arg(&ctx, 0), u32_arg(&ctx, 1), u32_arg(&ctx, 2), 0);
    0
}

#[uprobe]
pub fn msg_queued(ctx: ProbeContext) -> u32 {
    emit(MSG_QUEUED, u64_arg(&ctx, 0), 0, u32_arg(&ctx, 1), u64_arg(&ctx, 2));
    0
}

#[uprobe]
pub fn msg_sent(ctx: ProbeContext) -> u32 {
    emit(MSG_SENT, u64_arg(&ctx, 0), u64_arg(&ctx, 1), u32_arg(&ctx, 2), u64_arg(&ctx, 3));
    0
}

#[uprobe]
pub fn msg_dispatched(ctx: ProbeContext) -> u32 {
    emit(MSG_DISPATCHED, u64_arg(&ctx, 0), u64_arg(&ctx, 1), u32_arg(&ctx, 2), u64_arg(&ctx, 3));
    0
}

#[uprobe]
pub fn fault(ctx: ProbeContext) -> u32 {
    emit(FAULT, u64_arg(&ctx, 0), u64_arg(&ctx, 1), u32_arg(&ctx, 2), 0);
    0
}

#[uprobe]
pub fn reconnect(ctx: ProbeContext) -> u32 {
    emit(RECONNECT, u64_arg(&ctx, 0), u64_arg(&ctx, 1), u32_arg(&ctx, 2), 0);
    0
}

#[uprobe]
pub fn conn_socket(ctx: ProbeContext) -> u32 {
    emit(CONN_SOCKET, u64_arg(&ctx, 0), u32_arg(&ctx, 1), u32_arg(&ctx, 2), 0);
    0
}

// Field offsets from /sys/kernel/tracing/events/sock/inet_sock_set_state/format.
const OFF_OLDSTATE: usize = 16;
const OFF_NEWSTATE: usize = 20;
const OFF_SPORT: usize = 24;
const OFF_DPORT: usize = 26;
const OFF_PROTOCOL: usize = 30;
const IPPROTO_TCP: u16 = 6;

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn tcp_state(ctx: TracePointContext) -> u32 {
    // SAFETY: reads within the tracepoint record, at the offsets of its format.
    let read = |off: usize| -> Option<u16> { unsafe { ctx.read_at::<u16>(off).ok() } };
    let (Some(protocol), Some(sport), Some(dport)) =
        (read(OFF_PROTOCOL), read(OFF_SPORT), read(OFF_DPORT))
    else {
        return 0;
    };
    if protocol != IPPROTO_TCP {
        return 0;
    }
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: map lookups of plain keys.
    let ours = traced(pid)
        || unsafe { PORTS.get(&sport).is_some() }
        || unsafe { PORTS.get(&dport).is_some() };
    if !ours {
        return 0;
    }
    // SAFETY: as above.
    let old: i32 = unsafe { ctx.read_at(OFF_OLDSTATE).unwrap_or(0) };
    let new: i32 = unsafe { ctx.read_at(OFF_NEWSTATE).unwrap_or(0) };
    push(TCP_STATE, pid, sport as u64, dport as u64, old as u64, new as u64);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach here; it is never taken.
    loop {}
}
