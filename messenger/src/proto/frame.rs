//! The msgr2.1 crc-mode frame codec (msgr2.md §1.1–1.4): banner, 32-byte preamble,
//! segment 0 with its inline CRC, segments 1–3, and the 13-byte epilogue.
//!
//! Encoding appends small pieces (preamble, CRCs, epilogue) to a [`TxQueue`] and hands payload
//! [`Bytes`] over as they are, so the transport can write a frame with one vectored send and
//! no payload copy. Decoding is incremental: [`FrameDecoder::want`] and
//! [`FrameDecoder::read_hint`] say how many bytes the current unit still needs, and
//! [`FrameDecoder::lend_segment`] hands out a large segment's buffer so it is received in place
//! into what becomes the message's payload.

use std::collections::VecDeque;
use std::fmt;

use bytes::{Bytes, BytesMut};

use super::crc::{ceph_crc32c, PREAMBLE_SEED, SEGMENT_SEED};
use super::secure::{GcmStream, SecureError};

mod decoder;
mod secure;

pub use decoder::{FrameDecoder, ReadHint};
pub use secure::SECURE_HEAD_LEN;

pub const BANNER_PREFIX: &[u8; 8] = b"ceph v2\n";
const MSGR1_BANNER_PREFIX: &[u8; 8] = b"ceph v02";
/// Prefix + le16 payload length + supported + required.
pub const BANNER_LEN: usize = 8 + 2 + 16;
pub const PREAMBLE_LEN: usize = 32;
pub const EPILOGUE_LEN: usize = 13;
pub const CRC_LEN: usize = 4;
pub const MAX_SEGMENTS: usize = 4;

/// `CEPH_MSGR2_FEATURE_REVISION_1`: msgr2.1 framing.
pub const FEATURE_REVISION_1: u64 = 1;
/// `CEPH_MSGR2_FEATURE_COMPRESSION` (post-Pacific); never advertised by Ringwire.
pub const FEATURE_COMPRESSION: u64 = 2;

pub const LATE_STATUS_COMPLETE: u8 = 0x0e;
pub const LATE_STATUS_ABORTED: u8 = 0x01;

/// Alignment hints Ceph puts in segment descriptors.
pub const ALIGN_DEFAULT: u16 = 8;
pub const ALIGN_PAGE: u16 = 4096;

/// Frame tags (`enum class Tag`, frames_v2.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Tag {
    Hello = 1,
    AuthRequest = 2,
    AuthBadMethod = 3,
    AuthReplyMore = 4,
    AuthRequestMore = 5,
    AuthDone = 6,
    AuthSignature = 7,
    ClientIdent = 8,
    ServerIdent = 9,
    IdentMissingFeatures = 10,
    SessionReconnect = 11,
    SessionReset = 12,
    SessionRetry = 13,
    SessionRetryGlobal = 14,
    SessionReconnectOk = 15,
    Wait = 16,
    Message = 17,
    Keepalive2 = 18,
    Keepalive2Ack = 19,
    Ack = 20,
    CompressionRequest = 21,
    CompressionDone = 22,
}

impl Tag {
    pub fn from_u8(v: u8) -> Option<Tag> {
        use Tag::*;
        Some(match v {
            1 => Hello,
            2 => AuthRequest,
            3 => AuthBadMethod,
            4 => AuthReplyMore,
            5 => AuthRequestMore,
            6 => AuthDone,
            7 => AuthSignature,
            8 => ClientIdent,
            9 => ServerIdent,
            10 => IdentMissingFeatures,
            11 => SessionReconnect,
            12 => SessionReset,
            13 => SessionRetry,
            14 => SessionRetryGlobal,
            15 => SessionReconnectOk,
            16 => Wait,
            17 => Message,
            18 => Keepalive2,
            19 => Keepalive2Ack,
            20 => Ack,
            21 => CompressionRequest,
            22 => CompressionDone,
            _ => return None,
        })
    }

    /// The name Ceph's sources use (`HELLO`, `AUTH_REQUEST`, ...).
    pub fn name(self) -> &'static str {
        use Tag::*;
        match self {
            Hello => "HELLO",
            AuthRequest => "AUTH_REQUEST",
            AuthBadMethod => "AUTH_BAD_METHOD",
            AuthReplyMore => "AUTH_REPLY_MORE",
            AuthRequestMore => "AUTH_REQUEST_MORE",
            AuthDone => "AUTH_DONE",
            AuthSignature => "AUTH_SIGNATURE",
            ClientIdent => "CLIENT_IDENT",
            ServerIdent => "SERVER_IDENT",
            IdentMissingFeatures => "IDENT_MISSING_FEATURES",
            SessionReconnect => "SESSION_RECONNECT",
            SessionReset => "SESSION_RESET",
            SessionRetry => "SESSION_RETRY",
            SessionRetryGlobal => "SESSION_RETRY_GLOBAL",
            SessionReconnectOk => "SESSION_RECONNECT_OK",
            Wait => "WAIT",
            Message => "MESSAGE",
            Keepalive2 => "KEEPALIVE2",
            Keepalive2Ack => "KEEPALIVE2_ACK",
            Ack => "ACK",
            CompressionRequest => "COMPRESSION_REQUEST",
            CompressionDone => "COMPRESSION_DONE",
        }
    }
}

impl serde::Serialize for Tag {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name(), *self as u8)
    }
}

/// Everything that can be wrong with the bytes of a banner or a frame. Each is fatal for the
/// connection; none panics or allocates beyond the configured limits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("peer speaks msgr1 (banner \"ceph v027\"), Ringwire speaks msgr2 only")]
    Msgr1Banner,
    #[error("bad banner {0:02x?}: not a msgr2 peer")]
    BadBanner([u8; 8]),
    #[error("banner payload length {0} is too short (16 needed) or too long")]
    BadBannerLength(u16),
    #[error(
        "incompatible msgr2 features: peer lacks required {peer_lacks:#x}, we lack peer-required {we_lack:#x}"
    )]
    IncompatibleFeatures { peer_lacks: u64, we_lack: u64 },
    #[error("preamble CRC mismatch: frame says {wire:#010x}, computed {computed:#010x}")]
    PreambleCrc { wire: u32, computed: u32 },
    #[error("segment {segment} CRC mismatch: frame says {wire:#010x}, computed {computed:#010x}")]
    SegmentCrc {
        segment: usize,
        wire: u32,
        computed: u32,
    },
    #[error("unknown frame tag {0}")]
    UnknownTag(u8),
    #[error("bad segment count {0} (1 to 4 allowed)")]
    BadSegmentCount(u8),
    #[error("the last of {0} segments is empty")]
    EmptyLastSegment(u8),
    #[error("segment {segment} is {len} bytes, over the limit of {max}")]
    SegmentTooLarge { segment: usize, len: u32, max: u32 },
    #[error("frame is {len} bytes, over the limit of {max}")]
    FrameTooLarge { len: u64, max: u64 },
    #[error("bad late_status {0:#04x} in the epilogue")]
    BadLateStatus(u8),
    #[error("secure mode: {0}")]
    Secure(#[from] SecureError),
    #[error("stream ended inside a {unit} ({have} of {need} bytes)")]
    Truncated {
        unit: &'static str,
        have: usize,
        need: usize,
    },
}

/// Size limits checked before any buffer is sized by what a peer declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    /// Largest single segment (front, middle or data). Ceph's `osd_max_write_size` is 90 MiB.
    pub max_segment: u32,
    /// Largest frame, all segments together.
    pub max_frame: u64,
    /// Largest payload of a control frame (anything but MESSAGE).
    pub max_control: u32,
}

impl FrameLimits {
    /// The limits before a connection is READY, when no MESSAGE is legitimate: no segment
    /// larger than a control payload. A peer that has not even said hello would otherwise
    /// have us allocate a `max_segment` buffer (128 MiB) for a 37-byte announcement.
    pub fn before_ready(self) -> FrameLimits {
        FrameLimits {
            max_segment: self.max_segment.min(self.max_control),
            ..self
        }
    }
}

impl Default for FrameLimits {
    fn default() -> Self {
        FrameLimits {
            max_segment: 128 << 20,
            max_frame: 256 << 20,
            max_control: 64 << 10,
        }
    }
}

/// The msgr2 banner: supported and required msgr2 feature bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Banner {
    pub supported: u64,
    pub required: u64,
}

impl Banner {
    /// What Ringwire sends: msgr2.1 supported and required (like the kernel client), no
    /// compression.
    pub const RINGWIRE: Banner = Banner {
        supported: FEATURE_REVISION_1,
        required: FEATURE_REVISION_1,
    };

    pub fn encode(&self) -> [u8; BANNER_LEN] {
        let mut out = [0u8; BANNER_LEN];
        out[..8].copy_from_slice(BANNER_PREFIX);
        out[8..10].copy_from_slice(&16u16.to_le_bytes());
        out[10..18].copy_from_slice(&self.supported.to_le_bytes());
        out[18..26].copy_from_slice(&self.required.to_le_bytes());
        out
    }

    /// Checks the 10-byte banner head and returns the payload length to read next.
    pub fn decode_head(head: &[u8; 10]) -> Result<usize, FrameError> {
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&head[..8]);
        if &prefix == MSGR1_BANNER_PREFIX {
            return Err(FrameError::Msgr1Banner);
        }
        if &prefix != BANNER_PREFIX {
            return Err(FrameError::BadBanner(prefix));
        }
        let len = u16::from_le_bytes([head[8], head[9]]);
        // Ceph reads two u64s and ignores the rest; a bound keeps a hostile length cheap.
        if !(16..=1024).contains(&len) {
            return Err(FrameError::BadBannerLength(len));
        }
        Ok(len as usize)
    }

    pub fn decode_payload(payload: &[u8]) -> Banner {
        let mut s = [0u8; 8];
        s.copy_from_slice(&payload[..8]);
        let mut r = [0u8; 8];
        r.copy_from_slice(&payload[8..16]);
        Banner {
            supported: u64::from_le_bytes(s),
            required: u64::from_le_bytes(r),
        }
    }

    /// Checks that `self` (ours) and `peer` are compatible and that msgr2.1 framing applies.
    pub fn negotiate(&self, peer: &Banner) -> Result<(), FrameError> {
        // msgr2.1 framing is the only one spoken here, whatever `self` says: a peer without
        // it lacks a required feature.
        let peer_lacks = (self.required | FEATURE_REVISION_1) & !peer.supported;
        let we_lack = peer.required & !self.supported;
        if peer_lacks != 0 || we_lack != 0 {
            return Err(FrameError::IncompatibleFeatures {
                peer_lacks,
                we_lack,
            });
        }
        Ok(())
    }
}

/// One segment descriptor of the preamble.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct SegmentDesc {
    pub len: u32,
    pub align: u16,
}

/// A decoded, CRC-checked preamble.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Preamble {
    pub tag: Tag,
    pub num_segments: u8,
    pub segments: [SegmentDesc; MAX_SEGMENTS],
    pub crc: u32,
}

impl Preamble {
    fn encode(tag: Tag, segments: &[SegmentDesc]) -> [u8; PREAMBLE_LEN] {
        debug_assert!((1..=MAX_SEGMENTS).contains(&segments.len()));
        let mut p = [0u8; PREAMBLE_LEN];
        p[0] = tag as u8;
        p[1] = segments.len() as u8;
        for (i, s) in segments.iter().enumerate() {
            let o = 2 + i * 6;
            p[o..o + 4].copy_from_slice(&s.len.to_le_bytes());
            p[o + 4..o + 6].copy_from_slice(&s.align.to_le_bytes());
        }
        let crc = ceph_crc32c(PREAMBLE_SEED, &p[..28]);
        p[28..].copy_from_slice(&crc.to_le_bytes());
        p
    }

    fn decode(p: &[u8; PREAMBLE_LEN], limits: &FrameLimits) -> Result<Preamble, FrameError> {
        let wire = u32::from_le_bytes([p[28], p[29], p[30], p[31]]);
        let computed = ceph_crc32c(PREAMBLE_SEED, &p[..28]);
        if wire != computed {
            return Err(FrameError::PreambleCrc { wire, computed });
        }
        let tag = Tag::from_u8(p[0]).ok_or(FrameError::UnknownTag(p[0]))?;
        let num_segments = p[1];
        if !(1..=MAX_SEGMENTS as u8).contains(&num_segments) {
            return Err(FrameError::BadSegmentCount(num_segments));
        }
        let mut segments = [SegmentDesc::default(); MAX_SEGMENTS];
        for (i, s) in segments.iter_mut().enumerate() {
            let o = 2 + i * 6;
            s.len = u32::from_le_bytes([p[o], p[o + 1], p[o + 2], p[o + 3]]);
            s.align = u16::from_le_bytes([p[o + 4], p[o + 5]]);
        }
        let used = &segments[..num_segments as usize];
        if num_segments > 1 && used[num_segments as usize - 1].len == 0 {
            return Err(FrameError::EmptyLastSegment(num_segments));
        }
        let seg_max = if tag == Tag::Message {
            limits.max_segment
        } else {
            limits.max_control
        };
        for (i, s) in used.iter().enumerate() {
            // Segment 0 of a MESSAGE is the fixed-size header; no bigger one is legitimate.
            let max = if tag == Tag::Message && i == 0 {
                limits.max_control
            } else {
                seg_max
            };
            if s.len > max {
                return Err(FrameError::SegmentTooLarge {
                    segment: i,
                    len: s.len,
                    max,
                });
            }
        }
        let total: u64 = used.iter().map(|s| s.len as u64).sum();
        if total > limits.max_frame {
            return Err(FrameError::FrameTooLarge {
                len: total,
                max: limits.max_frame,
            });
        }
        Ok(Preamble {
            tag,
            num_segments,
            segments,
            crc: wire,
        })
    }

    /// Bytes this frame occupies on the wire, preamble included.
    pub fn onwire_len(&self) -> u64 {
        let segs = &self.segments[..self.num_segments as usize];
        let mut n = PREAMBLE_LEN as u64 + segs.iter().map(|s| s.len as u64).sum::<u64>();
        if segs[0].len > 0 {
            n += CRC_LEN as u64;
        }
        if self.num_segments > 1 {
            n += EPILOGUE_LEN as u64;
        }
        n
    }
}

/// Per-frame CRC and epilogue details, kept for diagnostics (`ringwire decode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct FrameTrailer {
    /// CRC of segment 0 as sent (absent when segment 0 is empty).
    pub seg0_crc: Option<u32>,
    /// `late_status` and the three CRCs of the epilogue (absent for 1-segment frames).
    pub epilogue: Option<(u8, [u32; 3])>,
}

/// A complete frame whose CRCs all matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub preamble: Preamble,
    /// Segments 0..num_segments; each one a single buffer filled in place.
    pub segments: Segments,
    pub trailer: FrameTrailer,
}

/// A frame's segments, at most [`MAX_SEGMENTS`], held inline: decoding a frame allocates
/// no list for them. Derefs to the slice of those present.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Segments {
    parts: [Bytes; MAX_SEGMENTS],
    len: usize,
}

impl Segments {
    /// Appends a segment.
    ///
    /// # Panics
    /// When the frame already holds [`MAX_SEGMENTS`] (the decoder never asks for more: the
    /// preamble's count is checked first).
    pub fn push(&mut self, segment: Bytes) {
        assert!(
            self.len < MAX_SEGMENTS,
            "a frame has at most {MAX_SEGMENTS} segments"
        );
        self.parts[self.len] = segment;
        self.len += 1;
    }
}

impl std::ops::Deref for Segments {
    type Target = [Bytes];
    fn deref(&self) -> &[Bytes] {
        &self.parts[..self.len]
    }
}

impl IntoIterator for Segments {
    type Item = Bytes;
    type IntoIter = std::iter::Take<std::array::IntoIter<Bytes, MAX_SEGMENTS>>;
    fn into_iter(self) -> Self::IntoIter {
        self.parts.into_iter().take(self.len)
    }
}

impl FromIterator<Bytes> for Segments {
    /// # Panics
    /// With more than [`MAX_SEGMENTS`] segments.
    fn from_iter<I: IntoIterator<Item = Bytes>>(iter: I) -> Self {
        let mut segments = Segments::default();
        iter.into_iter().for_each(|s| segments.push(s));
        segments
    }
}

impl Frame {
    pub fn tag(&self) -> Tag {
        self.preamble.tag
    }
    /// The control payload (segment 0).
    pub fn payload(&self) -> &Bytes {
        &self.segments[0]
    }
}

/// Outgoing bytes as a queue of chunks: small pieces are coalesced into one buffer, payloads
/// above [`TxQueue::COPY_THRESHOLD`] are kept as the caller's `Bytes` (no copy).
///
/// In secure mode the queue holds the connection's sending cipher and frames are sealed
/// into the coalescing buffer as they are queued (payloads included: a sealed copy is the
/// only copy). The buffer is reused once the transport has dropped what it wrote, so a
/// steady stream of frames allocates nothing.
#[derive(Debug, Default)]
pub struct TxQueue {
    chunks: VecDeque<Bytes>,
    small: BytesMut,
    len: usize,
    cipher: Option<Box<GcmStream>>,
    /// Why a frame could not be sealed (nothing of it was queued); the owner faults.
    failed: Option<SecureError>,
}

impl TxQueue {
    /// Below this, copying into the coalescing buffer is cheaper than one more iovec.
    pub const COPY_THRESHOLD: usize = 1024;

    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Seals every frame queued from now on (after AUTH_DONE, secure mode).
    pub fn set_cipher(&mut self, cipher: GcmStream) {
        self.cipher = Some(Box::new(cipher));
    }

    pub fn is_secure(&self) -> bool {
        self.cipher.is_some()
    }

    /// Why the last frames could not be sealed, once.
    pub fn take_error(&mut self) -> Option<SecureError> {
        self.failed.take()
    }

    pub fn push_small(&mut self, data: &[u8]) {
        self.small.extend_from_slice(data);
        self.len += data.len();
    }

    pub fn push_payload(&mut self, data: &Bytes) {
        if data.len() < Self::COPY_THRESHOLD {
            return self.push_small(data);
        }
        self.flush_small();
        self.len += data.len();
        self.chunks.push_back(data.clone());
    }

    fn flush_small(&mut self) {
        if !self.small.is_empty() {
            self.chunks.push_back(self.small.split().freeze());
        }
    }

    /// The chunks to write, in order (for a vectored send).
    pub fn chunks(&mut self) -> impl Iterator<Item = &Bytes> {
        self.flush_small();
        self.chunks.iter()
    }

    /// Drops `n` written bytes from the front.
    pub fn advance(&mut self, mut n: usize) {
        self.flush_small();
        assert!(n <= self.len, "advanced past the queued bytes");
        self.len -= n;
        while n > 0 {
            let front = self.chunks.front_mut().expect("len accounted");
            if n >= front.len() {
                n -= front.len();
                self.chunks.pop_front();
            } else {
                let _ = front.split_to(n);
                n = 0;
            }
        }
    }

    /// Takes everything queued as one contiguous buffer (tests and simple transports).
    pub fn take_all(&mut self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len);
        for c in self.chunks() {
            out.extend_from_slice(c);
        }
        self.chunks.clear();
        self.len = 0;
        out
    }

    pub fn clear(&mut self) {
        self.chunks.clear();
        self.small.clear();
        self.len = 0;
    }
}

/// Appends a frame whose segments are given as chunk lists (each segment may be a chain).
/// Returns the number of bytes queued.
pub fn encode_frame(tx: &mut TxQueue, tag: Tag, segments: &[(&[Bytes], u16)]) -> usize {
    encode_frame_parts(tx, tag, None, segments)
}

/// [`encode_frame`] with a first segment given as plain bytes (a message header), copied into
/// the queue, so the caller builds no `Bytes` for it. The same bytes on the wire.
pub(crate) fn encode_frame_with_head(
    tx: &mut TxQueue,
    tag: Tag,
    head: (&[u8], u16),
    rest: &[(&[Bytes], u16)],
) -> usize {
    encode_frame_parts(tx, tag, Some(head), rest)
}

/// The segments are `head` (if any) followed by `segments`.
fn encode_frame_parts(
    tx: &mut TxQueue,
    tag: Tag,
    head: Option<(&[u8], u16)>,
    segments: &[(&[Bytes], u16)],
) -> usize {
    let before = tx.len();
    let off = usize::from(head.is_some());
    // Trailing empty segments are dropped; at least one is always sent.
    let mut num = off + segments.len();
    while num > 1 && segments[num - 1 - off].0.iter().all(|c| c.is_empty()) {
        num -= 1;
    }
    if tx.is_secure() {
        let mut srcs = [secure::Src::Flat(&[]); MAX_SEGMENTS];
        for (i, src) in srcs.iter_mut().enumerate().take(num) {
            *src = match (i, head) {
                (0, Some((bytes, _))) => secure::Src::Flat(bytes),
                _ => secure::Src::Chunks(segments[i - off].0),
            };
        }
        let aligns = |i: usize| match (i, head) {
            (0, Some((_, align))) => align,
            _ => segments[i - off].1,
        };
        let mut descs = [SegmentDesc::default(); MAX_SEGMENTS];
        for (i, d) in descs.iter_mut().enumerate().take(num) {
            *d = SegmentDesc {
                len: srcs[i].len() as u32,
                align: aligns(i),
            };
        }
        return secure::seal_frame(tx, tag, &descs[..num], &srcs[..num]);
    }
    let mut descs = [SegmentDesc::default(); MAX_SEGMENTS];
    let mut crcs = [0u32; MAX_SEGMENTS];
    if let Some((bytes, align)) = head {
        descs[0] = SegmentDesc {
            len: bytes.len() as u32,
            align,
        };
        crcs[0] = ceph_crc32c(SEGMENT_SEED, bytes);
    }
    for (i, (chunks, align)) in segments[..num - off].iter().enumerate() {
        let len: usize = chunks.iter().map(|c| c.len()).sum();
        descs[off + i] = SegmentDesc {
            len: len as u32,
            align: *align,
        };
        crcs[off + i] = chunks
            .iter()
            .fold(SEGMENT_SEED, |crc, c| ceph_crc32c(crc, c));
    }
    tx.push_small(&Preamble::encode(tag, &descs[..num]));
    match head {
        Some((bytes, _)) => tx.push_small(bytes),
        None => {
            for c in segments[0].0 {
                tx.push_payload(c);
            }
        }
    }
    if descs[0].len > 0 {
        tx.push_small(&crcs[0].to_le_bytes());
    }
    for (chunks, _) in &segments[1 - off..num - off] {
        for c in *chunks {
            tx.push_payload(c);
        }
    }
    if num > 1 {
        let mut ep = [0u8; EPILOGUE_LEN];
        ep[0] = LATE_STATUS_COMPLETE;
        for i in 1..num {
            ep[1 + (i - 1) * 4..1 + i * 4].copy_from_slice(&crcs[i].to_le_bytes());
        }
        tx.push_small(&ep);
    }
    tx.len() - before
}

/// Appends a one-segment control frame.
pub fn encode_control_frame(tx: &mut TxQueue, tag: Tag, payload: &[u8]) -> usize {
    let before = tx.len();
    let desc = SegmentDesc {
        len: payload.len() as u32,
        align: ALIGN_DEFAULT,
    };
    if tx.is_secure() {
        return secure::seal_frame(tx, tag, &[desc], &[secure::Src::Flat(payload)]);
    }
    tx.push_small(&Preamble::encode(tag, &[desc]));
    if !payload.is_empty() {
        tx.push_small(payload);
        tx.push_small(&ceph_crc32c(SEGMENT_SEED, payload).to_le_bytes());
    }
    tx.len() - before
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::secure::streams;

    /// With one GCM operation left, a one-operation frame goes out; the next frame is not
    /// queued at all and the queue reports why.
    #[test]
    fn a_sending_stream_out_of_nonces_queues_nothing_and_says_so() {
        let (tx_stream, _) = streams(&[9u8; 64], false).unwrap();
        let mut tx = TxQueue::default();
        tx.set_cipher(tx_stream.with_ops_left(1));
        assert_eq!(
            encode_control_frame(&mut tx, Tag::Keepalive2, &[0; 8]),
            SECURE_HEAD_LEN
        );
        assert_eq!(tx.take_error(), None);
        assert_eq!(encode_control_frame(&mut tx, Tag::Keepalive2, &[0; 8]), 0);
        assert_eq!(tx.take_error(), Some(SecureError::OutOfNonces));
        assert_eq!(tx.len(), SECURE_HEAD_LEN);
    }

    /// A frame whose operations are large enough to be sealed out of place, from segments
    /// in several chunks, decodes whatever the pieces it arrives in; a flipped bit in its
    /// last operation's ciphertext or tag fails that operation's tag.
    #[test]
    fn large_sealed_segments_decode_in_any_pieces_and_fail_altered() {
        let secret = [5u8; 64];
        let front = Bytes::from(vec![1u8; 20_000]);
        let data: Bytes = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let mut tx = TxQueue::default();
        tx.set_cipher(streams(&secret, false).unwrap().0);
        let segs: [(&[Bytes], u16); 3] = [
            (std::slice::from_ref(&front), ALIGN_DEFAULT),
            (&[Bytes::new()], ALIGN_DEFAULT),
            (&[data.slice(..1000), data.slice(1000..)], ALIGN_DEFAULT),
        ];
        encode_frame(&mut tx, Tag::Message, &segs);
        let wire = tx.take_all();
        let decode = |bytes: &[u8], piece: usize| {
            let mut d = FrameDecoder::new(FrameLimits::default(), 0);
            d.set_cipher(streams(&secret, true).unwrap().1);
            let mut frame = None;
            for mut chunk in bytes.chunks(piece) {
                while !chunk.is_empty() {
                    if let Some(f) = d.feed(&mut chunk)? {
                        frame = Some(f);
                    }
                }
            }
            Ok::<_, FrameError>(frame)
        };
        for piece in [1 << 20, 4096, 1000, 17] {
            let f = decode(&wire, piece).unwrap().expect("a frame");
            assert_eq!(f.segments[0], front, "{piece}-byte pieces");
            assert!(f.segments[1].is_empty());
            assert_eq!(f.segments[2], data, "{piece}-byte pieces");
        }
        let tail = Err(FrameError::Secure(SecureError::BadTag {
            op: "encrypted segments and epilogue",
        }));
        for at in [wire.len() - 100_000, wire.len() - 1] {
            let mut altered = wire.clone();
            altered[at] ^= 4;
            assert_eq!(
                decode(&altered, 4096).map(|_| ()),
                tail,
                "bit flipped at {at}"
            );
        }
    }

    /// A first segment given as plain bytes goes on the wire exactly as the same bytes in a
    /// `Bytes`, whichever later segments are empty or long.
    #[test]
    fn a_head_of_plain_bytes_encodes_like_a_bytes_segment() {
        let head = [7u8; 41];
        let long = Bytes::from(vec![3u8; 5000]);
        let short = Bytes::from_static(b"front");
        let none = Bytes::new();
        let cases: [[&Bytes; 3]; 4] = [
            [&short, &none, &long],
            [&none, &none, &none],
            [&long, &short, &none],
            [&short, &none, &none],
        ];
        for rest in cases {
            let mut a = TxQueue::default();
            let mut b = TxQueue::default();
            let segs = |first: &[Bytes]| {
                let mut v: Vec<(Vec<Bytes>, u16)> = vec![(first.to_vec(), ALIGN_DEFAULT)];
                v.extend(rest.iter().map(|c| (vec![(*c).clone()], ALIGN_DEFAULT)));
                v
            };
            let all = segs(&[Bytes::copy_from_slice(&head)]);
            let all: Vec<(&[Bytes], u16)> = all.iter().map(|(c, al)| (&c[..], *al)).collect();
            let n = encode_frame(&mut a, Tag::Message, &all);
            let m = encode_frame_with_head(&mut b, Tag::Message, (&head, ALIGN_DEFAULT), &all[1..]);
            assert_eq!(n, m);
            assert_eq!(a.take_all(), b.take_all());
        }
    }
}
