//! An endpoint's configuration: who it is, its policies, its limits and timers, and where it
//! sits among the endpoints (one per worker) that share the session space.

use std::net::SocketAddr;
use std::time::Duration;

use std::fmt;
use std::sync::{Arc, Mutex};

use crate::proto::cephx::msgs::Ticket;
use crate::proto::cephx::renewal::renew_after;
use crate::proto::cephx::server::SERVICE_TICKET_TTL;
use crate::proto::cephx::{CryptoKey, Keyring};
use crate::proto::control::{AUTH_METHOD_CEPHX, AUTH_METHOD_NONE, CON_MODE_CRC, CON_MODE_SECURE};
use crate::proto::frame::FrameLimits;
use crate::proto::policy::Policy;
use crate::proto::wire::{EntityAddr, EntityAddrVec, EntityName, EntityType};

use super::timer::Time;

/// Configuration of one endpoint; Ceph's option names in brackets.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// Who we are, e.g. `osd.0` or `client.admin`.
    pub name: EntityName,
    /// Addresses we are bound to; empty for a client that only connects.
    pub addrs: EntityAddrVec,
    /// Our nonce, when we have no bound address (it goes into the `any:` address we send).
    pub nonce: u32,
    /// Policy per peer type; `default_policy` for the rest.
    pub policies: Vec<(EntityType, Policy)>,
    pub default_policy: Policy,
    pub tuning: Tuning,
    /// Seeds the cookies and the failure injector (the runtime passes real randomness).
    pub seed: u64,
    /// Authentication methods, connection modes and our key.
    pub auth: AuthConfig,
    /// Which of several endpoints (one per worker) this is. Sessions are owned by the endpoint
    /// [`owner_of`] their peer's address names; an incoming connection whose peer belongs to
    /// another endpoint is handed over ([`Io::Migrate`](super::Io::Migrate)) when its ident
    /// arrives.
    pub placement: Placement,
}

/// The protocol's limits, timers and fault injection (Ceph's option names in brackets): the
/// same for the bare core ([`EndpointConfig`]) and the messenger (`ringwire::Options`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    /// Largest segment, frame and control payload accepted.
    pub limits: FrameLimits,
    /// `ms_initial_backoff`: the first reconnect delay.
    pub initial_backoff: Duration,
    /// `ms_max_backoff`: the reconnect delay cap (used at once after WAIT).
    pub max_backoff: Duration,
    /// `ms_connection_ready_timeout`: the whole handshake must finish within this.
    pub handshake_timeout: Duration,
    /// `ms_connection_idle_timeout`: a connection with no input for this long is faulted.
    pub idle_timeout: Duration,
    /// Send a KEEPALIVE2 on every ready connection this often (`None`: only on request).
    pub keepalive_interval: Option<Duration>,
    /// A session that only its peer can bring back (server policy, or no address to dial)
    /// ends when the peer has not reconnected for this long since its connection failed:
    /// the application hears a reset ([`FaultReason::StandbyTimeout`]), and a peer that
    /// comes back later is told to start over (SESSION_RESET). `None`: kept until marked down,
    /// as Ceph's AsyncMessenger does (it has no such option; its daemons mark down the peers
    /// their maps say are gone). Ringwire's own option.
    ///
    /// [`FaultReason::StandbyTimeout`]: super::FaultReason::StandbyTimeout
    pub standby_timeout: Option<Duration>,
    /// `ms_inject_socket_failures`: fault one received batch in N (0 = never; testing).
    pub inject_socket_failures: u32,
    /// The per-message probes (`ringwire_msg_*`) fire for one message in this many (by
    /// sequence number; 1: every message, 0: none). A traced probe costs a few hundred
    /// nanoseconds, so sampling keeps a busy messenger's tracing cheap; the counters the
    /// other probes report cover every message either way.
    pub probe_sample: u32,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            limits: FrameLimits::default(),
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(15),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(900),
            keepalive_interval: None,
            standby_timeout: Some(Duration::from_secs(900)),
            inject_socket_failures: 0,
            probe_sample: 64,
        }
    }
}

/// This endpoint's index among `count` endpoints sharing the session space, and the
/// messenger it belongs to (its number in the process, for process-unique ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub index: usize,
    pub count: usize,
    pub messenger: u8,
}

/// The endpoint (of `count`) that owns sessions with the peer at `addr`.
pub fn owner_of(addr: &EntityAddr, count: usize) -> usize {
    (placement_hash(addr) % count.max(1) as u64) as usize
}

/// FNV-1a over the address, so every worker and every process computes the same answer.
pub fn placement_hash(addr: &EntityAddr) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(&addr.ty.to_wire().to_le_bytes());
    eat(&addr.nonce.to_le_bytes());
    match addr.addr {
        Some(SocketAddr::V4(a)) => {
            eat(&a.ip().octets());
            eat(&a.port().to_le_bytes());
        }
        Some(SocketAddr::V6(a)) => {
            eat(&a.ip().octets());
            eat(&a.port().to_le_bytes());
        }
        None => {}
    }
    h
}

impl EndpointConfig {
    pub fn new(name: EntityName, addrs: EntityAddrVec) -> Self {
        EndpointConfig {
            name,
            addrs,
            nonce: 0,
            policies: Vec::new(),
            default_policy: Policy::lossy_client(),
            tuning: Tuning::default(),
            seed: 0x5eed,
            auth: AuthConfig::default(),
            placement: Placement {
                index: 0,
                count: 1,
                messenger: 0,
            },
        }
    }

    pub fn policy_for(&self, peer: EntityType) -> Policy {
        self.policies
            .iter()
            .find(|(t, _)| *t == peer)
            .map(|(_, p)| *p)
            .unwrap_or(self.default_policy)
    }

    /// Whether a peer dialling `target` meant us. A nonce of 0 names no instance (the peer
    /// knows only IP and port), so it reaches whichever one listens there; Ceph daemons always
    /// name the nonce from their maps, so this changes nothing between them.
    pub(super) fn is_my_addr(&self, target: &EntityAddr) -> bool {
        self.addrs.0.iter().any(|mine| {
            mine.ty == target.ty
                && (mine.nonce == target.nonce || target.nonce == 0)
                && match (mine.addr, target.addr) {
                    (Some(m), Some(t)) => {
                        m.port() == t.port() && (m.ip() == t.ip() || m.ip().is_unspecified())
                    }
                    _ => false,
                }
        })
    }

    /// The address races are decided by (the lower one wins).
    pub(super) fn race_addr(&self) -> Option<&EntityAddr> {
        self.addrs.primary()
    }
}

/// An auth method (`auth_*_required` lists them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthMethod {
    None,
    Cephx,
}

impl AuthMethod {
    pub fn to_wire(self) -> u32 {
        match self {
            AuthMethod::None => AUTH_METHOD_NONE,
            AuthMethod::Cephx => AUTH_METHOD_CEPHX,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            AuthMethod::None => "none",
            AuthMethod::Cephx => "cephx",
        }
    }
}

/// A connection mode (`ms_*_mode` lists them, preferred first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModeName {
    /// CRC-32C only: integrity against accidents, not against an attacker.
    Crc,
    /// AES-128-GCM on every frame after auth.
    Secure,
}

impl ModeName {
    pub fn to_wire(self) -> u32 {
        match self {
            ModeName::Crc => CON_MODE_CRC,
            ModeName::Secure => CON_MODE_SECURE,
        }
    }
    pub fn from_wire(v: u32) -> Option<ModeName> {
        match v {
            CON_MODE_CRC => Some(ModeName::Crc),
            CON_MODE_SECURE => Some(ModeName::Secure),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            ModeName::Crc => "crc",
            ModeName::Secure => "secure",
        }
    }
}

/// How a connection ended up protected: the auth method and connection mode its handshake
/// settled on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Security {
    pub method: AuthMethod,
    pub mode: ModeName,
}

impl fmt::Display for Security {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.method.name(), self.mode.name())
    }
}

/// Splits a Ceph list option (`"cephx, none"`, `"secure crc"`): commas, semicolons and
/// spaces separate; empty items are skipped.
fn split_list(s: &str) -> impl Iterator<Item = &str> {
    s.split([',', ';', ' ', '\t']).filter(|x| !x.is_empty())
}

/// Parses a list option whose items are the `names` given; `what` names an item.
fn parse_list<T: Copy>(s: &str, what: &str, names: &[(&str, T)]) -> Result<Vec<T>, String> {
    let all = || names.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ");
    let v: Vec<T> = split_list(s)
        .map(|item| {
            names
                .iter()
                .find(|(n, _)| *n == item)
                .map(|(_, v)| *v)
                .ok_or_else(|| format!("unknown {what} {item:?} ({})", all()))
        })
        .collect::<Result<_, _>>()?;
    if v.is_empty() {
        return Err(format!("no {what} given ({})", all()));
    }
    Ok(v)
}

/// Parses `auth_*_required`: `cephx`, `none`, or both in preference order.
pub fn parse_auth_methods(s: &str) -> Result<Vec<AuthMethod>, String> {
    let names = [("cephx", AuthMethod::Cephx), ("none", AuthMethod::None)];
    parse_list(s, "auth method", &names)
}

/// Parses `ms_*_mode`: `crc`, `secure`, or both in preference order.
pub fn parse_modes(s: &str) -> Result<Vec<ModeName>, String> {
    let names = [("crc", ModeName::Crc), ("secure", ModeName::Secure)];
    parse_list(s, "connection mode", &names)
}

/// The wall clock, in seconds since the UNIX epoch, that a monitor stamps its tickets' expiry
/// with and a service checks it against (Ceph's tickets expire on the wall clock; the rest of
/// the core reads no clock). Tests substitute their own.
#[derive(Clone, Copy)]
pub struct UnixClock(pub fn() -> u64);

impl UnixClock {
    pub fn now(&self) -> u64 {
        (self.0)()
    }
}

fn system_unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Default for UnixClock {
    fn default() -> Self {
        UnixClock(system_unix_secs)
    }
}

impl fmt::Debug for UnixClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UnixClock({})", self.now())
    }
}

impl PartialEq for UnixClock {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::fn_addr_eq(self.0, other.0)
    }
}

impl Eq for UnixClock {}

/// 32 bytes seeding the generator of cephx challenges and secrets: the runtime fills them
/// from getrandom, a simulation from its seed. Never printed.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Entropy(pub [u8; 32]);

impl fmt::Debug for Entropy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Entropy(..)")
    }
}

/// What a client offers and a server allows (Ceph's option names in brackets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// `auth_client_required`: methods offered, preferred first. Cephx is offered only with
    /// a `key`.
    pub client_required: Vec<AuthMethod>,
    /// `ms_mon_client_mode`: modes offered to monitors, preferred first.
    pub mon_client_mode: Vec<ModeName>,
    /// `ms_client_mode`: modes offered to other daemons, preferred first.
    pub client_mode: Vec<ModeName>,
    /// Our cephx key (from the `keyring`, for our name).
    pub key: Option<CryptoKey>,
    /// `auth_service_required`: methods a server allows from clients.
    pub service_required: Vec<AuthMethod>,
    /// `auth_cluster_required`: methods a server allows from daemons (mon, osd, mds, mgr).
    pub cluster_required: Vec<AuthMethod>,
    /// Modes a server allows from clients: `ms_mon_service_mode` for a monitor,
    /// `ms_service_mode` otherwise.
    pub service_mode: Vec<ModeName>,
    /// Modes a server allows from daemons: `ms_mon_cluster_mode` for a monitor,
    /// `ms_cluster_mode` otherwise.
    pub cluster_mode: Vec<ModeName>,
    /// The keys of the entities a server authenticates with cephx, as a monitor does, and
    /// the service secrets (`TYPE.` entries) of the services whose tickets it issues or
    /// opens.
    pub keyring: Option<Keyring>,
    /// Tickets a monitor gave us, shared by the endpoints (workers) of one messenger.
    pub tickets: TicketStore,
    /// `auth_service_ticket_ttl`: how long the service tickets a server acting as monitor
    /// issues are valid (clients renew them after three quarters of it).
    pub service_ticket_ttl: Duration,
    /// Seeds the secret that seals the tickets a monitor issues for services without a
    /// secret of their own (and the auth ticket): the same for every endpoint of a messenger,
    /// so that any worker opens what another sealed.
    pub ticket_seed: Entropy,
    /// What tickets' expiry is stamped with and checked against.
    pub clock: UnixClock,
    pub entropy: Entropy,
}

/// The tickets and global_id of the last monitor authentication, renewed on the monitor
/// session before they expire, shared by the endpoints (workers) of one messenger (a ticket
/// obtained on one worker serves connections on all; they share the runtime's clock).
#[derive(Clone, Default)]
pub struct TicketStore(Arc<Mutex<HeldTickets>>);

#[derive(Default)]
struct HeldTickets {
    global_id: u64,
    /// The auth ticket (service AUTH: it asks for the others) and the service tickets, each
    /// with the time it was got.
    tickets: Vec<(Ticket, Time)>,
}

/// What a ticket renewal asks for: our global_id, the auth ticket that proves who we are,
/// and the services (a mask of entity types) whose tickets are due.
pub(super) struct RenewalDue {
    pub(super) global_id: u64,
    pub(super) auth: Ticket,
    pub(super) services: u32,
}

fn expires(t: &Ticket, got: Time) -> Time {
    got.after(t.validity)
}

fn renew_at(t: &Ticket, got: Time) -> Time {
    got.after(renew_after(t.validity))
}

impl TicketStore {
    /// Tickets got at `now` from a monitor authentication: they replace all held.
    pub fn replace(&self, global_id: u64, tickets: Vec<Ticket>, now: Time) {
        let timed = tickets.into_iter().map(|t| (t, now)).collect();
        *self.0.lock().expect("not poisoned") = HeldTickets {
            global_id,
            tickets: timed,
        };
    }

    /// Tickets renewed at `now`: each replaces the one held for its service.
    pub(super) fn renew(&self, tickets: Vec<Ticket>, now: Time) {
        let mut held = self.0.lock().expect("not poisoned");
        for t in tickets {
            held.tickets.retain(|(h, _)| h.service != t.service);
            held.tickets.push((t, now));
        }
    }

    /// Our global_id and the ticket for `service`, if we hold one that has not expired at
    /// `now` (Ceph's services refuse expired tickets).
    pub(super) fn get(&self, service: EntityType, now: Time) -> Option<(u64, Ticket)> {
        let held = self.0.lock().expect("not poisoned");
        let (ticket, _) = held
            .tickets
            .iter()
            .find(|(t, got)| t.service == service && now < expires(t, *got))?;
        Some((held.global_id, ticket.clone()))
    }

    /// When the next service ticket is due for renewal (three quarters of its validity).
    pub(super) fn next_renewal(&self) -> Option<Time> {
        let held = self.0.lock().expect("not poisoned");
        held.tickets
            .iter()
            .filter(|(t, _)| t.service != EntityType::AUTH)
            .map(|(t, got)| renew_at(t, *got))
            .min()
    }

    /// The service tickets due for renewal at `now`, with what asks for them; `None` when
    /// none is due or the auth ticket has expired (then only a new monitor authentication
    /// gets tickets).
    pub(super) fn renewal_due(&self, now: Time) -> Option<RenewalDue> {
        let held = self.0.lock().expect("not poisoned");
        let services = held
            .tickets
            .iter()
            .filter(|(t, got)| t.service != EntityType::AUTH && renew_at(t, *got) <= now)
            .fold(0u32, |mask, (t, _)| mask | u32::from(t.service.0));
        let (auth, _) = held
            .tickets
            .iter()
            .find(|(t, got)| t.service == EntityType::AUTH && now < expires(t, *got))?;
        (services != 0).then(|| RenewalDue {
            global_id: held.global_id,
            auth: auth.clone(),
            services,
        })
    }
}

impl PartialEq for TicketStore {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for TicketStore {}

impl fmt::Debug for TicketStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.lock().map_or(0, |h| h.tickets.len());
        write!(f, "TicketStore({n} tickets)")
    }
}

impl Default for AuthConfig {
    /// Auth none, and Ceph's default mode preferences.
    fn default() -> Self {
        AuthConfig {
            client_required: vec![AuthMethod::None],
            mon_client_mode: vec![ModeName::Secure, ModeName::Crc],
            client_mode: vec![ModeName::Crc, ModeName::Secure],
            key: None,
            service_required: vec![AuthMethod::None],
            cluster_required: vec![AuthMethod::None],
            service_mode: vec![ModeName::Crc, ModeName::Secure],
            cluster_mode: vec![ModeName::Crc, ModeName::Secure],
            keyring: None,
            tickets: TicketStore::default(),
            service_ticket_ttl: SERVICE_TICKET_TTL,
            ticket_seed: Entropy::default(),
            clock: UnixClock::default(),
            entropy: Entropy::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceph_style_lists_parse_in_order_and_nonsense_is_refused() {
        use AuthMethod::*;
        use ModeName::*;
        let methods: [(&str, Result<Vec<AuthMethod>, ()>); 5] = [
            ("cephx", Ok(vec![Cephx])),
            ("cephx, none", Ok(vec![Cephx, None])),
            ("none;cephx", Ok(vec![None, Cephx])),
            ("", Err(())),
            ("kerberos", Err(())),
        ];
        for (s, want) in methods {
            assert_eq!(parse_auth_methods(s).map_err(|_| ()), want, "{s:?}");
        }
        let modes: [(&str, Result<Vec<ModeName>, ()>); 4] = [
            ("secure crc", Ok(vec![Secure, Crc])),
            ("crc", Ok(vec![Crc])),
            (" , ", Err(())),
            ("fast", Err(())),
        ];
        for (s, want) in modes {
            assert_eq!(parse_modes(s).map_err(|_| ()), want, "{s:?}");
        }
    }
}
