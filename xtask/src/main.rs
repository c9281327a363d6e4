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

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{exit, Command, Stdio};
use std::time::Instant;

const FUZZ_TARGETS: &[&str] = &["frame_decoder", "handshake"];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = project_root();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(&root),
        Some("build") => build_ebpf(&root)
            .and_then(|_| run(&root, "cargo", &["build", "--release", "--workspace"])),
        Some("build-ebpf") => build_ebpf(&root).map(|obj| println!("{}", obj.display())),
        Some("fuzz") => {
            let secs = args.get(1).map(String::as_str).unwrap_or("60");
            fuzz(&root, secs)
        }
        Some("rxe-test") => rxe_test(&root).map(|(passed, failed)| {
            println!("rxe-test: {passed} passed, {failed} failed");
        }),
        Some("rxe-bench") => {
            let rounds = args.get(1).and_then(|r| r.parse().ok()).unwrap_or(3);
            rxe_bench(&root, rounds)
        }
        Some("trace-overhead") => {
            let rounds = args.get(1).and_then(|r| r.parse().ok()).unwrap_or(5);
            trace_overhead(&root, rounds)
        }
        _ => {
            eprintln!(
                "usage: cargo xtask <ci | build | build-ebpf | fuzz [SECONDS] | trace-overhead [ROUNDS] | rxe-test | rxe-bench [ROUNDS]>"
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

fn run(dir: &Path, program: &str, args: &[&str]) -> Result<(), String> {
    let started = Instant::now();
    eprintln!("xtask: $ {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .current_dir(dir)
        .status()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    eprintln!(
        "xtask: {program} {} took {:.1}s",
        args.first().unwrap_or(&""),
        started.elapsed().as_secs_f64()
    );
    if status.success() {
        Ok(())
    } else {
        Err(format!("{program} {} failed: {status}", args.join(" ")))
    }
}

fn ci(root: &Path) -> Result<(), String> {
    run(root, "cargo", &["fmt", "--all", "--check"])?;
    ensure_rdma_build_deps()?;
    // ringwire-trace embeds the BPF object: build it first; cargo finds it through the env.
    build_ebpf(root)?;
    run(
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
    let (mut passed, mut failed) = run_tests(
        root,
        &["test", "--workspace", "--locked", "--profile", "ci"],
    )?;
    let (rxe_passed, rxe_failed) = rxe_test(root)?;
    passed += rxe_passed;
    failed += rxe_failed;
    // The fuzz targets must keep building; a short run catches regressions in the harness.
    fuzz(root, "20")?;
    println!("ci: {passed} passed, {failed} failed");
    Ok(())
}

/// Runs `cargo test`, echoing its output, and adds up its "test result" lines.
fn run_tests(dir: &Path, args: &[&str]) -> Result<(u64, u64), String> {
    let mut cmd = Command::new("cargo");
    cmd.args(args).current_dir(dir);
    count_test_results(cmd, &format!("cargo {}", args.join(" ")))
}

/// Runs test binaries through `cmd`, echoing their output; adds up their "test result"
/// lines. Fails when `cmd` does.
fn count_test_results(mut cmd: Command, what: &str) -> Result<(u64, u64), String> {
    eprintln!("xtask: $ {what}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    let (mut passed, mut failed) = (0, 0);
    let stdout = child.stdout.take().expect("piped");
    for line in BufReader::new(stdout).lines() {
        let line = line.map_err(|e| e.to_string())?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            passed += count_before(rest, " passed");
            failed += count_before(rest, " failed");
        }
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("{what} failed: {status}"));
    }
    Ok((passed, failed))
}

/// Installs Debian packages that are missing.
fn ensure_packages(packages: &[&str]) -> Result<(), String> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg")
                .args(["-s", p])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let apt = |args: &[&str]| {
        let mut all = vec!["-o", "DPkg::Lock::Timeout=600", "-qq"];
        all.extend_from_slice(args);
        Command::new("apt-get")
            .args(&all)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map_err(|e| format!("cannot run apt-get: {e}"))
    };
    eprintln!("xtask: installing {}", missing.join(" "));
    apt(&["update"])?;
    let mut args = vec!["install", "-y", "--no-install-recommends"];
    args.extend_from_slice(&missing);
    if !apt(&args)?.success() {
        return Err(format!("apt-get install {} failed", missing.join(" ")));
    }
    Ok(())
}

/// rdma-mummy-sys (the verbs bindings under `sideway`) builds its loader with cmake and
/// generates bindings with libclang.
fn ensure_rdma_build_deps() -> Result<(), String> {
    ensure_packages(&["cmake", "clang", "libclang-dev"])
}

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

/// Runs `script` (bash) in the soft-RoCE guest; its output streams through `count` when
/// given. The guest shares the host's filesystem read-only, so host-built binaries run.
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
fn rxe_test(root: &Path) -> Result<(u64, u64), String> {
    ensure_rdma_build_deps()?;
    let exes = build_executables(
        root,
        &[
            "test",
            "--release",
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
    // markdown_test is left out over RDMA: it stalls there now and then (3 of about 30 full
    // runs), for a reason not found yet (docs/rdma.md, "Known problems"); it runs over TCP.
    let script = format!(
        // Warnings (queue-pair errors, refused connections) show with a failing test's output.
        "set -u; rc=0; export RUST_LOG=ringwire=warn\n\
         {rdma} --test-threads 1 || rc=1\n\
         RINGWIRE_TEST_FABRIC=rdma {msgr} --test-threads 1 --skip markdown_test || rc=1\n\
         exit $rc\n",
        rdma = exe("tests/rdma.rs")?,
        msgr = exe("tests/test_msgr.rs")?,
    );
    count_test_results(
        rxe_vm(root, &script, "lo"),
        "the RDMA tests in the rxe guest",
    )
    .map_err(|e| {
        format!("{e} (exit 124: the guest did not boot or timed out; 120: rdma_rxe setup failed)")
    })
}

/// The number just before `word` ("ok. 7 passed" → 7).
fn count_before(text: &str, word: &str) -> u64 {
    text.find(word)
        .and_then(|end| text[..end].rsplit([' ', '.']).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn fuzz(root: &Path, secs: &str) -> Result<(), String> {
    ensure_cargo_fuzz()?;
    let fuzz_dir = root.join("messenger").join("fuzz");
    for target in FUZZ_TARGETS {
        let corpus = fuzz_dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus).map_err(|e| e.to_string())?;
        if *target == "frame_decoder" {
            seed_with_captures(root, &corpus)?;
        }
        let max_time = format!("-max_total_time={secs}");
        run(
            &fuzz_dir,
            "cargo",
            &[
                "+nightly",
                "fuzz",
                "run",
                "--release",
                target,
                corpus.to_str().expect("utf-8 path"),
                "--",
                &max_time,
                "-rss_limit_mb=2048",
            ],
        )?;
    }
    Ok(())
}

/// Real Ceph byte streams make a far better starting corpus than nothing.
fn seed_with_captures(root: &Path, corpus: &Path) -> Result<(), String> {
    let captures = root.join("../shared/fixtures/msgr2");
    let Ok(entries) = std::fs::read_dir(&captures) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "bin") {
            let dest = corpus.join(entry.file_name());
            if !dest.exists() {
                std::fs::copy(&path, &dest).map_err(|e| e.to_string())?;
            }
        }
    }
    Ok(())
}

/// Where the BPF object is built (outside the clone, so rebuilds are incremental).
fn ebpf_target_dir() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/tmp".into());
    home.join(".cache").join("ringwire-ebpf-target")
}

/// Builds ebpf/ringwire-trace-ebpf for bpfel-unknown-none with nightly and bpf-linker, and
/// points RINGWIRE_TRACE_BPF (for this process and the cargo commands it runs) at the object.
fn build_ebpf(root: &Path) -> Result<PathBuf, String> {
    ensure_bpf_toolchain()?;
    let crate_dir = root.join("ebpf").join("ringwire-trace-ebpf");
    let target_dir = ebpf_target_dir();
    let started = Instant::now();
    eprintln!("xtask: building the BPF object (nightly, bpfel-unknown-none)");
    let status = Command::new("cargo")
        .args([
            "+nightly",
            "build",
            "--release",
            "--locked",
            "--target",
            "bpfel-unknown-none",
        ])
        .args(["-Z", "build-std=core", "--target-dir"])
        .arg(&target_dir)
        .env("RUSTFLAGS", "-C debuginfo=2 -C link-arg=--btf")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("CARGO_TARGET_DIR")
        .current_dir(&crate_dir)
        .status()
        .map_err(|e| format!("cannot run cargo +nightly: {e}"))?;
    if !status.success() {
        return Err("building the BPF object failed".into());
    }
    let obj = target_dir.join("bpfel-unknown-none/release/ringwire-trace");
    eprintln!(
        "xtask: BPF object {} in {:.1}s",
        obj.display(),
        started.elapsed().as_secs_f64()
    );
    // SAFETY: single-threaded at this point; the variable is read by child processes.
    unsafe { std::env::set_var("RINGWIRE_TRACE_BPF", &obj) };
    Ok(obj)
}

/// nightly with rust-src, and bpf-linker linked against that nightly's own libLLVM (Debian
/// has no LLVM as new as nightly's), as shared/recipes/ebpf.md found to work.
fn ensure_bpf_toolchain() -> Result<(), String> {
    let has_nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_nightly {
        run(
            Path::new("."),
            "rustup",
            &["toolchain", "install", "nightly", "--profile", "minimal"],
        )?;
    }
    run(
        Path::new("."),
        "rustup",
        &["component", "add", "rust-src", "--toolchain", "nightly"],
    )?;
    let have_linker = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if have_linker {
        return Ok(());
    }
    let out = |args: &[&str]| -> Result<String, String> {
        let o = Command::new("rustc")
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let sysroot = out(&["+nightly", "--print", "sysroot"])?;
    let version = out(&["+nightly", "-vV"])?;
    let major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .ok_or("cannot read nightly's LLVM version")?
        .to_string();
    let lib = std::fs::read_dir(Path::new(&sysroot).join("lib"))
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libLLVM.so."))
        })
        .ok_or("nightly ships no libLLVM.so")?;
    // bpf-linker links -lLLVM from $LLVM_PREFIX/lib and keeps that directory as its RUNPATH.
    let home = std::env::var("HOME").map_err(|e| e.to_string())?;
    let shim = Path::new(&home).join(".cargo/llvm-shim/lib");
    std::fs::create_dir_all(&shim).map_err(|e| e.to_string())?;
    for name in [
        "libLLVM.so".to_string(),
        lib.file_name().unwrap().to_string_lossy().to_string(),
    ] {
        let link = shim.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&lib, &link).map_err(|e| e.to_string())?;
    }
    let feature = format!("llvm-{major}");
    let status = Command::new("cargo")
        .args([
            "install",
            "--locked",
            "--no-default-features",
            "--features",
            &feature,
        ])
        .arg("bpf-linker@0.13.0")
        .env("LLVM_PREFIX", shim.parent().expect("shim has a parent"))
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .map_err(|e| e.to_string())?;
    if status.success() {
        Ok(())
    } else {
        Err("installing bpf-linker failed".into())
    }
}

fn ensure_cargo_fuzz() -> Result<(), String> {
    let have = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if have {
        return Ok(());
    }
    run(
        Path::new("."),
        "cargo",
        &["install", "--locked", "cargo-fuzz", "--version", "0.13.2"],
    )
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

/// One `ringwire bench --rounds 1 --json` run of `binary`: (p50 µs, stream MB/s, many-connection
/// messages/s).
fn bench_once(binary: &Path) -> Result<[f64; 3], String> {
    let out = Command::new(binary)
        .args(["bench", "--json", "--rounds", "1"])
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("running {}: {e}", binary.display()))?;
    if !out.status.success() {
        return Err(format!("{} bench failed: {}", binary.display(), out.status));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("bench output: {e}"))?;
    let m = &v["median"];
    let get = |k: &str| m[k].as_f64().ok_or(format!("bench output lacks {k}"));
    Ok([
        get("rw_p50_us")?,
        get("rw_stream_mbps")?,
        get("rw_many_msgs_per_sec")?,
    ])
}

/// The cost of the probes and of the tracer on `ringwire bench`: four variants run in turn each
/// round (so drift hits all alike), then medians and ratios.
fn trace_overhead(root: &Path, rounds: usize) -> Result<(), String> {
    build_ebpf(root)?;
    run(
        root,
        "cargo",
        &[
            "build",
            "--release",
            "-p",
            "ringwire-cli",
            "-p",
            "ringwire-trace",
        ],
    )?;
    let target = target_dir(root);
    let noprobes_dir = target.join("noprobes");
    run(
        root,
        "cargo",
        &[
            "build",
            "--release",
            "-p",
            "ringwire-cli",
            "--no-default-features",
            "--target-dir",
            noprobes_dir.to_str().ok_or("target dir is not UTF-8")?,
        ],
    )?;
    let with_probes = target.join("release/ringwire");
    let without_probes = noprobes_dir.join("release/ringwire");
    let tracer = target.join("release/ringwire-trace");
    // (name, binary, tracer arguments when traced)
    let variants: [(&str, &Path, Option<&[&str]>); 4] = [
        ("no probes", &without_probes, None),
        ("probes", &with_probes, None),
        ("probes + ringwire-trace", &with_probes, Some(&[])),
        ("  ... --io-uring", &with_probes, Some(&["--io-uring"])),
    ];
    let mut runs: Vec<Vec<[f64; 3]>> = vec![Vec::new(); variants.len()];
    for round in 0..rounds {
        eprintln!("xtask: round {} of {rounds}", round + 1);
        for (i, (_, binary, traced)) in variants.iter().enumerate() {
            let Some(extra) = traced else {
                runs[i].push(bench_once(binary)?);
                continue;
            };
            // Attached to the binary before the benchmark starts, so every phase is traced.
            let mut child = Command::new(&tracer)
                .args(["top", "--json", "--interval", "1", "--binary"])
                .arg(binary)
                .args(*extra)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| format!("running {}: {e}", tracer.display()))?;
            let mut line = String::new();
            let _ = BufReader::new(child.stderr.take().expect("piped")).read_line(&mut line);
            if !line.starts_with("tracing") {
                let _ = child.kill();
                return Err(format!("ringwire-trace did not attach: {line}"));
            }
            let result = bench_once(binary);
            let _ = child.kill();
            let _ = child.wait();
            runs[i].push(result?);
        }
    }
    let median = |runs: &[[f64; 3]], i: usize| {
        let mut v: Vec<f64> = runs.iter().map(|r| r[i]).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("{rounds} rounds, medians (ringwire bench, pinned as it pins itself):");
    println!(
        "{:<24} {:>9} {:>14} {:>16}",
        "build", "p50 µs", "stream MB/s", "100-conn msg/s"
    );
    for (i, ((name, _, _), r)) in variants.iter().zip(&runs).enumerate() {
        // Each row against the one it adds to: probes vs none, traced vs untraced.
        let base = match i {
            0 => None,
            3 => Some(1),
            _ => Some(i - 1),
        };
        let ratios = base.map_or(String::new(), |b| {
            let ratio = |m: usize| median(r, m) / median(&runs[b], m);
            format!(
                "   p50 {:.3}x  stream {:.3}x  rate {:.3}x  (vs {})",
                ratio(0),
                ratio(1),
                ratio(2),
                variants[b].0
            )
        });
        println!(
            "{name:<24} {:>9.2} {:>14.0} {:>16.0}{ratios}",
            median(r, 0),
            median(r, 1),
            median(r, 2)
        );
    }
    Ok(())
}

/// `ringwire bench --transport rdma` and the verbs-level references, interleaved round by
/// round in one guest (rxe on a dummy netdev: rsockets needs rdma_cm, which cannot route
/// over rxe on `lo`). Ratios are paired within a round; medians over rounds are printed.
fn rxe_bench(root: &Path, rounds: usize) -> Result<(), String> {
    ensure_rdma_build_deps()?;
    // The references run in the guest, which uses the host's programs.
    ensure_packages(&["perftest", "rdmacm-utils", "ibverbs-utils", "iproute2"])?;
    run(
        root,
        "cargo",
        &["build", "--release", "--locked", "-p", "ringwire-cli"],
    )?;
    let ringwire = target_dir(root).join("release").join("ringwire");
    let round = format!(
        r#"echo "ROUND $r"
{rw} bench --transport rdma --rounds 1 --iters 3000 --connections 20 --duration 1 --no-pin --busy-poll-us 200 --json || exit 1
ib_send_lat -d rxe0 -x 0 -s 64 -n 3000 >/dev/null 2>&1 & sleep 1
ib_send_lat -d rxe0 -x 0 -s 64 -n 3000 127.0.0.1 | awk '$1 == 64 {{print "IB_SEND_LAT_US", $5}}'; wait
ib_write_bw -d rxe0 -x 0 -s 4194304 -n 100 >/dev/null 2>&1 & sleep 1
ib_write_bw -d rxe0 -x 0 -s 4194304 -n 100 127.0.0.1 | awk '$1 == 4194304 {{print "IB_WRITE_BW_MIBPS", $4}}'; wait
rstream -b "$A%rxenet0" -S 4194304 -C 50 >/dev/null 2>&1 & sleep 1
rstream -s "$A%rxenet0" -S 4194304 -C 50 | awk '$1 == "custom" {{print "RSTREAM_GBPS", $7}}'; wait
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
    let med = |f: &dyn Fn(&Round) -> f64| {
        let mut v: Vec<f64> = done.iter().map(|r| f(r)).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "rxe-bench: {} rounds (medians; ratios paired within a round)",
        done.len()
    );
    println!(
        "  64 B round trip: ringwire p50 {:.1} us, ib_send_lat typical {:.1} us: {:.2} x",
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
        "  4 MiB stream: ringwire {:.1} MB/s, ib_write_bw {:.1} MB/s: {:.2} x; rstream {:.1} MB/s: ringwire {:.2} x rstream",
        med(&|r| r.rw_stream_mbps),
        med(&|r| r.write_bw_mbps),
        med(&|r| r.rw_stream_mbps / r.write_bw_mbps),
        med(&|r| r.rstream_mbps),
        med(&|r| r.rw_stream_mbps / r.rstream_mbps)
    );
    Ok(())
}
