//! How an answer reaches the application thread waiting for it, in the application-thread
//! pattern: the dispatcher (on the worker) delivers it, the thread that sent the request waits
//! for it. A std channel: delivering wakes the parked thread. Kept in this one place so that
//! other patterns (application code run on the worker) can sit beside it.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Mutex;
use std::time::Duration;

use ringwire::Incoming;

pub(super) struct Handoff {
    tx: Sender<Incoming>,
    rx: Mutex<Receiver<Incoming>>,
}

impl Default for Handoff {
    fn default() -> Self {
        let (tx, rx) = channel();
        Handoff {
            tx,
            rx: Mutex::new(rx),
        }
    }
}

impl Handoff {
    /// From the dispatcher: hands `msg` to the waiting thread.
    pub(super) fn deliver(&self, msg: Incoming) {
        let _ = self.tx.send(msg);
    }

    /// From the application thread: the next answer, or `None` after `timeout`.
    pub(super) fn wait(&self, timeout: Duration) -> Option<Incoming> {
        self.rx
            .lock()
            .expect("not poisoned")
            .recv_timeout(timeout)
            .ok()
    }
}
