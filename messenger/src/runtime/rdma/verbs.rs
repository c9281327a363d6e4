//! The verbs a worker uses: one device context, protection domain, completion channel and
//! completion queue per worker; RC queue pairs; the worker's registered region. Everything
//! goes through [`super::ibv`], Ringwire's own declarations of libibverbs, loaded at run time
//! (so a binary built with RDMA runs, and says clearly why RDMA is unavailable, on hosts
//! without libibverbs). Each resource is an [`Owned`] handle that keeps its parents alive
//! (queue pairs their PD and CQ, memory regions their PD, the CQ its channel, all of them the
//! context), so they are destroyed in the order libibverbs requires whatever the order in
//! which Rust drops them. (Over 800 lines because each resource kind needs its wrapper, its
//! destroy call and its error wording; they share `Owned` and belong together.)

use std::ffi::{c_int, c_void, CStr};
use std::io;
use std::ptr::{self, NonNull};
use std::sync::Arc;

use memmap2::{MmapMut, MmapOptions};

use super::ibv::{self, Verbs};
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

/// The error a verb reported: its return value when that is an errno value, else `errno`.
fn verb_error(r: c_int) -> io::Error {
    if r > 0 {
        io::Error::from_raw_os_error(r)
    } else {
        io::Error::last_os_error()
    }
}

/// A libibverbs object, destroyed when dropped, before the parents it keeps alive in `P`.
pub(super) struct Owned<T, P> {
    ptr: NonNull<T>,
    destroy: unsafe extern "C" fn(*mut T) -> c_int,
    what: &'static str,
    // Dropped after `Drop::drop` has destroyed `ptr`.
    _parents: P,
}

impl<T, P> Owned<T, P> {
    /// Takes ownership of what a create verb returned; when it returned NULL, the error it
    /// left in `errno`.
    fn new(
        ptr: *mut T,
        destroy: unsafe extern "C" fn(*mut T) -> c_int,
        what: &'static str,
        parents: P,
    ) -> io::Result<Self> {
        let ptr = NonNull::new(ptr).ok_or_else(io::Error::last_os_error)?;
        Ok(Owned {
            ptr,
            destroy,
            what,
            _parents: parents,
        })
    }

    fn as_ptr(&self) -> *mut T {
        self.ptr.as_ptr()
    }
}

impl<T, P> Drop for Owned<T, P> {
    fn drop(&mut self) {
        // SAFETY: the object is live and owned here alone; whatever depends on it holds an
        // Arc to this handle, so it is already gone.
        let r = unsafe { (self.destroy)(self.ptr.as_ptr()) };
        if r != 0 {
            tracing::warn!("destroying the {}: {}", self.what, verb_error(r));
        }
    }
}

// SAFETY: libibverbs objects may be used and destroyed from any thread (its verbs are
// thread-safe); the parents are themselves Send.
unsafe impl<T, P: Send> Send for Owned<T, P> {}
// SAFETY: as above; shared use only reads the object or calls thread-safe verbs.
unsafe impl<T, P: Sync> Sync for Owned<T, P> {}

type Context = Owned<ibv::ibv_context, ()>;
type Pd = Owned<ibv::ibv_pd, Arc<Context>>;
type Channel = Owned<ibv::ibv_comp_channel, Arc<Context>>;
type Cq = Owned<ibv::ibv_cq, Arc<Channel>>;
/// A registered memory region.
pub(super) type MemoryRegion = Owned<ibv::ibv_mr, Arc<Pd>>;
type QueuePair = Owned<ibv::ibv_qp, (Arc<Pd>, Arc<Cq>)>;

impl MemoryRegion {
    pub fn lkey(&self) -> u32 {
        // SAFETY: the region is live; libibverbs set its keys at registration.
        unsafe { (*self.as_ptr()).lkey }
    }
    pub fn rkey(&self) -> u32 {
        // SAFETY: as above.
        unsafe { (*self.as_ptr()).rkey }
    }
}

/// The list `ibv_get_device_list` returns, freed when dropped.
struct DeviceList {
    v: &'static Verbs,
    list: NonNull<*mut ibv::ibv_device>,
    len: usize,
}

impl DeviceList {
    fn new(v: &'static Verbs) -> io::Result<DeviceList> {
        let mut n: c_int = 0;
        // SAFETY: `n` is a valid out-pointer.
        let list = unsafe { (v.get_device_list)(&mut n) };
        let list = NonNull::new(list).ok_or_else(io::Error::last_os_error)?;
        Ok(DeviceList {
            v,
            list,
            len: n.max(0) as usize,
        })
    }

    /// The devices with their names.
    fn devices(&self) -> Vec<(*mut ibv::ibv_device, String)> {
        (0..self.len)
            .map(|i| {
                // SAFETY: the list holds `len` device pointers.
                let dev = unsafe { *self.list.as_ptr().add(i) };
                // SAFETY: a listed device; the name is a NUL-terminated string it owns.
                let name = unsafe { (self.v.get_device_name)(dev) };
                let name = if name.is_null() {
                    String::new()
                } else {
                    // SAFETY: non-null and NUL-terminated (above).
                    unsafe { CStr::from_ptr(name) }
                        .to_string_lossy()
                        .into_owned()
                };
                (dev, name)
            })
            .collect()
    }
}

impl Drop for DeviceList {
    fn drop(&mut self) {
        // SAFETY: the list came from ibv_get_device_list and is freed once; devices opened
        // from it stay usable.
        unsafe { (self.v.free_device_list)(self.list.as_ptr()) };
    }
}

/// The worker's registered memory: send slots then receive slots, `slot` bytes each.
pub(super) struct Region {
    // Declared before the mapping: deregistered before it is unmapped.
    pub mr: Arc<MemoryRegion>,
    map: MmapMut,
    pub slot: usize,
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
    v: &'static Verbs,
    pub name: String,
    pd: Arc<Pd>,
    channel: Arc<Channel>,
    cq: Arc<Cq>,
    pub port: u8,
    pub gid_index: u8,
    pub gid: [u8; 16],
    pub lid: u16,
    /// The port's active MTU as an `ibv_mtu` code (1 = 256 bytes ..= 5 = 4096 bytes).
    pub mtu: u32,
    /// RoCE (a GRH on every packet) rather than InfiniBand (LID routing).
    pub roce: bool,
    /// The messenger's payload arena, registered here so its payloads go out without a copy.
    pub arena_mr: Option<Arc<MemoryRegion>>,
    // Declared last: dropped after the memory regions above and the queue pairs (which the
    // transport drops before the device). Each also keeps the PD it needs alive.
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

/// A port state as verbs.h names it.
fn port_state_name(state: u32) -> String {
    match state {
        0 => "Nop".into(),
        1 => "Down".into(),
        2 => "Initializing".into(),
        3 => "Armed".into(),
        4 => "Active".into(),
        5 => "ActiveDefer".into(),
        s => format!("state {s}"),
    }
}

/// Every valid GID of the device with its type, through `ibv_query_gid_table` (which falls
/// back to sysfs itself on kernels without the query ioctl). `room` is a first guess at the
/// number of valid entries on all ports; the call fails with EINVAL when there are more, and
/// also when the buffer exceeds the ioctl's 16-bit attribute length (2047 entries).
fn gid_table(v: &Verbs, ctx: &Context, room: usize) -> io::Result<Vec<ibv::ibv_gid_entry>> {
    const MAX_ROOM: usize = u16::MAX as usize / size_of::<ibv::ibv_gid_entry>();
    let mut room = room.clamp(1, MAX_ROOM);
    loop {
        let mut entries = vec![ibv::ibv_gid_entry::default(); room];
        // SAFETY: the context is live; `entries` has room for `room` entries of the size
        // passed.
        let n = unsafe {
            (v.query_gid_table)(
                ctx.as_ptr(),
                entries.as_mut_ptr(),
                room,
                0,
                size_of::<ibv::ibv_gid_entry>(),
            )
        };
        if n >= 0 {
            entries.truncate(n as usize);
            return Ok(entries);
        }
        if n == -(libc::EINVAL as isize) && room < MAX_ROOM {
            room = (room * 2).min(MAX_ROOM);
            continue;
        }
        return Err(io::Error::from_raw_os_error(-n as i32));
    }
}

/// Chooses the GID: the configured index, else RoCE v2 with an IPv4-mapped address, then
/// any other RoCE v2 one (global before link-local), then RoCE v1, then index 0 (InfiniBand).
fn choose_gid(
    v: &Verbs,
    ctx: &Context,
    port: u8,
    table_len: usize,
    configured: Option<u8>,
) -> Result<(u8, [u8; 16]), Error> {
    if let Some(i) = configured {
        let mut gid = ibv::ibv_gid::default();
        // SAFETY: the context is live; `gid` is a valid out-pointer.
        let r = unsafe { (v.query_gid)(ctx.as_ptr(), port, i as c_int, &mut gid) };
        if r != 0 {
            return Err(rdma_error(format!(
                "GID index {i} on port {port}: {}",
                verb_error(r)
            )));
        }
        return Ok((i, gid.raw));
    }
    let table = gid_table(v, ctx, table_len)
        .map_err(|e| rdma_error(format!("cannot read the GID table: {e}")))?;
    let rank = |ty: u32, raw: &[u8; 16]| -> u8 {
        let v4_mapped = raw[..10].iter().all(|b| *b == 0) && raw[10] == 0xff && raw[11] == 0xff;
        let link_local = raw[0] == 0xfe && raw[1] & 0xc0 == 0x80;
        match ty {
            ibv::IBV_GID_TYPE_ROCE_V2 if v4_mapped => 0,
            ibv::IBV_GID_TYPE_ROCE_V2 if !link_local => 1,
            ibv::IBV_GID_TYPE_ROCE_V2 => 2,
            ibv::IBV_GID_TYPE_ROCE_V1 => 3,
            _ => 4, // InfiniBand
        }
    };
    table
        .iter()
        .filter(|g| g.port_num == port as u32 && g.gid.raw != [0; 16])
        .min_by_key(|g| (rank(g.gid_type, &g.gid.raw), g.gid_index))
        .map(|g| (g.gid_index as u8, g.gid.raw))
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
        let v = ibv::verbs().map_err(rdma_error)?;
        let list = DeviceList::new(v).map_err(|e| {
            // ENOSYS: the kernel has no RDMA device class at all (no driver loaded).
            let wanted = match &o.device {
                Some(name) => format!("RDMA device {name}"),
                None => "an RDMA device".to_string(),
            };
            rdma_error(format!(
                "cannot find {wanted}: libibverbs cannot list devices ({e}); is an RDMA \
                 driver loaded? Load the one for the HCA, or create a soft-RoCE device \
                 (`modprobe rdma_rxe; rdma link add rxe0 type rxe netdev eth0`)"
            ))
        })?;
        let devices = list.devices();
        let (dev, name) = match &o.device {
            Some(name) => devices.iter().find(|(_, n)| n == name).ok_or_else(|| {
                let names: Vec<&String> = devices.iter().map(|(_, n)| n).collect();
                rdma_error(format!("no RDMA device named {name} (have: {names:?})"))
            })?,
            None => devices.first().ok_or_else(|| {
                rdma_error(
                    "no RDMA device: load the driver for the HCA (and install rdma-core's \
                     providers, ibverbs-providers on Debian), or create a soft-RoCE device \
                     (`modprobe rdma_rxe; rdma link add rxe0 type rxe netdev eth0`)",
                )
            })?,
        };
        let name = name.clone();
        // SAFETY: a device of the live list.
        let ctx = unsafe { (v.open_device)(*dev) };
        let ctx = Owned::new(ctx, v.close_device, "device context", ())
            .map(Arc::new)
            .map_err(|e| {
                rdma_error(format!(
                    "cannot open {name}: {e} (permissions on /dev/infiniband?)"
                ))
            })?;
        drop(list);
        let port = o.port;
        let mut attr = ibv::ibv_port_attr::default();
        // SAFETY: the context is live; `attr` is the struct this entry point fills.
        let r = unsafe { (v.query_port)(ctx.as_ptr(), port, &mut attr) };
        if r != 0 {
            return Err(rdma_error(format!(
                "{name}: cannot query port {port}: {}",
                verb_error(r)
            )));
        }
        if attr.state != ibv::IBV_PORT_ACTIVE {
            return Err(rdma_error(format!(
                "{name} port {port} is not active ({}); check the link and, on InfiniBand, the subnet manager",
                port_state_name(attr.state)
            )));
        }
        let roce = attr.link_layer == ibv::IBV_LINK_LAYER_ETHERNET;
        let (gid_index, gid) = if roce || o.gid_index.is_some() {
            let table_len = attr.gid_tbl_len.max(0) as usize;
            choose_gid(v, &ctx, port, table_len, o.gid_index)?
        } else {
            (0, [0; 16])
        };
        // SAFETY: the context is live.
        let pd = unsafe { (v.alloc_pd)(ctx.as_ptr()) };
        let pd = Owned::new(pd, v.dealloc_pd, "protection domain", ctx.clone())
            .map(Arc::new)
            .map_err(|e| rdma_error(format!("{name}: cannot allocate a protection domain: {e}")))?;
        // SAFETY: the context is live.
        let channel = unsafe { (v.create_comp_channel)(ctx.as_ptr()) };
        let channel = Owned::new(channel, v.destroy_comp_channel, "completion channel", ctx)
            .map(Arc::new)
            .map_err(|e| rdma_error(format!("{name}: cannot create a completion channel: {e}")))?;
        set_nonblocking(channel_fd(&channel))
            .map_err(|e| rdma_error(format!("completion channel: {e}")))?;
        // SAFETY: the context and channel are live (the channel holds the context).
        let cq = unsafe {
            (v.create_cq)(
                (*channel.as_ptr()).context,
                cqe as c_int,
                ptr::null_mut(),
                channel.as_ptr(),
                0,
            )
        };
        let cq = Owned::new(cq, v.destroy_cq, "completion queue", channel.clone())
            .map(Arc::new)
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
        // SAFETY: the mapping lives in `region` next to its registration, dropped after it.
        let mr = unsafe { reg_mr(v, &pd, map.as_mut_ptr(), map.len(), false) }
            .map_err(|e| rdma_error(format!("{name}: {e}; {}", memlock_hint(map.len()))))?;
        let arena_mr = match arena {
            Some(a) => {
                let iov = a.iovec();
                // SAFETY: the arena is held by the messenger, which outlives its workers.
                let r = unsafe { reg_mr(v, &pd, iov.iov_base as *mut u8, iov.iov_len, true) };
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
            v,
            name,
            pd,
            channel,
            cq,
            port,
            gid_index,
            gid,
            lid: attr.lid,
            mtu: attr.active_mtu,
            roce,
            arena_mr,
            region: Region {
                mr,
                map,
                slot: o.buffer_size,
            },
        };
        dev.request_notify()?;
        Ok(dev)
    }

    /// Asks for an event on the completion channel at the next completion.
    pub fn request_notify(&self) -> Result<(), Error> {
        // SAFETY: the CQ is alive (owned by self).
        let r = unsafe { ibv::req_notify_cq(self.cq.as_ptr(), 0) };
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
            let r = unsafe { (self.v.get_cq_event)(self.channel.as_ptr(), &mut cq, &mut cq_ctx) };
            if r != 0 {
                break;
            }
            n += 1;
        }
        if n > 0 {
            // SAFETY: acknowledges events taken from this CQ.
            unsafe { (self.v.ack_cq_events)(self.cq.as_ptr(), n) };
        }
        n
    }

    /// Polls up to `out.capacity()` completions into `out`.
    pub fn poll(&self, out: &mut Vec<ibv::ibv_wc>) -> usize {
        out.clear();
        let cap = out.capacity();
        // SAFETY: the device writes at most `cap` entries into the vector's spare room.
        let n = unsafe { ibv::poll_cq(self.cq.as_ptr(), cap as i32, out.as_mut_ptr()) };
        if n > 0 {
            // SAFETY: `n` entries were written.
            unsafe { out.set_len(n as usize) };
        }
        n.max(0) as usize
    }

    pub fn channel_fd(&self) -> i32 {
        channel_fd(&self.channel)
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
        // SAFETY: forwarded to the caller.
        unsafe { reg_mr(self.v, &self.pd, ptr as *mut u8, len.max(1), remote) }
            .map_err(|e| format!("{e}; {}", memlock_hint(len)))
    }

    /// A new RC queue pair on the worker's CQ, in INIT, ready for receives to be posted.
    pub fn create_qp(&self, recv_depth: u32) -> Result<Qp, Error> {
        let mut init = ibv::ibv_qp_init_attr {
            qp_context: ptr::null_mut(),
            send_cq: self.cq.as_ptr(),
            recv_cq: self.cq.as_ptr(),
            srq: ptr::null_mut(),
            cap: ibv::ibv_qp_cap {
                max_send_wr: SEND_DEPTH,
                max_recv_wr: recv_depth,
                max_send_sge: super::MAX_SGE as u32,
                max_recv_sge: 1,
                max_inline_data: 0,
            },
            qp_type: ibv::IBV_QPT_RC,
            sq_sig_all: 0,
        };
        // SAFETY: the PD and CQ are live; `init` is valid for the call.
        let qp = unsafe { (self.v.create_qp)(self.pd.as_ptr(), &mut init) };
        let qp = Owned::new(
            qp,
            self.v.destroy_qp,
            "queue pair",
            (self.pd.clone(), self.cq.clone()),
        )
        .map_err(|e| rdma_error(format!("{}: cannot create a queue pair: {e}", self.name)))?;
        let mut qp = Qp {
            v: self.v,
            qp,
            psn: (super::super::random_u64() as u32) & 0xff_ffff,
        };
        let mut attr = ibv::ibv_qp_attr {
            qp_state: ibv::IBV_QPS_INIT,
            pkey_index: 0,
            port_num: self.port,
            qp_access_flags: (ibv::IBV_ACCESS_LOCAL_WRITE | ibv::IBV_ACCESS_REMOTE_READ) as u32,
            ..Default::default()
        };
        qp.modify(
            &mut attr,
            ibv::IBV_QP_STATE
                | ibv::IBV_QP_PKEY_INDEX
                | ibv::IBV_QP_PORT
                | ibv::IBV_QP_ACCESS_FLAGS,
        )
        .map_err(|e| rdma_error(format!("queue pair to INIT: {e}")))?;
        Ok(qp)
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
        // Both codes are 1..=5 (the peer's is checked when its hello is decoded).
        let mtu = self.mtu.min(peer.mtu as u32);
        debug_assert!((ibv::IBV_MTU_256..=ibv::IBV_MTU_4096).contains(&mtu));
        let mut ah = ibv::ibv_ah_attr {
            port_num: self.port,
            sl: 0,
            dlid: peer.lid,
            ..Default::default()
        };
        if self.roce {
            ah.grh = ibv::ibv_global_route {
                dgid: ibv::ibv_gid { raw: peer.gid },
                flow_label: 0,
                sgid_index: self.gid_index,
                hop_limit: 64,
                traffic_class: 0,
            };
            ah.is_global = 1;
        }
        let mut attr = ibv::ibv_qp_attr {
            qp_state: ibv::IBV_QPS_RTR,
            path_mtu: mtu,
            dest_qp_num: peer.qpn,
            rq_psn: peer.psn,
            max_dest_rd_atomic: READ_DEPTH,
            min_rnr_timer: 12,
            ah_attr: ah,
            ..Default::default()
        };
        qp.modify(
            &mut attr,
            ibv::IBV_QP_STATE
                | ibv::IBV_QP_PATH_MTU
                | ibv::IBV_QP_DEST_QPN
                | ibv::IBV_QP_RQ_PSN
                | ibv::IBV_QP_MAX_DEST_RD_ATOMIC
                | ibv::IBV_QP_MIN_RNR_TIMER
                | ibv::IBV_QP_AV,
        )
        .map_err(|e| rdma_error(format!("queue pair to RTR: {e}")))?;
        // rnr_retry 0: credits guarantee a posted receive for every SEND, so a receiver-not-
        // ready NAK is a bug to fail loudly on, not to retry forever as Ceph's stack does.
        let mut attr = ibv::ibv_qp_attr {
            qp_state: ibv::IBV_QPS_RTS,
            sq_psn: qp.psn,
            timeout: 14,
            retry_cnt: 7,
            rnr_retry: 0,
            max_rd_atomic: READ_DEPTH,
            ..Default::default()
        };
        qp.modify(
            &mut attr,
            ibv::IBV_QP_STATE
                | ibv::IBV_QP_SQ_PSN
                | ibv::IBV_QP_TIMEOUT
                | ibv::IBV_QP_RETRY_CNT
                | ibv::IBV_QP_RNR_RETRY
                | ibv::IBV_QP_MAX_QP_RD_ATOMIC,
        )
        .map_err(|e| rdma_error(format!("queue pair to RTS: {e}")))
    }
}

fn channel_fd(channel: &Channel) -> i32 {
    // SAFETY: the channel is live; its fd is set at creation and never changes.
    unsafe { (*channel.as_ptr()).fd }
}

fn set_nonblocking(fd: i32) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own; no pointers involved.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Registers `len` bytes at `ptr` in `pd`: for a local write, or for the peer to READ.
///
/// # Safety
/// The memory must stay valid until the region is dropped.
unsafe fn reg_mr(
    v: &Verbs,
    pd: &Arc<Pd>,
    ptr: *mut u8,
    len: usize,
    remote: bool,
) -> Result<Arc<MemoryRegion>, String> {
    let access = if remote {
        ibv::IBV_ACCESS_REMOTE_READ
    } else {
        ibv::IBV_ACCESS_LOCAL_WRITE
    };
    // SAFETY: the PD is live; the memory's validity is the caller's.
    let mr = unsafe { (v.reg_mr)(pd.as_ptr(), ptr as *mut c_void, len, access) };
    Owned::new(mr, v.dereg_mr, "memory region", pd.clone())
        .map(Arc::new)
        .map_err(|e| format!("cannot register {} KiB: {e}", len.div_ceil(1024)))
}

/// One RC queue pair.
pub(super) struct Qp {
    v: &'static Verbs,
    qp: QueuePair,
    psn: u32,
}

impl Qp {
    pub fn number(&self) -> u32 {
        // SAFETY: the QP is alive.
        unsafe { (*self.qp.as_ptr()).qp_num }
    }

    fn modify(&mut self, attr: &mut ibv::ibv_qp_attr, mask: c_int) -> io::Result<()> {
        // SAFETY: the QP is alive; `attr` is valid for the call.
        let r = unsafe { (self.v.modify_qp)(self.qp.as_ptr(), attr, mask) };
        if r == 0 {
            Ok(())
        } else {
            Err(verb_error(r))
        }
    }

    /// Moves the QP to ERROR: every posted work request completes (flushed).
    pub fn fail(&mut self) {
        let mut attr = ibv::ibv_qp_attr {
            qp_state: ibv::IBV_QPS_ERR,
            ..Default::default()
        };
        let _ = self.modify(&mut attr, ibv::IBV_QP_STATE);
    }

    pub fn post_recv(&mut self, wr_id: u64, addr: *mut u8, len: u32, lkey: u32) -> io::Result<()> {
        let mut sge = ibv::ibv_sge {
            addr: addr as u64,
            length: len,
            lkey,
        };
        let mut wr = ibv::ibv_recv_wr {
            wr_id,
            next: ptr::null_mut(),
            sg_list: &mut sge,
            num_sge: 1,
        };
        let mut bad = ptr::null_mut();
        // SAFETY: the QP is alive; wr and sge are valid for the call (the device copies them).
        let r = unsafe { ibv::post_recv(self.qp.as_ptr(), &mut wr, &mut bad) };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(r))
        }
    }

    /// Posts a signaled SEND gathering `sges`.
    pub fn post_send(&mut self, wr_id: u64, sges: &mut [ibv::ibv_sge]) -> io::Result<()> {
        let mut wr = ibv::ibv_send_wr::zeroed();
        wr.wr_id = wr_id;
        wr.sg_list = sges.as_mut_ptr();
        wr.num_sge = sges.len() as i32;
        wr.opcode = ibv::IBV_WR_SEND;
        wr.send_flags = ibv::IBV_SEND_SIGNALED;
        self.post(&mut wr)
    }

    /// Posts a signaled RDMA READ of `len` bytes at the peer's `remote` into `local`.
    pub fn post_read(
        &mut self,
        wr_id: u64,
        local: ibv::ibv_sge,
        remote: u64,
        rkey: u32,
    ) -> io::Result<()> {
        let mut sge = local;
        let mut wr = ibv::ibv_send_wr::zeroed();
        wr.wr_id = wr_id;
        wr.sg_list = &mut sge;
        wr.num_sge = 1;
        wr.opcode = ibv::IBV_WR_RDMA_READ;
        wr.send_flags = ibv::IBV_SEND_SIGNALED;
        wr.wr = ibv::ibv_send_wr_wr {
            rdma: ibv::ibv_send_wr_rdma {
                remote_addr: remote,
                rkey,
            },
        };
        self.post(&mut wr)
    }

    fn post(&mut self, wr: &mut ibv::ibv_send_wr) -> io::Result<()> {
        let mut bad = ptr::null_mut();
        // SAFETY: the QP is alive; the request and its SGEs are valid during the call.
        let r = unsafe { ibv::post_send(self.qp.as_ptr(), wr, &mut bad) };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(r))
        }
    }
}

/// A work completion's status as libibverbs names it.
pub(super) fn status_str(status: u32) -> String {
    let Ok(v) = ibv::verbs() else {
        return format!("status {status}");
    };
    // SAFETY: returns a static C string for any status.
    let s = unsafe { (v.wc_status_str)(status) };
    if s.is_null() {
        return format!("status {status}");
    }
    // SAFETY: non-null, NUL-terminated, static.
    unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned()
}
