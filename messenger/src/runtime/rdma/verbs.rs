//! The verbs a worker uses: one device context, protection domain, completion channel and
//! completion queue per worker; RC queue pairs; the worker's registered region. Resources are
//! set up through `sideway` (reference-counted, destroyed in order); the data path (post,
//! poll, CQ notification) calls libibverbs' provider functions directly through
//! `rdma-mummy-sys`, the `dlopen`ed bindings under `sideway`, so a binary built with RDMA runs
//! (and says clearly why RDMA is unavailable) on hosts without libibverbs.

use std::io;
use std::ptr;
use std::sync::Arc;

use memmap2::{MmapMut, MmapOptions};
use rdma_mummy_sys as sys;
use sideway::ibverbs::address::{AddressHandleAttribute, GidType};
use sideway::ibverbs::completion::{
    BasicCompletionQueue, CompletionChannel, CompletionQueue, GenericCompletionQueue,
};
use sideway::ibverbs::device::{DeviceInfo, DeviceList};
use sideway::ibverbs::device_context::{DeviceContext, LinkLayer, Mtu, PortState};
use sideway::ibverbs::memory_region::MemoryRegion;
use sideway::ibverbs::protection_domain::ProtectionDomain;
use sideway::ibverbs::queue_pair::{
    BasicQueuePair, QueuePair, QueuePairAttribute, QueuePairState, QueuePairType,
};
use sideway::ibverbs::AccessFlags;

use super::record::Hello;
use crate::options::RdmaOptions;
use crate::Error;

/// READs one queue pair may have in flight as initiator and as target.
pub(super) const READ_DEPTH: u8 = 16;
/// Send work requests one queue pair may have posted.
pub(super) const SEND_DEPTH: u32 = 128;

fn rdma_error(what: impl Into<String>) -> Error {
    Error::Rdma(what.into())
}

/// The worker's registered memory: send slots then receive slots, `slot` bytes each.
pub(super) struct Region {
    map: MmapMut,
    pub slot: usize,
    pub mr: Arc<MemoryRegion>,
}

impl Region {
    pub fn base(&self) -> *mut u8 {
        self.map.as_ptr() as *mut u8
    }
    pub fn slot_ptr(&self, slot: u32) -> *mut u8 {
        debug_assert!((slot as usize + 1) * self.slot <= self.map.len());
        // SAFETY: in bounds (slots are carved from the mapping).
        unsafe { self.base().add(slot as usize * self.slot) }
    }
    /// Bytes of slot `slot`, of which `len` were received.
    pub fn slot_bytes(&self, slot: u32, len: usize) -> &[u8] {
        // SAFETY: in bounds; the device wrote them before the completion said so.
        unsafe { std::slice::from_raw_parts(self.slot_ptr(slot), len.min(self.slot)) }
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
}

pub(super) struct Device {
    pub name: String,
    pub pd: Arc<ProtectionDomain>,
    pub channel: Arc<CompletionChannel>,
    pub cq: Arc<BasicCompletionQueue>,
    pub port: u8,
    pub gid_index: u8,
    pub gid: [u8; 16],
    pub lid: u16,
    pub mtu: Mtu,
    /// RoCE (a GRH on every packet) rather than InfiniBand (LID routing).
    pub roce: bool,
    /// The messenger's payload arena, registered here so its payloads go out without a copy.
    pub arena_mr: Option<Arc<MemoryRegion>>,
    // Declared last: dropped after the memory regions above and the queue pairs (which the
    // transport drops before the device).
    pub region: Region,
}

fn memlock_hint(bytes: usize) -> String {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into `lim`.
    unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
    let cur = if lim.rlim_cur == libc::RLIM_INFINITY {
        "unlimited".to_string()
    } else {
        format!("{} KiB", lim.rlim_cur / 1024)
    };
    format!(
        "registering {} KiB needs that much locked memory per worker; RLIMIT_MEMLOCK is {cur} \
         (raise it: `ulimit -l unlimited`, LimitMEMLOCK=infinity in systemd, or lower \
         RdmaOptions::max_connections / buffer_size)",
        bytes / 1024
    )
}

/// Chooses the GID: the configured index, else RoCE v2 with an IPv4-mapped address, then
/// any other RoCE v2 one (global before link-local), then RoCE v1, then index 0 (InfiniBand).
fn choose_gid(
    ctx: &DeviceContext,
    port: u8,
    configured: Option<u8>,
) -> Result<(u8, [u8; 16]), Error> {
    if let Some(i) = configured {
        let gid = ctx
            .query_gid(port, i as u32)
            .map_err(|e| rdma_error(format!("GID index {i} on port {port}: {e}")))?;
        return Ok((i, gid.raw));
    }
    let table = ctx
        .query_gid_table()
        .map_err(|e| rdma_error(format!("cannot read the GID table: {e}")))?;
    let rank = |ty: GidType, raw: &[u8; 16]| -> u8 {
        let v4_mapped = raw[..10].iter().all(|b| *b == 0) && raw[10] == 0xff && raw[11] == 0xff;
        let link_local = raw[0] == 0xfe && raw[1] & 0xc0 == 0x80;
        match ty {
            GidType::RoceV2 if v4_mapped => 0,
            GidType::RoceV2 if !link_local => 1,
            GidType::RoceV2 => 2,
            GidType::RoceV1 => 3,
            GidType::InfiniBand => 4,
        }
    };
    table
        .iter()
        .filter(|g| g.port_num() == port as u32 && !g.gid().is_zero())
        .min_by_key(|g| (rank(g.gid_type(), &g.gid().raw), g.gid_index()))
        .map(|g| (g.gid_index() as u8, g.gid().raw))
        .ok_or_else(|| {
            rdma_error(format!(
                "port {port} has no GID (no IP address on its netdev?)"
            ))
        })
}

impl Device {
    /// Opens the configured (or first) device, checks its port, and registers a region of
    /// `slots` × `o.buffer_size` bytes and the payload arena.
    pub fn open(
        o: &RdmaOptions,
        slots: usize,
        arena: Option<&crate::runtime::Arena>,
        cqe: u32,
    ) -> Result<Device, Error> {
        let list = DeviceList::new().map_err(|e| {
            rdma_error(format!(
                "cannot list RDMA devices ({e}); is libibverbs (rdma-core) installed?"
            ))
        })?;
        let dev = match &o.device {
            Some(name) => list.iter().find(|d| &d.name() == name).ok_or_else(|| {
                let names: Vec<String> = list.iter().map(|d| d.name()).collect();
                rdma_error(format!("no RDMA device named {name} (have: {names:?})"))
            })?,
            None => list.iter().next().ok_or_else(|| {
                rdma_error(
                    "no RDMA device: load the driver for the HCA, or create a soft-RoCE device \
                     (`modprobe rdma_rxe; rdma link add rxe0 type rxe netdev eth0`)",
                )
            })?,
        };
        let name = dev.name();
        let ctx = dev.open().map_err(|e| {
            rdma_error(format!(
                "cannot open {name}: {e} (permissions on /dev/infiniband?)"
            ))
        })?;
        let port = o.port;
        let attr = ctx
            .query_port(port)
            .map_err(|e| rdma_error(format!("{name}: cannot query port {port}: {e}")))?;
        if attr.port_state() != PortState::Active {
            return Err(rdma_error(format!(
                "{name} port {port} is not active ({:?}); check the link and, on InfiniBand, the subnet manager",
                attr.port_state()
            )));
        }
        let roce = attr.link_layer() == LinkLayer::Ethernet;
        let (gid_index, gid) = if roce || o.gid_index.is_some() {
            choose_gid(&ctx, port, o.gid_index)?
        } else {
            (0, [0; 16])
        };
        let pd = ctx
            .alloc_pd()
            .map_err(|e| rdma_error(format!("{name}: cannot allocate a protection domain: {e}")))?;
        let channel = CompletionChannel::new(&ctx)
            .map_err(|e| rdma_error(format!("{name}: cannot create a completion channel: {e}")))?;
        channel
            .set_nonblocking(true)
            .map_err(|e| rdma_error(format!("completion channel: {e}")))?;
        let cq = ctx
            .create_cq_builder()
            .setup_cqe(cqe)
            .setup_comp_channel(&channel, 0)
            .build()
            .map_err(|e| {
                rdma_error(format!(
                    "{name}: cannot create a completion queue of {cqe}: {e}"
                ))
            })?;
        let len = slots * o.buffer_size;
        let mut map = MmapOptions::new()
            .len(len.div_ceil(2 << 20) * (2 << 20))
            .huge(Some(21))
            .map_anon()
            .or_else(|_| MmapOptions::new().len(len).map_anon())
            .map_err(|e| {
                rdma_error(format!(
                    "cannot map {} KiB for RDMA buffers: {e}",
                    len / 1024
                ))
            })?;
        let local = AccessFlags::LocalWrite;
        // SAFETY: the mapping lives in `region` next to its registration, dropped after it.
        let mr = unsafe { pd.reg_mr(map.as_mut_ptr() as usize, map.len(), local) }
            .map_err(|e| rdma_error(format!("{name}: {e}; {}", memlock_hint(map.len()))))?;
        let arena_mr = match arena {
            // SAFETY: the arena is held by the messenger, which outlives its workers.
            Some(a) => {
                let iov = a.iovec();
                let r = unsafe {
                    pd.reg_mr(iov.iov_base as usize, iov.iov_len, AccessFlags::RemoteRead)
                };
                match r {
                    Ok(mr) => Some(mr),
                    Err(e) => {
                        tracing::warn!(
                            "{name}: cannot register the payload arena ({e}); its payloads are registered per send. {}",
                            memlock_hint(iov.iov_len)
                        );
                        None
                    }
                }
            }
            None => None,
        };
        let dev = Device {
            name,
            pd,
            channel,
            cq,
            port,
            gid_index,
            gid,
            lid: attr.lid(),
            mtu: attr.active_mtu(),
            roce,
            arena_mr,
            region: Region {
                map,
                slot: o.buffer_size,
                mr,
            },
        };
        dev.request_notify()?;
        Ok(dev)
    }

    /// Asks for an event on the completion channel at the next completion.
    pub fn request_notify(&self) -> Result<(), Error> {
        // SAFETY: the CQ is alive (owned by self).
        let r = unsafe { sys::ibv_req_notify_cq(self.cq.cq().as_ptr(), 0) };
        if r != 0 {
            return Err(rdma_error(format!(
                "ibv_req_notify_cq: {}",
                io::Error::from_raw_os_error(r)
            )));
        }
        Ok(())
    }

    /// Consumes the completion channel's pending events (non-blocking); returns how many.
    pub fn take_events(&self) -> u32 {
        let mut n = 0;
        loop {
            let mut cq = ptr::null_mut();
            let mut cq_ctx = ptr::null_mut();
            // SAFETY: the channel is alive and non-blocking; out-pointers are valid.
            let r = unsafe {
                sys::ibv_get_cq_event(self.channel.comp_channel().as_ptr(), &mut cq, &mut cq_ctx)
            };
            if r != 0 {
                break;
            }
            n += 1;
        }
        if n > 0 {
            // SAFETY: acknowledges events taken from this CQ.
            unsafe { sys::ibv_ack_cq_events(self.cq.cq().as_ptr(), n) };
        }
        n
    }

    /// Polls up to `out.capacity()` completions into `out`.
    pub fn poll(&self, out: &mut Vec<sys::ibv_wc>) -> usize {
        out.clear();
        let cap = out.capacity();
        // SAFETY: the device writes at most `cap` entries into the vector's spare room.
        let n = unsafe { sys::ibv_poll_cq(self.cq.cq().as_ptr(), cap as i32, out.as_mut_ptr()) };
        if n > 0 {
            // SAFETY: `n` entries were written.
            unsafe { out.set_len(n as usize) };
        }
        n.max(0) as usize
    }

    pub fn channel_fd(&self) -> i32 {
        use std::os::fd::AsRawFd;
        self.channel.as_raw_fd()
    }

    /// Registers `len` bytes at `ptr` for a local write (a READ's destination) or for the
    /// peer to READ.
    ///
    /// # Safety
    /// The memory must stay valid until the region is dropped.
    pub unsafe fn register(
        &self,
        ptr: *const u8,
        len: usize,
        remote: bool,
    ) -> Result<Arc<MemoryRegion>, String> {
        let access = if remote {
            AccessFlags::RemoteRead
        } else {
            AccessFlags::LocalWrite
        };
        // SAFETY: forwarded to the caller.
        unsafe { self.pd.reg_mr(ptr as usize, len.max(1), access) }
            .map_err(|e| format!("{e}; {}", memlock_hint(len)))
    }

    /// A new RC queue pair on the worker's CQ, in INIT, ready for receives to be posted.
    pub fn create_qp(&self, recv_depth: u32) -> Result<Qp, Error> {
        let mut b = self.pd.create_qp_builder();
        b.setup_qp_type(QueuePairType::ReliableConnection)
            .setup_max_send_wr(SEND_DEPTH)
            .setup_max_recv_wr(recv_depth)
            .setup_max_send_sge(super::MAX_SGE as u32)
            .setup_max_recv_sge(1)
            .setup_max_inline_data(0)
            .setup_send_cq(GenericCompletionQueue::from(self.cq.clone()))
            .setup_recv_cq(GenericCompletionQueue::from(self.cq.clone()));
        let mut qp = b
            .build()
            .map_err(|e| rdma_error(format!("{}: cannot create a queue pair: {e}", self.name)))?;
        let mut attr = QueuePairAttribute::new();
        attr.setup_state(QueuePairState::Init)
            .setup_pkey_index(0)
            .setup_port(self.port)
            .setup_access_flags(AccessFlags::LocalWrite | AccessFlags::RemoteRead);
        qp.modify(&attr)
            .map_err(|e| rdma_error(format!("queue pair to INIT: {e}")))?;
        let psn = (super::super::random_u64() as u32) & 0xff_ffff;
        Ok(Qp { qp, psn })
    }

    /// What the peer needs to reach `qp`.
    pub fn hello(&self, qp: &Qp, credits: u16, placement: u64) -> Hello {
        Hello {
            qpn: qp.number(),
            psn: qp.psn,
            lid: self.lid,
            gid: self.gid,
            credits,
            buffer_size: self.region.slot as u32,
            mtu: self.mtu as u8,
            placement,
        }
    }

    /// Moves `qp` to RTR and RTS towards `peer`.
    pub fn connect_qp(&self, qp: &mut Qp, peer: &Hello) -> Result<(), Error> {
        let mtu = Mtu::from((self.mtu as u32).min(peer.mtu as u32));
        let mut ah = AddressHandleAttribute::new();
        ah.setup_port(self.port)
            .setup_service_level(0)
            .setup_dest_lid(peer.lid);
        if self.roce {
            ah.setup_grh(
                &sideway::ibverbs::address::Gid { raw: peer.gid },
                0,
                self.gid_index,
                64,
                0,
            );
        }
        let mut attr = QueuePairAttribute::new();
        attr.setup_state(QueuePairState::ReadyToReceive)
            .setup_path_mtu(mtu)
            .setup_dest_qp_num(peer.qpn)
            .setup_rq_psn(peer.psn)
            .setup_max_dest_read_atomic(READ_DEPTH)
            .setup_min_rnr_timer(12)
            .setup_address_vector(&ah);
        qp.qp
            .modify(&attr)
            .map_err(|e| rdma_error(format!("queue pair to RTR: {e}")))?;
        let mut attr = QueuePairAttribute::new();
        // rnr_retry 0: credits guarantee a posted receive for every SEND, so a receiver-not-
        // ready NAK is a bug to fail loudly on, not to retry forever as Ceph's stack does.
        attr.setup_state(QueuePairState::ReadyToSend)
            .setup_sq_psn(qp.psn)
            .setup_timeout(14)
            .setup_retry_cnt(7)
            .setup_rnr_retry(0)
            .setup_max_read_atomic(READ_DEPTH);
        qp.qp
            .modify(&attr)
            .map_err(|e| rdma_error(format!("queue pair to RTS: {e}")))
    }
}

/// One RC queue pair.
pub(super) struct Qp {
    qp: BasicQueuePair,
    psn: u32,
}

impl Qp {
    pub fn number(&self) -> u32 {
        // SAFETY: the QP is alive.
        unsafe { self.qp.qp().as_ref().qp_num }
    }

    /// Moves the QP to ERROR: every posted work request completes (flushed).
    pub fn fail(&mut self) {
        let mut attr = QueuePairAttribute::new();
        attr.setup_state(QueuePairState::Error);
        let _ = self.qp.modify(&attr);
    }

    pub fn post_recv(&mut self, wr_id: u64, addr: *mut u8, len: u32, lkey: u32) -> io::Result<()> {
        let mut sge = sys::ibv_sge {
            addr: addr as u64,
            length: len,
            lkey,
        };
        let mut wr = sys::ibv_recv_wr {
            wr_id,
            next: ptr::null_mut(),
            sg_list: &mut sge,
            num_sge: 1,
        };
        let mut bad = ptr::null_mut();
        // SAFETY: the QP is alive; wr and sge are valid for the call (the device copies them).
        let r = unsafe { sys::ibv_post_recv(self.qp.qp().as_ptr(), &mut wr, &mut bad) };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(r))
        }
    }

    /// Posts a signaled SEND gathering `sges`.
    pub fn post_send(&mut self, wr_id: u64, sges: &mut [sys::ibv_sge]) -> io::Result<()> {
        // SAFETY: all-zero is a valid ibv_send_wr (null pointers, zero counts).
        let mut wr: sys::ibv_send_wr = unsafe { std::mem::zeroed() };
        wr.wr_id = wr_id;
        wr.sg_list = sges.as_mut_ptr();
        wr.num_sge = sges.len() as i32;
        wr.opcode = sys::ibv_wr_opcode::IBV_WR_SEND;
        wr.send_flags = sys::ibv_send_flags::IBV_SEND_SIGNALED.0;
        self.post(&mut wr)
    }

    /// Posts a signaled RDMA READ of `len` bytes at the peer's `remote` into `local`.
    pub fn post_read(
        &mut self,
        wr_id: u64,
        local: sys::ibv_sge,
        remote: u64,
        rkey: u32,
    ) -> io::Result<()> {
        let mut sge = local;
        // SAFETY: as above.
        let mut wr: sys::ibv_send_wr = unsafe { std::mem::zeroed() };
        wr.wr_id = wr_id;
        wr.sg_list = &mut sge;
        wr.num_sge = 1;
        wr.opcode = sys::ibv_wr_opcode::IBV_WR_RDMA_READ;
        wr.send_flags = sys::ibv_send_flags::IBV_SEND_SIGNALED.0;
        wr.wr = sys::wr_t {
            rdma: sys::rdma_t {
                remote_addr: remote,
                rkey,
            },
        };
        self.post(&mut wr)
    }

    fn post(&mut self, wr: &mut sys::ibv_send_wr) -> io::Result<()> {
        let mut bad = ptr::null_mut();
        // SAFETY: the QP is alive; the request and its SGEs are valid during the call.
        let r = unsafe { sys::ibv_post_send(self.qp.qp().as_ptr(), wr, &mut bad) };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(r))
        }
    }
}

/// A work completion's status as libibverbs names it.
pub(super) fn status_str(status: u32) -> String {
    // SAFETY: returns a static C string for any status.
    let s = unsafe { sys::ibv_wc_status_str(status) };
    if s.is_null() {
        return format!("status {status}");
    }
    // SAFETY: non-null, NUL-terminated, static.
    unsafe { std::ffi::CStr::from_ptr(s) }
        .to_string_lossy()
        .into_owned()
}
