//! The dispatch throttle (Ceph's `ms_dispatch_throttle_bytes`): bytes and messages handed to
//! the dispatcher and not yet released. A dispatched message ([`super::Incoming`]) holds a
//! [`Permit`]; the budget comes back when the application drops it or turns it into a plain
//! `Message` (to forward it, say). Over budget, the transports stop reading (they ask
//! [`Throttle::over`] before each receive) instead of growing memory.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

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
