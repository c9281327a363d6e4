//! The worker's handle table: which application handles ([`Connection`]s) stand for which
//! session of its endpoint, their states as the application sees them, and the per-state
//! session gauges. Several handles may share a session (a `connect` that raced an accepted
//! session); the first one is the one callbacks name and the gauges count.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{ConnShared, Connection, Shared, STATE_CLOSED, STATE_CONNECTING, STATE_READY};
use crate::proto::endpoint::IdMap;
use crate::proto::{EntityAddrVec, EntityName, FaultReason, Security, SessionId};

pub(super) struct HandleTable {
    shared: Arc<Shared>,
    worker: usize,
    by_session: IdMap<SessionId, Vec<Arc<ConnShared>>>,
    /// Handle id → its session, for commands that name a handle.
    session_of: IdMap<u64, SessionId>,
}

impl HandleTable {
    pub fn new(shared: Arc<Shared>, worker: usize) -> Self {
        HandleTable {
            shared,
            worker,
            by_session: IdMap::default(),
            session_of: IdMap::default(),
        }
    }

    pub fn session_of(&self, handle: u64) -> Option<SessionId> {
        self.session_of.get(&handle).copied()
    }

    pub fn sessions(&self) -> Vec<SessionId> {
        self.by_session.keys().copied().collect()
    }

    /// A handle from `connect` joins `sid`, whose state the endpoint gives as `state`.
    pub fn attach(&mut self, handle: Arc<ConnShared>, sid: SessionId, state: u8) {
        handle.set_state(state);
        match self.by_session.get(&sid).and_then(|h| h.first()) {
            Some(first) => {
                let peer = first.peer.lock().expect("not poisoned").clone();
                *handle.peer.lock().expect("not poisoned") = peer;
            }
            None => self.count_as(&handle, state),
        }
        self.session_of.insert(handle.id, sid);
        self.by_session.entry(sid).or_default().push(handle);
    }

    /// The handle callbacks name for `sid`.
    pub fn connection(&self, sid: SessionId) -> Option<Connection> {
        self.by_session
            .get(&sid)
            .and_then(|h| h.first())
            .map(|inner| Connection {
                inner: inner.clone(),
            })
    }

    /// The handle of a session a peer opened; made on first use, and registered for
    /// `Messenger::connect` to reuse when the peer's address is known.
    pub fn accepted(&mut self, sid: SessionId, addrs: &EntityAddrVec) -> Connection {
        if let Some(c) = self.connection(sid) {
            return c;
        }
        let inner = ConnShared::new(self.shared.clone(), self.worker);
        self.session_of.insert(inner.id, sid);
        self.by_session.insert(sid, vec![inner.clone()]);
        self.count_as(&inner, STATE_CONNECTING);
        let conn = Connection { inner };
        if let Some(key) = addrs.primary() {
            let mut by_addr = self.shared.by_addr.lock().expect("not poisoned");
            let stale = by_addr.get(key).is_none_or(|c| c.is_closed());
            if stale {
                by_addr.insert(*key, conn.clone());
            }
        }
        conn
    }

    /// Moves a session (its first handle) to `state` in the per-state gauges.
    fn count_as(&self, first: &ConnShared, state: u8) {
        let sessions = &self.shared.counters.sessions;
        let old = first.counted.swap(state, Ordering::Relaxed);
        if old == state {
            return;
        }
        if let Some(g) = sessions.get(old as usize) {
            g.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(g) = sessions.get(state as usize) {
            g.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn set_state(&self, sid: SessionId, state: u8) {
        let Some(hs) = self.by_session.get(&sid) else {
            return;
        };
        if let Some(first) = hs.first() {
            let old = first.counted.load(Ordering::Relaxed);
            self.count_as(first, state);
            let ready_again = old != state
                && state == STATE_READY
                && first.was_ready.swap(true, Ordering::Relaxed);
            if ready_again {
                self.shared
                    .counters
                    .reconnects
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        for h in hs {
            h.set_state(state);
        }
    }

    /// The session is gone: its handles say closed and leave the table.
    pub fn close(&mut self, sid: SessionId) {
        if let Some(first) = self.by_session.get(&sid).and_then(|h| h.first()) {
            self.count_as(first, STATE_CLOSED);
        }
        if let Some(hs) = self.by_session.remove(&sid) {
            let mut by_addr = self.shared.by_addr.lock().expect("not poisoned");
            for h in hs {
                h.set_state(STATE_CLOSED);
                self.session_of.remove(&h.id);
                by_addr.retain(|_, c| !Arc::ptr_eq(&c.inner, &h));
            }
        }
    }

    /// The session let go of messages handle `id` sent: room in its send window again.
    pub fn release(&self, sid: SessionId, id: u64, messages: u64, bytes: u64) {
        let hs = self.by_session.get(&sid).into_iter().flatten();
        if let Some(h) = hs.into_iter().find(|h| h.id == id) {
            h.window.release(messages, bytes);
        }
    }

    pub fn record_fault(&self, sid: SessionId, reason: &FaultReason) {
        for h in self.by_session.get(&sid).into_iter().flatten() {
            h.record_fault(reason);
        }
    }

    pub fn set_peer(
        &self,
        sid: SessionId,
        peer: EntityName,
        addrs: EntityAddrVec,
        security: Security,
    ) {
        for h in self.by_session.get(&sid).into_iter().flatten() {
            *h.peer.lock().expect("not poisoned") = Some((peer.clone(), addrs.clone(), security));
        }
    }
}
