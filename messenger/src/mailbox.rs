//! [`Mailbox`]: how a dispatcher hands replies to whoever waits for them, a task on the worker
//! or a blocking thread, without allocating per item or waking anyone who is not waiting.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Condvar, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// A queue from the [`Dispatcher`](crate::Dispatcher) (or any thread) to one waiting side:
/// a task spawned on the worker awaits [`recv`](Self::recv); a plain thread calls
/// [`recv_timeout`](Self::recv_timeout). [`put`](Self::put) wakes only a side that waits, so
/// a task on the same worker as the dispatcher is woken without a system call.
///
/// ```no_run
/// use std::sync::Arc;
/// use std::time::Duration;
/// use ringwire::{Connection, Dispatcher, Incoming, Mailbox, Messenger};
/// use ringwire::proto::{EntityAddr, EntityName, EntityType, Message};
///
/// struct Replies(Arc<Mailbox<Incoming>>);
/// impl Dispatcher for Replies {
///     fn dispatch(&self, _conn: &Connection, msg: Incoming) {
///         self.0.put(msg);
///     }
/// }
///
/// let replies = Arc::new(Mailbox::new());
/// let m = Messenger::builder("client.1".parse::<EntityName>().unwrap())
///     .start(Arc::new(Replies(replies.clone())))
///     .unwrap();
/// let osd = m.connect(EntityAddr::parse("v2:127.0.0.1:6800").unwrap(), EntityType::OSD);
/// // From this thread: send, then block for the reply.
/// osd.send(Message::new(42)).unwrap();
/// let reply = replies.recv_timeout(Duration::from_secs(5));
/// // Or on the connection's worker, with no thread switch on the way there or back.
/// let (conn, mailbox) = (osd.clone(), replies.clone());
/// osd.spawn(async move {
///     for _ in 0..1000 {
///         if conn.send(Message::new(42)).is_err() {
///             return;
///         }
///         let _reply = mailbox.recv().await;
///     }
/// });
/// ```
pub struct Mailbox<T> {
    state: Mutex<State<T>>,
    available: Condvar,
}

struct State<T> {
    items: VecDeque<T>,
    /// The task waiting in `recv`, if one is.
    task: Option<Waker>,
    /// Threads waiting in `recv_timeout`.
    threads: usize,
}

impl<T> Default for Mailbox<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Mailbox<T> {
    pub fn new() -> Self {
        Mailbox {
            state: Mutex::new(State {
                items: VecDeque::new(),
                task: None,
                threads: 0,
            }),
            available: Condvar::new(),
        }
    }

    /// Adds an item and wakes the side waiting for one, if any.
    pub fn put(&self, item: T) {
        let mut s = self.state.lock().expect("not poisoned");
        s.items.push_back(item);
        let task = s.task.take();
        let threads = s.threads > 0;
        drop(s);
        if let Some(w) = task {
            w.wake();
        }
        if threads {
            self.available.notify_one();
        }
    }

    /// The oldest item, if there is one.
    pub fn try_recv(&self) -> Option<T> {
        self.state.lock().expect("not poisoned").items.pop_front()
    }

    /// Waits on this thread for the oldest item, for at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut s = self.state.lock().expect("not poisoned");
        loop {
            if let Some(item) = s.items.pop_front() {
                return Some(item);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            s.threads += 1;
            s = self
                .available
                .wait_timeout(s, left)
                .expect("not poisoned")
                .0;
            s.threads -= 1;
        }
    }

    /// The oldest item, once there is one (for a task; one task waits at a time).
    pub fn recv(&self) -> Recv<'_, T> {
        Recv { mailbox: self }
    }
}

/// The future of [`Mailbox::recv`].
pub struct Recv<'a, T> {
    mailbox: &'a Mailbox<T>,
}

impl<T> Future for Recv<'_, T> {
    type Output = T;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut s = self.mailbox.state.lock().expect("not poisoned");
        match s.items.pop_front() {
            Some(item) => Poll::Ready(item),
            None => {
                match &mut s.task {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    slot => *slot = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct CountingWaker(AtomicUsize);
    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_waiting_task_is_woken_once_by_put_and_then_gets_the_item() {
        let mb = Mailbox::new();
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let mut recv = mb.recv();
        assert!(Pin::new(&mut recv).poll(&mut cx).is_pending());
        mb.put(7);
        mb.put(8);
        assert_eq!(
            counter.0.load(Ordering::SeqCst),
            1,
            "only the waiting poll is woken"
        );
        assert_eq!(Pin::new(&mut recv).poll(&mut cx), Poll::Ready(7));
        assert_eq!(mb.try_recv(), Some(8));
    }

    #[test]
    fn a_blocking_thread_gets_items_in_order_and_times_out_when_empty() {
        let mb = Arc::new(Mailbox::new());
        let putter = {
            let mb = mb.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                mb.put(1);
                mb.put(2);
            })
        };
        assert_eq!(mb.recv_timeout(Duration::from_secs(10)), Some(1));
        assert_eq!(mb.recv_timeout(Duration::from_secs(10)), Some(2));
        putter.join().unwrap();
        assert_eq!(mb.recv_timeout(Duration::from_millis(10)), None);
    }
}
