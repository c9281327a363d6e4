//! Time and timers. The core reads no clock: every entry point takes `now`, and the runtime
//! calls [`Endpoint::handle_timeout`](super::Endpoint::handle_timeout) at the deadline
//! [`Endpoint::poll_timeout`](super::Endpoint::poll_timeout) names. What a connection's timer
//! does when it fires is decided here ([`conn_timer`]), from its state alone.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use super::config::Tuning;
use super::fault::FaultReason;
use super::ids::{ConnId, SessionId};

/// A point on the runtime's monotonic clock, in nanoseconds from an arbitrary origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Time(pub u64);

impl Time {
    pub fn after(self, d: Duration) -> Time {
        // A duration past u64 nanoseconds (584 years) is "never": saturate, don't truncate.
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Time(self.0.saturating_add(ns))
    }
    pub fn since(self, earlier: Time) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Timer {
    /// A connection's handshake deadline, idle timeout or keepalive.
    Conn(ConnId),
    /// A session's reconnect after backoff.
    Reconnect(SessionId),
    /// The end of a session waiting for its peer (`standby_timeout`).
    Expire(SessionId),
    /// Renewing our cephx tickets on this monitor session.
    RenewTickets(SessionId),
}

/// Pending timers, earliest first. A timer may be armed more than once; each firing checks
/// whether it is still due (the owner keeps the real deadline), so stale entries are harmless
/// to correctness. To memory they are not: a connection that closes leaves its entries until
/// they fire (up to `idle_timeout` later), so the owner calls [`TimerTable::compact`] as
/// things go away, and the table keeps no more than twice what it held after the last sweep.
#[derive(Default)]
pub(super) struct TimerTable {
    heap: BinaryHeap<Reverse<(Time, Timer)>>,
    /// The size past which `compact` sweeps.
    sweep_at: usize,
}

/// Entries the table holds before its first sweep.
const SWEEP_MIN: usize = 64;

impl TimerTable {
    pub(super) fn arm(&mut self, at: Time, timer: Timer) {
        self.heap.push(Reverse((at, timer)));
    }

    pub(super) fn next(&self) -> Option<Time> {
        self.heap.peek().map(|Reverse((t, _))| *t)
    }

    /// The next timer due at `now`, removed from the table.
    pub(super) fn pop_due(&mut self, now: Time) -> Option<Timer> {
        match self.heap.peek() {
            Some(Reverse((t, _))) if *t <= now => self.heap.pop().map(|Reverse((_, timer))| timer),
            _ => None,
        }
    }

    /// Drops the entries whose owner is gone (`live` says which remain), once the table has
    /// doubled since the last sweep: linear work, amortised over the arms that grew it.
    pub(super) fn compact(&mut self, live: impl Fn(&Timer) -> bool) {
        if self.heap.len() <= self.sweep_at.max(SWEEP_MIN) {
            return;
        }
        self.heap.retain(|Reverse((_, timer))| live(timer));
        self.sweep_at = self.heap.len().saturating_mul(2);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.heap.len()
    }
}

/// What a connection's timer finds when it fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ConnTimer {
    /// The connection failed: the handshake or the idle timeout ran out.
    Fault(FaultReason),
    /// Nothing is due yet: fire again at `rearm` (if anything is left to wait for). With
    /// `keepalive`, a KEEPALIVE2 goes out now and the next one is due then.
    Wait {
        rearm: Option<Time>,
        keepalive: Option<Time>,
    },
}

/// What a connection's timer finds at `now`: a handshake past its `deadline`, a ready
/// connection idle since `last_input`, or a keepalive due at `next_keepalive`.
pub(super) fn conn_timer(
    ready: bool,
    deadline: Option<Time>,
    last_input: Time,
    next_keepalive: Option<Time>,
    tuning: &Tuning,
    now: Time,
) -> ConnTimer {
    if !ready {
        return match deadline {
            Some(d) if d <= now => ConnTimer::Fault(FaultReason::HandshakeTimeout),
            d => ConnTimer::Wait {
                rearm: d,
                keepalive: None,
            },
        };
    }
    let idle_at = last_input.after(tuning.idle_timeout);
    if idle_at <= now {
        return ConnTimer::Fault(FaultReason::IdleTimeout);
    }
    let (keepalive, next) = match (next_keepalive, tuning.keepalive_interval) {
        (Some(due), Some(every)) if due <= now => {
            let due = now.after(every);
            (Some(due), idle_at.min(due))
        }
        (Some(due), Some(_)) => (None, idle_at.min(due)),
        _ => (None, idle_at),
    };
    ConnTimer::Wait {
        rearm: Some(next),
        keepalive,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn tuning(keepalive: Option<u64>) -> Tuning {
        Tuning {
            idle_timeout: Duration::from_secs(60),
            keepalive_interval: keepalive.map(Duration::from_secs),
            ..Tuning::default()
        }
    }

    #[test]
    fn conn_timer_table() {
        let wait = |rearm: Option<u64>, keepalive: Option<u64>| ConnTimer::Wait {
            rearm: rearm.map(|s| Time(s * S)),
            keepalive: keepalive.map(|s| Time(s * S)),
        };
        let handshake_timeout = ConnTimer::Fault(FaultReason::HandshakeTimeout);
        let idle_timeout = ConnTimer::Fault(FaultReason::IdleTimeout);
        // Seconds. Idle timeout 60 s; (row, ready, deadline, last input, next keepalive,
        // keepalive interval, now, expected).
        type Row<'a> = (
            &'a str,
            bool,
            Option<u64>,
            u64,
            Option<u64>,
            Option<u64>,
            u64,
            ConnTimer,
        );
        #[rustfmt::skip]
        let rows: Vec<Row> = vec![
            // `ms_connection_ready_timeout`: the handshake must finish by its deadline.
            ("handshake not due", false, Some(10), 0, None, None, 5, wait(Some(10), None)),
            ("handshake due", false, Some(10), 0, None, None, 10, handshake_timeout),
            ("handshake, no deadline", false, None, 0, None, None, 5, wait(None, None)),
            // `ms_connection_idle_timeout`: a ready connection with no input for this long.
            ("idle not due", true, None, 0, None, None, 30, wait(Some(60), None)),
            ("idle due", true, None, 0, None, None, 60, idle_timeout),
            ("input since", true, None, 30, None, None, 60, wait(Some(90), None)),
            // Keepalives every interval; the timer fires for whichever is first.
            ("keepalive not due", true, None, 0, Some(20), Some(10), 15, wait(Some(20), None)),
            ("keepalive due", true, None, 0, Some(20), Some(10), 20, wait(Some(30), Some(30))),
            ("idle first", true, None, 0, Some(70), Some(10), 50, wait(Some(60), None)),
        ];
        for (row, ready, deadline, last, keepalive, every, now, expected) in rows {
            let got = conn_timer(
                ready,
                deadline.map(|s| Time(s * S)),
                Time(last * S),
                keepalive.map(|s| Time(s * S)),
                &tuning(every),
                Time(now * S),
            );
            assert_eq!(got, expected, "row {row:?}");
        }
    }

    #[test]
    fn time_saturates() {
        assert_eq!(Time(5).after(Duration::MAX), Time(u64::MAX));
        assert_eq!(Time(5).since(Time(9)), Duration::ZERO);
    }

    #[test]
    fn compaction_drops_the_dead_once_the_table_has_doubled() {
        let mut t = TimerTable::default();
        let live = |timer: &Timer| matches!(timer, Timer::Conn(ConnId(c)) if c % 10 == 0);
        for c in 0..SWEEP_MIN as u64 {
            t.arm(Time(c), Timer::Conn(ConnId(c)));
        }
        t.compact(live);
        assert_eq!(t.len(), SWEEP_MIN, "not past the first threshold yet");
        for c in SWEEP_MIN as u64..1000 {
            t.arm(Time(c), Timer::Conn(ConnId(c)));
            t.compact(live);
            assert!(
                t.len() <= 2 * 100 + SWEEP_MIN,
                "{} entries for 100 live",
                t.len()
            );
        }
        // What survives still pops in order.
        let mut popped = Vec::new();
        while let Some(Timer::Conn(ConnId(c))) = t.pop_due(Time(u64::MAX)) {
            popped.push(c);
        }
        assert!(popped.windows(2).all(|w| w[0] < w[1]), "{popped:?}");
        assert!(popped.iter().filter(|c| *c % 10 != 0).count() < SWEEP_MIN * 2);
        assert_eq!(
            popped.iter().filter(|c| *c % 10 == 0).count(),
            100,
            "no live one lost"
        );
    }

    #[test]
    fn table_pops_in_order_and_only_when_due() {
        let mut t = TimerTable::default();
        t.arm(Time(30), Timer::Conn(ConnId(1)));
        t.arm(Time(10), Timer::Reconnect(SessionId(2)));
        assert_eq!(t.next(), Some(Time(10)));
        assert_eq!(t.pop_due(Time(9)), None);
        assert_eq!(t.pop_due(Time(30)), Some(Timer::Reconnect(SessionId(2))));
        assert_eq!(t.pop_due(Time(30)), Some(Timer::Conn(ConnId(1))));
        assert_eq!(t.pop_due(Time(30)), None);
    }
}
