//! The messenger's options, with Ceph's option names where there is one (docs/options.md).

use std::path::PathBuf;
use std::time::Duration;

use crate::proto::cephx::server::SERVICE_TICKET_TTL;
use crate::proto::{AuthMethod, ModeName, Tuning};

/// Options, with Ceph's option names where there is one.
#[derive(Debug, Clone)]
pub struct Options {
    /// Worker threads (each with one io_uring); default: the number of CPUs.
    pub workers: usize,
    /// Protocol limits, timers and fault injection.
    pub tuning: Tuning,
    /// io_uring submission queue entries per worker.
    pub ring_entries: u32,
    /// `ms_dispatch_throttle_bytes`: bytes of dispatched messages the application may hold
    /// before workers stop reading (0: unlimited).
    pub dispatch_throttle_bytes: u64,
    /// Dispatched messages the application may hold before workers stop reading (0: unlimited).
    pub dispatch_throttle_messages: u64,
    /// Payload bytes one connection handle may have sent that its session still holds
    /// (queued, or written and not yet acknowledged by a lossless peer) before
    /// [`Connection::send`](crate::Connection::send) answers `SendError::Throttled`
    /// (0: unlimited). A peer that stops acknowledging holds no more of our memory than this.
    pub send_throttle_bytes: u64,
    /// Messages, counted as `send_throttle_bytes` (0: unlimited).
    pub send_throttle_messages: u64,
    /// A connection whose unsent bytes exceed this is not read until they drain: a peer that
    /// sends but never reads cannot make us buffer its replies without bound.
    pub max_send_backlog: usize,
    /// Size of the registered payload arena ([`Messenger::alloc_payload`]); 0: none.
    pub arena_size: usize,
    /// Chunks at least this large go out with SENDMSG_ZC (0: never). A connection whose
    /// zero-copy sends come back "copied" (loopback, some NICs) falls back to plain sends.
    pub zerocopy_min: usize,
    /// The nonce in our addresses (peers must name it to reach us). Default: 0 for monitors,
    /// as in Ceph, random otherwise.
    pub nonce: Option<u32>,
    /// The RDMA transport (addresses `rdma:IP:PORT`); see docs/rdma.md.
    pub rdma: RdmaOptions,
    /// `keyring`: the keyring file holding our key (for the messenger's name), for cephx.
    pub keyring: Option<PathBuf>,
    /// `auth_client_required`: auth methods offered, preferred first. Default (`None`):
    /// cephx alone when a keyring is set (no silent fall-back to none), else none.
    pub auth_client_required: Option<Vec<AuthMethod>>,
    /// `ms_mon_client_mode`: connection modes offered to monitors, preferred first
    /// (Ceph's default: secure, crc).
    pub ms_mon_client_mode: Vec<ModeName>,
    /// `ms_client_mode`: connection modes offered to other daemons, preferred first
    /// (Ceph's default: crc, secure).
    pub ms_client_mode: Vec<ModeName>,
    /// `auth_service_required`: auth methods a server allows from clients. Default (`None`):
    /// cephx alone when a keyring is set (its entries are the clients we admit), else none.
    pub auth_service_required: Option<Vec<AuthMethod>>,
    /// `auth_cluster_required`: auth methods a server allows from daemons; default as
    /// `auth_service_required`.
    pub auth_cluster_required: Option<Vec<AuthMethod>>,
    /// `ms_service_mode` / `ms_cluster_mode`: connection modes a (non-monitor) server allows
    /// from clients / daemons (Ceph's default: crc, secure).
    pub ms_service_mode: Vec<ModeName>,
    pub ms_cluster_mode: Vec<ModeName>,
    /// `ms_mon_service_mode` / `ms_mon_cluster_mode`: the same for a monitor (a messenger
    /// named `mon.*`; Ceph's default: secure, crc).
    pub ms_mon_service_mode: Vec<ModeName>,
    pub ms_mon_cluster_mode: Vec<ModeName>,
    /// `auth_service_ticket_ttl`: how long the service tickets a monitor (a messenger named
    /// `mon.*` with a keyring) issues are valid (Ceph's default: 1 h). Clients renew theirs
    /// on the monitor session after three quarters of it.
    pub auth_service_ticket_ttl: Duration,
}

/// Options of the RDMA transport. Each worker opens the device when it first needs it and
/// registers `(send_buffers + max_connections × credits) × buffer_size` bytes once; that
/// memory never grows.
#[derive(Debug, Clone)]
pub struct RdmaOptions {
    /// The device (`ibv_devices` names it); default: the first one.
    pub device: Option<String>,
    /// The device port.
    pub port: u8,
    /// The GID index (RoCE); default: chosen (RoCE v2 with an IPv4 address first).
    pub gid_index: Option<u8>,
    /// Bytes per send and receive buffer: the largest SEND.
    pub buffer_size: usize,
    /// Receive buffers posted per connection: the peer's send credits.
    pub credits: u16,
    /// Send buffers per worker, shared by its connections.
    pub send_buffers: usize,
    /// RDMA connections per worker (each holds `credits` receive buffers).
    pub max_connections: usize,
    /// Stream chunks at least this large are not sent: the receiver READs them in place.
    pub read_min: usize,
    /// Before sleeping, a worker with RDMA connections polls its completion queue this long
    /// (0: never; completions then wake it through the completion channel).
    pub busy_poll: Duration,
    /// Testing: one received record in this many moves its queue pair to the error state,
    /// as a failing HCA or link would (0: never). Counted as injected faults.
    pub inject_qp_failures: u32,
}

impl Default for RdmaOptions {
    fn default() -> Self {
        RdmaOptions {
            device: None,
            port: 1,
            gid_index: None,
            buffer_size: 8 << 10,
            credits: 16,
            send_buffers: 256,
            max_connections: 128,
            read_min: 32 << 10,
            busy_poll: Duration::ZERO,
            inject_qp_failures: 0,
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            tuning: Tuning::default(),
            ring_entries: 1024,
            dispatch_throttle_bytes: 100 << 20,
            dispatch_throttle_messages: 0,
            send_throttle_bytes: 100 << 20,
            send_throttle_messages: 65_536,
            max_send_backlog: 64 << 20,
            zerocopy_min: 256 << 10,
            arena_size: 64 << 20,
            nonce: None,
            rdma: RdmaOptions::default(),
            keyring: None,
            auth_client_required: None,
            ms_mon_client_mode: vec![ModeName::Secure, ModeName::Crc],
            ms_client_mode: vec![ModeName::Crc, ModeName::Secure],
            auth_service_required: None,
            auth_cluster_required: None,
            ms_service_mode: vec![ModeName::Crc, ModeName::Secure],
            ms_cluster_mode: vec![ModeName::Crc, ModeName::Secure],
            ms_mon_service_mode: vec![ModeName::Secure, ModeName::Crc],
            ms_mon_cluster_mode: vec![ModeName::Secure, ModeName::Crc],
            auth_service_ticket_ttl: SERVICE_TICKET_TTL,
        }
    }
}
