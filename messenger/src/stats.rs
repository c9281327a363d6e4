//! What a messenger counts: the counters its workers share, and their snapshot.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Counters of one messenger, summed over its workers.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub messages_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub bytes_out: AtomicU64,
    pub reconnects: AtomicU64,
    /// Sessions per state (index: STATE_CONNECTING, STATE_READY).
    pub sessions: [AtomicI64; 2],
    pub faults: AtomicU64,
    pub injected_faults: AtomicU64,
    pub handshakes: AtomicU64,
    pub resets: AtomicU64,
    pub remote_resets: AtomicU64,
    pub migrations: AtomicU64,
    pub throttle_stalls: AtomicU64,
    pub send_throttled: AtomicU64,
    pub backlog_stalls: AtomicU64,
    pub zerocopy_sends: AtomicU64,
    pub zerocopy_copied: AtomicU64,
    pub registered_sends: AtomicU64,
    pub rdma_send_bytes: AtomicU64,
    pub rdma_read_bytes: AtomicU64,
    pub rdma_copied_bytes: AtomicU64,
    pub rdma_credit_waits: AtomicU64,
    pub rdma_cq_polls: AtomicU64,
    pub rdma_cq_events: AtomicU64,
    pub rdma_registrations: AtomicU64,
    pub rdma_errors: AtomicU64,
}

/// A snapshot of a messenger's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Messages dispatched.
    pub messages_in: u64,
    /// Payload bytes (front + middle + data) dispatched.
    pub bytes_in: u64,
    /// Messages the application queued for sending.
    pub messages_out: u64,
    /// Payload bytes the application queued for sending.
    pub bytes_out: u64,
    /// Sessions that became ready again after having been ready (resumed or re-established).
    pub reconnects: u64,
    /// Sessions connecting (dialling, handshaking, backing off or in standby) and ready.
    pub sessions_connecting: i64,
    pub sessions_ready: i64,
    /// Connection faults of any kind.
    pub faults: u64,
    /// Faults injected by `inject_socket_failures`.
    pub injected_faults: u64,
    /// Connections that reached READY (first connects, accepts and resumed sessions).
    pub handshakes: u64,
    pub resets: u64,
    pub remote_resets: u64,
    /// Accepted connections handed to the worker owning their peer's session.
    pub migrations: u64,
    /// Times a connection was not read because the dispatch throttle was full.
    pub throttle_stalls: u64,
    /// Sends refused because the connection's send window was full
    /// (`Options::send_throttle_bytes` / `_messages`).
    pub send_throttled: u64,
    /// Times a connection was not read because its unsent backlog was over the bound.
    pub backlog_stalls: u64,
    /// SENDMSG_ZC operations whose buffers the kernel really did not copy.
    pub zerocopy_sends: u64,
    /// SENDMSG_ZC operations the kernel copied after all (each turns zero copy off for its
    /// connection).
    pub zerocopy_copied: u64,
    /// Sends straight from the registered arena (fixed buffer, no per-send page pinning).
    pub registered_sends: u64,
    /// Stream bytes sent in RDMA SENDs.
    pub rdma_send_bytes: u64,
    /// Segment bytes the receiver pulled with RDMA READ (no copy).
    pub rdma_read_bytes: u64,
    /// Bytes copied to or from registered RDMA buffers (headers and small payloads).
    pub rdma_copied_bytes: u64,
    /// Times an RDMA connection had data to send and no credit.
    pub rdma_credit_waits: u64,
    /// Non-empty polls of a worker's RDMA completion queue.
    pub rdma_cq_polls: u64,
    /// Completion-channel events (wake-ups) of the RDMA completion queues.
    pub rdma_cq_events: u64,
    /// Memory registrations on the data path (payloads outside the arena, READ targets).
    pub rdma_registrations: u64,
    /// RDMA work completions in error other than flushes (queue pair failures).
    pub rdma_errors: u64,
}

impl Counters {
    /// A snapshot of the counters the workers share.
    pub(crate) fn snapshot(&self) -> Stats {
        let c = self;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            messages_in: get(&c.messages_in),
            bytes_in: get(&c.bytes_in),
            messages_out: get(&c.messages_out),
            bytes_out: get(&c.bytes_out),
            reconnects: get(&c.reconnects),
            sessions_connecting: c.sessions[0].load(Ordering::Relaxed),
            sessions_ready: c.sessions[1].load(Ordering::Relaxed),
            faults: get(&c.faults),
            injected_faults: get(&c.injected_faults),
            handshakes: get(&c.handshakes),
            resets: get(&c.resets),
            remote_resets: get(&c.remote_resets),
            migrations: get(&c.migrations),
            throttle_stalls: get(&c.throttle_stalls),
            send_throttled: get(&c.send_throttled),
            backlog_stalls: get(&c.backlog_stalls),
            zerocopy_sends: get(&c.zerocopy_sends),
            zerocopy_copied: get(&c.zerocopy_copied),
            registered_sends: get(&c.registered_sends),
            rdma_send_bytes: get(&c.rdma_send_bytes),
            rdma_read_bytes: get(&c.rdma_read_bytes),
            rdma_copied_bytes: get(&c.rdma_copied_bytes),
            rdma_credit_waits: get(&c.rdma_credit_waits),
            rdma_cq_polls: get(&c.rdma_cq_polls),
            rdma_cq_events: get(&c.rdma_cq_events),
            rdma_registrations: get(&c.rdma_registrations),
            rdma_errors: get(&c.rdma_errors),
        }
    }
}
