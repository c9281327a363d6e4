//! `cargo xtask fuzz`: each fuzz target for a while, the frame decoder's corpus seeded with
//! real captures.

use std::path::Path;

use crate::{exec, provision};

const FUZZ_TARGETS: &[&str] = &["frame_decoder", "handshake", "cephx"];

pub fn run(root: &Path, secs: &str) -> Result<(), String> {
    provision::ensure_cargo_fuzz()?;
    let fuzz_dir = root.join("messenger").join("fuzz");
    for target in FUZZ_TARGETS {
        let corpus = fuzz_dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus).map_err(|e| e.to_string())?;
        if *target == "frame_decoder" {
            seed_with_captures(root, &corpus)?;
        }
        let max_time = format!("-max_total_time={secs}");
        exec::run(
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
