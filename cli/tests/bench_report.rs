//! `ringwire bench --report FILE.html` draws its charts: the page a short run writes is
//! rendered by headless Chromium (Debian's `chromium`; `cargo xtask ci` installs it), and the
//! DOM after its script ran holds a CDF line of 201 points for every ping-pong series and a
//! bar of non-zero width for every figure of every side, `--scale`'s points included.

mod bench_support;

use std::process::Command;

use bench_support::{bench, ceph_mon_installed, in_ci, installed, rados_peer, SHORT};

/// The opening tags `<NAME class="CLASS" ...>` in `dom`.
fn tags<'a>(dom: &'a str, name: &str, class: &str) -> Vec<&'a str> {
    let open = format!("<{name} class=\"{class}\"");
    dom.match_indices(&open)
        .map(|(at, _)| {
            let rest = &dom[at..];
            &rest[..rest.find('>').expect("a closed tag")]
        })
        .collect()
}

/// The value of attribute `name` in `tag`.
fn attr<'a>(tag: &'a str, name: &str) -> &'a str {
    let key = format!(" {name}=\"");
    let at = tag
        .find(&key)
        .unwrap_or_else(|| panic!("no {name} in {tag}"))
        + key.len();
    &tag[at..at + tag[at..].find('"').expect("a closing quote")]
}

#[test]
fn the_html_report_draws_a_cdf_and_bars_for_every_side_in_headless_chromium() {
    if !installed("chromium") {
        assert!(
            !in_ci(),
            "chromium not found: `cargo xtask ci` installs it (apt-get install chromium)"
        );
        eprintln!("skipped: chromium not installed (apt-get install chromium)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("ringwire-report-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let page = dir.join("report.html");
    let peer = rados_peer();
    let mut args = SHORT.to_vec();
    args.extend([
        "--rados-peer",
        peer.to_str().unwrap(),
        "--report",
        page.to_str().unwrap(),
        "--scale",
    ]);
    let out = bench(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let html = std::fs::read_to_string(&page).expect("the page was written");
    // Self-contained: nothing to fetch.
    for external in ["src=", "href=", "@import", "url("] {
        assert!(!html.contains(external), "the page refers to {external}");
    }
    let out = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--dump-dom"])
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("run chromium");
    let _ = std::fs::remove_dir_all(&dir);
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        dom.contains("<p id=\"error\"></p>"),
        "the script failed: {dom}"
    );
    assert!(dom.contains("data-drawn=\"yes\""), "{dom}");
    // The ping-pong series, named alike in the CDF and the bars.
    let ping_pong = [
        "Ringwire, worker",
        "Ringwire, application thread",
        "Ringwire, task on the worker",
        "std",
        "io_uring",
        "rados-rs, task",
        "rados-rs, blocking thread",
    ];
    let ceph = ceph_mon_installed() || in_ci();
    let mut series = ping_pong.to_vec();
    if ceph {
        series.extend(["KEEPALIVE2, Ringwire server", "KEEPALIVE2, ceph-mon"]);
    }
    let lines = tags(&dom, "path", "cdf-line");
    let drawn: Vec<&str> = lines.iter().map(|t| attr(t, "data-series")).collect();
    assert_eq!(drawn, series);
    for line in &lines {
        // 201 points (every half percent), each at coordinates inside the chart.
        let d = attr(line, "d");
        let points: Vec<(f64, f64)> = d
            .split(['M', 'L'])
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (x, y) = p.split_once(',').expect("x,y");
                (x.parse().expect("x"), y.parse().expect("y"))
            })
            .collect();
        assert_eq!(points.len(), 201, "{line}");
        assert!(
            points
                .iter()
                .all(|&(x, y)| (0.0..=960.0).contains(&x) && (0.0..=420.0).contains(&y)),
            "{line}"
        );
        // A CDF rises: the last point is above the first (SVG's y grows downwards).
        assert!(points[200].1 < points[0].1, "{line}");
    }
    let mut bars: Vec<String> = tags(&dom, "rect", "bar")
        .iter()
        .map(|t| {
            let width: f64 = attr(t, "width").parse().unwrap();
            let value: f64 = attr(t, "data-value").parse().unwrap();
            assert!(width >= 1.0 && value > 0.0, "{t}");
            attr(t, "data-label").to_string()
        })
        .collect();
    bars.sort();
    let mut want = ping_pong.to_vec();
    // The stream's, the rate's.
    want.extend(["Ringwire", "std", "io_uring", "rados-rs"]);
    want.extend(["Ringwire", "std, one connection", "rados-rs"]);
    if ceph {
        want.extend(["Ringwire server", "ceph-mon"]);
    }
    // --scale: latency and stream by message size, Ringwire's and io_uring's; the rate by
    // connection count, and the memory per idle end from 100 connections up.
    let sizes = ["64 B", "4 KiB", "64 KiB", "1 MiB", "16 MiB"];
    let scale: Vec<String> = (0..2)
        .flat_map(|_| sizes)
        .flat_map(|s| [format!("Ringwire, {s}"), format!("io_uring, {s}")])
        .chain([1, 10, 100, 1000, 5000].map(|n| format!("Ringwire, {n} connections")))
        .chain([100, 1000, 5000].map(|n| format!("Ringwire, {n} connections")))
        .collect();
    want.extend(scale.iter().map(String::as_str));
    want.sort();
    assert_eq!(bars, want);
}
