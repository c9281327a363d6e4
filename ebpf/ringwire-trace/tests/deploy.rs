//! The tracer's deploy/ files run command lines `ringwire-trace` accepts, with the
//! capabilities it needs and no more.

use std::process::Command;

fn deploy(path: &str) -> String {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/").to_string() + path;
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// Every `--flag` in `args` is one `ringwire-trace top` accepts.
fn accepted_by_top(args: &[&str]) {
    let help = Command::new(env!("CARGO_BIN_EXE_ringwire-trace"))
        .args(["top", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for f in args.iter().filter(|a| a.starts_with("--")) {
        assert!(
            help.contains(&format!("{f} ")),
            "ringwire-trace top has no {f}"
        );
    }
}

#[test]
fn systemd_unit_runs_top_with_two_capabilities() {
    let unit = deploy("systemd/ringwire-trace.service");
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart=/usr/local/bin/ringwire-trace top "))
        .expect("ExecStart runs ringwire-trace top");
    accepted_by_top(&exec.split_whitespace().collect::<Vec<_>>());
    for line in ["CapabilityBoundingSet=", "AmbientCapabilities="] {
        let caps = unit
            .lines()
            .find_map(|l| l.strip_prefix(line))
            .unwrap_or_else(|| panic!("{line} missing"));
        assert_eq!(caps, "CAP_BPF CAP_PERFMON");
    }
    assert!(deploy("prometheus/prometheus.yml").contains("localhost:9102"));
}

#[test]
fn daemonset_runs_top_unprivileged() {
    let ds = deploy("kubernetes/ringwire-trace-daemonset.yaml");
    let args: Vec<&str> = ds
        .lines()
        .skip_while(|l| !l.trim().starts_with("command:"))
        .skip(1)
        .map_while(|l| l.trim().strip_prefix("- "))
        .map(|a| a.trim_matches('"'))
        .collect();
    assert_eq!(args[..2], ["/usr/local/bin/ringwire-trace", "top"]);
    accepted_by_top(&args);
    assert!(ds.contains("add: [\"BPF\", \"PERFMON\"]"));
    assert!(ds.contains("privileged: false"));
    assert!(ds.contains("hostPID: true"));
}
