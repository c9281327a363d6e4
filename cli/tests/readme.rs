//! The README's "Try it" commands and its library example, run as written against each other:
//! the serve command, then the ping command, then the example program built as a new project
//! that depends on the library (what `cargo add ringwire` gives a user).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("cli/ is in the workspace")
        .to_path_buf()
}

/// The fenced block right after `<!-- readme-test: NAME -->`.
fn block(readme: &str, name: &str) -> String {
    let marker = format!("<!-- readme-test: {name} -->");
    let after = readme
        .split_once(&marker)
        .unwrap_or_else(|| panic!("README.md has no {marker}"))
        .1;
    let body = after.trim_start().split_once('\n').expect("a fence line").1;
    body.split_once("\n```")
        .expect("a closing fence")
        .0
        .to_string()
}

/// A README command line (`cargo run --release -p ringwire-cli -- ARGS`) as the built binary.
fn command(line: &str) -> Command {
    let args = line
        .trim()
        .strip_prefix("cargo run --release -p ringwire-cli -- ")
        .unwrap_or_else(|| panic!("not a `cargo run -p ringwire-cli` line: {line}"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringwire"));
    cmd.args(args.split_whitespace());
    cmd
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The target directory this test binary was built in (…/target/release/deps/readme-…).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors()
        .nth(3)
        .expect("target/PROFILE/deps/exe")
        .to_path_buf()
}

/// Builds the README's library example as its own project depending on `messenger/`, with
/// the workspace's lock file so that it resolves the same versions offline.
fn build_example(source: &str) -> PathBuf {
    let dir = target_dir().join("readme-example");
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"readme-example\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\n\
             [dependencies]\nringwire = {{ path = {:?} }}\n\n[workspace]\n",
            repo().join("messenger")
        ),
    )
    .unwrap();
    std::fs::write(dir.join("src/main.rs"), source).unwrap();
    std::fs::copy(repo().join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "--offline", "--quiet"])
        .current_dir(&dir)
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the README's library example does not build:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.join("target/debug/readme-example")
}

#[test]
fn readme_serve_ping_and_library_example_work_together() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    // Build first: the server should not wait on the compiler.
    let example = build_example(&block(&readme, "library"));

    let mut serve = command(&block(&readme, "serve"));
    let mut server = Killed(
        serve
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut banner = String::new();
    BufReader::new(server.0.stdout.take().unwrap())
        .read_line(&mut banner)
        .unwrap();
    assert!(
        banner.contains("listening on [v2:127.0.0.1:3300/"),
        "serve printed {banner:?}"
    );

    let ping = command(&block(&readme, "ping")).output().unwrap();
    let stdout = String::from_utf8_lossy(&ping.stdout);
    assert!(
        ping.status.success(),
        "ping failed: {stdout}{}",
        String::from_utf8_lossy(&ping.stderr)
    );
    assert!(stdout.contains("(osd.0, none/crc)"), "{stdout}");
    assert!(stdout.contains("10 sent, 10 received"), "{stdout}");

    let started = Instant::now();
    let run = Command::new(&example).output().unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "example failed: {stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(stdout.trim(), "osd.0 echoed b\"hello\"");
    assert!(started.elapsed() < Duration::from_secs(10));
}
