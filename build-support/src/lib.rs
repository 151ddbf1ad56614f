//! Builds a workspace crate for `wasm32-wasip2` from a build script.
//!
//! The nested cargo gets its own target directory: sharing the outer one deadlocks under
//! `--release`, because the outer cargo holds its lock while build scripts run.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The guest target.
pub const TARGET: &str = "wasm32-wasip2";
/// The size profile defined in the workspace `Cargo.toml`.
pub const PROFILE: &str = "wasm-release";

/// The workspace root, from a member crate's manifest directory.
pub fn workspace_root() -> PathBuf {
    let manifest =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run from a build script"));
    manifest
        .ancestors()
        .find(|p| p.join("Cargo.lock").exists() || p.join("rust-toolchain.toml").exists())
        .map(Path::to_path_buf)
        .unwrap_or(manifest)
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    // Settings meant for the outer build (host flags, clippy's wrapper, a forced target)
    // must not leak into the guest build.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET_DIR",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// Makes sure the `wasm32-wasip2` standard library is installed, installing it with rustup
/// when possible, else stopping the build with the exact command to run.
pub fn ensure_target() {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let libdir = Command::new(&rustc)
        .args(["--print", "target-libdir", "--target", TARGET])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if libdir
        .as_deref()
        .is_some_and(|d| d.join("libstd.rlib").exists() || has_std(d))
    {
        return;
    }
    println!("cargo::warning=installing the {TARGET} target with rustup");
    let ok = Command::new("rustup")
        .args(["target", "add", TARGET])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        panic!(
            "the {TARGET} Rust target is missing and `rustup target add {TARGET}` failed; \
             run `rustup target add {TARGET}` and build again"
        );
    }
}

fn has_std(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("libstd-"))
    })
}

/// Builds `package` (a workspace member) with the size profile and returns the component's
/// path. Tells cargo to rerun when any of `watch` (paths relative to the workspace root)
/// changes.
pub fn build_component(package: &str, watch: &[&str]) -> PathBuf {
    build_component_with(package, &[], "plugin-wasm", watch)
}

/// Like [`build_component`], with cargo `features` and in its own target directory
/// `target/{subdir}`: the same package built with other features yields a file of the same
/// name, so each build keeps its own.
pub fn build_component_with(
    package: &str,
    features: &[&str],
    subdir: &str,
    watch: &[&str],
) -> PathBuf {
    let root = workspace_root();
    for path in watch.iter().chain(&["Cargo.toml", "Cargo.lock"]) {
        println!("cargo::rerun-if-changed={}", root.join(path).display());
    }
    ensure_target();
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join(subdir);
    let mut cmd = cargo();
    cmd.current_dir(&root).args([
        "build",
        "--locked",
        "-p",
        package,
        "--target",
        TARGET,
        "--profile",
        PROFILE,
    ]);
    if !features.is_empty() {
        cmd.arg("--features").arg(features.join(","));
    }
    let status = cmd
        .arg("--target-dir")
        .arg(&target_dir)
        .status()
        .unwrap_or_else(|e| panic!("could not start cargo to build {package}: {e}"));
    assert!(
        status.success(),
        "building the {package} component for {TARGET} failed"
    );
    let file = format!("{}.wasm", package.replace('-', "_"));
    let path = target_dir.join(TARGET).join(PROFILE).join(file);
    assert!(path.exists(), "{} was not produced", path.display());
    path
}
