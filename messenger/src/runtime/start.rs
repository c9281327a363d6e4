//! Starting a messenger's runtime: listening sockets (one per address per worker, with
//! SO_REUSEPORT), the shared state, and the worker threads, each with its ring.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use io_uring::IoUring;
use socket2::{Domain, Socket, Type};

use super::worker::Worker;
use super::{Arena, Command, Dispatcher, MessengerInterceptor, Shared, WorkerHandle};
use crate::options::Options;
use crate::proto::cephx::{Keyring, KeyringError};
use crate::proto::endpoint::{Entropy, TicketStore, UnixClock};
use crate::proto::{
    AddrType, AuthConfig, AuthMethod, ConnId, EndpointConfig, EntityAddr, EntityAddrVec,
    EntityName, EntityType, Placement, Policy,
};
use crate::Error;

/// What a messenger is started with (its builder's settings).
pub(crate) struct Config {
    pub name: EntityName,
    pub bind: Vec<EntityAddr>,
    pub policies: Vec<(EntityType, Policy)>,
    pub default_policy: Policy,
    pub options: Options,
    pub interceptor: Option<Arc<dyn MessengerInterceptor>>,
}

pub(crate) fn io_uring_error(source: io::Error) -> Error {
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let hint = match (source.raw_os_error(), disabled.as_str()) {
        (_, "2") => " (sysctl kernel.io_uring_disabled=2 disables io_uring for everyone; set it to 0)".to_string(),
        (_, "1") => " (sysctl kernel.io_uring_disabled=1 allows io_uring only for the group in kernel.io_uring_group; set it to 0 or join that group)".to_string(),
        (Some(libc::ENOSYS), _) => " (this kernel has no io_uring)".to_string(),
        (Some(libc::EPERM), _) => " (denied: check sysctl kernel.io_uring_disabled and seccomp)".to_string(),
        (Some(libc::ENOMEM), _) => " (raise RLIMIT_MEMLOCK or lower Options::ring_entries)".to_string(),
        _ => String::new(),
    };
    Error::IoUring { source, hint }
}

pub(super) fn build_ring(entries: u32) -> Result<IoUring, Error> {
    let tuned = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(entries);
    match tuned {
        Ok(r) => Ok(r),
        // Kernels before 6.1 lack DEFER_TASKRUN: fall back to a plain ring.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            IoUring::new(entries).map_err(io_uring_error)
        }
        Err(e) => Err(io_uring_error(e)),
    }
}

/// 32 bytes from getrandom for the endpoint's key generator: no fallback, unlike cookies.
fn entropy() -> Result<Entropy, Error> {
    let mut e = [0u8; 32];
    // SAFETY: getrandom writes at most 32 bytes into e.
    let n = unsafe { libc::getrandom(e.as_mut_ptr() as *mut libc::c_void, 32, 0) };
    if n != 32 {
        return Err(Error::Random(io::Error::last_os_error()));
    }
    Ok(Entropy(e))
}

/// The endpoints' auth configuration from the options: our key and the keys of the peers a
/// server admits, from the keyring; the methods (cephx alone by default when there is a
/// keyring) and modes (a monitor's own lists when we are one).
fn auth_config(name: &EntityName, o: &Options) -> Result<AuthConfig, Error> {
    let keyring = match &o.keyring {
        Some(path) => Some(Keyring::load(path)?),
        None => None,
    };
    let key = keyring.as_ref().and_then(|k| k.get(name)).cloned();
    let client_required = match (&o.auth_client_required, &key) {
        (Some(list), _) => list.clone(),
        (None, Some(_)) => vec![AuthMethod::Cephx],
        (None, None) => vec![AuthMethod::None],
    };
    if key.is_none() && !client_required.contains(&AuthMethod::None) {
        return Err(match &o.keyring {
            Some(path) => KeyringError::NoEntry {
                entity: name.to_string(),
                path: path.display().to_string(),
            }
            .into(),
            None => Error::NoKey(name.clone()),
        });
    }
    let server_default = match keyring {
        Some(_) => vec![AuthMethod::Cephx],
        None => vec![AuthMethod::None],
    };
    let service_required = o
        .auth_service_required
        .clone()
        .unwrap_or(server_default.clone());
    let cluster_required = o.auth_cluster_required.clone().unwrap_or(server_default);
    let cephx_served = service_required.contains(&AuthMethod::Cephx)
        || cluster_required.contains(&AuthMethod::Cephx);
    if cephx_served && keyring.is_none() {
        return Err(Error::NoKeyring);
    }
    let (service_mode, cluster_mode) = if name.ty == EntityType::MON {
        (&o.ms_mon_service_mode, &o.ms_mon_cluster_mode)
    } else {
        (&o.ms_service_mode, &o.ms_cluster_mode)
    };
    Ok(AuthConfig {
        client_required,
        mon_client_mode: o.ms_mon_client_mode.clone(),
        client_mode: o.ms_client_mode.clone(),
        key,
        service_required,
        cluster_required,
        service_mode: service_mode.clone(),
        cluster_mode: cluster_mode.clone(),
        keyring,
        // One store for every worker: tickets got on one serve connections on all.
        tickets: TicketStore::default(),
        service_ticket_ttl: o.auth_service_ticket_ttl,
        // One ticket secret for every worker: a connection may migrate after it authenticated.
        ticket_seed: entropy()?,
        clock: UnixClock::default(),
        entropy: Entropy::default(),
    })
}

pub(super) fn random_u64() -> u64 {
    let mut v = 0u64;
    // SAFETY: getrandom writes at most 8 bytes into v.
    let n = unsafe { libc::getrandom(&mut v as *mut u64 as *mut libc::c_void, 8, 0) };
    if n != 8 {
        // Never expected on Linux ≥ 3.17; the time still gives distinct cookies per process.
        v = Instant::now().elapsed().as_nanos() as u64 ^ std::process::id() as u64;
    }
    v
}

fn listen_socket(addr: SocketAddr) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM.cloexec(), None)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s)
}

/// Binds, starts the workers and waits until each is running.
pub(crate) fn start(
    b: Config,
    dispatcher: Arc<dyn Dispatcher>,
) -> Result<(Arc<Shared>, Vec<JoinHandle<()>>), Error> {
    let n = b.options.workers.max(1);
    let auth = auth_config(&b.name, &b.options)?;
    // Before any worker starts, so that a failure leaves nothing running.
    let entropies = (0..n).map(|_| entropy()).collect::<Result<Vec<_>, _>>()?;
    // Numbers messengers in this process, so that probe ids of two messengers never collide.
    static MESSENGERS: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
    let messenger = MESSENGERS.fetch_add(1, Ordering::Relaxed);
    // Monitors are known by their address alone (monmaps carry nonce 0), as in Ceph.
    let nonce = b.options.nonce.unwrap_or_else(|| {
        if b.name.ty == EntityType::MON {
            0
        } else {
            random_u64() as u32
        }
    });
    // One listening socket per bound address per worker (SO_REUSEPORT spreads accepts);
    // RDMA addresses listen for side channels.
    let mut listeners: Vec<Vec<OwnedFd>> = (0..n).map(|_| Vec::new()).collect();
    let mut rdma_listeners: Vec<Vec<OwnedFd>> = (0..n).map(|_| Vec::new()).collect();
    let mut addrs = Vec::new();
    for a in &b.bind {
        let sa = a.addr.ok_or(Error::NoSocketAddr(*a))?;
        let mut port = sa.port();
        let rdma = a.ty == AddrType::Rdma;
        let per_fabric = if rdma {
            &mut rdma_listeners
        } else {
            &mut listeners
        };
        for per_worker in per_fabric.iter_mut() {
            let at = SocketAddr::new(sa.ip(), port);
            let s = listen_socket(at).map_err(|source| Error::Bind { addr: at, source })?;
            if port == 0 {
                port = s
                    .local_addr()
                    .ok()
                    .and_then(|l| l.as_socket())
                    .map_or(0, |l| l.port());
            }
            per_worker.push(s.into());
        }
        addrs.push(EntityAddr {
            ty: if rdma {
                AddrType::Rdma
            } else {
                AddrType::Msgr2
            },
            nonce,
            addr: Some(SocketAddr::new(sa.ip(), port)),
        });
    }
    let workers = (0..n)
        .map(|_| WorkerHandle::new())
        .collect::<io::Result<Vec<_>>>()
        .map_err(Error::Thread)?;
    let o = &b.options;
    let (tb, tm) = (o.dispatch_throttle_bytes, o.dispatch_throttle_messages);
    let arena = match o.arena_size {
        0 => None,
        n => Some(Arena::new(n).map_err(|source| Error::IoUring {
            source,
            hint: " (cannot map the payload arena; lower Options::arena_size)".into(),
        })?),
    };
    let shared = Arc::new_cyclic(|weak: &std::sync::Weak<Shared>| Shared {
        throttle: (tb > 0 || tm > 0).then(|| {
            let weak = weak.clone();
            Arc::new(super::throttle::Throttle::new(
                tb,
                tm,
                // Back under the limit: every worker re-arms the receives it held back.
                Box::new(move || {
                    if let Some(shared) = weak.upgrade() {
                        for w in &shared.workers {
                            w.push(Command::Unthrottle);
                        }
                    }
                }),
            ))
        }),
        send_limits: super::throttle::SendLimits {
            bytes: o.send_throttle_bytes,
            messages: o.send_throttle_messages,
        },
        max_send_backlog: o.max_send_backlog,
        zerocopy_min: o.zerocopy_min,
        arena,
        rdma: o.rdma.clone(),
        workers,
        dispatcher,
        origin: Instant::now(),
        next_handle: AtomicU64::new(1),
        addrs: EntityAddrVec(addrs),
        name: b.name.clone(),
        by_addr: Mutex::new(HashMap::new()),
        counters: Default::default(),
        policy_types: b.policies.iter().map(|(ty, _)| *ty).collect(),
        warned_default_policy: Mutex::new(Default::default()),
    });
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut threads = Vec::new();
    for (index, (own_listeners, own_rdma)) in listeners.into_iter().zip(rdma_listeners).enumerate()
    {
        let mut cfg = EndpointConfig::new(b.name.clone(), shared.addrs.clone());
        cfg.nonce = nonce;
        cfg.policies = b.policies.clone();
        cfg.default_policy = b.default_policy;
        cfg.tuning = b.options.tuning;
        cfg.seed = random_u64();
        cfg.auth = AuthConfig {
            entropy: entropies[index],
            ..auth.clone()
        };
        cfg.placement = Placement {
            index,
            count: n,
            messenger,
        };
        let shared = shared.clone();
        let ready = ready_tx.clone();
        let entries = b.options.ring_entries;
        let interceptor = b.interceptor.clone();
        let t = std::thread::Builder::new()
            .name(format!("ringwire-w{index}"))
            .spawn(move || {
                let _ = shared.workers[index]
                    .thread
                    .set(std::thread::current().id());
                let interceptor = interceptor
                    .map(|i| Box::new(OnWorker(index, i)) as Box<dyn crate::proto::Interceptor>);
                let listeners = [own_listeners, own_rdma];
                match Worker::new(index, shared, cfg, interceptor, listeners, entries) {
                    Ok(mut w) => {
                        let _ = ready.send(Ok(()));
                        w.run();
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                    }
                }
            })
            .map_err(Error::Thread)?;
        threads.push(t);
    }
    drop(ready_tx);
    for _ in 0..n {
        let failed = match ready_rx.recv() {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e,
            Err(_) => Error::Thread(io::Error::other("worker died at start")),
        };
        // The workers that did start stop again.
        for w in &shared.workers {
            w.push(Command::Shutdown);
        }
        for t in threads {
            let _ = t.join();
        }
        return Err(failed);
    }
    Ok((shared, threads))
}

/// Adapts the messenger's interceptor to one worker's endpoint.
struct OnWorker(usize, Arc<dyn MessengerInterceptor>);

impl crate::proto::Interceptor for OnWorker {
    fn intercept(&mut self, conn: ConnId, step: crate::proto::Step) -> crate::proto::Action {
        self.1.intercept(self.0, conn, step)
    }
}
