//! The incremental frame decoder: preamble, segments with their CRCs, epilogue, one unit at
//! a time, whatever the chunks the transport reads in (see the parent module). In secure
//! mode the units are the GCM operations of `secure.rs`, each decrypted in place once
//! complete.

use bytes::{Bytes, BytesMut};

use super::secure::{pad16, rest_len, tail_len, INLINE_LEN, SECURE_HEAD_LEN};
use super::{
    Frame, FrameError, FrameLimits, FrameTrailer, Preamble, Segments, CRC_LEN, EPILOGUE_LEN,
    LATE_STATUS_ABORTED, LATE_STATUS_COMPLETE, MAX_SEGMENTS, PREAMBLE_LEN,
};
use crate::proto::crc::{ceph_crc32c, SEGMENT_SEED};
use crate::proto::secure::{GcmStream, TAG_LEN};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Preamble,
    Segment(usize),
    Seg0Crc,
    Epilogue,
    /// Secure mode: preamble and the start of segment 0, sealed together.
    SecureHead,
    /// Secure mode: the rest of segment 0.
    SecureRest,
    /// Secure mode: the other segments and the epilogue.
    SecureTail,
}

impl Unit {
    fn name(self) -> &'static str {
        match self {
            Unit::Preamble => "preamble",
            Unit::Segment(_) => "segment",
            Unit::Seg0Crc => "segment 0 CRC",
            Unit::Epilogue => "epilogue",
            Unit::SecureHead => "encrypted preamble",
            Unit::SecureRest => "encrypted segment 0",
            Unit::SecureTail => "encrypted segments and epilogue",
        }
    }

    /// Units received into the segment buffer (and lent out when large).
    fn is_buffered(self) -> bool {
        matches!(self, Unit::Segment(_) | Unit::SecureRest | Unit::SecureTail)
    }
}

/// What the next read should look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadHint {
    /// A small unit (preamble, CRC, epilogue, small segment): read through any buffer.
    Small(usize),
    /// A segment of this many bytes: worth receiving in place ([`FrameDecoder::lend_segment`]).
    Segment(usize),
}

/// Incremental frame decoder for one direction of a connection (after the banner).
pub struct FrameDecoder {
    limits: FrameLimits,
    unit: Unit,
    scratch: [u8; SECURE_HEAD_LEN],
    seg: BytesMut,
    /// Length of the segment being received (kept apart from `seg`, which may be lent out).
    seg_len: usize,
    /// Bytes in `seg` before the unit being received (secure mode's inline start of
    /// segment 0).
    seg_base: usize,
    /// Secure mode's receiving cipher; frames start with [`Unit::SecureHead`] once set.
    cipher: Option<Box<GcmStream>>,
    lent: bool,
    filled: usize,
    seg_crc: u32,
    preamble: Option<Preamble>,
    segments: Segments,
    /// Where small segments are received, one after the other; each frozen segment shares
    /// its allocation. Once every earlier segment has been dropped the space is reclaimed,
    /// so a connection whose messages are released as they come allocates nothing for them.
    slab: BytesMut,
    /// The slab filled before this one: by the time `slab` is full, the messages received into
    /// it (kept a little longer by a lossless sender until acknowledged) are usually released,
    /// so the two take turns without allocating.
    previous_slab: BytesMut,
    crcs: [u32; MAX_SEGMENTS],
    seg0_crc: Option<u32>,
    /// Stream offset of the frame being decoded (for error messages and `ringwire decode`).
    frame_start: u64,
    consumed: u64,
}

/// Segments at least this large are announced as [`ReadHint::Segment`].
const DIRECT_READ_MIN: usize = 4096;
/// The small-segment slab's size: a few small messages' worth, so the memory it keeps for
/// an idle connection stays small.
const SLAB_BYTES: usize = 1024;

impl FrameDecoder {
    /// `start_offset` is the stream offset of the first frame byte (after the banner).
    pub fn new(limits: FrameLimits, start_offset: u64) -> Self {
        FrameDecoder {
            limits,
            unit: Unit::Preamble,
            scratch: [0; SECURE_HEAD_LEN],
            seg: BytesMut::new(),
            seg_len: 0,
            seg_base: 0,
            cipher: None,
            lent: false,
            filled: 0,
            seg_crc: SEGMENT_SEED,
            preamble: None,
            segments: Segments::default(),
            slab: BytesMut::new(),
            previous_slab: BytesMut::new(),
            crcs: [0; MAX_SEGMENTS],
            seg0_crc: None,
            frame_start: start_offset,
            consumed: start_offset,
        }
    }

    /// Stream offset where the frame being decoded (or the next one) starts.
    pub fn frame_offset(&self) -> u64 {
        self.frame_start
    }

    /// Whether the decoder is between frames (a clean place for the stream to end).
    pub fn at_frame_boundary(&self) -> bool {
        self.unit == self.first_unit() && self.filled == 0
    }

    fn first_unit(&self) -> Unit {
        match self.cipher {
            Some(_) => Unit::SecureHead,
            None => Unit::Preamble,
        }
    }

    /// Decrypts every frame from the next one on (secure mode, after AUTH_DONE). Call at a
    /// frame boundary.
    pub fn set_cipher(&mut self, cipher: GcmStream) {
        assert!(
            self.at_frame_boundary(),
            "a cipher starts at a frame boundary"
        );
        self.cipher = Some(Box::new(cipher));
        self.unit = Unit::SecureHead;
    }

    /// The receiving cipher, for a connection handed to another endpoint (at a frame
    /// boundary, which a hand-over is).
    pub fn take_cipher(&mut self) -> Option<GcmStream> {
        self.cipher.take().map(|c| *c)
    }

    fn unit_len(&self) -> usize {
        match self.unit {
            Unit::Preamble => PREAMBLE_LEN,
            Unit::Segment(_) | Unit::SecureRest | Unit::SecureTail => self.seg_len,
            Unit::Seg0Crc => CRC_LEN,
            Unit::Epilogue => EPILOGUE_LEN,
            Unit::SecureHead => SECURE_HEAD_LEN,
        }
    }

    /// Bytes still needed to complete the current unit (always > 0).
    pub fn want(&self) -> usize {
        self.unit_len() - self.filled
    }

    pub fn read_hint(&self) -> ReadHint {
        match self.unit {
            u if u.is_buffered() && self.seg_len >= DIRECT_READ_MIN => {
                ReadHint::Segment(self.want())
            }
            _ => ReadHint::Small(self.want()),
        }
    }

    /// Where the next bytes of a small unit (preamble, CRC, epilogue) go.
    fn scratch_buf(&mut self) -> &mut [u8] {
        let end = self.unit_len();
        &mut self.scratch[self.filled..end]
    }

    /// Records that `n` more bytes of the current unit are in place (in the scratch buffer,
    /// or appended to the segment buffer). Returns a frame when one completed, CRCs checked.
    fn advance(&mut self, n: usize) -> Result<Option<Frame>, FrameError> {
        debug_assert!(n <= self.want(), "advanced past the current unit");
        if let Unit::Segment(_) = self.unit {
            // CRC while the bytes are still hot in cache.
            self.seg_crc = ceph_crc32c(self.seg_crc, &self.seg[self.filled..self.filled + n]);
        }
        // (Secure units are decrypted whole, once complete: GCM checks its tag at the end.)
        self.filled += n;
        self.consumed += n as u64;
        if self.filled < self.unit_len() {
            return Ok(None);
        }
        self.filled = 0;
        self.complete_unit()
    }

    /// Takes the buffer of the large segment being received so a transport can receive into
    /// it in place and own it while the receive is in flight. The buffer holds the bytes
    /// received so far (`len`) and has room for the rest; receive at most the returned count
    /// into its spare capacity, then give it back with [`return_segment`](Self::return_segment).
    pub fn lend_segment(&mut self) -> Option<(BytesMut, usize)> {
        match self.unit {
            u if u.is_buffered() && self.seg_len >= DIRECT_READ_MIN && !self.lent => {
                self.lent = true;
                Some((std::mem::take(&mut self.seg), self.want()))
            }
            _ => None,
        }
    }

    /// Returns a lent segment buffer whose length grew by the `n` bytes received into it.
    pub fn return_segment(&mut self, buf: BytesMut, n: usize) -> Result<Option<Frame>, FrameError> {
        assert!(
            self.lent && buf.len() == self.seg_base + self.filled + n && n <= self.want(),
            "not the lent segment, or more bytes than it wanted"
        );
        self.lent = false;
        self.seg = buf;
        self.advance(n)
    }

    /// Limits for the frames whose preamble is decoded from now on (see
    /// [`FrameLimits::before_ready`]).
    pub fn set_limits(&mut self, limits: FrameLimits) {
        self.limits = limits;
    }

    /// Copies as much of `input` as the decoder takes, until one frame completes; advances
    /// `input` past what was used. Call again while input remains.
    pub fn feed(&mut self, input: &mut &[u8]) -> Result<Option<Frame>, FrameError> {
        assert!(!self.lent, "the segment buffer is lent out");
        while !input.is_empty() {
            let n = self.want().min(input.len());
            if self.unit.is_buffered() {
                self.seg.extend_from_slice(&input[..n]);
            } else {
                self.scratch_buf()[..n].copy_from_slice(&input[..n]);
            }
            *input = &input[n..];
            if let Some(frame) = self.advance(n)? {
                return Ok(Some(frame));
            }
        }
        Ok(None)
    }

    /// Call at end of stream: an error if the stream stopped inside a frame.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.at_frame_boundary() {
            Ok(())
        } else {
            Err(FrameError::Truncated {
                unit: self.unit.name(),
                have: self.filled,
                need: self.unit_len(),
            })
        }
    }

    fn start_segment(&mut self, index: usize) -> Result<Option<Frame>, FrameError> {
        let p = self.preamble.as_ref().expect("preamble decoded");
        let len = p.segments[index].len as usize;
        self.unit = Unit::Segment(index);
        self.seg_len = len;
        self.seg_base = 0;
        self.seg_crc = SEGMENT_SEED;
        if len == 0 {
            self.seg = BytesMut::new();
            return self.complete_unit();
        }
        // Sized by the peer, but only after the preamble's limits check; filled by appending,
        // so it is never zeroed first.
        self.seg = if len < DIRECT_READ_MIN {
            // Room for it was made with the preamble.
            std::mem::take(&mut self.slab)
        } else {
            BytesMut::with_capacity(len)
        };
        Ok(None)
    }

    /// Makes room in the slab for all of this frame's small segments at once: reclaiming
    /// a slab is possible only while no segment from it is alive, which may hold between
    /// frames but never within one. The previous slab, whose segments are older, is tried
    /// first; then this one; then a new one takes this one's place.
    fn make_room_for_small_segments(&mut self, p: &Preamble) {
        let small: usize = p.segments[..p.num_segments as usize]
            .iter()
            .map(|s| s.len as usize)
            .filter(|&len| len < DIRECT_READ_MIN)
            .sum();
        if self.slab.capacity() >= small {
            return;
        }
        std::mem::swap(&mut self.slab, &mut self.previous_slab);
        if self.slab.try_reclaim(small) {
            return;
        }
        std::mem::swap(&mut self.slab, &mut self.previous_slab);
        if !self.slab.try_reclaim(small) {
            self.previous_slab = std::mem::replace(
                &mut self.slab,
                BytesMut::with_capacity(small.max(SLAB_BYTES)),
            );
        }
    }

    fn complete_unit(&mut self) -> Result<Option<Frame>, FrameError> {
        match self.unit {
            Unit::Preamble => {
                let mut pre = [0u8; PREAMBLE_LEN];
                pre.copy_from_slice(&self.scratch[..PREAMBLE_LEN]);
                let p = Preamble::decode(&pre, &self.limits)?;
                self.make_room_for_small_segments(&p);
                self.preamble = Some(p);
                self.segments = Segments::default();
                self.seg0_crc = None;
                self.crcs = [0; MAX_SEGMENTS];
                self.start_segment(0)
            }
            Unit::Segment(i) => {
                self.crcs[i] = self.seg_crc;
                let segment = match self.seg_len {
                    0 => Bytes::new(),
                    small if small < DIRECT_READ_MIN => {
                        // The rest of the slab's room stays for the next small segment.
                        let segment = self.seg.split().freeze();
                        self.slab = std::mem::take(&mut self.seg);
                        segment
                    }
                    _ => std::mem::take(&mut self.seg).freeze(),
                };
                self.segments.push(segment);
                let p = self.preamble.as_ref().expect("preamble decoded");
                if i == 0 && p.segments[0].len > 0 {
                    self.unit = Unit::Seg0Crc;
                    return Ok(None);
                }
                self.next_after_segment(i)
            }
            Unit::Seg0Crc => {
                let wire = u32::from_le_bytes([
                    self.scratch[0],
                    self.scratch[1],
                    self.scratch[2],
                    self.scratch[3],
                ]);
                if wire != self.crcs[0] {
                    return Err(FrameError::SegmentCrc {
                        segment: 0,
                        wire,
                        computed: self.crcs[0],
                    });
                }
                self.seg0_crc = Some(wire);
                self.next_after_segment(0)
            }
            Unit::Epilogue => {
                let late = self.scratch[0];
                let mut crcs = [0u32; 3];
                for (i, c) in crcs.iter_mut().enumerate() {
                    let o = 1 + i * 4;
                    *c = u32::from_le_bytes([
                        self.scratch[o],
                        self.scratch[o + 1],
                        self.scratch[o + 2],
                        self.scratch[o + 3],
                    ]);
                }
                // The high nibble is reserved: only the low one says complete or aborted.
                let aborted = match late & 0x0f {
                    LATE_STATUS_COMPLETE => false,
                    LATE_STATUS_ABORTED => true,
                    _ => return Err(FrameError::BadLateStatus(late)),
                };
                let num = self.preamble.as_ref().expect("preamble").num_segments as usize;
                if !aborted {
                    for i in 1..num {
                        if crcs[i - 1] != self.crcs[i] {
                            return Err(FrameError::SegmentCrc {
                                segment: i,
                                wire: crcs[i - 1],
                                computed: self.crcs[i],
                            });
                        }
                    }
                }
                self.finish_frame(Some((late, crcs)), aborted)
            }
            Unit::SecureHead => self.open_head(),
            Unit::SecureRest => {
                let l0 = self.preamble.as_ref().expect("preamble").segments[0].len as usize;
                let cipher = self.cipher.as_mut().expect("secure unit");
                cipher.open(&mut self.seg[INLINE_LEN..], Unit::SecureRest.name())?;
                self.seg.truncate(l0);
                self.segments.push(std::mem::take(&mut self.seg).freeze());
                self.secure_tail()
            }
            Unit::SecureTail => self.open_tail(),
        }
    }

    /// The first operation of a secure frame: the preamble, then segment 0 whole (short) or
    /// its start (the rest follows).
    fn open_head(&mut self) -> Result<Option<Frame>, FrameError> {
        let cipher = self.cipher.as_mut().expect("secure unit");
        cipher.open_first(&mut self.scratch, Unit::SecureHead.name())?;
        let mut pre = [0u8; PREAMBLE_LEN];
        pre.copy_from_slice(&self.scratch[..PREAMBLE_LEN]);
        let p = Preamble::decode(&pre, &self.limits)?;
        self.preamble = Some(p);
        self.segments = Segments::default();
        let l0 = p.segments[0].len as usize;
        let inline = &self.scratch[PREAMBLE_LEN..PREAMBLE_LEN + INLINE_LEN];
        let rest = rest_len(l0);
        if rest == 0 {
            self.segments.push(Bytes::copy_from_slice(&inline[..l0]));
            return self.secure_tail();
        }
        // Sized by the peer after the preamble's limits check.
        let mut seg = BytesMut::with_capacity(INLINE_LEN + rest);
        seg.extend_from_slice(inline);
        self.seg = seg;
        self.seg_base = INLINE_LEN;
        self.seg_len = rest;
        self.unit = Unit::SecureRest;
        Ok(None)
    }

    /// After segment 0 of a secure frame: the tail operation, or the end of the frame.
    fn secure_tail(&mut self) -> Result<Option<Frame>, FrameError> {
        let p = self.preamble.as_ref().expect("preamble");
        let len = tail_len(&p.segments[..p.num_segments as usize]);
        if len == 0 {
            return self.finish_frame(None, false);
        }
        self.seg = BytesMut::with_capacity(len);
        self.seg_base = 0;
        self.seg_len = len;
        self.unit = Unit::SecureTail;
        Ok(None)
    }

    /// The tail operation: decrypted in place, then cut into the segments (no copy).
    fn open_tail(&mut self) -> Result<Option<Frame>, FrameError> {
        let cipher = self.cipher.as_mut().expect("secure unit");
        cipher.open(&mut self.seg, Unit::SecureTail.name())?;
        let p = *self.preamble.as_ref().expect("preamble");
        let mut plain = std::mem::take(&mut self.seg);
        plain.truncate(self.seg_len - TAG_LEN);
        for d in &p.segments[1..p.num_segments as usize] {
            let mut s = plain.split_to(pad16(d.len as usize));
            s.truncate(d.len as usize);
            self.segments.push(s.freeze());
        }
        let late = plain[0];
        let aborted = match late & 0x0f {
            LATE_STATUS_COMPLETE => false,
            LATE_STATUS_ABORTED => true,
            _ => return Err(FrameError::BadLateStatus(late)),
        };
        self.finish_frame(Some((late, [0; 3])), aborted)
    }

    fn next_after_segment(&mut self, i: usize) -> Result<Option<Frame>, FrameError> {
        let num = self.preamble.as_ref().expect("preamble").num_segments as usize;
        if i + 1 < num {
            return self.start_segment(i + 1);
        }
        if num > 1 {
            self.unit = Unit::Epilogue;
            return Ok(None);
        }
        self.finish_frame(None, false)
    }

    fn finish_frame(
        &mut self,
        epilogue: Option<(u8, [u32; 3])>,
        aborted: bool,
    ) -> Result<Option<Frame>, FrameError> {
        self.unit = self.first_unit();
        self.frame_start = self.consumed;
        let preamble = self.preamble.take().expect("preamble");
        let segments = std::mem::take(&mut self.segments);
        if aborted {
            return Ok(None);
        }
        Ok(Some(Frame {
            preamble,
            segments,
            trailer: FrameTrailer {
                seg0_crc: self.seg0_crc,
                epilogue,
            },
        }))
    }
}
