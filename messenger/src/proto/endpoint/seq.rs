//! Arithmetic on the sequence numbers a peer sends: connect_seq, global_seq and message seqs.
//!
//! Ceph keeps them in unsigned C++ integers and lets them wrap: `ProtocolV2::
//! handle_session_retry` sets `connect_seq = retry.connect_seq() + 1`, `AsyncMessenger::
//! get_global_seq(old)` keeps global_seq in a `uint32_t` (the peer's le64 is truncated into
//! it) and returns `++global_seq`, and `handle_message` tests a gap with `cur_seq + 1`. A
//! wrapped counter breaks every comparison the session rules make (msgr2.md §1.9), so
//! Ringwire keeps full u64 counters and refuses, as a fault of the connection
//! ([`FaultReason::SeqOverflow`]), any value at or past [`SEQ_LIMIT`]: no counter that starts
//! at 0 and counts connections or messages gets there. Checking each value as it arrives
//! also keeps our own counters, which a peer can raise (RETRY_GLOBAL raises the endpoint's
//! global_seq, SESSION_RECONNECT sets a session's connect_seq), far from overflow: from
//! below the limit, the 2^63 increments left would take centuries.

use super::fault::FaultReason;

/// Every sequence number a peer sends must be below this.
pub(super) const SEQ_LIMIT: u64 = 1 << 63;

/// A peer's `what` (a connect_seq, global_seq or message seq), checked against [`SEQ_LIMIT`].
pub(super) fn peer_seq(what: &'static str, value: u64) -> Result<u64, FaultReason> {
    if value < SEQ_LIMIT {
        Ok(value)
    } else {
        Err(FaultReason::SeqOverflow { what })
    }
}

/// The client's connect_seq after SESSION_RETRY(`cs`): `cs + 1`, as Ceph's
/// `handle_session_retry` (which wraps where this faults).
pub(super) fn after_retry(cs: u64) -> Result<u64, FaultReason> {
    let cs = peer_seq("connect_seq", cs)?;
    cs.checked_add(1).ok_or(FaultReason::SeqOverflow {
        what: "connect_seq",
    })
}

/// The endpoint's global_seq after SESSION_RETRY_GLOBAL(`gs`): `max(ours, gs) + 1`, as Ceph's
/// `get_global_seq(gs)` (which truncates to 32 bits and wraps where this faults).
pub(super) fn after_retry_global(ours: u64, gs: u64) -> Result<u64, FaultReason> {
    let gs = peer_seq("global_seq", gs)?;
    ours.max(gs)
        .checked_add(1)
        .ok_or(FaultReason::SeqOverflow { what: "global_seq" })
}

/// One more of our own counters (global_seq per connection, connect_seq per reconnect).
/// Peers move them only below [`SEQ_LIMIT`], so this cannot reach u64::MAX in practice;
/// saturating rather than wrapping keeps them monotonic even so.
pub(super) fn bump(value: u64) -> u64 {
    value.saturating_add(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overflow(what: &'static str) -> Result<u64, FaultReason> {
        Err(FaultReason::SeqOverflow { what })
    }

    #[test]
    fn peer_values_at_or_past_the_limit_are_faults() {
        type Row = (
            &'static str,
            Result<u64, FaultReason>,
            Result<u64, FaultReason>,
        );
        #[rustfmt::skip]
        let rows: [Row; 10] = [
            ("seq 0", peer_seq("message seq", 0), Ok(0)),
            ("seq below", peer_seq("message seq", SEQ_LIMIT - 1), Ok(SEQ_LIMIT - 1)),
            ("seq at", peer_seq("message seq", SEQ_LIMIT), overflow("message seq")),
            ("seq max", peer_seq("message seq", u64::MAX), overflow("message seq")),
            // SESSION_RETRY(cs) → cs + 1.
            ("retry", after_retry(3), Ok(4)),
            ("retry below", after_retry(SEQ_LIMIT - 1), Ok(SEQ_LIMIT)),
            ("retry max", after_retry(u64::MAX), overflow("connect_seq")),
            // SESSION_RETRY_GLOBAL(gs) → max(ours, gs) + 1.
            ("retry global, ours higher", after_retry_global(9, 3), Ok(10)),
            ("retry global, theirs higher", after_retry_global(3, 9), Ok(10)),
            ("retry global max", after_retry_global(3, u64::MAX - 1), overflow("global_seq")),
        ];
        for (row, got, expected) in rows {
            assert_eq!(got, expected, "row {row:?}");
        }
        assert_eq!(bump(u64::MAX), u64::MAX);
    }
}
