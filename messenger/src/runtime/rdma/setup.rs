//! Setting connections up: the worker's device, the TCP side channel that carries each
//! side's [`Hello`] and the client's READY byte (and then stays open, so that a peer that
//! dies is noticed even while idle), what each side-channel completion means in each phase,
//! the queue pair (created with its receive buffers posted), and placement: an accepted side
//! channel goes to the worker that owns the client's session before any queue pair exists,
//! as queue pairs cannot move between workers' completion queues.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use io_uring::{opcode, squeue, types};
use socket2::{Domain, SockAddr, Socket, Type};

use super::super::transport::user_data;
use super::super::Arena;
use super::completions::Link;
use super::receive;
use super::record::{Hello, HELLO_LEN, READY};
use super::verbs::Device;
use super::{KIND_DIAL, KIND_SIDE_RECV, KIND_SIDE_SEND, KIND_SIDE_TIMEOUT};
use crate::options::RdmaOptions;
use crate::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Client: the side channel's TCP connect is in flight.
    Dialing,
    /// Hellos crossing.
    Hello,
    /// Server: its queue pair is ready; waiting for the client's READY.
    AwaitReady,
    /// Client: READY is on its way.
    SendReady,
    Up,
    /// Torn down: waiting for work requests and side-channel operations to finish.
    Closing,
}

/// One connection's TCP side channel and the buffers its ring operations use.
pub(super) struct SideChannel {
    fd: OwnedFd,
    /// Ring operations on it not completed: it and its buffers must outlive them.
    ops: u32,
    dial_addr: Option<Box<SockAddr>>,
    hello_out: Box<[u8; HELLO_LEN]>,
    hello_in: Box<[u8; HELLO_LEN]>,
    byte_in: Box<[u8; 1]>,
    byte_out: Box<[u8; 1]>,
    /// How long a setup step may wait for the peer (the kernel reads it at submission).
    timeout: Box<types::Timespec>,
}

impl SideChannel {
    pub fn new(fd: OwnedFd, timeout: Duration) -> SideChannel {
        SideChannel {
            fd,
            ops: 0,
            dial_addr: None,
            hello_out: Box::new([0; HELLO_LEN]),
            hello_in: Box::new([0; HELLO_LEN]),
            byte_in: Box::new([0]),
            byte_out: Box::new([READY]),
            timeout: Box::new(types::Timespec::from(timeout)),
        }
    }

    /// A socket to dial `addr` from.
    pub fn dialer(addr: SocketAddr, timeout: Duration) -> io::Result<SideChannel> {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM.cloexec(), None)?;
        s.set_tcp_nodelay(true)?;
        Ok(SideChannel::new(s.into(), timeout))
    }

    /// An accepted side channel, and the peer's address when the socket knows it.
    pub fn accepted(fd: OwnedFd, timeout: Duration) -> (SideChannel, Option<SocketAddr>) {
        let sock = Socket::from(fd);
        let _ = sock.set_tcp_nodelay(true);
        let peer = sock.peer_addr().ok().and_then(|a| a.as_socket());
        (SideChannel::new(sock.into(), timeout), peer)
    }

    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Gives up the socket and the peer's hello, for another worker to adopt.
    pub fn into_parts(self) -> (OwnedFd, Box<[u8; HELLO_LEN]>) {
        (self.fd, self.hello_in)
    }

    /// The peer's hello, received by another worker that handed the side channel here.
    pub fn hello_received(&mut self, hello: [u8; HELLO_LEN]) {
        *self.hello_in = hello;
    }

    pub fn peer_hello(&self) -> Result<Hello, String> {
        Hello::decode(&self.hello_in).map_err(|e| e.to_string())
    }

    /// Whether the byte received is READY.
    pub fn got_ready(&self) -> bool {
        self.byte_in[0] == READY
    }

    pub fn local_ip(&self) -> Option<IpAddr> {
        socket2::SockRef::from(&self.fd)
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .map(|a| a.ip())
    }

    /// Ring operations in flight.
    pub fn busy(&self) -> bool {
        self.ops > 0
    }

    /// One of its ring operations completed (`dial`: the connect).
    pub fn completed(&mut self, dial: bool) {
        self.ops -= 1;
        if dial {
            self.dial_addr = None;
        }
    }

    /// Ends the TCP connection: its pending operations complete.
    pub fn shutdown(&self) {
        // SAFETY: plain syscall on a descriptor we own.
        unsafe { libc::shutdown(self.fd.as_raw_fd(), libc::SHUT_RDWR) };
    }

    /// The connect to `addr`; `key` names the connection in the ring's user data.
    pub fn connect(&mut self, key: usize, addr: SocketAddr) -> squeue::Entry {
        let sa = Box::new(SockAddr::from(addr));
        let e = opcode::Connect::new(
            types::Fd(self.fd.as_raw_fd()),
            sa.as_ptr() as *const libc::sockaddr,
            sa.len(),
        )
        .build()
        .user_data(user_data(KIND_DIAL, key as u64));
        self.dial_addr = Some(sa);
        self.ops += 1;
        e
    }

    /// Sends our hello.
    pub fn send_hello(&mut self, key: usize, hello: &Hello) -> squeue::Entry {
        *self.hello_out = hello.encode();
        self.send(key, self.hello_out.as_ptr(), HELLO_LEN as u32)
    }

    /// Sends READY.
    pub fn send_ready(&mut self, key: usize) -> squeue::Entry {
        self.send(key, self.byte_out.as_ptr(), 1)
    }

    fn send(&mut self, key: usize, ptr: *const u8, len: u32) -> squeue::Entry {
        self.ops += 1;
        opcode::Send::new(types::Fd(self.fd.as_raw_fd()), ptr, len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(user_data(KIND_SIDE_SEND, key as u64))
    }

    /// Receives the peer's hello (`hello`) or one byte; during setup (`guarded`) with a
    /// linked timeout, so that a silent peer cannot hold a connection slot: the receive
    /// then completes with -ECANCELED. Push the entries in order.
    pub fn recv(
        &mut self,
        key: usize,
        hello: bool,
        guarded: bool,
    ) -> impl Iterator<Item = squeue::Entry> {
        let (ptr, len) = if hello {
            (self.hello_in.as_mut_ptr(), HELLO_LEN as u32)
        } else {
            (self.byte_in.as_mut_ptr(), 1)
        };
        let e = opcode::Recv::new(types::Fd(self.fd.as_raw_fd()), ptr, len)
            .flags(libc::MSG_WAITALL)
            .build()
            .user_data(user_data(KIND_SIDE_RECV, key as u64));
        self.ops += 1;
        let (e, timeout) = if guarded {
            let t = opcode::LinkTimeout::new(&*self.timeout)
                .build()
                .user_data(user_data(KIND_SIDE_TIMEOUT, key as u64));
            (e.flags(squeue::Flags::IO_LINK), Some(t))
        } else {
            (e, None)
        };
        std::iter::once(e).chain(timeout)
    }
}

/// What a side-channel completion means for its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum SideEvent {
    Nothing,
    /// Client: connected: create the queue pair and say hello.
    Connected,
    /// The peer's hello is in.
    Hello,
    /// The handshake is over (client: READY sent; server: READY received).
    Up,
    /// An established connection's side channel ended or spoke: the peer is gone.
    Gone(String),
    /// Setup failed.
    Failed(String),
}

/// The meaning of a side-channel completion of ring operation `kind` with result `res` in
/// `phase`; `got_ready`: the byte received is READY.
pub(super) fn side_event(kind: u64, phase: Phase, res: i32, got_ready: bool) -> SideEvent {
    let os = |r: i32| io::Error::from_raw_os_error(-r);
    match (kind, phase) {
        (KIND_DIAL, Phase::Dialing) if res == 0 => SideEvent::Connected,
        (KIND_DIAL, _) => SideEvent::Failed(format!("connect: {}", os(res))),
        (KIND_SIDE_SEND, _) if res < 0 => SideEvent::Failed(format!("side channel: {}", os(res))),
        (KIND_SIDE_SEND, Phase::SendReady) => SideEvent::Up,
        (KIND_SIDE_SEND, _) => SideEvent::Nothing,
        (KIND_SIDE_RECV, Phase::Hello) if res == HELLO_LEN as i32 => SideEvent::Hello,
        (KIND_SIDE_RECV, Phase::AwaitReady) if res == 1 && got_ready => SideEvent::Up,
        (KIND_SIDE_RECV, Phase::Up) => SideEvent::Gone(match res {
            0 => "side channel closed by the peer".to_string(),
            r if r < 0 => format!("side channel: {}", os(r)),
            _ => "unexpected bytes on the side channel".to_string(),
        }),
        (KIND_SIDE_RECV, _) => SideEvent::Failed(match res {
            0 => "side channel closed by the peer".to_string(),
            r if r == -libc::ECANCELED => {
                format!("no RDMA setup from the peer in {phase:?} within the handshake timeout")
            }
            r if r < 0 => format!("side channel: {}", os(r)),
            _ => format!("unexpected bytes on the side channel in {phase:?}"),
        }),
        _ => SideEvent::Nothing,
    }
}

/// The worker's region (send buffers, then `credits` receive buffers per connection), in
/// buffers, and a CQ depth for every buffer's completion with headroom per connection.
fn region_size(o: &RdmaOptions) -> (usize, u32) {
    let slots = o.send_buffers + o.max_connections * o.credits as usize;
    let cqe = (slots + 2 * o.max_connections + 16) as u32;
    (slots, cqe)
}

/// Connection `conn`'s receive buffers in the region.
fn receive_slots(o: &RdmaOptions, conn: usize) -> Range<u32> {
    let first = o.send_buffers as u32 + conn as u32 * o.credits as u32;
    first..first + o.credits as u32
}

/// Opens the worker's device and registers its region and the payload arena.
pub(super) fn open_device(
    o: &RdmaOptions,
    arena: Option<&Arena>,
    worker: usize,
) -> Result<Device, Error> {
    let (slots, cqe) = region_size(o);
    let dev = Device::open(o, slots, arena, cqe)?;
    tracing::info!(
        worker,
        device = %dev.name,
        gid_index = dev.gid_index,
        region_kib = dev.region.len() / 1024,
        "RDMA device open"
    );
    Ok(dev)
}

/// A new queue pair for connection `conn`, its receive buffers posted.
pub(super) fn new_link(dev: &Device, o: &RdmaOptions, conn: usize) -> Result<Link, String> {
    let qp = dev.create_qp(o.credits as u32).map_err(|e| e.to_string())?;
    let mut link = Link::new(qp, conn);
    for slot in receive_slots(o, conn) {
        receive::post_receive(&mut link, &dev.region, slot)
            .map_err(|e| format!("posting receives: {e}"))?;
    }
    Ok(link)
}

/// The worker that owns the session a client's hello places (its placement hash).
pub(super) fn owner(placement: u64, workers: usize) -> usize {
    (placement % (workers as u64).max(1)) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use io_uring::IoUring;
    use std::os::unix::net::UnixStream;

    #[test]
    fn side_events_by_phase() {
        use SideEvent::*;
        let ev = side_event;
        assert_eq!(ev(KIND_DIAL, Phase::Dialing, 0, false), Connected);
        assert!(
            matches!(ev(KIND_DIAL, Phase::Dialing, -libc::ECONNREFUSED, false), Failed(e) if e.starts_with("connect: "))
        );
        assert_eq!(ev(KIND_SIDE_SEND, Phase::SendReady, 1, false), Up);
        assert_eq!(ev(KIND_SIDE_SEND, Phase::Hello, 64, false), Nothing);
        assert!(matches!(
            ev(KIND_SIDE_SEND, Phase::SendReady, -libc::EPIPE, false),
            Failed(e) if e.starts_with("side channel: ")
        ));
        assert_eq!(ev(KIND_SIDE_RECV, Phase::Hello, 64, false), Hello);
        assert_eq!(
            ev(KIND_SIDE_RECV, Phase::Hello, 10, false),
            Failed("unexpected bytes on the side channel in Hello".into())
        );
        assert_eq!(
            ev(KIND_SIDE_RECV, Phase::Hello, -libc::ECANCELED, false),
            Failed("no RDMA setup from the peer in Hello within the handshake timeout".into())
        );
        assert_eq!(ev(KIND_SIDE_RECV, Phase::AwaitReady, 1, true), Up);
        assert_eq!(
            ev(KIND_SIDE_RECV, Phase::AwaitReady, 1, false),
            Failed("unexpected bytes on the side channel in AwaitReady".into())
        );
        assert_eq!(
            ev(KIND_SIDE_RECV, Phase::AwaitReady, 0, false),
            Failed("side channel closed by the peer".into())
        );
        assert_eq!(
            ev(KIND_SIDE_RECV, Phase::Up, 0, false),
            Gone("side channel closed by the peer".into())
        );
        assert_eq!(
            ev(KIND_SIDE_RECV, Phase::Up, 1, true),
            Gone("unexpected bytes on the side channel".into())
        );
        assert_eq!(ev(KIND_SIDE_TIMEOUT, Phase::Hello, 0, false), Nothing);
    }

    #[test]
    fn placement_stays_among_the_workers() {
        for workers in [0, 1, 3, 8] {
            for p in [0, 1, 7, u64::MAX] {
                assert!(owner(p, workers) < workers.max(1));
            }
        }
        assert_eq!(owner(10, 4), 2);
    }

    #[test]
    fn receive_buffers_follow_the_send_buffers_without_overlap() {
        let o = RdmaOptions {
            send_buffers: 10,
            credits: 4,
            max_connections: 3,
            ..RdmaOptions::default()
        };
        let (slots, _) = region_size(&o);
        assert_eq!(slots, 22);
        let all: Vec<u32> = (0..3).flat_map(|c| receive_slots(&o, c)).collect();
        assert_eq!(all, (10..22).collect::<Vec<u32>>());
    }

    fn ring_results(ring: &mut IoUring, n: usize) -> Vec<(u64, i32)> {
        ring.submit_and_wait(n).unwrap();
        let mut out: Vec<(u64, i32)> = ring
            .completion()
            .map(|c| (c.user_data() >> 56, c.result()))
            .collect();
        while out.len() < n {
            ring.submit_and_wait(1).unwrap();
            out.extend(ring.completion().map(|c| (c.user_data() >> 56, c.result())));
        }
        out.sort();
        out
    }

    /// The hello and READY cross a real socket through the ring, and a silent peer's
    /// guarded receive ends at the timeout.
    #[test]
    fn hello_and_ready_cross_and_silence_times_out() {
        let Ok(mut ring) = IoUring::new(8) else {
            return; // io_uring disabled here: the transport cannot run either
        };
        let (a, b) = UnixStream::pair().unwrap();
        let t = Duration::from_millis(50);
        let mut client = SideChannel::new(a.into(), t);
        let mut server = SideChannel::new(b.into(), t);
        let hello = Hello {
            qpn: 17,
            psn: 99,
            lid: 1,
            gid: [3; 16],
            credits: 8,
            buffer_size: 4096,
            mtu: 3,
            placement: 42,
        };
        // SAFETY: the sides and their buffers outlive the operations (waited for below).
        unsafe {
            let mut sq = ring.submission();
            sq.push(&client.send_hello(0, &hello)).unwrap();
            for e in server.recv(1, true, true) {
                sq.push(&e).unwrap();
            }
        }
        let got = ring_results(&mut ring, 3);
        assert!(got.contains(&(KIND_SIDE_SEND, HELLO_LEN as i32)), "{got:?}");
        assert!(got.contains(&(KIND_SIDE_RECV, HELLO_LEN as i32)), "{got:?}");
        assert_eq!(server.peer_hello(), Ok(hello));
        // READY, unguarded (as once up).
        // SAFETY: as above.
        unsafe {
            let mut sq = ring.submission();
            sq.push(&client.send_ready(0)).unwrap();
            for e in server.recv(1, false, false) {
                sq.push(&e).unwrap();
            }
        }
        let got = ring_results(&mut ring, 2);
        assert_eq!(got, vec![(KIND_SIDE_SEND, 1), (KIND_SIDE_RECV, 1)]);
        assert!(server.got_ready());
        // The client says nothing more: the guarded receive is cancelled.
        // SAFETY: as above.
        unsafe {
            let mut sq = ring.submission();
            for e in server.recv(1, false, true) {
                sq.push(&e).unwrap();
            }
        }
        let got = ring_results(&mut ring, 2);
        assert!(got.contains(&(KIND_SIDE_RECV, -libc::ECANCELED)), "{got:?}");
        for _ in 0..3 {
            server.completed(false);
        }
        client.completed(false);
        client.completed(false);
        assert!(!server.busy() && !client.busy());
        assert!(matches!(
            side_event(KIND_SIDE_RECV, Phase::AwaitReady, -libc::ECANCELED, false),
            SideEvent::Failed(e) if e.contains("handshake timeout")
        ));
    }
}
