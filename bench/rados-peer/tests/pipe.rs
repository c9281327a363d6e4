//! `rados-peer` as `ringwire bench` drives it: started with the benchmark's sizes, it runs
//! each phase over real rados-rs connections and answers on its standard output; the sizes it
//! reports are the payloads its server and client saw. (Building this test also builds the
//! binary beside `ringwire`, where the benchmark looks for it.)

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

#[test]
fn every_phase_answers_and_reports_the_payload_sizes_it_moved() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rados-peer"))
        .args(["100", "5000", "3"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start rados-peer");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = || {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        line.trim_end().to_string()
    };
    assert_eq!(line(), "ready");
    let mut ask = |command: &str| {
        writeln!(stdin, "{command}").unwrap();
        line()
    };
    assert_eq!(ask("bogus"), "error unknown command \"bogus\"");
    for pattern in ["task", "thread"] {
        let rtts = ask(&format!("pingpong {pattern} 50"));
        let ns: Vec<u64> = rtts
            .strip_prefix("rtts ")
            .unwrap_or_else(|| panic!("{rtts}"))
            .split(' ')
            .map(|n| n.parse().unwrap())
            .collect();
        assert_eq!(ns.len(), 50, "{pattern}");
        assert!(ns.iter().all(|&n| n > 0), "{pattern}: {rtts}");
    }
    let bps: f64 = ask("stream 10")
        .strip_prefix("bps ")
        .unwrap()
        .parse()
        .unwrap();
    assert!(bps > 0.0);
    let rate: f64 = ask("rate 0.1")
        .strip_prefix("rate ")
        .unwrap()
        .parse()
        .unwrap();
    assert!(rate > 0.0);
    // Pings (0x5001) and their echoes of 100 bytes, stream messages (0x5003) of 5000 with
    // empty acknowledgements, rate-phase pings (0x5005) and echoes of 100; every echo
    // answered its own ping.
    assert_eq!(
        ask("sizes"),
        "sizes mismatches=0 0x5001=100-100 0x5002=100-100 0x5003=5000-5000 0x5004=0-0 \
         0x5005=100-100 0x5006=100-100"
    );
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

#[test]
fn a_ping_too_short_for_its_sequence_number_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_rados-peer"))
        .args(["4", "5000", "3"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("error usage: rados-peer SMALL(>=8)"),
        "{out:?}"
    );
}
