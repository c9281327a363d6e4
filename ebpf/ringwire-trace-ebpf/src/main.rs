//! Ringwire's BPF programs: uprobes on the messenger's probe functions
//! (`messenger/src/proto/hooks.rs`), filtered in the kernel to the traced process, writing
//! [`Event`]s to one ring buffer.
#![no_std]
#![no_main]

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns};
use aya_ebpf::macros::{map, uprobe};
use aya_ebpf::maps::{Array, RingBuf};
use aya_ebpf::programs::ProbeContext;
use ringwire_trace_common::*;

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Index 0: the traced process id (0: every process).
#[map]
static TARGET: Array<u32> = Array::with_max_entries(1, 0);

#[inline(always)]
fn emit(kind: u32, a: u64, b: u64, c: u64, d: u64) {
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let target = TARGET.get(0).copied().unwrap_or(0);
    if target != 0 && target != pid {
        return;
    }
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach here; it is never taken.
    loop {}
}
