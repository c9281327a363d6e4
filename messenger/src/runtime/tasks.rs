//! Application futures run on a worker, thread-per-core as Seastar and crimson do: a task
//! spawned with [`Connection::spawn`](super::Connection::spawn) is polled by the worker that
//! owns the connection, between its I/O. What the task sends, and what the dispatcher hands
//! back to it, crosses no thread: its wake-ups go through the worker's own command queue,
//! which needs no eventfd write from the worker's thread.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Wake, Waker};

use super::{Command, Shared};

pub(crate) type BoxedTask = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

struct Slot {
    future: BoxedTask,
    waker: Waker,
    /// Already in the ready queue: more wake-ups before its poll add nothing.
    queued: bool,
}

/// One worker's tasks: slots reused as tasks finish, and the queue of those to poll.
#[derive(Default)]
pub(super) struct Tasks {
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    ready: VecDeque<usize>,
}

/// Wakes task `task` of worker `worker` by queueing a command to that worker.
struct TaskWaker {
    shared: Arc<Shared>,
    worker: usize,
    task: usize,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.shared.workers[self.worker].push(Command::Wake { task: self.task });
    }
}

impl Tasks {
    pub(super) fn spawn(&mut self, shared: &Arc<Shared>, worker: usize, future: BoxedTask) {
        let task = self.free.pop().unwrap_or(self.slots.len());
        let waker = Waker::from(Arc::new(TaskWaker {
            shared: shared.clone(),
            worker,
            task,
        }));
        let slot = Some(Slot {
            future,
            waker,
            queued: true,
        });
        match self.slots.get_mut(task) {
            Some(s) => *s = slot,
            None => self.slots.push(slot),
        }
        self.ready.push_back(task);
    }

    /// Queues task `task` for a poll. A waker may outlive its task (and its slot may hold a
    /// newer one): that poll is spurious, which futures allow.
    pub(super) fn wake(&mut self, task: usize) {
        if let Some(Some(slot)) = self.slots.get_mut(task) {
            if !slot.queued {
                slot.queued = true;
                self.ready.push_back(task);
            }
        }
    }

    /// Polls every task that was ready when called; returns whether there was one.
    pub(super) fn poll_ready(&mut self) -> bool {
        let n = self.ready.len();
        for _ in 0..n {
            let Some(task) = self.ready.pop_front() else {
                break;
            };
            let Some(Some(slot)) = self.slots.get_mut(task) else {
                continue;
            };
            slot.queued = false;
            let Slot { future, waker, .. } = slot;
            if future
                .as_mut()
                .poll(&mut Context::from_waker(waker))
                .is_ready()
            {
                self.slots[task] = None;
                self.free.push(task);
            }
        }
        n > 0
    }

    /// Drops every task (at shutdown: what they hold, connections included, goes with them).
    pub(super) fn clear(&mut self) {
        self.slots.clear();
        self.free.clear();
        self.ready.clear();
    }
}
