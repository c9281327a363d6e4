//! Issue 15's reproduction, run as a user would: `ringwire ping` 50 times against one
//! `ringwire serve`. Each ping is a lossy client that leaves; the server must not keep a
//! session for any of them (it used to show `ringwire_sessions{state="connecting"} 50`
//! forever).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The body of `GET /metrics`.
fn metrics(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    resp.split_once("\r\n\r\n").unwrap().1.to_string()
}

/// The value of the sample named exactly `sample` (name and labels).
fn sample(body: &str, sample: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn fifty_pings_leave_no_session_behind() {
    let mut server = Killed(
        Command::new(env!("CARGO_BIN_EXE_ringwire"))
            .args(["serve", "--bind", "v2:127.0.0.1:0", "--workers", "1"])
            .args(["--metrics", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut out = BufReader::new(server.0.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    // "osd.0 listening on [v2:127.0.0.1:PORT/0]"
    let addr = line
        .split_once('[')
        .and_then(|(_, rest)| rest.split_once(']'))
        .unwrap_or_else(|| panic!("serve printed {line:?}"))
        .0
        .to_string();
    line.clear();
    out.read_line(&mut line).unwrap();
    // "metrics at http://127.0.0.1:PORT/metrics"
    let http = line
        .trim()
        .strip_prefix("metrics at http://")
        .and_then(|r| r.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("serve printed {line:?}"))
        .to_string();

    const PINGS: usize = 50;
    for i in 0..PINGS {
        let ping = Command::new(env!("CARGO_BIN_EXE_ringwire"))
            .args(["ping", "--count", "1", &addr])
            .output()
            .unwrap();
        assert!(
            ping.status.success(),
            "ping {i}: {}",
            String::from_utf8_lossy(&ping.stderr)
        );
    }

    let sessions = |state: &str| {
        let body = metrics(&http);
        let name = format!("ringwire_sessions{{entity=\"osd.0\",state=\"{state}\"}}");
        sample(&body, &name).unwrap_or_else(|| panic!("no {name} in\n{body}"))
    };
    // The last ping's session ends when its connection closes: moments after it exits.
    let deadline = Instant::now() + Duration::from_secs(10);
    while sessions("connecting") + sessions("ready") > 0.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(sessions("connecting"), 0.0);
    assert_eq!(sessions("ready"), 0.0);
    let body = metrics(&http);
    let resets = sample(&body, "ringwire_resets_total{entity=\"osd.0\"}");
    assert_eq!(
        resets,
        Some(PINGS as f64),
        "each ping's session ended with it"
    );
}
