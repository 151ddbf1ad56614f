//! Builds the product component and embeds it: `cargo run` and `cargo install` then give a
//! self-contained `tokenwarden`.
//!
//! Both worlds are built: `refresher` (WASI 0.2, the default) and `refresher-p3` (WASI 0.3,
//! the plugin's `p3` feature).
//!
//! `TOKENWARDEN_PREBUILT_COMPONENT=FILE` and `TOKENWARDEN_PREBUILT_COMPONENT_P3=FILE` embed
//! already built components instead (for packagers, and for builds on a toolchain without
//! the `wasm32-wasip2` target, such as the nightly used by the fuzz targets).

use std::path::PathBuf;

fn main() {
    let p2 = component("TOKENWARDEN_PREBUILT_COMPONENT", &[], "plugin-wasm");
    let p3 = component(
        "TOKENWARDEN_PREBUILT_COMPONENT_P3",
        &["p3"],
        "plugin-wasm-p3",
    );
    println!("cargo::rustc-env=TOKENWARDEN_PLUGIN_WASM={}", p2.display());
    println!(
        "cargo::rustc-env=TOKENWARDEN_PLUGIN_P3_WASM={}",
        p3.display()
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

/// The file `prebuilt` names, else the plugin built with `features` into `target/{subdir}`.
fn component(prebuilt: &str, features: &[&str], subdir: &str) -> PathBuf {
    println!("cargo::rerun-if-env-changed={prebuilt}");
    match std::env::var_os(prebuilt) {
        Some(file) => {
            let file = PathBuf::from(file);
            assert!(
                file.is_file(),
                "{prebuilt}={} is not a file",
                file.display()
            );
            println!("cargo::rerun-if-changed={}", file.display());
            file
        }
        None => tokenwarden_build::build_component_with(
            "tokenwarden-plugin",
            features,
            subdir,
            &["plugin", "wit", "contract"],
        ),
    }
}
