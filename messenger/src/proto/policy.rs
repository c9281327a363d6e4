//! Ceph's connection policies (`src/msg/Policy.h`, msgr2.md §1.10).

/// `CEPH_FEATURE_MSG_ADDR2`: the one feature msgr2 itself requires of a peer.
pub const FEATURE_MSG_ADDR2: u64 = 1 << 59;
/// The feature mask Ceph 16.2 (Pacific) daemons and clients advertise. Ringwire advertises
/// the same so real daemons accept it; it implements only what msgr2 framing needs of them.
pub const FEATURES_PACIFIC: u64 = 0x3f01_cfbd_fffd_ffff;

/// How a connection behaves on faults and who reconnects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Faults end the session; messages in flight may be lost (never duplicated or reordered).
    pub lossy: bool,
    /// This side never reconnects: on a fault it waits for the peer.
    pub server: bool,
    /// With nothing queued, a faulted session idles until there is something to send.
    pub standby: bool,
    /// Detect a peer that lost its session state (and report it as a remote reset).
    pub resetcheck: bool,
    /// Lossy peers are registered (looked up on reconnect) rather than anonymous.
    pub register_lossy_clients: bool,
    pub features_supported: u64,
    pub features_required: u64,
}

impl Policy {
    const fn with(
        lossy: bool,
        server: bool,
        standby: bool,
        resetcheck: bool,
        register_lossy_clients: bool,
    ) -> Self {
        Policy {
            lossy,
            server,
            standby,
            resetcheck,
            register_lossy_clients,
            features_supported: FEATURES_PACIFIC,
            features_required: 0,
        }
    }

    pub const fn stateful_server() -> Self {
        Self::with(false, true, true, true, true)
    }
    pub const fn stateless_registered_server() -> Self {
        Self::with(true, true, false, false, true)
    }
    pub const fn stateless_server() -> Self {
        Self::with(true, true, false, false, false)
    }
    pub const fn lossless_peer() -> Self {
        Self::with(false, false, true, false, true)
    }
    pub const fn lossless_peer_reuse() -> Self {
        Self::with(false, false, true, true, true)
    }
    pub const fn lossy_client() -> Self {
        Self::with(true, false, false, false, true)
    }
    pub const fn lossless_client() -> Self {
        Self::with(false, false, false, true, true)
    }

    pub const fn requiring(mut self, features: u64) -> Self {
        self.features_required = features;
        self
    }

    pub const fn supporting(mut self, features: u64) -> Self {
        self.features_supported = features;
        self
    }

    /// What the IDENT frames announce as required: the policy's plus msgr2's own.
    pub fn required_on_wire(&self) -> u64 {
        self.features_required | FEATURE_MSG_ADDR2
    }

    /// The policy as the `ringwire_session_state` probe reports it (the bits of
    /// `ringwire_trace_common::policy`).
    pub fn probe_bits(&self) -> u32 {
        use ringwire_trace_common::policy::{LOSSY, RESETCHECK, SERVER, STANDBY};
        let bit = |on: bool, bit: u32| if on { bit } else { 0 };
        bit(self.lossy, LOSSY)
            | bit(self.server, SERVER)
            | bit(self.standby, STANDBY)
            | bit(self.resetcheck, RESETCHECK)
    }

    /// Whether connections under this policy enter the session table.
    pub fn registers(&self) -> bool {
        !self.lossy || self.register_lossy_clients
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringwire_trace_common::policy;

    #[test]
    fn every_factory_reports_the_bits_the_tracer_names_it_by() {
        let factories = [
            ("lossy_client", Policy::lossy_client()),
            ("stateless_server", Policy::stateless_server()),
            ("stateless_server", Policy::stateless_registered_server()),
            ("lossless_client", Policy::lossless_client()),
            ("stateful_server", Policy::stateful_server()),
            ("lossless_peer", Policy::lossless_peer()),
            ("lossless_peer_reuse", Policy::lossless_peer_reuse()),
        ];
        for (name, p) in factories {
            assert_eq!(policy::name(p.probe_bits().into()), name, "{p:?}");
        }
        let unnamed = Policy {
            lossy: false,
            ..Policy::stateless_server()
        };
        assert_eq!(policy::name(unnamed.probe_bits().into()), "?");
    }
}
