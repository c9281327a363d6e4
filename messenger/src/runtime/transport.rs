//! What a worker asks of a transport. A transport owns the connections of one kind (TCP
//! sockets today), starts ring operations for them and turns their completions into endpoint
//! input; the worker owns the ring, the endpoint, commands, events and timers. A
//! message-oriented transport with registered memory (RDMA) fits the same shape: its
//! completion channel is one more ring operation, its frames and lent segments feed the same
//! endpoint, and the protocol core does not change.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use io_uring::{squeue, IoUring};

use crate::messenger::Shared;
use crate::proto::{ConnId, Endpoint, Handoff, Time};

/// The worker's state a transport works with, borrowed for one call.
pub(crate) struct Cx<'a> {
    pub ring: &'a mut IoUring,
    pub ep: &'a mut Endpoint,
    pub shared: &'a Arc<Shared>,
    pub now: Time,
    pub shutting_down: bool,
}

impl Cx<'_> {
    /// Queues a ring operation (submitting first if the queue is full).
    pub fn push(&mut self, e: squeue::Entry) {
        // SAFETY: every buffer an entry points to is owned by the transport (or the worker)
        // and outlives the operation: it is released only after the operation's completion.
        unsafe {
            while self.ring.submission().push(&e).is_err() {
                let _ = self.ring.submit();
            }
        }
    }
}

pub(crate) trait Transport {
    /// Opens a connection to `addr` for endpoint connection `conn`; its outcome reaches the
    /// endpoint as `on_connected` or `on_closed`.
    fn connect(&mut self, cx: &mut Cx<'_>, conn: ConnId, addr: SocketAddr);
    /// `conn` has bytes queued, or may receive again.
    fn wake(&mut self, conn: ConnId);
    /// Writes `remaining`, then closes `conn`.
    fn close(&mut self, conn: ConnId, remaining: Vec<Bytes>);
    /// Hands `conn` to worker `to` once its operations have completed.
    fn migrate(&mut self, conn: ConnId, to: usize, handoff: Box<Handoff>);
    /// Receives held back by the dispatch throttle may go again.
    fn unthrottle(&mut self);
    /// Starts the ring operations that woken connections need.
    fn progress(&mut self, cx: &mut Cx<'_>);
    /// A completion of one of this transport's operations.
    fn complete(&mut self, cx: &mut Cx<'_>, user_data: u64, res: i32, flags: u32);
    /// Stops accepting new connections.
    fn shutdown(&mut self);
    /// No connection and no operation left.
    fn is_idle(&self) -> bool;
    /// Reports every established connection to the `ringwire_conn_socket` probe (called once
    /// a second, so a tracer attached late learns them); false when there was none.
    fn announce(&self, ep: &Endpoint) -> bool;
}
