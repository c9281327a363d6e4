//! `ringwire decode` as operators use it: text and JSON reports, and a non-zero exit naming
//! the byte offset of the first bad frame.

use std::path::PathBuf;
use std::process::Command;

/// A capture from `shared/fixtures/msgr2`; a missing one fails the test, naming its path.
fn fixture(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/msgr2")
        .join(name);
    assert!(path.is_file(), "fixture {} is missing", path.display());
    path
}

fn decode(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ringwire"))
        .arg("decode")
        .args(args)
        .output()
        .expect("run ringwire");
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn decodes_a_captured_stream_as_text() {
    let f = fixture("osd-stream0-client-to-server.bin");
    let (ok, out, err) = decode(&[f.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("@26 HELLO(1) segments=[36/8]"), "{out}");
    assert!(out.contains("CLIENT_IDENT(8)"));
    assert!(out.contains("ceph_msg_header2: seq=1"));
    assert!(out.contains("all CRCs ok"));
}

#[test]
fn json_output_parses_and_counts_frames() {
    let f = fixture("ceph_s-stream0-server-to-client.bin");
    let (ok, out, _) = decode(&["--json", f.to_str().unwrap()]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["ok"], true);
    let frames = v["report"]["frames"].as_array().unwrap();
    assert_eq!(frames.len(), 7);
    assert_eq!(frames[1]["tag"], "AUTH_DONE");
    assert_eq!(frames[1]["body"]["control"]["frame"], "auth_done");
    assert_eq!(frames[1]["body"]["control"]["global_id"], 4103);
    assert_eq!(frames[4]["body"]["message"]["header"]["seq"], 1);
}

#[test]
fn corrupt_stream_fails_naming_the_offset() {
    let mut data = std::fs::read(fixture("ceph_s-stream0-client-to-server.bin")).unwrap();
    // Flip a byte inside the CLIENT_IDENT payload (frame at offset 240).
    data[240 + 40] ^= 0x55;
    let path = std::env::temp_dir().join(format!("ringwire-corrupt-{}.bin", std::process::id()));
    std::fs::write(&path, &data).unwrap();
    let (ok, out, err) = decode(&[path.to_str().unwrap()]);
    assert!(!ok, "a CRC error must fail the command");
    assert!(err.contains("at byte offset 240"), "{err}");
    assert!(err.contains("segment 0 CRC mismatch"), "{err}");
    // Frames before the bad one are still printed.
    assert!(out.contains("@172 AUTH_SIGNATURE(7)"), "{out}");
    let (ok, out, _) = decode(&["--json", path.to_str().unwrap()]);
    assert!(!ok);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["offset"], 240);
    std::fs::remove_file(path).ok();
}

#[test]
fn mid_connection_capture_is_rejected_at_offset_zero() {
    let f = fixture("reconnect-stream0-client-to-server.bin");
    let (ok, _, err) = decode(&[f.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("at byte offset 0: bad banner"), "{err}");
}
