//! Raw baselines on loopback, measured in the same run as Ringwire's figures: the same bytes
//! moved by the simplest correct program, with blocking `std::net` and with io_uring used
//! directly (one ring per thread, SINGLE_ISSUER + DEFER_TASKRUN, one operation at a time).
//! No framing, no checksums: the floor a messenger is measured against.
//!
//! Also what the benchmark's msgr2 peers share with it: the bytes every side sends (`wire`)
//! and a throw-away Ceph monitor (`ceph_mon`).

pub mod ceph_mon;
pub mod wire;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::thread;
use std::time::{Duration, Instant};

use io_uring::{opcode, types, IoUring};

/// Round-trip times of `iters` ping-pongs of `size` bytes (after `warmup` unrecorded ones).
pub type Rtts = Vec<Duration>;

fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
    let (s, _) = l.accept().expect("accept");
    c.set_nodelay(true).expect("nodelay");
    s.set_nodelay(true).expect("nodelay");
    (c, s)
}

/// Blocking std ping-pong.
pub fn std_pingpong(size: usize, warmup: usize, iters: usize) -> Rtts {
    let (mut c, mut s) = pair();
    let total = warmup + iters;
    let server = thread::spawn(move || {
        let mut buf = vec![0u8; size];
        for _ in 0..total {
            s.read_exact(&mut buf).expect("server read");
            s.write_all(&buf).expect("server write");
        }
    });
    let out = vec![7u8; size];
    let mut back = vec![0u8; size];
    let mut rtts = Vec::with_capacity(iters);
    for i in 0..total {
        let t = Instant::now();
        c.write_all(&out).expect("client write");
        c.read_exact(&mut back).expect("client read");
        if i >= warmup {
            rtts.push(t.elapsed());
        }
    }
    server.join().expect("server thread");
    rtts
}

/// Blocking std streaming of `count` messages of `size` bytes; returns bytes per second.
pub fn std_stream(size: usize, count: usize) -> f64 {
    let (mut c, mut s) = pair();
    let server = thread::spawn(move || {
        let mut buf = vec![0u8; size];
        for _ in 0..count {
            s.read_exact(&mut buf).expect("server read");
        }
        s.write_all(&[1]).expect("server ack");
    });
    let out = vec![7u8; size];
    let t = Instant::now();
    for _ in 0..count {
        c.write_all(&out).expect("client write");
    }
    c.read_exact(&mut [0u8; 1]).expect("final ack");
    let secs = t.elapsed().as_secs_f64();
    server.join().expect("server thread");
    (size * count) as f64 / secs
}

fn ring() -> IoUring {
    IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(64)
        .or_else(|_| IoUring::new(64))
        .expect("io_uring")
}

/// Runs one operation to completion and returns its result.
fn run_one(ring: &mut IoUring, e: io_uring::squeue::Entry) -> i32 {
    // SAFETY: the buffers the entry points to are borrowed by the caller for this call.
    unsafe { ring.submission().push(&e).expect("sq has room") };
    ring.submit_and_wait(1).expect("io_uring_enter");
    let cqe = ring.completion().next().expect("a completion");
    cqe.result()
}

fn uring_send_all(ring: &mut IoUring, fd: i32, buf: &[u8]) {
    let mut off = 0;
    while off < buf.len() {
        let e = opcode::Send::new(types::Fd(fd), buf[off..].as_ptr(), (buf.len() - off) as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build();
        let n = run_one(ring, e);
        assert!(n > 0, "send: {n}");
        off += n as usize;
    }
}

fn uring_recv_exact(ring: &mut IoUring, fd: i32, buf: &mut [u8]) {
    let mut off = 0;
    while off < buf.len() {
        let e = opcode::Recv::new(
            types::Fd(fd),
            buf[off..].as_mut_ptr(),
            (buf.len() - off) as u32,
        )
        .flags(libc::MSG_WAITALL)
        .build();
        let n = run_one(ring, e);
        assert!(n > 0, "recv: {n}");
        off += n as usize;
    }
}

/// io_uring ping-pong, one ring per side.
pub fn uring_pingpong(size: usize, warmup: usize, iters: usize) -> Rtts {
    let (c, s) = pair();
    let total = warmup + iters;
    let server = thread::spawn(move || {
        let mut r = ring();
        let fd = s.as_raw_fd();
        let mut buf = vec![0u8; size];
        for _ in 0..total {
            uring_recv_exact(&mut r, fd, &mut buf);
            uring_send_all(&mut r, fd, &buf);
        }
        drop(s);
    });
    let mut r = ring();
    let fd = c.as_raw_fd();
    let out = vec![7u8; size];
    let mut back = vec![0u8; size];
    let mut rtts = Vec::with_capacity(iters);
    for i in 0..total {
        let t = Instant::now();
        uring_send_all(&mut r, fd, &out);
        uring_recv_exact(&mut r, fd, &mut back);
        if i >= warmup {
            rtts.push(t.elapsed());
        }
    }
    server.join().expect("server thread");
    rtts
}

/// io_uring streaming of `count` messages of `size` bytes; returns bytes per second.
pub fn uring_stream(size: usize, count: usize) -> f64 {
    let (c, s) = pair();
    let server = thread::spawn(move || {
        let mut r = ring();
        let fd = s.as_raw_fd();
        let mut buf = vec![0u8; size];
        for _ in 0..count {
            uring_recv_exact(&mut r, fd, &mut buf);
        }
        uring_send_all(&mut r, fd, &[1]);
        drop(s);
    });
    let mut r = ring();
    let fd = c.as_raw_fd();
    let out = vec![7u8; size];
    let t = Instant::now();
    for _ in 0..count {
        uring_send_all(&mut r, fd, &out);
    }
    uring_recv_exact(&mut r, fd, &mut [0u8; 1]);
    let secs = t.elapsed().as_secs_f64();
    server.join().expect("server thread");
    (size * count) as f64 / secs
}

/// The `p`-th percentile (0..=1) of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Raises the soft limit on open files to the hard limit (each loopback connection costs
/// two descriptors here); returns the new soft limit.
pub fn raise_fd_limit() -> u64 {
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 0;
        }
        r.rlim_cur = r.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        r.rlim_cur
    }
}

/// Pins the calling process (and threads it starts later) to one CPU, as the baselines on
/// this machine kind are measured; returns false if the CPU does not exist.
pub fn pin_to_cpu(cpu: usize) -> bool {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baselines_move_the_bytes() {
        let r = std_pingpong(64, 10, 100);
        assert_eq!(r.len(), 100);
        let r = uring_pingpong(64, 10, 100);
        assert_eq!(r.len(), 100);
        assert!(std_stream(1 << 20, 20) > 0.0);
        assert!(uring_stream(1 << 20, 20) > 0.0);
        let mut sorted = vec![
            Duration::from_micros(3),
            Duration::from_micros(1),
            Duration::from_micros(2),
        ];
        sorted.sort();
        assert_eq!(percentile(&sorted, 0.5), Duration::from_micros(2));
    }
}
