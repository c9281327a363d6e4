//! The two throttles, one per direction.
//!
//! In: the dispatch throttle (Ceph's `ms_dispatch_throttle_bytes`): bytes and messages handed
//! to the dispatcher and not yet released. A dispatched message ([`super::Incoming`]) holds a
//! [`Permit`]; the budget comes back when the application drops it or turns it into a plain
//! `Message` (to forward it, say). Over budget, the transports stop reading (they ask
//! [`Throttle::over`] before each receive) instead of growing memory.
//!
//! Out: the send window (`Options::send_throttle_bytes` / `_messages`): what one connection
//! handle has sent and its session still holds, queued or waiting for the peer's ACK. The
//! handle takes from it in `Connection::send`; the worker gives back what the endpoint reports
//! released (`Event::Released`). A peer that reads but never acknowledges therefore holds at
//! most the window of our memory, and the sender is told so (`SendError::Throttled`).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub(crate) struct Throttle {
    max_bytes: u64,
    max_messages: u64,
    bytes: AtomicU64,
    messages: AtomicU64,
    /// Called when a release brings the throttle back under its limits.
    on_release: Box<dyn Fn() + Send + Sync>,
}

impl Throttle {
    /// Limits of 0 mean unlimited.
    pub fn new(max_bytes: u64, max_messages: u64, on_release: Box<dyn Fn() + Send + Sync>) -> Self {
        Throttle {
            max_bytes,
            max_messages,
            bytes: AtomicU64::new(0),
            messages: AtomicU64::new(0),
            on_release,
        }
    }

    fn over_with(&self, bytes: u64, messages: u64) -> bool {
        (self.max_bytes > 0 && bytes >= self.max_bytes)
            || (self.max_messages > 0 && messages >= self.max_messages)
    }

    /// Whether no more should be read until something is released.
    pub fn over(&self) -> bool {
        self.over_with(
            self.bytes.load(Ordering::Acquire),
            self.messages.load(Ordering::Acquire),
        )
    }

    /// Counts `bytes` as in dispatch until the returned permit is dropped. Never blocks: the
    /// limit is enforced by not reading, not by refusing what was already read.
    pub fn acquire(self: &Arc<Self>, bytes: u64) -> Permit {
        self.bytes.fetch_add(bytes, Ordering::AcqRel);
        self.messages.fetch_add(1, Ordering::AcqRel);
        Permit {
            bytes,
            throttle: self.clone(),
        }
    }

    /// (bytes, messages) currently in dispatch.
    #[cfg(test)]
    pub fn in_dispatch(&self) -> (u64, u64) {
        (
            self.bytes.load(Ordering::Acquire),
            self.messages.load(Ordering::Acquire),
        )
    }
}

/// A dispatched message's share of the throttle, returned on drop.
pub(crate) struct Permit {
    bytes: u64,
    throttle: Arc<Throttle>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let t = &self.throttle;
        let bytes_before = t.bytes.fetch_sub(self.bytes, Ordering::AcqRel);
        let messages_before = t.messages.fetch_sub(1, Ordering::AcqRel);
        let was_over = t.over_with(bytes_before, messages_before);
        if was_over && !t.over() {
            (t.on_release)();
        }
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Permit({} bytes)", self.bytes)
    }
}

/// The send window's limits; 0 is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SendLimits {
    pub bytes: u64,
    pub messages: u64,
}

/// Whether a message of `len` payload bytes fits beside `held` (messages, bytes). A message
/// that fits nowhere is still taken when nothing is held (Ceph's `Throttle::get` does the same),
/// so one larger than the byte limit goes out alone instead of never.
fn admits(held: (u64, u64), len: u64, limits: SendLimits) -> bool {
    let (messages, bytes) = held;
    if messages == 0 {
        return true;
    }
    let fits = |held: u64, more: u64, max: u64| max == 0 || held.saturating_add(more) <= max;
    fits(messages, 1, limits.messages) && fits(bytes, len, limits.bytes)
}

/// What one connection handle has outstanding (see the module docs).
#[derive(Default)]
pub(crate) struct SendWindow {
    held: Mutex<Held>,
    /// Wakes [`SendWindow::take_within`] callers when something is released or the
    /// connection closes.
    room: Condvar,
}

#[derive(Default)]
struct Held {
    messages: u64,
    bytes: u64,
    /// Callers waiting for room: releases wake them only when there are some.
    waiters: u32,
}

/// Why [`SendWindow::take_within`] gave up.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum NoRoom {
    Full,
    Closed,
}

impl SendWindow {
    /// Takes room for one message of `len` bytes if it fits now.
    pub fn try_take(&self, len: u64, limits: SendLimits) -> bool {
        let mut h = self.held.lock().expect("not poisoned");
        Self::take(&mut h, len, limits)
    }

    /// Takes room for one message of `len` bytes, waiting up to `timeout` for releases;
    /// gives up at once when `closed()` says the connection is gone.
    pub fn take_within(
        &self,
        len: u64,
        limits: SendLimits,
        timeout: Duration,
        closed: impl Fn() -> bool,
    ) -> Result<(), NoRoom> {
        let deadline = Instant::now() + timeout;
        let mut h = self.held.lock().expect("not poisoned");
        loop {
            if closed() {
                return Err(NoRoom::Closed);
            }
            if Self::take(&mut h, len, limits) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(NoRoom::Full);
            }
            h.waiters += 1;
            h = self.room.wait_timeout(h, left).expect("not poisoned").0;
            h.waiters -= 1;
        }
    }

    fn take(h: &mut Held, len: u64, limits: SendLimits) -> bool {
        if !admits((h.messages, h.bytes), len, limits) {
            return false;
        }
        h.messages += 1;
        h.bytes = h.bytes.saturating_add(len);
        true
    }

    /// Gives back what the session let go of.
    pub fn release(&self, messages: u64, bytes: u64) {
        let mut h = self.held.lock().expect("not poisoned");
        h.messages = h.messages.saturating_sub(messages);
        h.bytes = h.bytes.saturating_sub(bytes);
        if h.waiters > 0 {
            self.room.notify_all();
        }
    }

    /// Wakes waiters to see that the connection closed.
    pub fn wake(&self) {
        let h = self.held.lock().expect("not poisoned");
        if h.waiters > 0 {
            self.room.notify_all();
        }
    }

    /// (messages, bytes) outstanding.
    #[cfg(test)]
    fn held(&self) -> (u64, u64) {
        let h = self.held.lock().expect("not poisoned");
        (h.messages, h.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn admits_table() {
        let limits = |messages, bytes| SendLimits { bytes, messages };
        // (row, held (messages, bytes), len, limits, admitted)
        type Row<'a> = (&'a str, (u64, u64), u64, SendLimits, bool);
        #[rustfmt::skip]
        let rows: Vec<Row> = vec![
            ("empty", (0, 0), 10, limits(4, 100), true),
            ("fits", (3, 90), 10, limits(4, 100), true),
            ("message limit", (4, 40), 10, limits(4, 100), false),
            ("byte limit", (3, 95), 10, limits(4, 100), false),
            // Ceph's Throttle: a message larger than the limit still goes, alone.
            ("too large, alone", (0, 0), 1000, limits(4, 100), true),
            ("too large, behind others", (1, 1), 1000, limits(4, 100), false),
            ("unlimited messages", (1_000_000, 0), 1, limits(0, 100), true),
            ("unlimited bytes", (1, u64::MAX - 1), 10, limits(4, 0), true),
            // A sum past u64::MAX saturates and is over any limit, never wraps under it.
            ("huge", (1, u64::MAX - 1), u64::MAX, limits(4, u64::MAX - 1), false),
        ];
        for (row, held, len, limits, expected) in rows {
            assert_eq!(admits(held, len, limits), expected, "row {row:?}");
        }
    }

    #[test]
    fn the_send_window_waits_for_releases_and_gives_up_when_closed() {
        let limits = SendLimits {
            bytes: 0,
            messages: 2,
        };
        let w = Arc::new(SendWindow::default());
        assert!(w.try_take(5, limits) && w.try_take(5, limits));
        assert!(!w.try_take(5, limits), "full at two messages");
        let short = Duration::from_millis(20);
        assert_eq!(w.take_within(5, limits, short, || false), Err(NoRoom::Full));
        let releaser = {
            let w = w.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                w.release(1, 5);
            })
        };
        let long = Duration::from_secs(10);
        assert_eq!(w.take_within(5, limits, long, || false), Ok(()));
        releaser.join().unwrap();
        assert_eq!(w.held(), (2, 10));
        assert_eq!(w.take_within(5, limits, long, || true), Err(NoRoom::Closed));
        w.release(5, 50);
        assert_eq!(w.held(), (0, 0), "releases saturate at zero");
    }

    #[test]
    fn permits_return_their_budget_and_wake_once_under() {
        let woken = Arc::new(AtomicUsize::new(0));
        let w = woken.clone();
        let t = Arc::new(Throttle::new(
            100,
            0,
            Box::new(move || {
                w.fetch_add(1, Ordering::SeqCst);
            }),
        ));
        let a = t.acquire(60);
        assert!(!t.over());
        let b = t.acquire(60);
        assert!(t.over());
        drop(b);
        assert!(!t.over());
        assert_eq!(woken.load(Ordering::SeqCst), 1);
        drop(a);
        assert_eq!(t.in_dispatch(), (0, 0));
        assert_eq!(
            woken.load(Ordering::SeqCst),
            1,
            "no wake-up when it was not over"
        );
    }
}
