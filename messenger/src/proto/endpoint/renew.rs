//! cephx ticket renewal on a monitor session (the step; the codecs are in
//! `cephx::renewal`): a client's session to a monitor, authenticated with cephx, asks for new
//! service tickets once three quarters of their validity has passed, as Ceph's MonClient
//! does, and takes the MAuthReply itself; a monitor with a keyring answers MAuth renewals.
//! Neither message reaches the dispatcher.

use std::time::Duration;

use crate::proto::cephx::renewal::{MSG_AUTH, MSG_AUTH_REPLY};
use crate::proto::message::Message;
use crate::proto::wire::EntityType;

use super::config::AuthMethod;
use super::conn::Role;
use super::ids::{ConnId, SessionId};
use super::timer::Timer;
use super::Endpoint;

/// How long a renewal waits for its reply before it is asked again.
const RENEWAL_RETRY: Duration = Duration::from_secs(3);

impl Endpoint {
    /// Whether `cid` is our cephx-authenticated connection to a monitor.
    fn is_cephx_monitor_session(&self, cid: ConnId) -> bool {
        self.conns.get(&cid).is_some_and(|c| {
            c.role == Role::Client
                && c.peer_type == EntityType::MON
                && c.auth
                    .security
                    .is_some_and(|s| s.method == AuthMethod::Cephx)
        })
    }

    /// A session to a monitor became ready on `cid`: renewals ride on it from now on.
    pub(super) fn arm_ticket_renewal(&mut self, cid: ConnId, sid: SessionId) {
        if !self.is_cephx_monitor_session(cid) {
            return;
        }
        if let Some(at) = self.auth.next_renewal() {
            self.timers.arm(at, Timer::RenewTickets(sid));
        }
    }

    /// The renewal timer of `sid`: asks for the tickets due, and looks again later (after
    /// the retry interval while a request is out, else when the next ticket is due). A
    /// session not ready now is armed again when it is.
    pub(super) fn renew_tickets(&mut self, sid: SessionId) {
        let Some(cid) = self.ready_conn(sid) else {
            return;
        };
        if !self.is_cephx_monitor_session(cid) {
            return;
        }
        let s = &self.sessions[&sid];
        let retry_at = s.renewal_sent.after(RENEWAL_RETRY);
        if s.renewals_out > 0 && self.now < retry_at {
            // Its retry timer is armed.
            return;
        }
        if let Some(request) = self.auth.renewal_request(self.now) {
            tracing::debug!(session = sid.0, "cephx: renewing tickets");
            let s = self.sessions.get_mut(&sid).expect("ready");
            s.renewals_out = s.renewals_out.saturating_add(1);
            s.renewal_sent = self.now;
            s.queue(sid, request, self.now, 0, self.config.tuning.probe_sample);
            self.flush_session(sid);
            self.timers
                .arm(self.now.after(RENEWAL_RETRY), Timer::RenewTickets(sid));
        } else if let Some(at) = self.auth.next_renewal().filter(|at| *at > self.now) {
            self.timers.arm(at, Timer::RenewTickets(sid));
        }
    }

    /// An incoming message that belongs to cephx rather than the application: our renewal's
    /// reply, or (as a monitor) a client's renewal. Returns the message back when it is the
    /// application's.
    pub(super) fn take_auth_message(
        &mut self,
        cid: ConnId,
        sid: SessionId,
        msg: Message,
    ) -> Option<Message> {
        let renewing = self.sessions.get(&sid).is_some_and(|s| s.renewals_out > 0);
        if msg.ty == MSG_AUTH_REPLY && renewing && self.is_cephx_monitor_session(cid) {
            self.sessions.get_mut(&sid).expect("checked").renewals_out -= 1;
            match self.auth.take_renewal(&msg.front, self.now) {
                Ok(n) => tracing::info!(tickets = n, "cephx: tickets renewed"),
                // The old tickets serve until they expire; the retry timer asks again.
                Err(e) => tracing::warn!(reason = %e, "cephx: ticket renewal failed"),
            }
            if let Some(at) = self.auth.next_renewal().filter(|at| *at > self.now) {
                self.timers.arm(at, Timer::RenewTickets(sid));
            }
            return None;
        }
        let is_server = self.conns.get(&cid).is_some_and(|c| c.role == Role::Server);
        if msg.ty == MSG_AUTH && is_server && self.auth.issues_tickets() {
            let reply = self.auth.answer_renewal(&msg.front);
            let s = self.sessions.get_mut(&sid).expect("receiving");
            s.queue(sid, reply, self.now, 0, self.config.tuning.probe_sample);
            self.flush_session(sid);
            return None;
        }
        Some(msg)
    }
}
