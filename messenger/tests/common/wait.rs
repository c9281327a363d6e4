//! Waiting for events without betting on the machine's speed. No dependencies, so test crates
//! outside `messenger/` can include it too (`#[path = ".../common/wait.rs"] mod wait;`).
#![allow(dead_code)]

use std::time::{Duration, Instant};

/// How long a test watches for something that must *not* happen after the expected event
/// (a second delivery, a reconnect): long enough for a wrong one to have shown up on an idle
/// loopback. A pass says "nothing within GRACE", no more.
pub const GRACE: Duration = Duration::from_millis(300);

const POLL: Duration = Duration::from_millis(5);

/// Polls `cond` until it holds; panics naming `what` once `deadline` has passed.
pub fn wait_until(deadline: Instant, what: &str, cond: impl FnMut() -> bool) {
    assert!(poll_until(deadline, cond), "timed out waiting for {what}");
}

/// Polls `cond` until it holds (true) or `deadline` passes (false), for tests that tolerate
/// a miss and count it.
pub fn poll_until(deadline: Instant, mut cond: impl FnMut() -> bool) -> bool {
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// Checks `cond` for `grace` and panics naming `what` if it ever fails. Call it only after
/// waiting for the expected event: it is how a test says "and nothing more happened".
pub fn holds_for(grace: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + grace;
    loop {
        assert!(cond(), "{what} no longer holds");
        if Instant::now() >= until {
            return;
        }
        std::thread::sleep(POLL);
    }
}
