//! Connection handles and the application's callbacks: what the runtime hands the
//! application (a [`Connection`] per session, built here and nowhere else) and what it calls
//! back ([`Dispatcher`], [`MessengerInterceptor`]).

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::throttle::Permit;
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
    /// A lossy session ended (`reason` says why: the fault, a refused connect, a new
    /// session from the peer); what was queued on it is lost.
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

/// Why a send was refused: the connection is closed (lossy and faulted, or marked down).
#[derive(Debug, thiserror::Error)]
#[error("connection is closed")]
pub struct Closed(pub Box<Message>);

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

    /// Queues a message; never blocks. Fails only if the connection is closed.
    pub fn send(&self, msg: impl Into<Message>) -> Result<(), Closed> {
        let msg = msg.into();
        if self.inner.state() == STATE_CLOSED {
            return Err(Closed(Box::new(msg)));
        }
        let c = &self.inner.messenger.counters;
        c.messages_out.fetch_add(1, Ordering::Relaxed);
        c.bytes_out
            .fetch_add(msg.payload_len() as u64, Ordering::Relaxed);
        self.command(Command::Send {
            handle: self.inner.id,
            msg,
        });
        Ok(())
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
