//! What travels on an RDMA connection besides msgr2's bytes: the side channel's hello (queue
//! pair attributes), and the record header at the front of every SEND (credits and READ
//! completions going back, and whether the record carries stream bytes or points at a
//! segment for the receiver to READ). Pure encoding and the credit rules, tested here.

use thiserror::Error;

/// The side channel's greeting, both ways: everything needed to connect a queue pair to ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hello {
    pub qpn: u32,
    pub psn: u32,
    pub lid: u16,
    pub gid: [u8; 16],
    /// Receive buffers posted for the peer: its initial send credits.
    pub credits: u16,
    /// Bytes each receive buffer holds: the largest SEND the peer may post.
    pub buffer_size: u32,
    pub mtu: u8,
    /// From a client: the placement hash of the address it will identify itself with, so
    /// the server can hand the side channel to the worker that owns its session before any
    /// queue pair exists (queue pairs cannot move between workers' completion queues).
    pub placement: u64,
}

pub(crate) const HELLO_LEN: usize = 64;
const HELLO_MAGIC: &[u8; 8] = b"RWRDMA01";
/// The client's last word on the side channel: its queue pair is ready to receive.
pub(crate) const READY: u8 = 0x52;

#[derive(Debug, Error, PartialEq, Eq)]
pub(crate) enum RecordError {
    #[error("not a Ringwire RDMA peer (side-channel magic {0:02x?})")]
    BadMagic([u8; 8]),
    #[error("peer offers {credits} receive buffers of {size} bytes; need at least {min_credits} of at least {min_size}")]
    BadHello {
        credits: u16,
        size: u32,
        min_credits: u16,
        min_size: u32,
    },
    #[error("peer's path MTU code {0} is not one of IBV_MTU_256..IBV_MTU_4096 (1..=5)")]
    BadMtu(u8),
    #[error("record of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
    #[error("peer returned {returned} credits with {outstanding} outstanding")]
    TooManyCredits { returned: u32, outstanding: u32 },
    #[error("peer acknowledged {acked} READs with {outstanding} outstanding")]
    TooManyReads { acked: u32, outstanding: u32 },
    #[error("READ descriptor of {0} bytes")]
    BadRead(u32),
    #[error("READ descriptor addr {addr:#x} + len {len} overflows u64")]
    ReadOverflow { addr: u64, len: u32 },
}

/// Smallest receive buffer a peer may offer: a header and a useful amount of stream.
pub(crate) const MIN_BUFFER: u32 = 1024;
/// Fewest credits: one is kept back for credit updates, and updates go at half the window.
pub(crate) const MIN_CREDITS: u16 = 4;

impl Hello {
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[..8].copy_from_slice(HELLO_MAGIC);
        b[8..12].copy_from_slice(&self.qpn.to_le_bytes());
        b[12..16].copy_from_slice(&self.psn.to_le_bytes());
        b[16..18].copy_from_slice(&self.lid.to_le_bytes());
        b[18..20].copy_from_slice(&self.credits.to_le_bytes());
        b[20..24].copy_from_slice(&self.buffer_size.to_le_bytes());
        b[24] = self.mtu;
        b[28..44].copy_from_slice(&self.gid);
        b[44..52].copy_from_slice(&self.placement.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; HELLO_LEN]) -> Result<Hello, RecordError> {
        let magic: [u8; 8] = b[..8].try_into().expect("8 bytes");
        if &magic != HELLO_MAGIC {
            return Err(RecordError::BadMagic(magic));
        }
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u16_at = |i: usize| u16::from_le_bytes(b[i..i + 2].try_into().expect("2 bytes"));
        let h = Hello {
            qpn: u32_at(8),
            psn: u32_at(12),
            lid: u16_at(16),
            credits: u16_at(18),
            buffer_size: u32_at(20),
            mtu: b[24],
            gid: b[28..44].try_into().expect("16 bytes"),
            placement: u64::from_le_bytes(b[44..52].try_into().expect("8 bytes")),
        };
        // The verbs binding panics on other codes: reject them here, where the bytes arrive.
        if !(1..=5).contains(&h.mtu) {
            return Err(RecordError::BadMtu(h.mtu));
        }
        if h.credits < MIN_CREDITS || h.buffer_size < MIN_BUFFER {
            return Err(RecordError::BadHello {
                credits: h.credits,
                size: h.buffer_size,
                min_credits: MIN_CREDITS,
                min_size: MIN_BUFFER,
            });
        }
        Ok(h)
    }
}

pub(crate) const HEADER_LEN: usize = 8;
pub(crate) const READ_DESC_LEN: usize = 16;
const KIND_DATA: u8 = 1;
const KIND_READ: u8 = 2;
const KIND_UPDATE: u8 = 3;

/// The header of one SEND.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub body: Body,
    /// Receive buffers reposted since the last record: credits back to the sender.
    pub credits: u16,
    /// READ descriptors of the peer's fully read since the last record (in order).
    pub reads_done: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Body {
    /// Stream bytes follow the header.
    Data,
    /// The next `len` stream bytes are at the sender's `addr`, readable with `rkey`.
    Read { addr: u64, rkey: u32, len: u32 },
    /// Nothing but the credits and READ completions.
    Update,
}

impl Header {
    /// Writes the header (and a READ descriptor) at the front of `out`; returns its length.
    pub fn encode(&self, out: &mut [u8]) -> usize {
        let kind = match self.body {
            Body::Data => KIND_DATA,
            Body::Read { .. } => KIND_READ,
            Body::Update => KIND_UPDATE,
        };
        out[0] = kind;
        out[1] = 0;
        out[2..4].copy_from_slice(&self.credits.to_le_bytes());
        out[4..6].copy_from_slice(&self.reads_done.to_le_bytes());
        out[6..8].fill(0);
        if let Body::Read { addr, rkey, len } = self.body {
            out[8..16].copy_from_slice(&addr.to_le_bytes());
            out[16..20].copy_from_slice(&rkey.to_le_bytes());
            out[20..24].copy_from_slice(&len.to_le_bytes());
            return HEADER_LEN + READ_DESC_LEN;
        }
        HEADER_LEN
    }

    /// Parses a received record; returns the header and the stream bytes it carries.
    pub fn decode(b: &[u8]) -> Result<(Header, &[u8]), RecordError> {
        if b.len() < HEADER_LEN {
            return Err(RecordError::Short(b.len()));
        }
        let credits = u16::from_le_bytes([b[2], b[3]]);
        let reads_done = u16::from_le_bytes([b[4], b[5]]);
        let (body, rest) = match b[0] {
            KIND_DATA => (Body::Data, &b[HEADER_LEN..]),
            KIND_UPDATE => (Body::Update, &b[HEADER_LEN..HEADER_LEN]),
            KIND_READ => {
                if b.len() < HEADER_LEN + READ_DESC_LEN {
                    return Err(RecordError::Short(b.len()));
                }
                let d = &b[HEADER_LEN..];
                let addr = u64::from_le_bytes(d[..8].try_into().expect("8 bytes"));
                let len = u32::from_le_bytes(d[12..16].try_into().expect("4 bytes"));
                if len == 0 {
                    return Err(RecordError::BadRead(len));
                }
                // The receiver steps through the range: all of it must exist.
                if addr.checked_add(len as u64).is_none() {
                    return Err(RecordError::ReadOverflow { addr, len });
                }
                let body = Body::Read {
                    addr,
                    rkey: u32::from_le_bytes(d[8..12].try_into().expect("4 bytes")),
                    len,
                };
                (body, &b[HEADER_LEN..HEADER_LEN])
            }
            k => return Err(RecordError::UnknownKind(k)),
        };
        Ok((
            Header {
                body,
                credits,
                reads_done,
            },
            rest,
        ))
    }
}

/// Send credits of one connection, and receive buffers owed back to the peer.
///
/// A SEND may be posted only while the peer has a receive buffer for it. The last credit is
/// kept for credit updates: when both sides hold their last credit and owe each other
/// buffers, an update can still go out, so flow control never deadlocks. Credits owed go back
/// on every record, or in an update once half the peer's window is owed.
#[derive(Debug, Clone)]
pub(crate) struct Credits {
    available: u32,
    window: u32,
    owed: u32,
}

impl Credits {
    pub fn new(peer_window: u16) -> Self {
        Credits {
            available: peer_window as u32,
            window: peer_window as u32,
            owed: 0,
        }
    }

    pub fn can_send_data(&self) -> bool {
        self.available >= 2
    }

    pub fn can_send_update(&self) -> bool {
        self.available >= 1
    }

    /// One SEND posted; returns the credits to piggy-back on it.
    pub fn spend(&mut self) -> u16 {
        debug_assert!(self.available > 0);
        self.available -= 1;
        let owed = self.owed.min(u16::MAX as u32);
        self.owed -= owed;
        owed as u16
    }

    /// The peer returned `n` credits.
    pub fn returned(&mut self, n: u16) -> Result<(), RecordError> {
        // `n` is the peer's: checked, though a u16 on top of a u16 window cannot wrap a u32.
        match self.available.checked_add(n as u32) {
            Some(after) if after <= self.window => {
                self.available = after;
                Ok(())
            }
            _ => Err(RecordError::TooManyCredits {
                returned: n as u32,
                outstanding: self.window.saturating_sub(self.available),
            }),
        }
    }

    /// A receive buffer was reposted: one more credit owed to the peer.
    pub fn reposted(&mut self) {
        // A peer that never lets us send keeps this growing; it must not wrap.
        self.owed = self.owed.saturating_add(1);
    }

    /// Owed credits worth an update of their own (`our_window`: the buffers we posted).
    pub fn update_due(&self, our_window: u16) -> bool {
        self.owed > 0 && self.owed as u64 * 2 >= our_window as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            qpn: 0x12_3456,
            psn: 0xab_cdef,
            lid: 7,
            gid: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1],
            credits: 16,
            buffer_size: 8192,
            mtu: 5,
            placement: 0xdead_beef_0bad_f00d,
        }
    }

    #[test]
    fn hello_round_trips_and_rejects_strangers() {
        let h = hello();
        assert_eq!(Hello::decode(&h.encode()), Ok(h));
        let mut b = h.encode();
        b[..8].copy_from_slice(b"ceph v2\n");
        assert!(matches!(Hello::decode(&b), Err(RecordError::BadMagic(_))));
        for mtu in [0, 6, 255] {
            assert_eq!(
                Hello::decode(&Hello { mtu, ..h }.encode()),
                Err(RecordError::BadMtu(mtu))
            );
        }
        let tiny = Hello { credits: 1, ..h };
        assert!(matches!(
            Hello::decode(&tiny.encode()),
            Err(RecordError::BadHello { .. })
        ));
    }

    #[test]
    fn records_round_trip_and_bad_ones_are_errors() {
        let mut buf = [0u8; 64];
        for body in [
            Body::Data,
            Body::Update,
            Body::Read {
                addr: 0x7f00_0000_1000,
                rkey: 42,
                len: 4 << 20,
            },
        ] {
            let h = Header {
                body,
                credits: 3,
                reads_done: 1,
            };
            let n = h.encode(&mut buf);
            buf[n..n + 5].copy_from_slice(b"bytes");
            let (got, rest) = Header::decode(&buf[..n + 5]).unwrap();
            assert_eq!(got, h);
            let expect: &[u8] = if body == Body::Data { b"bytes" } else { b"" };
            assert_eq!(rest, expect);
        }
        assert_eq!(Header::decode(&[1, 0, 0]), Err(RecordError::Short(3)));
        assert_eq!(
            Header::decode(&[9, 0, 0, 0, 0, 0, 0, 0]),
            Err(RecordError::UnknownKind(9))
        );
        assert_eq!(
            Header::decode(&[2, 0, 0, 0, 0, 0, 0, 0]),
            Err(RecordError::Short(8))
        );
        let mut zero = [0u8; 24];
        zero[0] = 2;
        assert_eq!(Header::decode(&zero), Err(RecordError::BadRead(0)));
    }

    /// A READ descriptor's range must fit in u64: the receiver adds the length to the
    /// address as it reads. The last byte at u64::MAX - 1 is fine.
    #[test]
    fn a_read_descriptor_past_the_address_space_is_an_error() {
        let read = |addr: u64, len: u32| {
            let mut buf = [0u8; 24];
            Header {
                body: Body::Read { addr, rkey: 1, len },
                credits: 0,
                reads_done: 0,
            }
            .encode(&mut buf);
            Header::decode(&buf).map(|(h, _)| h.body)
        };
        let e = read(u64::MAX - 99, 100 << 10).unwrap_err();
        assert_eq!(
            e,
            RecordError::ReadOverflow {
                addr: u64::MAX - 99,
                len: 100 << 10
            }
        );
        assert_eq!(
            e.to_string(),
            "READ descriptor addr 0xffffffffffffff9c + len 102400 overflows u64"
        );
        assert!(matches!(
            read(u64::MAX, 1),
            Err(RecordError::ReadOverflow { .. })
        ));
        assert_eq!(
            read(u64::MAX - 100, 100),
            Ok(Body::Read {
                addr: u64::MAX - 100,
                rkey: 1,
                len: 100
            })
        );
    }

    #[test]
    fn credit_arithmetic_on_peer_values_does_not_wrap() {
        let mut c = Credits::new(u16::MAX);
        assert!(matches!(
            c.returned(u16::MAX),
            Err(RecordError::TooManyCredits {
                returned: 65535,
                outstanding: 0
            })
        ));
        c.owed = u32::MAX - 1;
        c.reposted();
        c.reposted();
        assert_eq!(c.owed, u32::MAX);
        assert!(c.update_due(u16::MAX));
        assert_eq!(c.spend(), u16::MAX);
    }

    /// Two sides exchanging records under the credit rules in every order a simple
    /// scheduler can produce: no SEND without a posted buffer, and no deadlock while either
    /// side has data to send.
    #[test]
    fn credits_never_overrun_and_never_deadlock() {
        const W: u16 = 4;
        #[derive(Clone)]
        struct Side {
            credits: Credits,
            to_send: u32,
            inbox: u32, // records arrived, not yet consumed
            posted: u32,
        }
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for _ in 0..200 {
            let mut s = [
                Side {
                    credits: Credits::new(W),
                    to_send: 50,
                    inbox: 0,
                    posted: W as u32,
                },
                Side {
                    credits: Credits::new(W),
                    to_send: 37,
                    inbox: 0,
                    posted: W as u32,
                },
            ];
            // In flight: (credits carried) per direction.
            let mut wire: [std::collections::VecDeque<u16>; 2] = Default::default();
            let mut steps = 0;
            while s[0].to_send + s[1].to_send > 0 || !wire[0].is_empty() || !wire[1].is_empty() {
                steps += 1;
                assert!(steps < 100_000, "deadlock");
                let i = (next() % 2) as usize;
                let j = 1 - i;
                match next() % 3 {
                    0 => {
                        // send data, or an update if due
                        let data = s[i].to_send > 0 && s[i].credits.can_send_data();
                        let update =
                            !data && s[i].credits.update_due(W) && s[i].credits.can_send_update();
                        if data || update {
                            if data {
                                s[i].to_send -= 1;
                            }
                            let c = s[i].credits.spend();
                            assert!(s[j].posted > 0, "SEND without a posted receive");
                            s[j].posted -= 1;
                            wire[i].push_back(c);
                        }
                    }
                    1 => {
                        if let Some(c) = wire[j].pop_front() {
                            s[i].credits.returned(c).unwrap();
                            s[i].inbox += 1;
                        }
                    }
                    _ => {
                        if s[i].inbox > 0 {
                            s[i].inbox -= 1;
                            s[i].posted += 1;
                            s[i].credits.reposted();
                        }
                    }
                }
            }
        }
    }
}
