//! The public API: a [`Messenger`] bound to addresses and its builder. The handles it gives
//! out ([`Connection`]) and the callbacks it makes ([`Dispatcher`]) belong to the runtime.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::options::Options;
use crate::proto::{ConnId, EntityAddr, EntityAddrVec, EntityName, EntityType, Policy};
use crate::runtime::{self, Command, Connection, Dispatcher, MessengerInterceptor, Shared};
use crate::{Error, Stats};

/// Builds a [`Messenger`].
pub struct MessengerBuilder {
    config: runtime::Config,
}

impl MessengerBuilder {
    /// Fault injection at protocol steps (tests).
    pub fn interceptor(mut self, i: Arc<dyn MessengerInterceptor>) -> Self {
        self.config.interceptor = Some(i);
        self
    }
    /// Listen on `addr` (e.g. `v2:127.0.0.1:0` for an ephemeral port); may be repeated.
    pub fn bind(mut self, addr: EntityAddr) -> Self {
        self.config.bind.push(addr);
        self
    }
    /// The policy for peers of type `peer`.
    pub fn policy(mut self, peer: EntityType, policy: Policy) -> Self {
        self.config.policies.push((peer, policy));
        self
    }
    /// The policy for peer types without their own (default: `Policy::lossy_client()`; a
    /// connection that falls back to it logs a warning once per peer type).
    pub fn default_policy(mut self, policy: Policy) -> Self {
        self.config.default_policy = policy;
        self
    }
    pub fn options(mut self, options: Options) -> Self {
        self.config.options = options;
        self
    }
    /// Starts the workers; `dispatcher` hears everything.
    pub fn start(self, dispatcher: Arc<dyn Dispatcher>) -> Result<Messenger, Error> {
        let (shared, threads) = runtime::start(self.config, dispatcher)?;
        Ok(Messenger {
            shared,
            threads: Mutex::new(threads),
        })
    }
}

/// A messenger: workers, listeners and sessions.
///
/// ```no_run
/// use std::sync::Arc;
/// use ringwire::proto::{EntityAddr, EntityName, EntityType, Message, Policy};
/// use ringwire::{Connection, Dispatcher, Incoming, Messenger, Options};
///
/// /// Echoes every message back.
/// struct Echo;
/// impl Dispatcher for Echo {
///     fn dispatch(&self, conn: &Connection, msg: Incoming) {
///         let _ = conn.send(msg);
///     }
/// }
///
/// // An OSD-like server: stateful sessions for clients, lossless peers for other OSDs.
/// let server = Messenger::builder(EntityName { ty: EntityType::OSD, id: "0".into() })
///     .bind(EntityAddr::parse("v2:127.0.0.1:6800").unwrap())
///     .bind(EntityAddr::parse("v2:[::1]:6800").unwrap())
///     .policy(EntityType::CLIENT, Policy::stateful_server())
///     .policy(EntityType::OSD, Policy::lossless_peer())
///     .options(Options { workers: 2, ..Options::default() })
///     .start(Arc::new(Echo))?;
/// println!("listening on {}", server.addrs());
///
/// // A client whose messages survive reconnects.
/// let client = Messenger::builder(EntityName { ty: EntityType::CLIENT, id: "admin".into() })
///     .policy(EntityType::OSD, Policy::lossless_client())
///     .start(Arc::new(Echo))?;
/// let conn = client.connect(server.addrs().0[0], EntityType::OSD);
/// conn.send(Message::new(0x10).with_front(&b"hello"[..])).expect("open");
/// conn.keepalive();
/// client.shutdown();
/// client.wait();
/// # Ok::<(), ringwire::Error>(())
/// ```
pub struct Messenger {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Messenger {
    pub fn builder(name: EntityName) -> MessengerBuilder {
        MessengerBuilder {
            config: runtime::Config {
                name,
                bind: Vec::new(),
                policies: Vec::new(),
                default_policy: Policy::lossy_client(),
                options: Options::default(),
                interceptor: None,
            },
        }
    }

    /// The addresses we listen on (ephemeral ports resolved).
    pub fn addrs(&self) -> &EntityAddrVec {
        &self.shared.addrs
    }

    pub fn name(&self) -> &EntityName {
        &self.shared.name
    }

    /// A payload buffer from the registered arena (None when it is exhausted or disabled).
    /// Sending it needs no copy into kernel-pinned memory: fill it, `freeze()` it into `Bytes`,
    /// and use it as a message's front or data.
    ///
    /// ```no_run
    /// # use std::sync::Arc;
    /// # use ringwire::proto::{EntityName, EntityType, Message};
    /// # fn f(m: &ringwire::Messenger, conn: &ringwire::Connection) {
    /// let mut buf = m.alloc_payload(4 << 20).expect("arena space");
    /// buf.fill(7);
    /// conn.send(Message::new(0x10).with_data(buf.freeze())).unwrap();
    /// # }
    /// ```
    pub fn alloc_payload(&self, len: usize) -> Option<crate::runtime::ArenaBuf> {
        self.shared.arena.as_ref()?.alloc(len)
    }

    /// Serves Prometheus metrics at `http://addr/metrics` from a small thread; returns the
    /// address it listens on (useful with port 0).
    #[cfg(feature = "metrics")]
    pub fn serve_metrics(&self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let shared = Arc::downgrade(&self.shared);
        crate::metrics::serve_text(addr, move || {
            let shared = shared.upgrade()?;
            Some(crate::metrics::render(
                &shared.counters.snapshot(),
                &shared.name,
            ))
        })
    }

    /// The metrics in Prometheus text exposition format.
    #[cfg(feature = "metrics")]
    pub fn metrics_text(&self) -> String {
        crate::metrics::render(&self.stats(), &self.shared.name)
    }

    /// Counters since start.
    pub fn stats(&self) -> Stats {
        self.shared.counters.snapshot()
    }

    /// A connection to `addr`: the open one if there is one, else a new one that connects in
    /// the background. Messages sent before it is ready are queued.
    pub fn connect(&self, addr: EntityAddr, peer_type: EntityType) -> Connection {
        self.warn_default_policy(peer_type);
        let mut map = self.shared.by_addr.lock().expect("not poisoned");
        if let Some(c) = map.get(&addr).filter(|c| !c.is_closed()) {
            return c.clone();
        }
        let conn = Connection::dial(&self.shared, addr, peer_type, false);
        map.insert(addr, conn.clone());
        conn
    }

    /// A new connection to `addr` that shares nothing with existing ones (Ceph's anonymous
    /// connect).
    pub fn connect_anon(&self, addr: EntityAddr, peer_type: EntityType) -> Connection {
        self.warn_default_policy(peer_type);
        Connection::dial(&self.shared, addr, peer_type, true)
    }

    /// A silent fallback hides a missing `policy()` call until the first fault behaves
    /// unexpectedly (lossy instead of lossless): say it, once per peer type.
    fn warn_default_policy(&self, peer_type: EntityType) {
        if peer_type == EntityType::ANY || self.shared.policy_types.contains(&peer_type) {
            return;
        }
        let mut warned = self
            .shared
            .warned_default_policy
            .lock()
            .expect("not poisoned");
        if warned.insert(peer_type) {
            tracing::warn!(
                peer_type = %peer_type,
                "no policy for this peer type: using the default policy \
                 (MessengerBuilder::policy sets one)"
            );
        }
    }

    /// Releases a connection the interceptor paused (`worker` and `conn` as it was told).
    pub fn resume(&self, worker: usize, conn: ConnId) {
        if let Some(w) = self.shared.workers.get(worker) {
            w.push(Command::Resume { conn });
        }
    }

    /// Closes every connection.
    pub fn mark_down_all(&self) {
        for w in &self.shared.workers {
            w.push(Command::MarkDownAll);
        }
    }

    /// Closes everything and stops the workers; [`wait`](Self::wait) joins them.
    pub fn shutdown(&self) {
        for w in &self.shared.workers {
            w.push(Command::Shutdown);
        }
        self.shared.by_addr.lock().expect("not poisoned").clear();
    }

    /// Waits for the workers to stop.
    pub fn wait(&self) {
        let threads = std::mem::take(&mut *self.threads.lock().expect("not poisoned"));
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for Messenger {
    fn drop(&mut self) {
        self.shutdown();
        self.wait();
    }
}
