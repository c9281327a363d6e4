//! What the commands need installed, installed when missing: Debian packages, the nightly
//! toolchain and bpf-linker for the BPF object, cargo-fuzz.

use std::path::Path;
use std::process::Command;

use crate::exec;

/// Installs Debian packages that are missing.
pub fn ensure_packages(packages: &[&str]) -> Result<(), String> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg")
                .args(["-s", p])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let apt = |args: &[&str]| {
        let mut all = vec!["-o", "DPkg::Lock::Timeout=600", "-qq"];
        all.extend_from_slice(args);
        Command::new("apt-get")
            .args(&all)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map_err(|e| format!("cannot run apt-get: {e}"))
    };
    eprintln!("xtask: installing {}", missing.join(" "));
    apt(&["update"])?;
    let mut args = vec!["install", "-y", "--no-install-recommends"];
    args.extend_from_slice(&missing);
    if !apt(&args)?.success() {
        return Err(format!("apt-get install {} failed", missing.join(" ")));
    }
    Ok(())
}

/// nightly with rust-src, and bpf-linker linked against that nightly's own libLLVM (Debian
/// has no LLVM as new as nightly's), as shared/recipes/ebpf.md found to work.
pub fn ensure_bpf_toolchain() -> Result<(), String> {
    let has_nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_nightly {
        exec::run(
            Path::new("."),
            "rustup",
            &["toolchain", "install", "nightly", "--profile", "minimal"],
        )?;
    }
    exec::run(
        Path::new("."),
        "rustup",
        &["component", "add", "rust-src", "--toolchain", "nightly"],
    )?;
    let have_linker = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if have_linker {
        return Ok(());
    }
    let out = |args: &[&str]| -> Result<String, String> {
        let o = Command::new("rustc")
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let sysroot = out(&["+nightly", "--print", "sysroot"])?;
    let version = out(&["+nightly", "-vV"])?;
    let major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .ok_or("cannot read nightly's LLVM version")?
        .to_string();
    let lib = std::fs::read_dir(Path::new(&sysroot).join("lib"))
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libLLVM.so."))
        })
        .ok_or("nightly ships no libLLVM.so")?;
    // bpf-linker links -lLLVM from $LLVM_PREFIX/lib and keeps that directory as its RUNPATH.
    let home = std::env::var("HOME").map_err(|e| e.to_string())?;
    let shim = Path::new(&home).join(".cargo/llvm-shim/lib");
    std::fs::create_dir_all(&shim).map_err(|e| e.to_string())?;
    for name in [
        "libLLVM.so".to_string(),
        lib.file_name().unwrap().to_string_lossy().to_string(),
    ] {
        let link = shim.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&lib, &link).map_err(|e| e.to_string())?;
    }
    let feature = format!("llvm-{major}");
    let status = Command::new("cargo")
        .args([
            "install",
            "--locked",
            "--no-default-features",
            "--features",
            &feature,
        ])
        .arg("bpf-linker@0.13.0")
        .env("LLVM_PREFIX", shim.parent().expect("shim has a parent"))
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .map_err(|e| e.to_string())?;
    if status.success() {
        Ok(())
    } else {
        Err("installing bpf-linker failed".into())
    }
}

pub fn ensure_cargo_fuzz() -> Result<(), String> {
    let have = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if have {
        return Ok(());
    }
    exec::run(
        Path::new("."),
        "cargo",
        &["install", "--locked", "cargo-fuzz", "--version", "0.13.2"],
    )
}
