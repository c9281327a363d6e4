//! The way into a worker from other threads: its command queue and the eventfd that wakes it.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::ThreadId;

use super::tasks::BoxedTask;
use super::{rdma, ConnShared};
use crate::proto::{ConnId, EntityAddr, EntityType, Handoff, Message};

/// Work handed to a worker by other threads (or by its own dispatcher callbacks).
pub(crate) enum Command {
    Connect {
        handle: Arc<ConnShared>,
        addr: EntityAddr,
        peer_type: EntityType,
        anon: bool,
    },
    Send {
        handle: u64,
        msg: Message,
    },
    MarkDown {
        handle: u64,
    },
    Keepalive {
        handle: u64,
    },
    MarkDownAll,
    /// The dispatch throttle is back under its limits.
    Unthrottle,
    /// Release a connection the interceptor paused.
    Resume {
        conn: ConnId,
    },
    /// A connection accepted by another worker whose peer's session lives here.
    Adopt {
        fd: OwnedFd,
        handoff: Box<Handoff>,
    },
    /// An RDMA side channel accepted by another worker, with the client's hello, placed here
    /// before its queue pair is made.
    AdoptRdma {
        fd: OwnedFd,
        hello: Box<[u8; rdma::HELLO_LEN]>,
    },
    /// An application future to run on this worker.
    Spawn(BoxedTask),
    /// A task of this worker's was woken.
    Wake {
        task: usize,
    },
    Shutdown,
}

/// The way into a worker from any thread.
pub(crate) struct WorkerHandle {
    queue: Mutex<VecDeque<Command>>,
    pub(super) eventfd: OwnedFd,
    pub(super) thread: OnceLock<ThreadId>,
    /// The worker is (about to be) waiting for completions: a command from another thread
    /// must write the eventfd. While it is awake it drains the queue anyway, so a burst of
    /// sends from an application thread costs one wake-up, not one each.
    asleep: AtomicBool,
}

impl WorkerHandle {
    pub(super) fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the fd is owned from here on.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(WorkerHandle {
            queue: Mutex::new(VecDeque::new()),
            // SAFETY: fd is a fresh descriptor we own.
            eventfd: unsafe { OwnedFd::from_raw_fd(fd) },
            thread: OnceLock::new(),
            asleep: AtomicBool::new(false),
        })
    }

    pub(crate) fn push(&self, cmd: Command) {
        self.queue.lock().expect("not poisoned").push_back(cmd);
        // The worker drains its queue before it sleeps: no wake-up needed from itself.
        if self.thread.get() == Some(&std::thread::current().id()) {
            return;
        }
        // Pairs with the fence in `going_to_sleep`: either the worker sees this command
        // there, or this sees it asleep.
        fence(Ordering::SeqCst);
        if self.asleep.swap(false, Ordering::SeqCst) {
            let one: u64 = 1;
            // SAFETY: writing 8 bytes from a valid u64 to our eventfd.
            unsafe {
                libc::write(
                    self.eventfd.as_raw_fd(),
                    &one as *const u64 as *const libc::c_void,
                    8,
                )
            };
        }
    }

    /// The worker is about to wait: returns false (and stays awake) if a command came in
    /// since it last drained the queue.
    pub(super) fn going_to_sleep(&self) -> bool {
        self.asleep.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if self.queue.lock().expect("not poisoned").is_empty() {
            return true;
        }
        self.asleep.store(false, Ordering::SeqCst);
        false
    }

    /// The worker woke up: commands need no eventfd write until it waits again.
    pub(super) fn awake(&self) {
        self.asleep.store(false, Ordering::SeqCst);
    }

    /// Moves the queued commands into `into` (swapping buffers, so neither side allocates).
    pub(super) fn take_into(&self, into: &mut VecDeque<Command>) {
        std::mem::swap(&mut *self.queue.lock().expect("not poisoned"), into);
    }
}
