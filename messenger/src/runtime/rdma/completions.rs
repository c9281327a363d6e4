//! Completions: what a work request's id says, each connection's queue pair with the count
//! of its work requests still in flight, and the worker's one completion queue, polled on
//! every loop pass and woken through its completion channel's fd (a multishot poll on the
//! worker's ring). What each completion does to its connection is the transport's (mod.rs).

use std::io;

use io_uring::{cqueue, opcode, types};

use super::super::transport::{user_data, Cx};
use super::ibv;
use super::verbs::{self, Device, Qp};
use super::{bump, KIND_CQ};

/// Completions taken from the CQ per poll.
const WC_BATCH: usize = 64;

/// What a work request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Work {
    Recv,
    Send,
    Read,
}

const WR_RECV: u64 = 1;
const WR_SEND: u64 = 2;
const WR_READ: u64 = 3;

/// A work request's id: what it is, whose (connection slot) and which buffer (region slot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct WorkId {
    pub work: Work,
    pub conn: usize,
    pub slot: u32,
}

impl WorkId {
    /// Kind (4 bits), connection slot (28), buffer slot (32).
    pub fn encode(self) -> u64 {
        let kind = match self.work {
            Work::Recv => WR_RECV,
            Work::Send => WR_SEND,
            Work::Read => WR_READ,
        };
        kind << 60 | (self.conn as u64) << 32 | self.slot as u64
    }

    pub fn decode(id: u64) -> WorkId {
        let work = match id >> 60 {
            WR_SEND => Work::Send,
            WR_READ => Work::Read,
            _ => Work::Recv,
        };
        WorkId {
            work,
            conn: ((id >> 32) & 0x0fff_ffff) as usize,
            slot: id as u32,
        }
    }
}

/// A connection's queue pair and its work requests posted and not completed: nothing they
/// point at (receive and send buffers, READ targets) may be released while any is in flight.
pub(super) struct Link {
    qp: Qp,
    /// The connection slot, named in every work request id.
    conn: usize,
    in_flight: u32,
}

impl Link {
    pub fn new(qp: Qp, conn: usize) -> Link {
        Link {
            qp,
            conn,
            in_flight: 0,
        }
    }

    /// The connection slot it belongs to.
    pub fn conn(&self) -> usize {
        self.conn
    }

    pub fn qp(&self) -> &Qp {
        &self.qp
    }

    pub fn qp_mut(&mut self) -> &mut Qp {
        &mut self.qp
    }

    /// Work requests posted and not completed.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// One of ours completed.
    pub fn completed(&mut self) {
        self.in_flight -= 1;
    }

    /// Moves the queue pair to ERROR: everything in flight completes, flushed.
    pub fn fail(&mut self) {
        self.qp.fail();
    }

    fn id(&self, work: Work, slot: u32) -> u64 {
        WorkId {
            work,
            conn: self.conn,
            slot,
        }
        .encode()
    }

    pub fn post_recv(&mut self, slot: u32, addr: *mut u8, len: u32, lkey: u32) -> io::Result<()> {
        let id = self.id(Work::Recv, slot);
        self.qp.post_recv(id, addr, len, lkey)?;
        self.in_flight += 1;
        Ok(())
    }

    pub fn post_send(&mut self, slot: u32, sges: &mut [ibv::ibv_sge]) -> io::Result<()> {
        let id = self.id(Work::Send, slot);
        self.qp.post_send(id, sges)?;
        self.in_flight += 1;
        Ok(())
    }

    pub fn post_read(&mut self, local: ibv::ibv_sge, remote: u64, rkey: u32) -> io::Result<()> {
        let id = self.id(Work::Read, 0);
        self.qp.post_read(id, local, remote, rkey)?;
        self.in_flight += 1;
        Ok(())
    }
}

/// One work completion, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Completion {
    pub id: WorkId,
    pub status: u32,
    pub byte_len: u32,
}

impl Completion {
    pub fn ok(&self) -> bool {
        self.status == ibv::IBV_WC_SUCCESS
    }

    /// What went wrong, for the log; None when it succeeded or was only flushed (its queue
    /// pair had already failed, which was reported then).
    pub fn error(&self) -> Option<String> {
        if self.ok() || self.status == ibv::IBV_WC_WR_FLUSH_ERR {
            return None;
        }
        let what = match self.id.work {
            Work::Send => "SEND",
            Work::Read => "READ",
            Work::Recv => "RECV",
        };
        Some(format!(
            "RDMA {what} failed: {}",
            verbs::status_str(self.status)
        ))
    }
}

/// The buffer completions are polled into, kept across polls. `Default` is empty (it does
/// not allocate, so it can stand in while the real one is in use).
#[derive(Default)]
pub(super) struct Batch {
    wcs: Vec<ibv::ibv_wc>,
}

impl Batch {
    pub fn new() -> Batch {
        Batch {
            wcs: Vec::with_capacity(WC_BATCH),
        }
    }

    /// Takes the next batch from the CQ; false when it was empty.
    pub fn poll(&mut self, dev: &Device) -> bool {
        // The device fills the spare capacity: WC_BATCH entries.
        self.wcs.clear();
        self.wcs.reserve_exact(WC_BATCH);
        dev.poll(&mut self.wcs) > 0
    }

    pub fn iter(&self) -> impl Iterator<Item = Completion> + '_ {
        self.wcs.iter().map(|wc| Completion {
            id: WorkId::decode(wc.wr_id),
            status: wc.status,
            byte_len: wc.byte_len,
        })
    }
}

/// Arms the multishot poll on the completion channel's fd.
pub(super) fn arm(cx: &mut Cx<'_>, dev: &Device) {
    let e = opcode::PollAdd::new(types::Fd(dev.channel_fd()), libc::POLLIN as u32)
        .multi(true)
        .build()
        .user_data(user_data(KIND_CQ, 0));
    cx.push(e);
}

/// The completion channel's fd became readable: takes its events and asks for the next one
/// (the CQ itself is polled by the caller). Re-arms the poll when the ring ended it.
pub(super) fn channel_event(cx: &mut Cx<'_>, dev: &Device, worker: usize, flags: u32) {
    let n = dev.take_events();
    bump(&cx.shared.counters.rdma_cq_events, n as u64);
    if let Err(e) = dev.request_notify() {
        tracing::error!(worker, "{e}");
    }
    if !cqueue::more(flags) {
        arm(cx, dev);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_ids_round_trip() {
        for work in [Work::Recv, Work::Send, Work::Read] {
            for (conn, slot) in [(0, 0), (1, 7), (0x0fff_ffff, u32::MAX), (127, 4095)] {
                let id = WorkId { work, conn, slot };
                assert_eq!(WorkId::decode(id.encode()), id);
            }
        }
        // Ids of no kind we post are taken as receives (as before the split).
        assert_eq!(WorkId::decode(0).work, Work::Recv);
    }

    #[test]
    fn only_real_failures_are_reported() {
        let wc = |work, status| Completion {
            id: WorkId {
                work,
                conn: 3,
                slot: 9,
            },
            status,
            byte_len: 0,
        };
        assert!(wc(Work::Send, ibv::IBV_WC_SUCCESS).ok());
        assert_eq!(wc(Work::Send, ibv::IBV_WC_SUCCESS).error(), None);
        let flushed = wc(Work::Recv, ibv::IBV_WC_WR_FLUSH_ERR);
        assert!(!flushed.ok());
        assert_eq!(flushed.error(), None);
        // 12: IBV_WC_RETRY_EXC_ERR; the name comes from libibverbs when it is installed.
        let e = wc(Work::Read, 12).error().expect("an error");
        assert!(e.starts_with("RDMA READ failed: "), "{e}");
        let e = wc(Work::Send, 12).error().expect("an error");
        assert!(e.starts_with("RDMA SEND failed: "), "{e}");
    }
}
