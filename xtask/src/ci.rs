//! `cargo xtask ci`: the whole check, in order, and one line adding up every test run.

use std::path::Path;
use std::process::Command;

use crate::{ebpf, exec, fuzz, provision, rxe};

pub fn run(root: &Path) -> Result<(), String> {
    exec::run(root, "cargo", &["fmt", "--all", "--check"])?;
    // A real monitor and the ceph CLI for the interop tests (Debian 12 ships 16.2.15).
    provision::ensure_packages(&["ceph-mon", "ceph-osd", "ceph-common"])?;
    // messenger/tests/netns_cluster.rs builds its network with `ip` and its faults with `nft`.
    provision::ensure_packages(&["iproute2", "nftables"])?;
    // Headless Chromium renders `ringwire bench --report` in cli/tests/bench_report.rs.
    provision::ensure_packages(&["chromium"])?;
    // ringwire-trace embeds the BPF object: build it first; cargo finds it through the env.
    ebpf::build(root)?;
    exec::run(
        root,
        "cargo",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            // tests/rdma.rs too (built for the rxe guest)
            "--features",
            "ringwire/rdma-tests",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    // Profile `ci`: release code with overflow checks on, so arithmetic on values a peer
    // sent that wraps fails a test instead of passing silently.
    let (mut passed, mut failed) = run_tests(
        root,
        &["test", "--workspace", "--locked", "--profile", "ci"],
        &[],
    )?;
    // The test_msgr ports again, every messenger with cephx and every connection sealed.
    let (secure_passed, secure_failed) = run_tests(
        root,
        &[
            "test",
            "--locked",
            "--profile",
            "ci",
            "-p",
            "ringwire",
            "--test",
            "test_msgr",
        ],
        &[("RINGWIRE_TEST_SECURE", "1")],
    )?;
    passed += secure_passed;
    failed += secure_failed;
    let (rxe_passed, rxe_failed) = rxe::test(root)?;
    passed += rxe_passed;
    failed += rxe_failed;
    // The fuzz targets must keep building; a short run catches regressions in the harness.
    fuzz::run(root, "20")?;
    println!("ci: {passed} passed, {failed} failed");
    Ok(())
}

/// Runs `cargo test` with `env` set, echoing its output, and adds up its "test result" lines.
fn run_tests(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<(u64, u64), String> {
    let mut cmd = Command::new("cargo");
    cmd.args(args).envs(env.iter().copied()).current_dir(dir);
    exec::count_test_results(cmd, &format!("cargo {}", args.join(" ")))
}
