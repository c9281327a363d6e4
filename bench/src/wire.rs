//! What every side of `ringwire bench` puts in its messages, so that Ringwire and the msgr2
//! peers (rados-rs in `rados-peer`) send the same bytes by construction: the message types, a
//! ping's payload (its sequence number, then a fill byte) and a stream message's payload.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Ping-pong on the lossless session: the next ping sent from the dispatcher (on the worker).
pub const PING: u16 = 0x5001;
pub const PONG: u16 = 0x5002;
/// One stream message: the data segment alone, its sequence number in the header's tid.
pub const DATA: u16 = 0x5003;
/// A stream message's acknowledgement, with no payload.
pub const DATA_ACK: u16 = 0x5004;
/// Ping-pong of the many-connection phase (lossy connections).
pub const MANY_PING: u16 = 0x5005;
pub const MANY_PONG: u16 = 0x5006;
/// Ping-pong on the lossless session, each ping sent from an application thread that waits
/// for its echo.
pub const APP_PING: u16 = 0x5007;
pub const APP_PONG: u16 = 0x5008;

/// The bytes after a ping's sequence number, and every byte of a stream message.
pub const FILL: u8 = 0x5a;

/// Smallest ping: the sequence number.
pub const MIN_PING: usize = 8;

/// Writes ping number `seq` into `buf` (at least `MIN_PING` bytes): the sequence number in
/// the first 8 bytes, little-endian, then `FILL`.
pub fn ping(seq: u64, buf: &mut [u8]) {
    buf[..MIN_PING].copy_from_slice(&seq.to_le_bytes());
    buf[MIN_PING..].fill(FILL);
}

/// The sequence number a ping carries (0 if it is too short to carry one).
pub fn ping_seq(buf: &[u8]) -> u64 {
    buf.get(..MIN_PING)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
}

/// Smallest and largest payload seen per message type (`PING..=APP_PONG`), so that a report
/// states the sizes that were sent, not the ones that were asked for.
pub struct Seen([(AtomicUsize, AtomicUsize); 8]);

impl Default for Seen {
    fn default() -> Self {
        Seen(std::array::from_fn(|_| {
            (AtomicUsize::new(usize::MAX), AtomicUsize::new(0))
        }))
    }
}

impl Seen {
    /// A message of type `ty` with `len` payload bytes (front, middle and data) arrived.
    pub fn record(&self, ty: u16, len: usize) {
        let Some((min, max)) = self.0.get(ty.wrapping_sub(PING) as usize) else {
            return;
        };
        // Plain loads on the usual path: every message of a phase has the same size.
        if len < min.load(Ordering::Relaxed) {
            min.fetch_min(len, Ordering::Relaxed);
        }
        if len > max.load(Ordering::Relaxed) {
            max.fetch_max(len, Ordering::Relaxed);
        }
    }

    /// The smallest and largest payload of the messages of type `ty` seen, if any were.
    pub fn range(&self, ty: u16) -> Option<(usize, usize)> {
        let (min, max) = self.0.get(ty.wrapping_sub(PING) as usize)?;
        match (min.load(Ordering::Relaxed), max.load(Ordering::Relaxed)) {
            (usize::MAX, 0) => None,
            range => Some(range),
        }
    }
}

/// The one payload size messages of type `ty` had, given their `range` (see `Seen::range`).
pub fn one_size(range: Option<(usize, usize)>, what: &str) -> Result<usize, String> {
    match range {
        Some((min, max)) if min == max => Ok(min),
        None => Err(format!("no {what} arrived")),
        Some((min, max)) => Err(format!("{what} arrived with {min} to {max} payload bytes")),
    }
}

/// A stream message's payload of `len` bytes.
pub fn stream_payload(len: usize) -> Vec<u8> {
    vec![FILL; len]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ping_carries_its_number_then_the_fill() {
        let mut b = [0u8; 12];
        ping(0x0102, &mut b);
        assert_eq!(b, [2, 1, 0, 0, 0, 0, 0, 0, FILL, FILL, FILL, FILL]);
        assert_eq!(ping_seq(&b), 0x0102);
        assert_eq!(ping_seq(&b[..7]), 0);
    }

    #[test]
    fn seen_sizes_name_their_range() {
        let s = Seen::default();
        assert_eq!(s.range(PING), None);
        s.record(PING, 64);
        s.record(PING, 64);
        s.record(0x7000, 1);
        assert_eq!(s.range(PING), Some((64, 64)));
        assert_eq!(one_size(s.range(PING), "pings"), Ok(64));
        s.record(PING, 60);
        assert_eq!(
            one_size(s.range(PING), "pings"),
            Err("pings arrived with 60 to 64 payload bytes".into())
        );
        assert_eq!(
            one_size(s.range(PONG), "pongs"),
            Err("no pongs arrived".into())
        );
    }
}
