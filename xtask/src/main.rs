//! `cargo xtask`: the project's build and test entry points.
//!
//! - `cargo xtask ci`: formatting check, clippy with warnings denied, every test.
//! - `cargo xtask build`: release build of the workspace.
//! - `cargo xtask fuzz [SECONDS]`: runs each fuzz target (cargo-fuzz, nightly) for SECONDS.

use std::path::{Path, PathBuf};
use std::process::{exit, Command};
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
    run(
        root,
        "cargo",
        &["test", "--workspace", "--locked", "--release"],
    )?;
    // The fuzz targets must keep building; a short run catches regressions in the harness.
    fuzz(root, "20")
}

fn fuzz(root: &Path, secs: &str) -> Result<(), String> {
    ensure_cargo_fuzz()?;
    let fuzz_dir = root.join("messenger").join("fuzz");
    for target in FUZZ_TARGETS {
        let corpus = fuzz_dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus).map_err(|e| e.to_string())?;
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
