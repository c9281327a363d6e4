//! Messages and the MESSAGE frame's `ceph_msg_header2` (msgr2.md §1.8).

use bytes::Bytes;

use super::frame::{encode_frame_with_head, Frame, Tag, TxQueue, ALIGN_DEFAULT, ALIGN_PAGE};
use super::wire::{Reader, WireError};

pub const MSG_HEADER2_LEN: usize = 41;
/// `CEPH_MSG_FOOTER_COMPLETE | CEPH_MSG_FOOTER_NOCRC`: what Ceph sets on every msgr2 message.
pub const MSG_FLAGS_DEFAULT: u8 = 0x03;

/// Message priorities (`CEPH_MSG_PRIO_*`).
pub const PRIO_LOW: u16 = 64;
pub const PRIO_DEFAULT: u16 = 127;
pub const PRIO_HIGH: u16 = 196;
pub const PRIO_HIGHEST: u16 = 255;

/// Well-known message types used by Ringwire's own tools and tests.
pub const MSG_MON_MAP: u16 = 4;
pub const MSG_MON_GET_MAP: u16 = 5;
pub const MSG_MON_GET_VERSION: u16 = 19;
pub const MSG_MON_GET_VERSION_REPLY: u16 = 20;

/// `ceph_msg_header2`, packed, 41 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct MsgHeader2 {
    pub seq: u64,
    pub tid: u64,
    pub ty: u16,
    pub priority: u16,
    pub version: u16,
    pub data_pre_padding_len: u32,
    pub data_off: u16,
    pub ack_seq: u64,
    pub flags: u8,
    pub compat_version: u16,
    pub reserved: u16,
}

impl MsgHeader2 {
    pub fn encode(&self) -> [u8; MSG_HEADER2_LEN] {
        let mut b = [0u8; MSG_HEADER2_LEN];
        b[0..8].copy_from_slice(&self.seq.to_le_bytes());
        b[8..16].copy_from_slice(&self.tid.to_le_bytes());
        b[16..18].copy_from_slice(&self.ty.to_le_bytes());
        b[18..20].copy_from_slice(&self.priority.to_le_bytes());
        b[20..22].copy_from_slice(&self.version.to_le_bytes());
        b[22..26].copy_from_slice(&self.data_pre_padding_len.to_le_bytes());
        b[26..28].copy_from_slice(&self.data_off.to_le_bytes());
        b[28..36].copy_from_slice(&self.ack_seq.to_le_bytes());
        b[36] = self.flags;
        b[37..39].copy_from_slice(&self.compat_version.to_le_bytes());
        b[39..41].copy_from_slice(&self.reserved.to_le_bytes());
        b
    }

    pub fn decode(seg: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(seg);
        let h = MsgHeader2 {
            seq: r.u64("seq")?,
            tid: r.u64("tid")?,
            ty: r.u16("type")?,
            priority: r.u16("priority")?,
            version: r.u16("version")?,
            data_pre_padding_len: r.u32("data_pre_padding_len")?,
            data_off: r.u16("data_off")?,
            ack_seq: r.u64("ack_seq")?,
            flags: r.u8("flags")?,
            compat_version: r.u16("compat_version")?,
            reserved: r.u16("reserved")?,
        };
        r.finish()?;
        Ok(h)
    }
}

/// A message: type, priority, version, tid and three payload parts. Payloads are `Bytes`, so
/// sending never copies them; `data` may be a chain of buffers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    pub ty: u16,
    pub priority: u16,
    pub version: u16,
    pub compat_version: u16,
    pub tid: u64,
    pub data_off: u16,
    pub front: Bytes,
    pub middle: Bytes,
    pub data: Vec<Bytes>,
    /// The session sequence number: assigned when the message is first sent, read from the
    /// header on receipt.
    pub seq: u64,
}

impl Message {
    /// A message of type `ty` with default priority and version 1.
    pub fn new(ty: u16) -> Self {
        Message {
            ty,
            priority: PRIO_DEFAULT,
            version: 1,
            compat_version: 1,
            ..Default::default()
        }
    }

    pub fn with_front(mut self, front: impl Into<Bytes>) -> Self {
        self.front = front.into();
        self
    }

    pub fn with_middle(mut self, middle: impl Into<Bytes>) -> Self {
        self.middle = middle.into();
        self
    }

    pub fn with_data(mut self, data: impl Into<Bytes>) -> Self {
        self.data = vec![data.into()];
        self
    }

    pub fn with_tid(mut self, tid: u64) -> Self {
        self.tid = tid;
        self
    }

    pub fn with_priority(mut self, priority: u16) -> Self {
        self.priority = priority;
        self
    }

    pub fn data_len(&self) -> usize {
        self.data.iter().map(|d| d.len()).sum()
    }

    /// Front + middle + data bytes.
    pub fn payload_len(&self) -> usize {
        self.front.len() + self.middle.len() + self.data_len()
    }

    /// The data segment as one buffer (copies only if it is a chain of several).
    pub fn data_contiguous(&self) -> Bytes {
        match self.data.as_slice() {
            [] => Bytes::new(),
            [one] => one.clone(),
            many => many.concat().into(),
        }
    }

    pub fn header(&self, seq: u64, ack_seq: u64) -> MsgHeader2 {
        MsgHeader2 {
            seq,
            tid: self.tid,
            ty: self.ty,
            priority: self.priority,
            version: self.version,
            data_pre_padding_len: 0,
            data_off: self.data_off,
            ack_seq,
            flags: MSG_FLAGS_DEFAULT,
            compat_version: self.compat_version,
            reserved: 0,
        }
    }

    /// Appends the MESSAGE frame to `tx`; payloads are queued by reference. Returns the bytes
    /// queued.
    pub fn encode_frame(&self, tx: &mut TxQueue, seq: u64, ack_seq: u64) -> usize {
        // The header is short: the queue copies it, so it needs no `Bytes` of its own.
        let header = self.header(seq, ack_seq).encode();
        encode_frame_with_head(
            tx,
            Tag::Message,
            (&header, ALIGN_DEFAULT),
            &[
                (std::slice::from_ref(&self.front), ALIGN_DEFAULT),
                (std::slice::from_ref(&self.middle), ALIGN_DEFAULT),
                (&self.data, ALIGN_PAGE),
            ],
        )
    }

    /// Builds a message from a decoded MESSAGE frame; returns it with its header.
    pub fn from_frame(frame: Frame) -> Result<(MsgHeader2, Message), WireError> {
        let mut segs = frame.segments.into_iter();
        let header = MsgHeader2::decode(&segs.next().unwrap_or_default())?;
        let front = segs.next().unwrap_or_default();
        let middle = segs.next().unwrap_or_default();
        let data: Vec<Bytes> = segs.next().into_iter().filter(|d| !d.is_empty()).collect();
        Ok((
            header,
            Message {
                ty: header.ty,
                priority: header.priority,
                version: header.version,
                compat_version: header.compat_version,
                tid: header.tid,
                data_off: header.data_off,
                front,
                middle,
                data,
                seq: header.seq,
            },
        ))
    }
}
