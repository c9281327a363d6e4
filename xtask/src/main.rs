//! `cargo xtask`: the project's build and test entry points.
//!
//! - `cargo xtask ci`: formatting check, clippy with warnings denied, every test.
//! - `cargo xtask build`: the BPF object, then a release build of the workspace.
//! - `cargo xtask build-ebpf`: only the BPF object (installs nightly rust-src and bpf-linker
//!   when missing).
//! - `cargo xtask fuzz [SECONDS]`: runs each fuzz target (cargo-fuzz, nightly) for SECONDS.
//! - `cargo xtask trace-overhead [ROUNDS]`: `ringwire bench` built without probes, with
//!   probes, and with probes under `ringwire-trace`, interleaved round by round.
//! - `cargo xtask rxe-test`: the RDMA tests against real verbs, in a QEMU guest whose kernel
//!   has soft-RoCE (`xtask/rxe-vm.sh`; the host kernel has no RDMA). Part of `ci`.
//! - `cargo xtask rxe-bench [ROUNDS]`: `ringwire bench --transport rdma` against perftest
//!   (`ib_send_lat`, `ib_write_bw`) and rsockets (`rstream`) in one guest run.
//! - `cargo xtask soak MINUTES`: the namespace cluster (`messenger/tests/netns_cluster.rs`,
//!   profile `ci`, root) under rolling faults for MINUTES, then a summary: messages, faults
//!   by kind, reconnects, lost / duplicated / reordered, peak RSS, time to READY after each
//!   heal. Fails if anything was lost, duplicated or reordered, or memory passed its bound.
//!   `RINGWIRE_SOAK_SEED` replays a run's faults. Not part of `ci` (docs/testing.md).

mod bench;
mod ci;
mod ebpf;
mod exec;
mod fuzz;
mod provision;
mod rxe;
mod soak;

use std::path::{Path, PathBuf};
use std::process::exit;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = project_root();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci::run(&root),
        Some("build") => ebpf::build(&root)
            .and_then(|_| exec::run(&root, "cargo", &["build", "--release", "--workspace"])),
        Some("build-ebpf") => ebpf::build(&root).map(|obj| println!("{}", obj.display())),
        Some("fuzz") => {
            let secs = args.get(1).map(String::as_str).unwrap_or("60");
            fuzz::run(&root, secs)
        }
        Some("rxe-test") => rxe::test(&root).map(|(passed, failed)| {
            println!("rxe-test: {passed} passed, {failed} failed");
        }),
        Some("rxe-bench") => {
            let rounds = args.get(1).and_then(|r| r.parse().ok()).unwrap_or(3);
            rxe::bench(&root, rounds)
        }
        Some("soak") => match args.get(1).and_then(|m| m.parse().ok()) {
            Some(minutes) if minutes > 0 => soak::run(&root, minutes),
            _ => Err("usage: cargo xtask soak MINUTES (a whole number above 0)".into()),
        },
        Some("trace-overhead") => {
            let rounds = args.get(1).and_then(|r| r.parse().ok()).unwrap_or(5);
            ebpf::trace_overhead(&root, rounds)
        }
        _ => {
            eprintln!(
                "usage: cargo xtask <ci | build | build-ebpf | fuzz [SECONDS] | trace-overhead [ROUNDS] | rxe-test | rxe-bench [ROUNDS] | soak MINUTES>"
            );
            exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("xtask: {e}");
        exit(1);
    }
}

fn project_root() -> PathBuf {
    // `cargo run` sets it at run time too: clones sharing one target directory share this
    // binary, and the compile-time path may name another clone.
    let manifest_dir =
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    Path::new(&manifest_dir)
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Cargo's target directory: `trace-overhead` and `rxe-bench` run the binaries they built there.
pub fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}
