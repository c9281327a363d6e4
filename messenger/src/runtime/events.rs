//! What the endpoint's events become: counters, handle states, and the application's
//! callbacks, on the worker that owns the session (Ceph's fast dispatch).

use std::sync::atomic::{AtomicU64, Ordering};

use super::handles::HandleTable;
use super::{Incoming, Shared, STATE_CONNECTING, STATE_READY};
use crate::proto::{Endpoint, EntityAddrVec, Event, FaultReason, Time};
use crate::stats::Counters;

fn count(counters: &Counters, ev: &Event) {
    let bump = |a: &AtomicU64, n: u64| {
        a.fetch_add(n, Ordering::Relaxed);
    };
    match ev {
        Event::Connected { .. } | Event::Accepted { .. } => bump(&counters.handshakes, 1),
        Event::Message { msg, .. } => {
            bump(&counters.messages_in, 1);
            bump(&counters.bytes_in, msg.payload_len() as u64);
        }
        Event::Reset { .. } => bump(&counters.resets, 1),
        Event::RemoteReset { .. } => bump(&counters.remote_resets, 1),
        Event::Fault { reason, .. } => {
            bump(&counters.faults, 1);
            if *reason == FaultReason::Injected {
                bump(&counters.injected_faults, 1);
            }
        }
        _ => {}
    }
}

/// Delivers one endpoint event. `ep` answers whether a faulted session lives on.
pub(super) fn deliver(
    ev: Event,
    handles: &mut HandleTable,
    ep: &Endpoint,
    shared: &Shared,
    worker: usize,
    now: Time,
) {
    count(&shared.counters, &ev);
    let d = &shared.dispatcher;
    match ev {
        Event::Connected {
            session,
            peer,
            addrs,
            security,
        } => {
            tracing::debug!(worker, ?session, %peer, %addrs, %security, "connected");
            handles.set_peer(session, peer, addrs, security);
            handles.set_state(session, STATE_READY);
            if let Some(c) = handles.connection(session) {
                d.on_connect(&c);
            }
        }
        Event::Accepted {
            session,
            peer,
            addrs,
            security,
        } => {
            tracing::debug!(worker, ?session, %peer, %addrs, %security, "accepted");
            let c = handles.accepted(session, &addrs);
            handles.set_peer(session, peer, addrs, security);
            handles.set_state(session, STATE_READY);
            d.on_accept(&c);
        }
        Event::Message { session, msg } => {
            let permit = shared
                .throttle
                .as_ref()
                .map(|t| t.acquire(msg.payload_len() as u64));
            let msg = Incoming::new(msg, permit);
            let c = match handles.connection(session) {
                Some(c) => c,
                None => handles.accepted(session, &EntityAddrVec::default()),
            };
            d.dispatch(&c, msg);
        }
        Event::Reset { session, reason } => {
            tracing::debug!(worker, ?session, %reason, "reset");
            handles.record_fault(session, &reason);
            let c = handles.connection(session);
            handles.close(session);
            if let Some(c) = c {
                d.on_reset(&c, &reason);
            }
        }
        Event::RemoteReset { session } => {
            if let Some(c) = handles.connection(session) {
                d.on_remote_reset(&c);
            }
        }
        Event::Refused { session, reason } => {
            tracing::info!(worker, ?session, %reason, "refused");
            handles.record_fault(session, &reason);
            if let Some(c) = handles.connection(session) {
                d.on_refused(&c, &reason);
            }
        }
        Event::Released {
            session,
            tag,
            messages,
            bytes,
        } => handles.release(session, tag, messages, bytes),
        Event::KeepaliveAck { session, stamp } => {
            let rtt = now.since(Time(stamp.as_nanos()));
            if let Some(c) = handles.connection(session) {
                d.on_keepalive_ack(&c, rtt);
            }
        }
        // Logged by the endpoint, in the connection's span. A session the fault closes is
        // reported by the Reset event that follows.
        Event::Fault {
            session: Some(sid),
            reason,
            ..
        } if !ep.is_closed(sid) => {
            if !ep.is_connected(sid) {
                handles.set_state(sid, STATE_CONNECTING);
            }
            // A connection race (the peer's WAIT) is the protocol at work, not a failure.
            if reason != FaultReason::Wait {
                handles.record_fault(sid, &reason);
                if let Some(c) = handles.connection(sid) {
                    d.on_fault(&c, &reason);
                }
            }
        }
        Event::Fault { .. } => {}
    }
}
