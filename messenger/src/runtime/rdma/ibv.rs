//! The part of libibverbs Ringwire uses, declared by hand and loaded at run time.
//!
//! A leaf module: it imports nothing from the rest of the crate. `libibverbs.so.1` is opened
//! with `dlopen` the first time RDMA is used, so building needs no rdma-core, no C compiler
//! and no bindgen, and one binary runs (and says why RDMA is unavailable) on hosts without
//! rdma-core.
//!
//! The types below follow rdma-core's `libibverbs/verbs.h`, whose public structs are ABI
//! stable (rdma-core only appends, behind the `verbs_context` that precedes `ibv_context`).
//! Only what Ringwire reads or writes is declared: structs that libibverbs allocates and hands
//! back (`ibv_context`, `ibv_cq`, `ibv_qp`) are declared up to the last field we read and are
//! only ever used through pointers; structs we allocate are declared whole. Every size and
//! offset we rely on is asserted below with the number printed by a C program (`sizeof`,
//! `offsetof`) compiled against Debian 12's `<infiniband/verbs.h>` (rdma-core 44) on x86_64;
//! the declared parts hold no pthread types, so they are the same on other 64-bit Linux ABIs.
//!
//! Functions are looked up by name with `dlsym`, which returns a symbol's default version:
//! for the verbs that also have an `IBVERBS_1.0` compat version that is `IBVERBS_1.1`, the
//! one verbs.h declares (a test checks it against `dlvsym`). The data-path verbs
//! (`ibv_post_send`, `ibv_post_recv`, `ibv_poll_cq`, `ibv_req_notify_cq`) are `static inline`
//! in verbs.h and call the provider through `context->ops`; [`post_send`] and the others do
//! the same.

#![allow(non_camel_case_types)]

use std::ffi::{c_char, c_int, c_uint, c_void};
use std::mem::offset_of;
use std::sync::OnceLock;

/// The library's soname (rdma-core's libibverbs, ABI 1 since 2006).
pub const LIBRARY: &str = "libibverbs.so.1";

/// An RDMA device (opaque: its name comes from `ibv_get_device_name`).
#[repr(C)]
pub struct ibv_device {
    _opaque: [u8; 0],
}

/// A shared receive queue (opaque; never created).
#[repr(C)]
pub struct ibv_srq {
    _opaque: [u8; 0],
}

type PostSend = unsafe extern "C" fn(*mut ibv_qp, *mut ibv_send_wr, *mut *mut ibv_send_wr) -> c_int;
type PostRecv = unsafe extern "C" fn(*mut ibv_qp, *mut ibv_recv_wr, *mut *mut ibv_recv_wr) -> c_int;
type PollCq = unsafe extern "C" fn(*mut ibv_cq, c_int, *mut ibv_wc) -> c_int;
type ReqNotifyCq = unsafe extern "C" fn(*mut ibv_cq, c_int) -> c_int;

/// `struct ibv_context_ops`: 32 function pointers, of which the data path uses four. Entries
/// are never removed or reordered (the `_compat_*` ones stay as placeholders).
#[repr(C)]
pub struct ibv_context_ops {
    /// `_compat_query_device` .. `dealloc_mw`, `_compat_create_cq`: entries 0..=10.
    _before_poll_cq: [*mut c_void; 11],
    pub poll_cq: Option<PollCq>,
    pub req_notify_cq: Option<ReqNotifyCq>,
    /// `_compat_cq_event` .. `_compat_destroy_qp`: entries 13..=24.
    _before_post_send: [*mut c_void; 12],
    pub post_send: Option<PostSend>,
    pub post_recv: Option<PostRecv>,
    /// `_compat_create_ah` .. `_compat_async_event`: entries 27..=31.
    _after_post_recv: [*mut c_void; 5],
}
const _: () = assert!(size_of::<ibv_context_ops>() == 256);
const _: () = assert!(offset_of!(ibv_context_ops, poll_cq) == 88);
const _: () = assert!(offset_of!(ibv_context_ops, req_notify_cq) == 96);
const _: () = assert!(offset_of!(ibv_context_ops, post_send) == 200);
const _: () = assert!(offset_of!(ibv_context_ops, post_recv) == 208);

/// `struct ibv_context`, up to `num_comp_vectors` (a mutex and a pointer follow; 328 bytes on
/// x86_64). Only used through the pointer `ibv_open_device` returns.
#[repr(C)]
pub struct ibv_context {
    pub device: *mut ibv_device,
    pub ops: ibv_context_ops,
    pub cmd_fd: c_int,
    pub async_fd: c_int,
    pub num_comp_vectors: c_int,
}
const _: () = assert!(offset_of!(ibv_context, device) == 0);
const _: () = assert!(offset_of!(ibv_context, ops) == 8);
const _: () = assert!(offset_of!(ibv_context, cmd_fd) == 264);
const _: () = assert!(offset_of!(ibv_context, num_comp_vectors) == 272);

/// `struct ibv_pd`.
#[repr(C)]
pub struct ibv_pd {
    pub context: *mut ibv_context,
    pub handle: u32,
}
const _: () = assert!(size_of::<ibv_pd>() == 16);

/// `struct ibv_comp_channel`.
#[repr(C)]
pub struct ibv_comp_channel {
    pub context: *mut ibv_context,
    pub fd: c_int,
    pub refcnt: c_int,
}
const _: () = assert!(size_of::<ibv_comp_channel>() == 16);
const _: () = assert!(offset_of!(ibv_comp_channel, fd) == 8);

/// `struct ibv_cq`, up to `cqe` (a mutex, a condition variable and two counters follow; 128
/// bytes on x86_64). Only used through the pointer `ibv_create_cq` returns.
#[repr(C)]
pub struct ibv_cq {
    pub context: *mut ibv_context,
    pub channel: *mut ibv_comp_channel,
    pub cq_context: *mut c_void,
    pub handle: u32,
    pub cqe: c_int,
}
const _: () = assert!(offset_of!(ibv_cq, context) == 0);
const _: () = assert!(offset_of!(ibv_cq, cqe) == 28);

/// `struct ibv_mr`.
#[repr(C)]
pub struct ibv_mr {
    pub context: *mut ibv_context,
    pub pd: *mut ibv_pd,
    pub addr: *mut c_void,
    pub length: usize,
    pub handle: u32,
    pub lkey: u32,
    pub rkey: u32,
}
const _: () = assert!(size_of::<ibv_mr>() == 48);
const _: () = assert!(offset_of!(ibv_mr, lkey) == 36);
const _: () = assert!(offset_of!(ibv_mr, rkey) == 40);

/// `struct ibv_qp`, up to `qp_type` (a mutex, a condition variable and a counter follow; 160
/// bytes on x86_64). Only used through the pointer `ibv_create_qp` returns.
#[repr(C)]
pub struct ibv_qp {
    pub context: *mut ibv_context,
    pub qp_context: *mut c_void,
    pub pd: *mut ibv_pd,
    pub send_cq: *mut ibv_cq,
    pub recv_cq: *mut ibv_cq,
    pub srq: *mut ibv_srq,
    pub handle: u32,
    pub qp_num: u32,
    pub state: c_uint,
    pub qp_type: c_uint,
}
const _: () = assert!(offset_of!(ibv_qp, context) == 0);
const _: () = assert!(offset_of!(ibv_qp, qp_num) == 52);
const _: () = assert!(offset_of!(ibv_qp, qp_type) == 60);

/// `struct ibv_qp_cap`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct ibv_qp_cap {
    pub max_send_wr: u32,
    pub max_recv_wr: u32,
    pub max_send_sge: u32,
    pub max_recv_sge: u32,
    pub max_inline_data: u32,
}
const _: () = assert!(size_of::<ibv_qp_cap>() == 20);

/// `struct ibv_qp_init_attr`.
#[repr(C)]
pub struct ibv_qp_init_attr {
    pub qp_context: *mut c_void,
    pub send_cq: *mut ibv_cq,
    pub recv_cq: *mut ibv_cq,
    pub srq: *mut ibv_srq,
    pub cap: ibv_qp_cap,
    pub qp_type: c_uint,
    pub sq_sig_all: c_int,
}
const _: () = assert!(size_of::<ibv_qp_init_attr>() == 64);
const _: () = assert!(offset_of!(ibv_qp_init_attr, cap) == 32);
const _: () = assert!(offset_of!(ibv_qp_init_attr, qp_type) == 52);
const _: () = assert!(offset_of!(ibv_qp_init_attr, sq_sig_all) == 56);

/// `union ibv_gid`: 16 bytes, aligned as its `uint64_t` members.
#[repr(C, align(8))]
#[derive(Clone, Copy, Default)]
pub struct ibv_gid {
    pub raw: [u8; 16],
}
const _: () = assert!(size_of::<ibv_gid>() == 16);

/// `struct ibv_global_route`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct ibv_global_route {
    pub dgid: ibv_gid,
    pub flow_label: u32,
    pub sgid_index: u8,
    pub hop_limit: u8,
    pub traffic_class: u8,
}
const _: () = assert!(size_of::<ibv_global_route>() == 24);
const _: () = assert!(offset_of!(ibv_global_route, sgid_index) == 20);

/// `struct ibv_ah_attr`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct ibv_ah_attr {
    pub grh: ibv_global_route,
    pub dlid: u16,
    pub sl: u8,
    pub src_path_bits: u8,
    pub static_rate: u8,
    pub is_global: u8,
    pub port_num: u8,
}
const _: () = assert!(size_of::<ibv_ah_attr>() == 32);
const _: () = assert!(offset_of!(ibv_ah_attr, dlid) == 24);
const _: () = assert!(offset_of!(ibv_ah_attr, is_global) == 29);
const _: () = assert!(offset_of!(ibv_ah_attr, port_num) == 30);

/// `struct ibv_qp_attr`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct ibv_qp_attr {
    pub qp_state: c_uint,
    pub cur_qp_state: c_uint,
    pub path_mtu: c_uint,
    pub path_mig_state: c_uint,
    pub qkey: u32,
    pub rq_psn: u32,
    pub sq_psn: u32,
    pub dest_qp_num: u32,
    pub qp_access_flags: c_uint,
    pub cap: ibv_qp_cap,
    pub ah_attr: ibv_ah_attr,
    pub alt_ah_attr: ibv_ah_attr,
    pub pkey_index: u16,
    pub alt_pkey_index: u16,
    pub en_sqd_async_notify: u8,
    pub sq_draining: u8,
    pub max_rd_atomic: u8,
    pub max_dest_rd_atomic: u8,
    pub min_rnr_timer: u8,
    pub port_num: u8,
    pub timeout: u8,
    pub retry_cnt: u8,
    pub rnr_retry: u8,
    pub alt_port_num: u8,
    pub alt_timeout: u8,
    pub rate_limit: u32,
}
const _: () = assert!(size_of::<ibv_qp_attr>() == 144);
const _: () = assert!(offset_of!(ibv_qp_attr, dest_qp_num) == 28);
const _: () = assert!(offset_of!(ibv_qp_attr, qp_access_flags) == 32);
const _: () = assert!(offset_of!(ibv_qp_attr, ah_attr) == 56);
const _: () = assert!(offset_of!(ibv_qp_attr, pkey_index) == 120);
const _: () = assert!(offset_of!(ibv_qp_attr, max_rd_atomic) == 126);
const _: () = assert!(offset_of!(ibv_qp_attr, min_rnr_timer) == 128);
const _: () = assert!(offset_of!(ibv_qp_attr, port_num) == 129);
const _: () = assert!(offset_of!(ibv_qp_attr, timeout) == 130);
const _: () = assert!(offset_of!(ibv_qp_attr, rnr_retry) == 132);
const _: () = assert!(offset_of!(ibv_qp_attr, rate_limit) == 136);

/// `struct _compat_ibv_port_attr`: what the exported `ibv_query_port` (IBVERBS_1.1) fills.
/// verbs.h's `struct ibv_port_attr` appends `port_cap_flags2` (52 bytes), reached only
/// through `verbs_context`; libibverbs copies the first 48 bytes for this entry point.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct ibv_port_attr {
    pub state: c_uint,
    pub max_mtu: c_uint,
    pub active_mtu: c_uint,
    pub gid_tbl_len: c_int,
    pub port_cap_flags: u32,
    pub max_msg_sz: u32,
    pub bad_pkey_cntr: u32,
    pub qkey_viol_cntr: u32,
    pub pkey_tbl_len: u16,
    pub lid: u16,
    pub sm_lid: u16,
    pub lmc: u8,
    pub max_vl_num: u8,
    pub sm_sl: u8,
    pub subnet_timeout: u8,
    pub init_type_reply: u8,
    pub active_width: u8,
    pub active_speed: u8,
    pub phys_state: u8,
    pub link_layer: u8,
    pub flags: u8,
}
const _: () = assert!(size_of::<ibv_port_attr>() == 48);
const _: () = assert!(offset_of!(ibv_port_attr, active_mtu) == 8);
const _: () = assert!(offset_of!(ibv_port_attr, gid_tbl_len) == 12);
const _: () = assert!(offset_of!(ibv_port_attr, lid) == 34);
const _: () = assert!(offset_of!(ibv_port_attr, link_layer) == 46);

/// `struct ibv_gid_entry` (`_ibv_query_gid_table`).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct ibv_gid_entry {
    pub gid: ibv_gid,
    pub gid_index: u32,
    pub port_num: u32,
    pub gid_type: u32,
    pub ndev_ifindex: u32,
}
const _: () = assert!(size_of::<ibv_gid_entry>() == 32);
const _: () = assert!(offset_of!(ibv_gid_entry, gid_type) == 24);

/// `struct ibv_sge`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ibv_sge {
    pub addr: u64,
    pub length: u32,
    pub lkey: u32,
}
const _: () = assert!(size_of::<ibv_sge>() == 16);

/// `struct ibv_recv_wr`.
#[repr(C)]
pub struct ibv_recv_wr {
    pub wr_id: u64,
    pub next: *mut ibv_recv_wr,
    pub sg_list: *mut ibv_sge,
    pub num_sge: c_int,
}
const _: () = assert!(size_of::<ibv_recv_wr>() == 32);

/// The `rdma` member of `ibv_send_wr.wr`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ibv_send_wr_rdma {
    pub remote_addr: u64,
    pub rkey: u32,
}

/// `ibv_send_wr.wr`: the `rdma` member, sized by the largest (`atomic`, 32 bytes).
#[repr(C)]
#[derive(Clone, Copy)]
pub union ibv_send_wr_wr {
    pub rdma: ibv_send_wr_rdma,
    _atomic: [u64; 4],
}

/// `struct ibv_send_wr`. The `qp_type` (XRC) and `bind_mw`/`tso` unions at its end stay
/// zeroed.
#[repr(C)]
pub struct ibv_send_wr {
    pub wr_id: u64,
    pub next: *mut ibv_send_wr,
    pub sg_list: *mut ibv_sge,
    pub num_sge: c_int,
    pub opcode: c_uint,
    pub send_flags: c_uint,
    /// `imm_data` (network order) or `invalidate_rkey`.
    pub imm_data: u32,
    pub wr: ibv_send_wr_wr,
    _qp_type: u32,
    _bind_mw_or_tso: [u64; 6],
}
const _: () = assert!(size_of::<ibv_send_wr>() == 128);
const _: () = assert!(offset_of!(ibv_send_wr, opcode) == 28);
const _: () = assert!(offset_of!(ibv_send_wr, send_flags) == 32);
const _: () = assert!(offset_of!(ibv_send_wr, wr) == 40);
const _: () = assert!(offset_of!(ibv_send_wr, wr) + offset_of!(ibv_send_wr_rdma, rkey) == 48);
const _: () = assert!(offset_of!(ibv_send_wr, _qp_type) == 72);
const _: () = assert!(offset_of!(ibv_send_wr, _bind_mw_or_tso) == 80);

impl ibv_send_wr {
    /// A request with every field zero (null pointers, no SGEs, no flags).
    pub fn zeroed() -> ibv_send_wr {
        // SAFETY: integers, raw pointers and a union of integers: all-zero is valid for all.
        unsafe { std::mem::zeroed() }
    }
}

/// `struct ibv_wc`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ibv_wc {
    pub wr_id: u64,
    pub status: c_uint,
    pub opcode: c_uint,
    pub vendor_err: u32,
    pub byte_len: u32,
    /// `imm_data` (network order) or `invalidated_rkey`.
    pub imm_data: u32,
    pub qp_num: u32,
    pub src_qp: u32,
    pub wc_flags: c_uint,
    pub pkey_index: u16,
    pub slid: u16,
    pub sl: u8,
    pub dlid_path_bits: u8,
}
const _: () = assert!(size_of::<ibv_wc>() == 48);
const _: () = assert!(offset_of!(ibv_wc, status) == 8);
const _: () = assert!(offset_of!(ibv_wc, byte_len) == 20);
const _: () = assert!(offset_of!(ibv_wc, qp_num) == 28);

// enum ibv_port_state
pub const IBV_PORT_ACTIVE: c_uint = 4;
// IBV_LINK_LAYER_*
pub const IBV_LINK_LAYER_ETHERNET: u8 = 2;
// enum ibv_mtu: 1 (256 bytes) ..= 5 (4096 bytes)
pub const IBV_MTU_256: c_uint = 1;
pub const IBV_MTU_4096: c_uint = 5;
// enum ibv_gid_type (IBV_GID_TYPE_IB is 0)
pub const IBV_GID_TYPE_ROCE_V1: u32 = 1;
pub const IBV_GID_TYPE_ROCE_V2: u32 = 2;
// enum ibv_access_flags
pub const IBV_ACCESS_LOCAL_WRITE: c_int = 1;
pub const IBV_ACCESS_REMOTE_READ: c_int = 1 << 2;
// enum ibv_qp_type
pub const IBV_QPT_RC: c_uint = 2;
// enum ibv_qp_state
pub const IBV_QPS_INIT: c_uint = 1;
pub const IBV_QPS_RTR: c_uint = 2;
pub const IBV_QPS_RTS: c_uint = 3;
pub const IBV_QPS_ERR: c_uint = 6;
// enum ibv_qp_attr_mask
pub const IBV_QP_STATE: c_int = 1 << 0;
pub const IBV_QP_ACCESS_FLAGS: c_int = 1 << 3;
pub const IBV_QP_PKEY_INDEX: c_int = 1 << 4;
pub const IBV_QP_PORT: c_int = 1 << 5;
pub const IBV_QP_AV: c_int = 1 << 7;
pub const IBV_QP_PATH_MTU: c_int = 1 << 8;
pub const IBV_QP_TIMEOUT: c_int = 1 << 9;
pub const IBV_QP_RETRY_CNT: c_int = 1 << 10;
pub const IBV_QP_RNR_RETRY: c_int = 1 << 11;
pub const IBV_QP_RQ_PSN: c_int = 1 << 12;
pub const IBV_QP_MAX_QP_RD_ATOMIC: c_int = 1 << 13;
pub const IBV_QP_MIN_RNR_TIMER: c_int = 1 << 15;
pub const IBV_QP_SQ_PSN: c_int = 1 << 16;
pub const IBV_QP_MAX_DEST_RD_ATOMIC: c_int = 1 << 17;
pub const IBV_QP_DEST_QPN: c_int = 1 << 20;
// enum ibv_wr_opcode
pub const IBV_WR_SEND: c_uint = 2;
pub const IBV_WR_RDMA_READ: c_uint = 4;
// enum ibv_send_flags
pub const IBV_SEND_SIGNALED: c_uint = 1 << 1;
// enum ibv_wc_status
pub const IBV_WC_SUCCESS: c_uint = 0;
pub const IBV_WC_WR_FLUSH_ERR: c_uint = 5;

/// Declares [`Verbs`]: one field per exported function, with the symbol it is loaded from and
/// the symbol version `dlsym` must find (checked by a test).
macro_rules! verbs {
    ($(
        $(#[$doc:meta])*
        $field:ident = $symbol:literal @ $version:literal: fn($($arg:ty),*) $(-> $ret:ty)?;
    )*) => {
        /// The exported libibverbs functions Ringwire calls, resolved once.
        pub struct Verbs {
            $($(#[$doc])* pub $field: unsafe extern "C" fn($($arg),*) $(-> $ret)?,)*
            /// Kept open for the life of the process: the pointers above point into it.
            _lib: libloading::Library,
        }

        impl Verbs {
            fn load() -> Result<Verbs, String> {
                // SAFETY: libibverbs' initialisers only set up its own state (and load
                // provider libraries when devices are listed); it is built for dlopen.
                let lib = unsafe { libloading::Library::new(LIBRARY) }
                    .map_err(|e| format!("cannot load {LIBRARY} ({e})"))?;
                $(
                    // SAFETY: the type is the function's prototype in verbs.h, for the
                    // symbol's default version (see the module comment).
                    let $field = *unsafe {
                        lib.get::<unsafe extern "C" fn($($arg),*) $(-> $ret)?>(
                            concat!($symbol, "\0").as_bytes(),
                        )
                    }
                    .map_err(|e| {
                        format!("{LIBRARY} has no {} ({e}); rdma-core 32 or newer is needed",
                            $symbol)
                    })?;
                )*
                Ok(Verbs { $($field,)* _lib: lib })
            }

            /// Every symbol with its version and where it was found.
            #[cfg(test)]
            fn symbols(&self) -> Vec<(&'static str, &'static str, *const c_void)> {
                vec![$(($symbol, $version, self.$field as *const c_void)),*]
            }
        }
    };
}

verbs! {
    get_device_list = "ibv_get_device_list" @ "IBVERBS_1.1":
        fn(*mut c_int) -> *mut *mut ibv_device;
    free_device_list = "ibv_free_device_list" @ "IBVERBS_1.1": fn(*mut *mut ibv_device);
    get_device_name = "ibv_get_device_name" @ "IBVERBS_1.1":
        fn(*mut ibv_device) -> *const c_char;
    open_device = "ibv_open_device" @ "IBVERBS_1.1": fn(*mut ibv_device) -> *mut ibv_context;
    close_device = "ibv_close_device" @ "IBVERBS_1.1": fn(*mut ibv_context) -> c_int;
    /// Takes `struct _compat_ibv_port_attr` (our [`ibv_port_attr`]).
    query_port = "ibv_query_port" @ "IBVERBS_1.1":
        fn(*mut ibv_context, u8, *mut ibv_port_attr) -> c_int;
    query_gid = "ibv_query_gid" @ "IBVERBS_1.1":
        fn(*mut ibv_context, u8, c_int, *mut ibv_gid) -> c_int;
    /// rdma-core 32 and later. verbs.h's `ibv_query_gid_table` is an inline wrapper passing
    /// `sizeof(struct ibv_gid_entry)`. Returns the number of entries read, or `-errno`.
    query_gid_table = "_ibv_query_gid_table" @ "IBVERBS_1.11":
        fn(*mut ibv_context, *mut ibv_gid_entry, usize, u32, usize) -> isize;
    alloc_pd = "ibv_alloc_pd" @ "IBVERBS_1.1": fn(*mut ibv_context) -> *mut ibv_pd;
    dealloc_pd = "ibv_dealloc_pd" @ "IBVERBS_1.1": fn(*mut ibv_pd) -> c_int;
    /// Still exported in current rdma-core, where verbs.h's `ibv_reg_mr` is a macro that
    /// calls this function for access flags without IBV_ACCESS_OPTIONAL_RANGE bits (ours)
    /// and `ibv_reg_mr_iova2` otherwise.
    reg_mr = "ibv_reg_mr" @ "IBVERBS_1.1":
        fn(*mut ibv_pd, *mut c_void, usize, c_int) -> *mut ibv_mr;
    dereg_mr = "ibv_dereg_mr" @ "IBVERBS_1.1": fn(*mut ibv_mr) -> c_int;
    create_comp_channel = "ibv_create_comp_channel" @ "IBVERBS_1.0":
        fn(*mut ibv_context) -> *mut ibv_comp_channel;
    destroy_comp_channel = "ibv_destroy_comp_channel" @ "IBVERBS_1.0":
        fn(*mut ibv_comp_channel) -> c_int;
    create_cq = "ibv_create_cq" @ "IBVERBS_1.1":
        fn(*mut ibv_context, c_int, *mut c_void, *mut ibv_comp_channel, c_int) -> *mut ibv_cq;
    destroy_cq = "ibv_destroy_cq" @ "IBVERBS_1.1": fn(*mut ibv_cq) -> c_int;
    get_cq_event = "ibv_get_cq_event" @ "IBVERBS_1.1":
        fn(*mut ibv_comp_channel, *mut *mut ibv_cq, *mut *mut c_void) -> c_int;
    ack_cq_events = "ibv_ack_cq_events" @ "IBVERBS_1.1": fn(*mut ibv_cq, c_uint);
    create_qp = "ibv_create_qp" @ "IBVERBS_1.1":
        fn(*mut ibv_pd, *mut ibv_qp_init_attr) -> *mut ibv_qp;
    modify_qp = "ibv_modify_qp" @ "IBVERBS_1.1":
        fn(*mut ibv_qp, *mut ibv_qp_attr, c_int) -> c_int;
    destroy_qp = "ibv_destroy_qp" @ "IBVERBS_1.1": fn(*mut ibv_qp) -> c_int;
    wc_status_str = "ibv_wc_status_str" @ "IBVERBS_1.1": fn(c_uint) -> *const c_char;
}

// SAFETY: plain function pointers into a library that stays loaded; libibverbs' verbs are
// thread-safe.
unsafe impl Send for Verbs {}
// SAFETY: as above.
unsafe impl Sync for Verbs {}

/// libibverbs, loaded on first use; the error says how to get it.
pub fn verbs() -> Result<&'static Verbs, String> {
    static VERBS: OnceLock<Result<Verbs, String>> = OnceLock::new();
    VERBS.get_or_init(Verbs::load).as_ref().map_err(|e| {
        format!(
            "{e}: RDMA needs rdma-core's libibverbs at run time (Debian/Ubuntu: \
                 `apt-get install libibverbs1 ibverbs-providers`; Fedora/RHEL: \
                 `dnf install libibverbs`)"
        )
    })
}

/// verbs.h's `ibv_post_send`: the provider's `post_send` through `qp->context->ops`.
///
/// # Safety
/// `qp` is a live queue pair; `wr` and what it points to are valid for the call.
pub unsafe fn post_send(
    qp: *mut ibv_qp,
    wr: *mut ibv_send_wr,
    bad: *mut *mut ibv_send_wr,
) -> c_int {
    // SAFETY: the caller's; every context libibverbs opens has its provider's ops filled in.
    unsafe {
        let f = (*(*qp).context).ops.post_send;
        f.map_or(libc::EOPNOTSUPP, |f| f(qp, wr, bad))
    }
}

/// verbs.h's `ibv_post_recv`.
///
/// # Safety
/// As [`post_send`].
pub unsafe fn post_recv(
    qp: *mut ibv_qp,
    wr: *mut ibv_recv_wr,
    bad: *mut *mut ibv_recv_wr,
) -> c_int {
    // SAFETY: as in `post_send`.
    unsafe {
        let f = (*(*qp).context).ops.post_recv;
        f.map_or(libc::EOPNOTSUPP, |f| f(qp, wr, bad))
    }
}

/// verbs.h's `ibv_poll_cq`: completions written, or negative on error.
///
/// # Safety
/// `cq` is a live completion queue; `wc` has room for `n` entries.
pub unsafe fn poll_cq(cq: *mut ibv_cq, n: c_int, wc: *mut ibv_wc) -> c_int {
    // SAFETY: as in `post_send`.
    unsafe {
        let f = (*(*cq).context).ops.poll_cq;
        f.map_or(-1, |f| f(cq, n, wc))
    }
}

/// verbs.h's `ibv_req_notify_cq`: 0 or an errno value.
///
/// # Safety
/// `cq` is a live completion queue.
pub unsafe fn req_notify_cq(cq: *mut ibv_cq, solicited_only: c_int) -> c_int {
    // SAFETY: as in `post_send`.
    unsafe {
        let f = (*(*cq).context).ops.req_notify_cq;
        f.map_or(libc::EOPNOTSUPP, |f| f(cq, solicited_only))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each function resolves to the version verbs.h declares, not an IBVERBS_1.0 compat
    /// one. Runs where libibverbs is installed (it is not needed to build).
    #[test]
    fn symbols_are_the_current_versions() {
        let Ok(v) = verbs() else {
            eprintln!("{LIBRARY} is not installed here: nothing to check");
            return;
        };
        let name = std::ffi::CString::new(LIBRARY).unwrap();
        // SAFETY: RTLD_NOLOAD returns the handle of the library `verbs()` already loaded.
        let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD) };
        assert!(!handle.is_null());
        for (symbol, version, ptr) in v.symbols() {
            let s = std::ffi::CString::new(symbol).unwrap();
            let ver = std::ffi::CString::new(version).unwrap();
            // SAFETY: a symbol lookup on a live handle.
            let want = unsafe { libc::dlvsym(handle, s.as_ptr(), ver.as_ptr()) };
            assert_eq!(ptr, want as *const c_void, "{symbol}@{version}");
        }
        // SAFETY: drops the reference RTLD_NOLOAD took; `verbs()` keeps its own.
        unsafe { libc::dlclose(handle) };
    }
}
