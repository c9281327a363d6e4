//! Child processes: run one, echoing what it runs and how long it took; or run test binaries
//! and add up their results (`ci` and `rxe-test` both count tests this way).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

/// Runs `program` in `dir`, echoing the command and how long it took; fails when it does.
pub fn run(dir: &Path, program: &str, args: &[&str]) -> Result<(), String> {
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

/// Runs test binaries through `cmd`, echoing their output; adds up their "test result"
/// lines. Fails when `cmd` does.
pub fn count_test_results(mut cmd: Command, what: &str) -> Result<(u64, u64), String> {
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

/// The number just before `word` ("ok. 7 passed" → 7).
fn count_before(text: &str, word: &str) -> u64 {
    text.find(word)
        .and_then(|end| text[..end].rsplit([' ', '.']).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}
