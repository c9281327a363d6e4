//! The deploy/ files stay in step with the code: the dashboard queries only metrics a messenger
//! exports, and the systemd unit's command line is one the CLI accepts. (The tracer's panels,
//! unit and DaemonSet are checked by ringwire-trace's tests.)

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use ringwire::proto::{EntityName, EntityType};
use ringwire::{Connection, Dispatcher, Incoming, Messenger, Options};

struct Nothing;
impl Dispatcher for Nothing {
    fn dispatch(&self, _: &Connection, _: Incoming) {}
}

fn deploy(path: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("ringwire_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

#[test]
fn dashboard_queries_only_exported_metrics() {
    let dash: serde_json::Value = serde_json::from_str(&deploy("grafana/ringwire-dashboard.json"))
        .expect("the dashboard is valid JSON");
    let mut queried = BTreeSet::new();
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            queried.extend(metric_names(t["expr"].as_str().unwrap()));
        }
    }
    // ringwire-trace's metrics are checked by its own tests.
    queried.retain(|m| !m.starts_with("ringwire_trace_"));
    assert!(queried.len() >= 10, "{queried:?}");
    let m = Messenger::builder(EntityName::new(EntityType::CLIENT, "x"))
        .options(Options {
            workers: 1,
            ..Options::default()
        })
        .start(Arc::new(Nothing))
        .unwrap();
    let exported = metric_names(&m.metrics_text());
    let missing: Vec<_> = queried.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "dashboard queries metrics nobody exports: {missing:?}"
    );
}

#[test]
fn systemd_unit_command_line_is_accepted() {
    let unit = deploy("systemd/ringwire-serve.service");
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart=/usr/local/bin/ringwire "))
        .expect("ExecStart runs ringwire");
    let flags: Vec<&str> = exec
        .split_whitespace()
        .filter(|w| w.starts_with("--"))
        .collect();
    let help = Command::new(env!("CARGO_BIN_EXE_ringwire"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for f in flags {
        assert!(help.contains(f), "ringwire serve has no {f}");
    }
    assert!(deploy("prometheus/prometheus.yml").contains("localhost:9101"));
}
