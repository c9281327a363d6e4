//! `cargo xtask soak MINUTES`: the namespace cluster (`messenger/tests/netns_cluster.rs`)
//! under rolling faults for MINUTES, then the summary it printed. Not part of `ci`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::provision;

const TEST: &str =
    "a_namespace_cluster_under_real_faults_delivers_every_lossless_message_once_in_order";
/// How the test marks its summary lines.
const SUMMARY: &str = "netns summary: ";

/// Runs the soak, echoing the test's progress; prints the summary again at the end. Fails when
/// the test does: anything lost, duplicated, reordered or corrupt, memory past its bound, or
/// any other check of the test.
pub fn run(root: &Path, minutes: u64) -> Result<(), String> {
    // What `ci` installs for this test, no more.
    provision::ensure_packages(&["iproute2", "nftables"])?;
    let secs = minutes.checked_mul(60).ok_or("MINUTES is too large")?;
    let args = [
        "test",
        "--locked",
        "--profile",
        "ci",
        "-p",
        "ringwire",
        "--test",
        "netns_cluster",
        "--",
        "--exact",
        TEST,
        "--nocapture",
    ];
    eprintln!(
        "xtask: $ RINGWIRE_SOAK_SECS={secs} CI=true cargo {}",
        args.join(" ")
    );
    let mut child = Command::new("cargo")
        .args(args)
        .current_dir(root)
        .env("RINGWIRE_SOAK_SECS", secs.to_string())
        // A machine that cannot run the cluster fails the soak instead of skipping it.
        .env("CI", "true")
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    let stderr = child.stderr.take().expect("piped");
    let mut summary = Vec::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.map_err(|e| e.to_string())?;
        eprintln!("{line}");
        if let Some(s) = line.strip_prefix(SUMMARY) {
            summary.push(s.to_string());
        }
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    println!("soak: {minutes} min, summary:");
    for line in &summary {
        println!("  {line}");
    }
    if summary.is_empty() {
        return Err(format!("the soak ended without a summary: {status}"));
    }
    if !status.success() {
        return Err(format!("the soak failed: {status}"));
    }
    Ok(())
}
