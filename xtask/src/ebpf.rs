//! The BPF object of `ringwire-trace`, and what the probes and the tracer cost the benchmark.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::bench::{bench_once, median};
use crate::{exec, provision, target_dir};

/// Where the BPF object is built (outside the clone, so rebuilds are incremental).
fn ebpf_target_dir() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/tmp".into());
    home.join(".cache").join("ringwire-ebpf-target")
}

/// Builds ebpf/ringwire-trace-ebpf for bpfel-unknown-none with nightly and bpf-linker, and
/// points RINGWIRE_TRACE_BPF (for this process and the cargo commands it runs) at the object.
pub fn build(root: &Path) -> Result<PathBuf, String> {
    provision::ensure_bpf_toolchain()?;
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

/// The cost of the probes and of the tracer on `ringwire bench`: four variants run in turn each
/// round (so drift hits all alike), then medians and ratios.
pub fn trace_overhead(root: &Path, rounds: usize) -> Result<(), String> {
    build(root)?;
    exec::run(
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
    exec::run(
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
    let med = |runs: &[[f64; 3]], i: usize| median(runs.iter().map(|r| r[i]).collect());
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
            let ratio = |m: usize| med(r, m) / med(&runs[b], m);
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
            med(r, 0),
            med(r, 1),
            med(r, 2)
        );
    }
    Ok(())
}
