//! Builds the product component and embeds it: `cargo run` and `cargo install` then give a
//! self-contained `tokenwarden`.
//!
//! `TOKENWARDEN_PREBUILT_COMPONENT=FILE` embeds an already built component instead (for
//! packagers, and for builds on a toolchain without the `wasm32-wasip2` target, such as the
//! nightly used by the fuzz targets).

use std::path::PathBuf;

const PREBUILT: &str = "TOKENWARDEN_PREBUILT_COMPONENT";

fn main() {
    println!("cargo::rerun-if-env-changed={PREBUILT}");
    let wasm = match std::env::var_os(PREBUILT) {
        Some(file) => {
            let file = PathBuf::from(file);
            assert!(
                file.is_file(),
                "{PREBUILT}={} is not a file",
                file.display()
            );
            println!("cargo::rerun-if-changed={}", file.display());
            file
        }
        None => tokenwarden_build::build_component("tokenwarden-plugin", &["plugin", "wit"]),
    };
    println!(
        "cargo::rustc-env=TOKENWARDEN_PLUGIN_WASM={}",
        wasm.display()
    );
    // The wasmtime version for `tokenwarden_build_info`, from the lock file.
    let lock = tokenwarden_build::workspace_root().join("Cargo.lock");
    println!("cargo::rerun-if-changed={}", lock.display());
    let text = std::fs::read_to_string(&lock).unwrap_or_default();
    let version = text
        .split("[[package]]")
        .find(|p| p.contains("name = \"wasmtime\"\n"))
        .and_then(|p| p.split("version = \"").nth(1))
        .and_then(|v| v.split('"').next())
        .unwrap_or("unknown");
    println!("cargo::rustc-env=TOKENWARDEN_WASMTIME_VERSION={version}");
}
