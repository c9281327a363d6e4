//! Worker threads, after Ceph's Worker + EventCenter with io_uring as the event driver: each
//! worker owns one io_uring (SINGLE_ISSUER + DEFER_TASKRUN), one protocol [`Endpoint`], the
//! sockets of its connections, and a command queue other threads push to (woken by an
//! eventfd). Nothing on the data path takes a lock shared between workers.
//!
//! Receive: small frames and headers arrive through a provided-buffer ring (idle connections
//! hold no receive buffer); a large segment is received straight into the buffer that becomes
//! the message payload (lent by the decoder, so the transport owns it while the kernel writes).
//! Send: every queued chunk of a connection goes out in one `sendmsg` (vectored, payloads by
//! reference, `MSG_NOSIGNAL`).

mod arena;
mod bufring;
mod commands;
mod events;
mod handle;
mod handles;
mod rdma;
mod start;
mod tasks;
mod tcp;
mod throttle;
mod transport;
mod worker;

pub use self::arena::{Arena, ArenaBuf};
pub(crate) use self::commands::{Command, WorkerHandle};
pub(crate) use self::handle::{ConnShared, STATE_CLOSED, STATE_CONNECTING, STATE_READY};
pub use self::handle::{
    Connection, Dispatcher, Incoming, MessengerInterceptor, NotReady, SendError,
};
/// Seeds and cookies for the workers and transports.
use self::start::random_u64;
pub(crate) use self::start::{io_uring_error, start, Config};

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::options::RdmaOptions;
use crate::proto::{EntityAddr, EntityAddrVec, EntityName, EntityType};
use crate::stats::Counters;

/// State shared by the messenger, its workers and its connection handles.
pub(crate) struct Shared {
    pub workers: Vec<WorkerHandle>,
    pub dispatcher: Arc<dyn Dispatcher>,
    pub origin: Instant,
    pub next_handle: AtomicU64,
    pub addrs: EntityAddrVec,
    pub name: EntityName,
    /// Open connections by peer address, for `connect` to reuse (connect/accept path only).
    pub by_addr: Mutex<HashMap<EntityAddr, Connection>>,
    pub counters: Counters,
    pub throttle: Option<Arc<throttle::Throttle>>,
    pub send_limits: throttle::SendLimits,
    pub max_send_backlog: usize,
    pub zerocopy_min: usize,
    pub arena: Option<Arc<Arena>>,
    pub rdma: RdmaOptions,
    /// Peer types with a policy of their own, and those we warned about falling back.
    pub policy_types: Vec<EntityType>,
    pub warned_default_policy: Mutex<HashSet<EntityType>>,
}
