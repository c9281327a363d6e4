//! `ringwire bench` compares like with like: a short run of the built binary states, for each
//! phase, the payload bytes per message of Ringwire and of the baselines, and they are equal
//! (and equal to `--size` and `--large`).

use std::process::Command;

fn bench(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ringwire"))
        .arg("bench")
        .args(args)
        .output()
        .expect("run ringwire")
}

#[test]
fn json_states_equal_sizes_for_ringwire_and_the_baselines() {
    let out = bench(&[
        "--rounds",
        "1",
        "--iters",
        "200",
        "--duration",
        "0.2",
        "--connections",
        "4",
        "--size",
        "100",
        "--large",
        "5000",
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON report");
    assert_eq!(v["small_bytes"], 100, "{v}");
    assert_eq!(v["large_bytes"], 5000, "{v}");
    let sizes = &v["sizes"];
    for (phase, want, io_uring) in [
        ("ping_pong", 100, true),
        ("stream", 5000, true),
        ("rate", 100, false),
    ] {
        let p = &sizes[phase];
        assert_eq!(p["ringwire"], want, "{phase}: {p}");
        assert_eq!(p["std"], want, "{phase}: {p}");
        if io_uring {
            assert_eq!(p["io_uring"], want, "{phase}: {p}");
        } else {
            assert!(p["io_uring"].is_null(), "{phase}: {p}");
        }
        // Framing is named, not hidden in the payload: a msgr2 MESSAGE frame costs a preamble,
        // a message header and CRCs.
        let overhead = p["ringwire_frame_overhead"].as_u64().expect("a number");
        assert!((32..=256).contains(&overhead), "{phase}: {p}");
    }
    // Pings come back as they went; the stream's acknowledgements are empty.
    assert_eq!(sizes["ping_pong"]["ringwire_reply"], 100, "{sizes}");
    assert_eq!(sizes["rate"]["ringwire_reply"], 100, "{sizes}");
    assert_eq!(sizes["stream"]["ringwire_reply"], 0, "{sizes}");
    let i = &v["integrity"];
    assert_eq!(i["lost"], 0, "{i}");
    assert_eq!(i["duplicated"], 0, "{i}");
    assert_eq!(i["reordered"], 0, "{i}");
    assert_eq!(i["echo_mismatches"], 0, "{i}");
    assert!(i["received"].as_u64().unwrap() > 0, "{i}");
}

#[test]
fn size_below_the_sequence_number_is_rejected() {
    let out = bench(&["--size", "4", "--rounds", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--size 4") && stderr.contains("at least 8"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

/// `--mode secure` measures cephx/secure messengers beside the crc ones: both sets of
/// figures and their ratios are in the report, the secure session's integrity count is
/// clean, and the keyring made for the run is gone.
#[test]
fn secure_mode_reports_its_figures_beside_crc_mode() {
    let child = Command::new(env!("CARGO_BIN_EXE_ringwire"))
        .args([
            "bench", "--mode", "secure", "--rounds", "1", "--iters", "200",
        ])
        .args([
            "--duration",
            "0.2",
            "--connections",
            "4",
            "--large",
            "100000",
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run ringwire");
    let keyring = std::env::temp_dir().join(format!("ringwire-bench-{}.keyring", child.id()));
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON report");
    assert_eq!(v["mode"], "secure");
    let m = &v["median"];
    for figure in ["secure_p50_us", "secure_stream_mbps"] {
        assert!(m[figure].as_f64().is_some_and(|x| x > 0.0), "{figure}: {m}");
    }
    for ratio in ["ratio_secure_p50_vs_crc", "ratio_secure_stream_vs_crc"] {
        assert!(v[ratio].as_f64().is_some_and(|x| x > 0.0), "{ratio}: {v}");
    }
    let i = &v["secure_integrity"];
    assert!(i["received"].as_u64().unwrap() > 0, "{i}");
    for bad in ["lost", "duplicated", "reordered", "echo_mismatches"] {
        assert_eq!(i[bad], 0, "{bad}: {i}");
    }
    assert!(!keyring.exists(), "the run's keyring must be removed");
}
