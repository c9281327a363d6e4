//! Connection handles and the application's callbacks: what the runtime hands the
//! application (a [`Connection`] per session, built here and nowhere else) and what it calls
//! back ([`Dispatcher`], [`MessengerInterceptor`]).

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::throttle::{NoRoom, Permit, SendWindow};
use super::{Command, Shared};
use crate::proto::{
    owner_of, Action, ConnId, EntityAddr, EntityAddrVec, EntityName, EntityType, FaultReason,
    Message, Security, Step,
};

/// Receives messages and connection events. Called on the worker thread that owns the
/// connection (fast dispatch): return quickly, hand long work to other threads.
pub trait Dispatcher: Send + Sync + 'static {
    /// A message arrived, in order, exactly once per lossless session. It counts against the
    /// dispatch throttle until it is dropped or turned into a plain [`Message`].
    fn dispatch(&self, conn: &Connection, msg: Incoming);
    /// Our connection became ready.
    fn on_connect(&self, _conn: &Connection) {}
    /// A peer's connection became ready on our side.
    fn on_accept(&self, _conn: &Connection) {}
    /// A session ended (`reason` says why): a lossy one at its fault, a refused connect or a
    /// new session from the peer; a lossless one the peer did not come back to within
    /// `Tuning::standby_timeout`. What was queued on it is lost.
    fn on_reset(&self, _conn: &Connection, _reason: &FaultReason) {}
    /// A connection of this session failed and the session goes on as its policy says: a
    /// lossless client redials with backoff, a server waits for the peer to come back. Sessions
    /// a fault ends are reported by [`on_reset`](Self::on_reset) instead. Connection races
    /// (the peer's WAIT) are part of the protocol and not reported.
    fn on_fault(&self, _conn: &Connection, _reason: &FaultReason) {}
    /// The peer lost our session (restart or mark_down); what was queued is lost.
    fn on_remote_reset(&self, _conn: &Connection) {}
    /// The peer refused us (auth method, missing features).
    fn on_refused(&self, _conn: &Connection, _reason: &FaultReason) {}
    /// A KEEPALIVE2 we sent came back after `rtt`.
    fn on_keepalive_ack(&self, _conn: &Connection, _rtt: Duration) {}
}

/// A dispatched message: a [`Message`] (it derefs to one) that holds its share of the dispatch
/// throttle (`Options::dispatch_throttle_bytes`) until it is dropped. Turning it into a plain
/// `Message` (`into()`, or sending it on, which does that) gives the share back, so forwarding
/// a message never counts against the application's budget.
pub struct Incoming {
    msg: Message,
    _permit: Option<Permit>,
}

impl Incoming {
    pub(crate) fn new(msg: Message, permit: Option<Permit>) -> Self {
        Incoming {
            msg,
            _permit: permit,
        }
    }

    pub fn into_message(self) -> Message {
        self.msg
    }
}

impl From<Incoming> for Message {
    fn from(i: Incoming) -> Message {
        i.msg
    }
}

impl std::ops::Deref for Incoming {
    type Target = Message;
    fn deref(&self) -> &Message {
        &self.msg
    }
}

impl std::ops::DerefMut for Incoming {
    fn deref_mut(&mut self) -> &mut Message {
        &mut self.msg
    }
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.msg.fmt(f)
    }
}

/// Fault injection for a whole messenger (Ceph's `Interceptor`): asked at every protocol
/// step of every connection, on the worker that owns it. [`Action::Pause`] holds the connection
/// until [`Messenger::resume`](crate::Messenger::resume).
pub trait MessengerInterceptor: Send + Sync + 'static {
    fn intercept(&self, worker: usize, conn: ConnId, step: Step) -> Action;
}

/// Why [`Connection::send`] did not queue a message; the message comes back in it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The connection is closed: a lossy session faulted, a session its peer did not come
    /// back to expired (`Tuning::standby_timeout`), or it was marked down.
    #[error("connection is closed")]
    Closed(Box<Message>),
    /// The connection's send window is full: its session holds
    /// [`Options::send_throttle_messages`] messages or [`Options::send_throttle_bytes`] bytes
    /// that the peer has not acknowledged yet (or that are still queued). Room comes back as
    /// acknowledgements do; [`Connection::send_timeout`] waits for it.
    ///
    /// [`Options::send_throttle_messages`]: crate::Options::send_throttle_messages
    /// [`Options::send_throttle_bytes`]: crate::Options::send_throttle_bytes
    #[error("send window full: the peer has not acknowledged what was sent")]
    Throttled(Box<Message>),
}

impl SendError {
    /// The message that was not sent.
    pub fn into_message(self) -> Message {
        match self {
            SendError::Closed(m) | SendError::Throttled(m) => *m,
        }
    }
}

/// Why [`Connection::wait_ready`] returned before the connection was ready.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    /// Still connecting when the time was up; `last_fault` is why the last attempt failed.
    #[error("not ready after {waited:?}{}", describe_fault(last_fault))]
    Timeout {
        waited: Duration,
        last_fault: Option<FaultReason>,
    },
    /// The connection was closed: a lossy session faulted, or it was marked down.
    #[error("connection closed{}", describe_fault(last_fault))]
    Closed { last_fault: Option<FaultReason> },
}

fn describe_fault(fault: &Option<FaultReason>) -> String {
    fault
        .as_ref()
        .map_or_else(String::new, |f| format!(": {f}"))
}

pub(crate) const STATE_CONNECTING: u8 = 0;
pub(crate) const STATE_READY: u8 = 1;
pub(crate) const STATE_CLOSED: u8 = 2;

/// What a [`Connection`] handle shares with the worker that owns it.
pub(crate) struct ConnShared {
    pub id: u64,
    pub worker: usize,
    /// STATE_*: read lock-free by `send`; changed only through [`ConnShared::set_state`].
    state: AtomicU8,
    /// Whether this session was ever ready (a later ready counts as a reconnect).
    pub was_ready: AtomicBool,
    /// The state the worker counts this session under in the gauges (only the worker touches
    /// it; `state` may change first, e.g. on `mark_down`).
    pub counted: AtomicU8,
    pub peer: Mutex<Option<(EntityName, EntityAddrVec, Security)>>,
    /// Why the last connection attempt or connection failed; `changed` wakes
    /// [`Connection::wait_ready`] callers when it or `state` changes.
    last_fault: Mutex<Option<FaultReason>>,
    changed: Condvar,
    /// What this handle sent that its session still holds (the send throttle).
    pub window: SendWindow,
    pub messenger: Arc<Shared>,
}

impl ConnShared {
    /// The one constructor of connection handles, for `connect` and for accepted sessions.
    pub(crate) fn new(messenger: Arc<Shared>, worker: usize) -> Arc<ConnShared> {
        Arc::new(ConnShared {
            id: messenger.next_handle.fetch_add(1, Ordering::Relaxed),
            worker,
            state: AtomicU8::new(STATE_CONNECTING),
            was_ready: AtomicBool::new(false),
            counted: AtomicU8::new(STATE_CLOSED),
            peer: Mutex::new(None),
            last_fault: Mutex::new(None),
            changed: Condvar::new(),
            window: SendWindow::default(),
            messenger,
        })
    }

    pub(crate) fn state(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }

    pub(crate) fn set_state(&self, state: u8) {
        self.state.store(state, Ordering::Release);
        // Under the lock, so that a waiter between its check and its wait cannot miss it.
        let _guard = self.last_fault.lock().expect("not poisoned");
        self.changed.notify_all();
        if state == STATE_CLOSED {
            self.window.wake();
        }
    }

    pub(crate) fn record_fault(&self, reason: &FaultReason) {
        *self.last_fault.lock().expect("not poisoned") = Some(reason.clone());
        self.changed.notify_all();
    }
}

/// A handle on a session with a peer. Cheap to clone; all clones are the same connection.
#[derive(Clone)]
pub struct Connection {
    pub(crate) inner: Arc<ConnShared>,
}

impl PartialEq for Connection {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}
impl Eq for Connection {}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.inner.id)
            .field("peer", &self.peer())
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl Connection {
    /// A number unique to this connection within its messenger.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// Queues a message; never blocks. Fails if the connection is closed, or with
    /// [`SendError::Throttled`] when its send window is full: the peer has not acknowledged
    /// [`Options::send_throttle_messages`] messages or [`Options::send_throttle_bytes`]
    /// bytes sent on this handle (a lossy session counts a message until it is written).
    /// Either way the message comes back in the error.
    ///
    /// [`Options::send_throttle_messages`]: crate::Options::send_throttle_messages
    /// [`Options::send_throttle_bytes`]: crate::Options::send_throttle_bytes
    pub fn send(&self, msg: impl Into<Message>) -> Result<(), SendError> {
        let msg = msg.into();
        if self.inner.state() == STATE_CLOSED {
            return Err(SendError::Closed(Box::new(msg)));
        }
        let limits = self.inner.messenger.send_limits;
        if !self.inner.window.try_take(msg.payload_len() as u64, limits) {
            return Err(self.throttled(msg));
        }
        self.queue(msg);
        Ok(())
    }

    /// [`send`](Self::send), waiting up to `timeout` for room in the send window; then
    /// [`SendError::Throttled`]. Called from a [`Dispatcher`] callback it does not wait: that
    /// thread is a worker, whose progress is what brings the acknowledgements in.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use ringwire::proto::Message;
    /// # use ringwire::{Connection, SendError};
    /// # fn f(conn: &Connection) -> Result<(), SendError> {
    /// let mut msg = Message::new(0x10).with_front(&b"write"[..]);
    /// loop {
    ///     match conn.send_timeout(msg, Duration::from_secs(1)) {
    ///         Ok(()) => break,
    ///         // The peer is slow to acknowledge: wait again, or give up and tell the caller.
    ///         Err(SendError::Throttled(back)) => msg = *back,
    ///         Err(e) => return Err(e),
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn send_timeout(
        &self,
        msg: impl Into<Message>,
        timeout: Duration,
    ) -> Result<(), SendError> {
        let msg = msg.into();
        let me = std::thread::current().id();
        let workers = &self.inner.messenger.workers;
        let on_worker = workers.iter().any(|w| w.thread.get() == Some(&me));
        let wait = if on_worker { Duration::ZERO } else { timeout };
        let limits = self.inner.messenger.send_limits;
        let len = msg.payload_len() as u64;
        let closed = || self.inner.state() == STATE_CLOSED;
        match self.inner.window.take_within(len, limits, wait, closed) {
            Ok(()) => {
                self.queue(msg);
                Ok(())
            }
            Err(NoRoom::Closed) => Err(SendError::Closed(Box::new(msg))),
            Err(NoRoom::Full) => Err(self.throttled(msg)),
        }
    }

    /// Hands a message that has room in the window to the worker.
    fn queue(&self, msg: Message) {
        let c = &self.inner.messenger.counters;
        c.messages_out.fetch_add(1, Ordering::Relaxed);
        c.bytes_out
            .fetch_add(msg.payload_len() as u64, Ordering::Relaxed);
        self.command(Command::Send {
            handle: self.inner.id,
            msg,
        });
    }

    fn throttled(&self, msg: Message) -> SendError {
        let c = &self.inner.messenger.counters;
        c.send_throttled.fetch_add(1, Ordering::Relaxed);
        SendError::Throttled(Box::new(msg))
    }

    /// Runs `future` on the worker that owns this connection, the thread its dispatcher
    /// callbacks run on (thread-per-core, as Seastar and crimson do). Sends from the task and
    /// replies the dispatcher hands it through a [`Mailbox`](crate::Mailbox) cross no thread,
    /// so a request-reply loop costs what it costs inside `Dispatcher::dispatch`. The task
    /// shares the worker with every connection it owns: it must not block. Tasks still
    /// running at shutdown are dropped. See [`Mailbox`](crate::Mailbox) for an example.
    pub fn spawn(&self, future: impl std::future::Future<Output = ()> + Send + 'static) {
        self.command(Command::Spawn(Box::pin(future)));
    }

    /// Closes the connection and forgets its session; no reset callback follows.
    pub fn mark_down(&self) {
        self.inner.set_state(STATE_CLOSED);
        self.command(Command::MarkDown {
            handle: self.inner.id,
        });
    }

    /// Sends a KEEPALIVE2; [`Dispatcher::on_keepalive_ack`] reports the round trip.
    pub fn keepalive(&self) {
        self.command(Command::Keepalive {
            handle: self.inner.id,
        });
    }

    pub fn is_connected(&self) -> bool {
        self.inner.state() == STATE_READY
    }

    pub fn is_closed(&self) -> bool {
        self.inner.state() == STATE_CLOSED
    }

    /// Blocks until the session is ready, for at most `timeout`. A lossless connection to a
    /// peer that is down keeps redialling in the background; this is how a caller learns, in
    /// bounded time, that it is not getting through and why.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use ringwire::proto::{EntityAddr, EntityType};
    /// # fn f(m: &ringwire::Messenger) {
    /// let osd = m.connect(EntityAddr::parse("v2:127.0.0.1:6800").unwrap(), EntityType::OSD);
    /// match osd.wait_ready(Duration::from_secs(5)) {
    ///     Ok(()) => println!("connected to {:?}", osd.peer()),
    ///     Err(e) => eprintln!("osd unreachable: {e}"), // e.g. "...: nothing listening there"
    /// }
    /// # }
    /// ```
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), NotReady> {
        let start = Instant::now();
        let mut last_fault = self.inner.last_fault.lock().expect("not poisoned");
        loop {
            match self.inner.state() {
                STATE_READY => return Ok(()),
                STATE_CLOSED => {
                    return Err(NotReady::Closed {
                        last_fault: last_fault.clone(),
                    })
                }
                _ => {}
            }
            let waited = start.elapsed();
            let Some(left) = timeout.checked_sub(waited).filter(|l| !l.is_zero()) else {
                return Err(NotReady::Timeout {
                    waited,
                    last_fault: last_fault.clone(),
                });
            };
            last_fault = self
                .inner
                .changed
                .wait_timeout(last_fault, left)
                .expect("not poisoned")
                .0;
        }
    }

    /// Why the last connection attempt or connection of this session failed, if one did.
    pub fn last_fault(&self) -> Option<FaultReason> {
        self.inner.last_fault.lock().expect("not poisoned").clone()
    }

    /// The peer's name, once a handshake completed.
    pub fn peer(&self) -> Option<EntityName> {
        self.inner
            .peer
            .lock()
            .expect("not poisoned")
            .as_ref()
            .map(|p| p.0.clone())
    }

    /// How the connection is protected (auth method and connection mode), once a handshake
    /// completed.
    pub fn security(&self) -> Option<Security> {
        self.inner
            .peer
            .lock()
            .expect("not poisoned")
            .as_ref()
            .map(|p| p.2)
    }

    /// The peer's addresses, once known.
    pub fn peer_addrs(&self) -> Option<EntityAddrVec> {
        self.inner
            .peer
            .lock()
            .expect("not poisoned")
            .as_ref()
            .map(|p| p.1.clone())
    }

    fn command(&self, cmd: Command) {
        self.inner.messenger.workers[self.inner.worker].push(cmd);
    }

    /// A new handle whose session the worker owning `addr` opens.
    pub(crate) fn dial(
        shared: &Arc<Shared>,
        addr: EntityAddr,
        peer_type: EntityType,
        anon: bool,
    ) -> Connection {
        let worker = owner_of(&addr, shared.workers.len());
        let conn = Connection {
            inner: ConnShared::new(shared.clone(), worker),
        };
        conn.command(Command::Connect {
            handle: conn.inner.clone(),
            addr,
            peer_type,
            anon,
        });
        conn
    }
}
