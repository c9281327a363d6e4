//! `cargo xtask`: the project's build and test entry points.
//!
//! - `cargo xtask ci`: formatting check, clippy with warnings denied, every test.
//! - `cargo xtask build`: release build of the workspace.
//! - `cargo xtask fuzz [SECONDS]`: runs each fuzz target (cargo-fuzz, nightly) for SECONDS.

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
        Some("build") => run(&root, "cargo", &["build", "--release", "--workspace"]),
        Some("fuzz") => {
            let secs = args.get(1).map(String::as_str).unwrap_or("60");
            fuzz(&root, secs)
        }
        _ => {
            eprintln!("usage: cargo xtask <ci | build | fuzz [SECONDS]>");
            exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("xtask: {e}");
        exit(1);
    }
}

fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
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
    run(
        root,
        "cargo",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    let (passed, failed) = run_tests(root, &["test", "--workspace", "--locked", "--release"])?;
    // The fuzz targets must keep building; a short run catches regressions in the harness.
    fuzz(root, "20")?;
    println!("ci: {passed} passed, {failed} failed");
    Ok(())
}

/// Runs `cargo test`, echoing its output, and adds up its "test result" lines.
fn run_tests(dir: &Path, args: &[&str]) -> Result<(u64, u64), String> {
    eprintln!("xtask: $ cargo {}", args.join(" "));
    let mut child = Command::new("cargo")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
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
        return Err(format!("cargo {} failed: {status}", args.join(" ")));
    }
    Ok((passed, failed))
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
