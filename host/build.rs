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
}
