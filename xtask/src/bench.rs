//! What xtask reads of `ringwire bench`: one run's medians, and medians over runs.

use std::path::Path;
use std::process::{Command, Stdio};

/// One `ringwire bench --rounds 1 --json` run of `binary`, Ringwire and its baselines only (no
/// msgr2 peers): (p50 µs, stream MB/s, many-connection messages/s).
pub fn bench_once(binary: &Path) -> Result<[f64; 3], String> {
    let out = Command::new(binary)
        .args([
            "bench",
            "--json",
            "--rounds",
            "1",
            "--no-rados",
            "--no-ceph",
        ])
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("running {}: {e}", binary.display()))?;
    if !out.status.success() {
        return Err(format!("{} bench failed: {}", binary.display(), out.status));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("bench output: {e}"))?;
    let m = &v["median"];
    let get = |k: &str| m[k].as_f64().ok_or(format!("bench output lacks {k}"));
    Ok([
        get("rw_p50_us")?,
        get("rw_stream_mbps")?,
        get("rw_many_msgs_per_sec")?,
    ])
}

/// The median of `v` (the upper one of an even count); `v` is not empty.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
