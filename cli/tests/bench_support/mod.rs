//! What the tests of `ringwire bench` share: running the built binary on a short run, and
//! finding the peers it measures.
// Each test file uses part of it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

pub fn bench(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ringwire"))
        .arg("bench")
        .args(args)
        .output()
        .expect("run ringwire")
}

/// The short run the tests make: 100-byte pings, 5000-byte stream messages.
pub const SHORT: [&str; 12] = [
    "--rounds",
    "1",
    "--iters",
    "200",
    "--duration",
    "0.2",
    "--connections",
    "4",
    "--size",
    "100",
    "--large",
    "5000",
];

/// `rados-peer`, built beside `ringwire` by `cargo test --workspace` (its own test needs it).
pub fn rados_peer() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_ringwire")).with_file_name("rados-peer");
    assert!(
        path.exists(),
        "{} missing: build it with `cargo build -p ringwire-rados-peer` in this profile \
         (`cargo test --workspace` does)",
        path.display()
    );
    path
}

/// Whether `tool` is on the PATH.
pub fn installed(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

pub fn ceph_mon_installed() -> bool {
    installed("ceph-mon")
}

/// Whether this is a CI run, where a missing resource fails its test.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}
