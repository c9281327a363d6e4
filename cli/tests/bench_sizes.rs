//! `ringwire bench` compares like with like: a short run of the built binary states, for each
//! phase, the payload bytes per message of Ringwire and of the baselines, and they are equal
//! (and equal to `--size` and `--large`); the msgr2 peers (rados-rs, ceph-mon) are measured in
//! the same run with the same bytes, or their columns say why not.

mod bench_support;

use bench_support::{bench, ceph_mon_installed, in_ci, rados_peer, SHORT};

#[test]
fn json_states_equal_sizes_for_ringwire_and_the_baselines() {
    let mut args = SHORT.to_vec();
    args.extend(["--no-rados", "--no-ceph", "--json"]);
    let out = bench(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON report");
    // Peers left out say so, and carry no figures.
    for (peer, flag) in [("rados_rs", "--no-rados"), ("ceph_mon", "--no-ceph")] {
        let p = &v["peers"][peer];
        assert_eq!(p["measured"], false, "{p}");
        assert!(p["note"].as_str().unwrap().contains(flag), "{p}");
    }
    assert!(v["median"]["rados"].is_null() && v["median"]["keepalive"].is_null());
    assert!(v["sizes"]["ping_pong"]["rados_rs"].is_null());
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
fn peers_and_the_application_thread_pattern_move_the_same_bytes_in_the_same_run() {
    let peer = rados_peer();
    let mut args = SHORT.to_vec();
    args.extend(["--rados-peer", peer.to_str().unwrap(), "--json"]);
    let out = bench(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON report");
    let sizes = &v["sizes"];
    // Ringwire's application-thread pings and their echoes, as the server and client saw them.
    assert_eq!(sizes["ping_pong"]["ringwire_app_thread"], 100, "{sizes}");
    // rados-rs: the same payload per phase as Ringwire and the baselines, as its server and
    // client saw them.
    for (phase, want, reply) in [
        ("ping_pong", 100, 100),
        ("stream", 5000, 0),
        ("rate", 100, 100),
    ] {
        let p = &sizes[phase];
        assert_eq!(p["rados_rs"], want, "{phase}: {p}");
        assert_eq!(p["rados_rs"], p["ringwire"], "{phase}: {p}");
        assert_eq!(p["rados_rs_reply"], reply, "{phase}: {p}");
    }
    assert_eq!(v["peers"]["rados_rs"]["measured"], true, "{}", v["peers"]);
    let m = &v["median"];
    for figure in [
        &m["rw_app_p50_us"],
        &m["rw_app_p99_us"],
        &m["rw_task_p50_us"],
        &m["rw_task_p99_us"],
        &m["rados"]["task_p50_us"],
        &m["rados"]["thread_p50_us"],
        &m["rados"]["stream_mbps"],
        &m["rados"]["many_msgs_per_sec"],
    ] {
        assert!(figure.as_f64().is_some_and(|f| f > 0.0), "{m}");
    }
    // Every Ringwire figure has a ratio to rados-rs.
    let r = &v["ratios"];
    for ratio in [
        &r["ping_pong_p50_worker"]["rados_rs_task"],
        &r["ping_pong_p50_worker"]["rados_rs_thread"],
        &r["ping_pong_p50_app_thread"]["rados_rs_task"],
        &r["ping_pong_p50_app_thread"]["rados_rs_thread"],
        &r["ping_pong_p50_app_thread"]["std"],
        &r["ping_pong_p50_task"]["rados_rs_task"],
        &r["ping_pong_p50_task"]["io_uring"],
        &r["stream"]["rados_rs"],
        &r["rate"]["rados_rs"],
    ] {
        assert!(ratio.as_f64().is_some_and(|f| f > 0.0), "{r}");
    }
    // ceph-mon: measured where installed (CI installs it), else the column says why.
    let ceph = &v["peers"]["ceph_mon"];
    if ceph_mon_installed() || in_ci() {
        assert_eq!(ceph["measured"], true, "{ceph}");
        let k = &m["keepalive"];
        assert!(
            k["ceph_mon_p50_us"].as_f64().is_some_and(|f| f > 0.0),
            "{k}"
        );
        assert!(
            k["ringwire_p50_us"].as_f64().is_some_and(|f| f > 0.0),
            "{k}"
        );
        let ratio = &r["keepalive_p50_ringwire_vs_ceph_mon"];
        assert!(ratio.as_f64().is_some_and(|f| f > 0.0), "{r}");
    } else {
        assert_eq!(ceph["measured"], false, "{ceph}");
        assert!(
            ceph["note"]
                .as_str()
                .unwrap()
                .contains("ceph-mon not found"),
            "{ceph}"
        );
    }
    let i = &v["integrity"];
    assert_eq!(i["lost"], 0, "{i}");
    assert_eq!(i["echo_mismatches"], 0, "{i}");
}

#[test]
fn the_table_has_a_column_for_each_reference_and_a_row_per_pattern() {
    let mut args = SHORT.to_vec();
    args.extend(["--no-rados", "--no-ceph"]);
    let out = bench(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let header = stdout
        .lines()
        .find(|l| l.starts_with("figure (median)"))
        .unwrap_or_else(|| panic!("{stdout}"));
    let columns: Vec<&str> = header.split_whitespace().skip(2).collect();
    assert_eq!(
        columns,
        ["ringwire", "std", "io_uring", "rados-rs", "ceph-mon"]
    );
    for row in [
        "100 B ping-pong p50, worker",
        "100 B ping-pong p50, app thread",
        "100 B ping-pong p50, task on worker",
        "ping-pong p50, app thread",
        "KEEPALIVE2 p50, Ringwire server",
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with(row)),
            "{row}: {stdout}"
        );
    }
    assert!(
        stdout.contains("rados-rs: not measured (--no-rados)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ceph-mon: not measured (--no-ceph)"),
        "{stdout}"
    );
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
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_ringwire"))
        .args([
            "bench", "--mode", "secure", "--rounds", "1", "--iters", "200",
        ])
        .args(["--no-rados", "--no-ceph"])
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

/// `-n NAME -k KEYRING`: the secure run's client authenticates as NAME with the key the
/// keyring holds for it (the benchmark's monitor is given that key); a name the keyring does
/// not hold is refused before anything runs, naming the name.
#[test]
fn secure_mode_authenticates_with_the_key_n_and_k_name() {
    let dir = std::env::temp_dir().join(format!("ringwire-bench-k-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let keyring = dir.join("admin.keyring");
    let key = ringwire::proto::cephx::CryptoKey::new(
        ringwire::proto::cephx::KeyType::Aes,
        (0, 0),
        ringwire::proto::cephx::Secret::new(vec![0x42; 16]),
    )
    .unwrap();
    let text = format!(
        "[client.admin]\n\tkey = {}\n",
        *ringwire::proto::cephx::keyring::key_to_base64(&key)
    );
    std::fs::write(&keyring, text).unwrap();
    let k = keyring.to_str().unwrap();
    let mut args = vec![
        "--mode",
        "secure",
        "--no-rados",
        "--no-ceph",
        "--json",
        "-k",
        k,
    ];
    args.extend_from_slice(&SHORT);
    let out = bench(&[&args[..], &["-n", "client.admin"]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON report");
    assert!(
        v["ratio_secure_p50_vs_crc"]
            .as_f64()
            .is_some_and(|x| x > 0.0),
        "{v}"
    );

    let out = bench(&[&args[..], &["-n", "client.bob"]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("no key for client.bob"), "{stderr}");
    assert!(keyring.exists(), "the operator's keyring is left alone");
    std::fs::remove_dir_all(&dir).unwrap();
}
