//! Embeds the BPF object that `cargo xtask build-ebpf` builds (nightly, bpfel-unknown-none);
//! its path comes in RINGWIRE_TRACE_BPF. Without it the build stops and says how to make it.
fn main() {
    println!("cargo::rerun-if-env-changed=RINGWIRE_TRACE_BPF");
    let Some(obj) = std::env::var_os("RINGWIRE_TRACE_BPF") else {
        panic!("RINGWIRE_TRACE_BPF is not set: build ringwire-trace with `cargo xtask build` (it builds the BPF object first)");
    };
    println!("cargo::rerun-if-changed={}", obj.to_string_lossy());
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    std::fs::copy(&obj, out.join("ringwire-trace.bpf.o"))
        .unwrap_or_else(|e| panic!("copy {}: {e}", obj.to_string_lossy()));
}
