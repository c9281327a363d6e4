//! `ringwire bench --report FILE.html`: the report as a self-contained page (no network): a
//! latency CDF of every ping-pong series and bars of each figure against the baselines and
//! peers, drawn as SVG by the page's inline script from the report's JSON, embedded as is.

use super::Report;

const TEMPLATE: &str = include_str!("report.html");

/// The page for `r`.
pub fn page(r: &Report) -> String {
    let json = serde_json::to_string(r).expect("serialisable");
    // Inside <script>, "</" could end the element early; "<\/" is the same JSON string.
    TEMPLATE.replace("__REPORT__", &json.replace("</", "<\\/"))
}
