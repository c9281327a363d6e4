//! Soft-RoCE runs in a QEMU guest (`xtask/rxe-vm.sh`; the host kernel has no RDMA): the RDMA
//! tests, and `ringwire bench --transport rdma` against verbs-level references.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::bench::median;
use crate::{exec, provision, target_dir};

/// Builds test binaries (or other targets) on the host; returns the paths cargo reports.
fn build_executables(root: &Path, args: &[&str]) -> Result<Vec<(String, PathBuf)>, String> {
    eprintln!("xtask: $ cargo {}", args.join(" "));
    let out = Command::new("cargo")
        .args(args)
        .current_dir(root)
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    let text = String::from_utf8_lossy(&out.stderr);
    eprint!("{text}");
    if !out.status.success() {
        return Err(format!("cargo {} failed", args.join(" ")));
    }
    // "  Executable tests/rdma.rs (/path/to/rdma-0123)"
    Ok(text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Executable "))
        .filter_map(|l| {
            let (name, rest) = l.split_once(" (")?;
            Some((name.to_string(), PathBuf::from(rest.strip_suffix(')')?)))
        })
        .collect())
}

/// Runs `script` (bash) in the soft-RoCE guest. The guest shares the host's filesystem
/// read-only, so host-built binaries run.
fn rxe_vm(root: &Path, script: &str, netdev: &str) -> Command {
    let mut cmd = Command::new("bash");
    cmd.arg(root.join("xtask").join("rxe-vm.sh"))
        .args(["bash", "-c", script])
        .current_dir(root)
        // Dozens of messengers each register their buffers and payload arena up front.
        .env("RXE_VM_MEM", "6G")
        .env("RXE_VM_TIMEOUT", "1800")
        .env("RXE_NETDEV", netdev);
    cmd
}

/// The RDMA test suite in the guest: tests/rdma.rs, and every test_msgr scenario with its
/// messengers on `rdma:` addresses. A guest that cannot boot is a failure, not a skip.
pub fn test(root: &Path) -> Result<(u64, u64), String> {
    let exes = build_executables(
        root,
        // The profile `ci` tests with, so the dependencies are built once.
        &[
            "test",
            "--profile",
            "ci",
            "--locked",
            "-p",
            "ringwire",
            "--features",
            "rdma-tests",
            "--test",
            "rdma",
            "--test",
            "test_msgr",
            "--no-run",
        ],
    )?;
    let exe = |name: &str| {
        exes.iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.display().to_string())
            .ok_or_else(|| format!("cargo built no {name}"))
    };
    let script = format!(
        // Warnings (queue-pair errors, refused connections) show with a failing test's output.
        "set -u; rc=0; export RUST_LOG=ringwire=warn\n\
         {rdma} --test-threads 1 || rc=1\n\
         RINGWIRE_TEST_FABRIC=rdma {msgr} --test-threads 1 || rc=1\n\
         exit $rc\n",
        rdma = exe("tests/rdma.rs")?,
        msgr = exe("tests/test_msgr.rs")?,
    );
    exec::count_test_results(
        rxe_vm(root, &script, "lo"),
        "the RDMA tests in the rxe guest",
    )
    .map_err(|e| {
        format!("{e} (exit 124: the guest did not boot or timed out; 120: rdma_rxe setup failed)")
    })
}

/// `ringwire bench --transport rdma` and the verbs-level references, interleaved round by
/// round in one guest (rxe on a dummy netdev: rsockets needs rdma_cm, which cannot route
/// over rxe on `lo`). Ratios are paired within a round; medians over rounds are printed.
pub fn bench(root: &Path, rounds: usize) -> Result<(), String> {
    // The references run in the guest, which uses the host's programs.
    provision::ensure_packages(&["perftest", "rdmacm-utils", "ibverbs-utils", "iproute2"])?;
    exec::run(
        root,
        "cargo",
        &["build", "--release", "--locked", "-p", "ringwire-cli"],
    )?;
    let ringwire = target_dir(root).join("release").join("ringwire");
    // One size per phase for every side: the ping-pong payload of `ringwire bench --size` and
    // `ib_send_lat -s`, the stream message of `--large`, `ib_write_bw -s` and `rstream -S`.
    const SMALL: usize = 64;
    const LARGE: usize = 4 << 20;
    let round = format!(
        r#"echo "ROUND $r"
{rw} bench --transport rdma --rounds 1 --iters 3000 --connections 20 --duration 1 --no-pin --busy-poll-us 200 --size {SMALL} --large {LARGE} --no-rados --no-ceph --json || exit 1
ib_send_lat -d rxe0 -x 0 -s {SMALL} -n 3000 >/dev/null 2>&1 & sleep 1
ib_send_lat -d rxe0 -x 0 -s {SMALL} -n 3000 127.0.0.1 | awk '$1 == {SMALL} {{print "IB_SEND_LAT_US", $5}}'; wait
ib_write_bw -d rxe0 -x 0 -s {LARGE} -n 100 >/dev/null 2>&1 & sleep 1
ib_write_bw -d rxe0 -x 0 -s {LARGE} -n 100 127.0.0.1 | awk '$1 == {LARGE} {{print "IB_WRITE_BW_MIBPS", $4}}'; wait
rstream -b "$A%rxenet0" -S {LARGE} -C 50 >/dev/null 2>&1 & sleep 1
rstream -s "$A%rxenet0" -S {LARGE} -C 50 | awk '$1 == "custom" {{print "RSTREAM_GBPS", $7}}'; wait
"#,
        rw = ringwire.display()
    );
    let script = format!(
        "A=$(ip -6 addr show rxenet0 | awk '/inet6 fe80/{{print $2}}' | cut -d/ -f1)\n\
         for r in $(seq {rounds}); do\n{round}done\n"
    );
    let out = rxe_vm(root, &script, "dummy")
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run the rxe guest: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    print!("{text}");
    if !out.status.success() {
        return Err(format!("the benchmark guest failed: {}", out.status));
    }
    #[derive(Default)]
    struct Round {
        rw_p50_us: f64,
        rw_stream_mbps: f64,
        /// The blocking TCP ping-pong and the CRC32C rate `ringwire bench` measures itself.
        std_p50_us: f64,
        crc_mbps: f64,
        send_lat_us: f64,
        write_bw_mbps: f64,
        rstream_mbps: f64,
    }
    let mut all: Vec<Round> = Vec::new();
    for line in text.lines() {
        let num = |l: &str| {
            l.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<f64>().ok())
        };
        if line.starts_with("ROUND") {
            all.push(Round::default());
        }
        let Some(r) = all.last_mut() else { continue };
        // The guest's console is a terminal: the JSON follows the bench's progress bar.
        if let Some(at) = line.find("{\"policy\"") {
            let v: serde_json::Value =
                serde_json::from_str(&line[at..]).map_err(|e| format!("bench JSON: {e}"))?;
            // The payload Ringwire's receivers saw must be what the references move.
            let sizes = &v["sizes"];
            for (phase, want) in [("ping_pong", SMALL), ("stream", LARGE)] {
                if sizes[phase]["ringwire"].as_u64() != Some(want as u64) {
                    return Err(format!(
                        "ringwire bench sent {} payload bytes in its {phase} phase, not {want}",
                        sizes[phase]["ringwire"]
                    ));
                }
            }
            r.rw_p50_us = v["median"]["rw_p50_us"].as_f64().unwrap_or(0.0);
            r.rw_stream_mbps = v["median"]["rw_stream_mbps"].as_f64().unwrap_or(0.0);
            r.std_p50_us = v["median"]["std_p50_us"].as_f64().unwrap_or(0.0);
            r.crc_mbps = v["median"]["crc32c_mbps"].as_f64().unwrap_or(0.0);
        } else if line.starts_with("IB_SEND_LAT_US") {
            r.send_lat_us = num(line).unwrap_or(0.0);
        } else if line.starts_with("IB_WRITE_BW_MIBPS") {
            // perftest's MB is 2^20 bytes.
            r.write_bw_mbps = num(line).unwrap_or(0.0) * 1.048_576;
        } else if line.starts_with("RSTREAM_GBPS") {
            r.rstream_mbps = num(line).unwrap_or(0.0) * 125.0;
        }
    }
    let complete = |r: &&Round| {
        [
            r.rw_p50_us,
            r.rw_stream_mbps,
            r.send_lat_us,
            r.write_bw_mbps,
            r.rstream_mbps,
        ]
        .iter()
        .all(|v| *v > 0.0)
    };
    let done: Vec<&Round> = all.iter().filter(complete).collect();
    if done.is_empty() {
        return Err("no complete round (see the output above)".into());
    }
    let med = |f: &dyn Fn(&Round) -> f64| median(done.iter().map(|r| f(r)).collect());
    println!(
        "rxe-bench: {} rounds (medians; ratios paired within a round)",
        done.len()
    );
    println!(
        "  {SMALL} B round trip: ringwire p50 {:.1} us, ib_send_lat typical {:.1} us: {:.2} x",
        med(&|r| r.rw_p50_us),
        med(&|r| r.send_lat_us),
        med(&|r| r.rw_p50_us / r.send_lat_us)
    );
    println!(
        "  the same guest over TCP: blocking std ping-pong p50 {:.1} us (ringwire over RDMA {:.2} x); CRC32C {:.0} MB/s on one vCPU",
        med(&|r| r.std_p50_us),
        med(&|r| r.rw_p50_us / r.std_p50_us),
        med(&|r| r.crc_mbps)
    );
    println!(
        "  {} MiB stream: ringwire {:.1} MB/s, ib_write_bw {:.1} MB/s: {:.2} x; rstream {:.1} MB/s: ringwire {:.2} x rstream",
        LARGE >> 20,
        med(&|r| r.rw_stream_mbps),
        med(&|r| r.write_bw_mbps),
        med(&|r| r.rw_stream_mbps / r.write_bw_mbps),
        med(&|r| r.rstream_mbps),
        med(&|r| r.rw_stream_mbps / r.rstream_mbps)
    );
    Ok(())
}
