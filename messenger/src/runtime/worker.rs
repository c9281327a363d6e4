//! One worker: a thread with one io_uring, one protocol endpoint, the transports' sockets and
//! queue pairs, and the handles of the sessions it owns. Its loop drains commands, endpoint
//! output and transport progress, then sleeps in `io_uring_enter` until the endpoint's next
//! deadline or a completion.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use io_uring::{opcode, types, IoUring};

use super::commands::Command;
use super::events;
use super::handles::HandleTable;
use super::rdma::{self, Rdma};
use super::start::build_ring;
use super::tasks::Tasks;
use super::tcp::Tcp;
use super::transport::{user_data, Cx, Transport};
use super::{Shared, STATE_CLOSED, STATE_CONNECTING, STATE_READY};
use crate::proto::{ConnId, Endpoint, EndpointConfig, Fabric, Interceptor, Io, Time};
use crate::Error;

/// The eventfd read's operation kind (the transport's kinds are below it).
const KIND_EVENTFD: u64 = 0x7f;
/// How often a worker reports its connections to the `ringwire_conn_socket` probe.
const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(1);

pub(super) struct Worker {
    // Dropped first: unregisters the transport's buffers before their memory goes.
    ring: IoUring,
    transports: Transports,
    index: usize,
    shared: Arc<Shared>,
    ep: Endpoint,
    eventfd_buf: Box<[u8; 8]>,
    handles: HandleTable,
    cqes: Vec<(u64, i32, u32)>,
    commands: VecDeque<Command>,
    tasks: Tasks,
    /// The time read once after each wait, for everything handled until the next one.
    now: Time,
    /// When connections are next reported to the `ringwire_conn_socket` probe, and whether
    /// there were any to report last time (an idle worker does not wake up for it).
    next_announce: Time,
    announcing: bool,
    shutting_down: bool,
}

/// The worker's transports, driven through [`Transport`]: what every transport does goes to
/// all of them, what concerns one connection goes to the one that owns it.
struct Transports {
    tcp: Tcp,
    rdma: Rdma,
}

impl Transports {
    fn all(&self) -> [&dyn Transport; 2] {
        [&self.tcp, &self.rdma]
    }

    fn all_mut(&mut self) -> [&mut dyn Transport; 2] {
        [&mut self.tcp, &mut self.rdma]
    }

    fn owner(&mut self, conn: ConnId) -> &mut dyn Transport {
        if self.rdma.owns(conn) {
            &mut self.rdma
        } else {
            &mut self.tcp
        }
    }

    fn for_fabric(&mut self, fabric: Fabric) -> &mut dyn Transport {
        match fabric {
            Fabric::Rdma => &mut self.rdma,
            Fabric::Tcp => &mut self.tcp,
        }
    }

    /// The transport whose ring operations have this kind (user data's top byte).
    fn by_kind(&mut self, kind: u64) -> &mut dyn Transport {
        if rdma::owns_kind(kind) {
            &mut self.rdma
        } else {
            &mut self.tcp
        }
    }
}

/// Borrows the worker's ring, endpoint and shared state for a transport call.
macro_rules! cx {
    ($w:ident) => {
        Cx {
            ring: &mut $w.ring,
            ep: &mut $w.ep,
            shared: &$w.shared,
            now: $w.now,
            shutting_down: $w.shutting_down,
        }
    };
}

impl Worker {
    pub(super) fn new(
        index: usize,
        shared: Arc<Shared>,
        cfg: EndpointConfig,
        interceptor: Option<Box<dyn Interceptor>>,
        [listeners, rdma_listeners]: [Vec<OwnedFd>; 2],
        entries: u32,
    ) -> Result<Worker, Error> {
        let mut ring = build_ring(entries)?;
        let mut ep = Endpoint::new(cfg);
        ep.set_interceptor(interceptor);
        let (tcp, rdma) = {
            let mut cx = Cx {
                ring: &mut ring,
                ep: &mut ep,
                shared: &shared,
                now: Time(0),
                shutting_down: false,
            };
            let tcp = Tcp::new(&mut cx, index, listeners)?;
            (tcp, Rdma::new(&mut cx, index, rdma_listeners)?)
        };
        let handles = HandleTable::new(shared.clone(), index);
        let mut w = Worker {
            ring,
            transports: Transports { tcp, rdma },
            index,
            shared,
            ep,
            eventfd_buf: Box::new([0; 8]),
            handles,
            cqes: Vec::with_capacity(256),
            commands: VecDeque::new(),
            tasks: Tasks::default(),
            now: Time(0),
            next_announce: Time(0),
            announcing: false,
            shutting_down: false,
        };
        w.arm_eventfd();
        Ok(w)
    }

    fn now(&self) -> Time {
        self.now
    }

    fn tick(&mut self) {
        self.now = Time(self.shared.origin.elapsed().as_nanos() as u64);
    }

    fn arm_eventfd(&mut self) {
        let fd = self.shared.workers[self.index].eventfd.as_raw_fd();
        let e = opcode::Read::new(types::Fd(fd), self.eventfd_buf.as_mut_ptr(), 8)
            .build()
            .user_data(user_data(KIND_EVENTFD, 0));
        cx!(self).push(e);
    }

    /// A completion: the eventfd's, or the transport's.
    fn complete(&mut self, ud: u64, res: i32, flags: u32) {
        if ud >> 56 == KIND_EVENTFD {
            if !(self.shutting_down && self.is_idle()) {
                self.arm_eventfd();
            }
            return;
        }
        let t = self.transports.by_kind(ud >> 56);
        t.complete(&mut cx!(self), ud, res, flags);
    }

    fn is_idle(&self) -> bool {
        self.transports.all().into_iter().all(|t| t.is_idle())
    }

    pub(super) fn run(&mut self) {
        loop {
            self.tick();
            self.drain();
            if self.shutting_down && self.is_idle() {
                return;
            }
            let now = self.now();
            if now >= self.next_announce {
                let ep = &self.ep;
                // Every transport reports, whether or not another had connections.
                let announced = self.transports.all().map(|t| t.announce(ep));
                self.announcing = announced.contains(&true);
                self.next_announce = now.after(ANNOUNCE_INTERVAL);
            }
            let wake = match (self.ep.poll_timeout(), self.announcing) {
                (Some(t), true) => Some(t.min(self.next_announce)),
                (None, true) => Some(self.next_announce),
                (t, false) => t,
            };
            let wake = self
                .transports
                .all()
                .into_iter()
                .filter_map(|t| t.next_deadline())
                .chain(wake)
                .min();
            let mut wait = wake.map(|t| t.0.saturating_sub(now.0));
            if wait != Some(0) && self.transports.rdma.busy_poll(&mut cx!(self)) {
                wait = Some(0);
            }
            let handle = &self.shared.workers[self.index];
            if wait != Some(0) && !handle.going_to_sleep() {
                wait = Some(0);
            }
            let result = match wait {
                Some(0) => self.ring.submit().map(|_| ()),
                Some(ns) => {
                    let ts = types::Timespec::new()
                        .sec(ns / 1_000_000_000)
                        .nsec((ns % 1_000_000_000) as u32);
                    let args = types::SubmitArgs::new().timespec(&ts);
                    self.ring.submitter().submit_with_args(1, &args).map(|_| ())
                }
                None => self.ring.submit_and_wait(1).map(|_| ()),
            };
            self.shared.workers[self.index].awake();
            if let Err(e) = result {
                match e.raw_os_error() {
                    Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY) => {}
                    _ => tracing::error!(worker = self.index, "io_uring_enter: {e}"),
                }
            }
            self.tick();
            let mut cqes = std::mem::take(&mut self.cqes);
            cqes.extend(
                self.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            for &(ud, res, flags) in &cqes {
                self.complete(ud, res, flags);
            }
            cqes.clear();
            self.cqes = cqes;
            let now = self.now();
            self.ep.handle_timeout(now);
        }
    }

    /// Commands, endpoint output and socket work until nothing is left to do without waiting.
    fn drain(&mut self) {
        loop {
            let mut moved = self.run_commands();
            // What the tasks send goes out before the endpoint's output is polled: an ACK
            // owed for the message a task answers then rides on the answer.
            if self.tasks.poll_ready() {
                moved = true;
                self.run_commands();
            }
            moved |= self.endpoint_output();
            for t in self.transports.all_mut() {
                moved |= t.progress(&mut cx!(self));
            }
            if !moved {
                return;
            }
        }
    }

    /// Runs the commands queued so far; returns whether there were any.
    fn run_commands(&mut self) -> bool {
        let mut commands = std::mem::take(&mut self.commands);
        self.shared.workers[self.index].take_into(&mut commands);
        let any = !commands.is_empty();
        for cmd in commands.drain(..) {
            self.command(cmd);
        }
        self.commands = commands;
        any
    }

    fn command(&mut self, cmd: Command) {
        let now = self.now();
        match cmd {
            Command::Connect {
                handle,
                addr,
                peer_type,
                anon,
            } => {
                if self.shutting_down {
                    handle.set_state(STATE_CLOSED);
                    return;
                }
                let sid = if anon {
                    self.ep.connect_anon(now, addr, peer_type)
                } else {
                    self.ep.connect(now, addr, peer_type)
                };
                let state = if self.ep.is_connected(sid) {
                    STATE_READY
                } else {
                    STATE_CONNECTING
                };
                self.handles.attach(handle, sid, state);
            }
            Command::Send { handle, msg } => {
                let Some(sid) = self.handles.session_of(handle) else {
                    return;
                };
                if self.ep.send_tagged(now, sid, msg, handle).is_err() {
                    // The session has ended, and its Reset may still wait in the endpoint's
                    // events (a fault found by the timers just before): deliver it first, or
                    // closing the handle here would leave `on_reset` without a connection
                    // to report, and the application would never hear of it.
                    self.endpoint_output();
                    self.handles.close(sid);
                }
            }
            Command::MarkDown { handle } => {
                if let Some(sid) = self.handles.session_of(handle) {
                    self.ep.mark_down(now, sid);
                    self.handles.close(sid);
                }
            }
            Command::Keepalive { handle } => {
                if let Some(sid) = self.handles.session_of(handle) {
                    self.ep.keepalive(now, sid);
                }
            }
            Command::MarkDownAll => {
                self.ep.mark_down_all(now);
                self.close_all();
            }
            Command::Resume { conn } => self.ep.resume(now, conn),
            Command::Unthrottle => {
                self.transports
                    .all_mut()
                    .into_iter()
                    .for_each(|t| t.unthrottle());
            }
            Command::Adopt { fd, handoff } => {
                let cid = self.ep.adopt(now, *handoff);
                self.transports.tcp.adopt(&self.ep, cid, fd);
            }
            Command::AdoptRdma { fd, hello } => {
                self.transports.rdma.adopt(&mut cx!(self), fd, Some(hello))
            }
            Command::Spawn(future) => {
                if !self.shutting_down {
                    self.tasks.spawn(&self.shared, self.index, future);
                }
            }
            Command::Wake { task } => self.tasks.wake(task),
            Command::Shutdown => {
                self.shutting_down = true;
                self.tasks.clear();
                self.ep.mark_down_all(now);
                self.close_all();
                self.transports
                    .all_mut()
                    .into_iter()
                    .for_each(|t| t.shutdown());
            }
        }
    }

    fn close_all(&mut self) {
        for sid in self.handles.sessions() {
            self.handles.close(sid);
        }
    }

    /// Handles the endpoint's I/O requests and events. Returns whether anything came out.
    fn endpoint_output(&mut self) -> bool {
        let mut moved = false;
        while let Some(io) = self.ep.poll_io() {
            moved = true;
            self.io(io);
        }
        while let Some(ev) = self.ep.poll_event() {
            moved = true;
            events::deliver(
                ev,
                &mut self.handles,
                &self.ep,
                &self.shared,
                self.index,
                self.now,
            );
        }
        moved
    }

    fn io(&mut self, io: Io) {
        match io {
            Io::Connect { conn, addr, fabric } => {
                let t = self.transports.for_fabric(fabric);
                t.connect(&mut cx!(self), conn, addr)
            }
            Io::Transmit { conn } => self.transports.owner(conn).wake(conn),
            Io::Close { conn, remaining } => self.transports.owner(conn).close(conn, remaining),
            Io::Migrate { conn, to, handoff } => {
                self.transports.owner(conn).migrate(conn, to, handoff)
            }
        }
    }
}
