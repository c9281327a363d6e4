//! What a test process holds: heap in use, resident set, open descriptors. The figures are
//! the whole process's, so a test that asserts them lives in a file of its own.

/// Makes RSS measure what the messengers hold rather than the allocator's habits: one malloc
/// arena (each worker thread would open its own), and a fixed mmap threshold (glibc raises it
/// when a large block is freed, after which receive-buffer rings come from the heap and leave
/// it fragmented). Call before the test starts any thread of its own.
pub fn predictable_malloc() {
    // SAFETY: glibc tunables, set while the process runs no thread that allocates.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
    }
}

/// Bytes allocated and not freed, whatever the allocator keeps around them.
pub fn heap_in_use() -> u64 {
    // SAFETY: reads glibc's counters.
    let m = unsafe { libc::mallinfo2() };
    (m.uordblks + m.hblkhd) as u64
}

/// Resident memory of the whole process, after glibc has returned what is free: what
/// remains is what is in use (and its fragmentation).
pub fn rss() -> u64 {
    // SAFETY: no arguments beyond the pad size; glibc's own locking.
    unsafe { libc::malloc_trim(0) };
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// Descriptors the process has open (each socket is one).
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Raises the descriptor limit to `want` (past the hard limit where allowed, as for root),
/// else to the hard limit; returns the limit now in force.
pub fn raise_fd_limit(want: u64) -> u64 {
    // SAFETY: plain syscalls on local structs.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut r), 0);
        let raised = libc::rlimit {
            rlim_cur: want.max(r.rlim_cur),
            rlim_max: want.max(r.rlim_max),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur
    }
}

/// Makes room for `connections` sockets and a thousand more descriptors, or fails saying why.
pub fn need_descriptors_for(connections: usize) {
    let need = connections as u64 + 1_000;
    let fds = raise_fd_limit(need);
    assert!(
        fds >= need,
        "{connections} connections need {need} descriptors; the limit is {fds}"
    );
}
