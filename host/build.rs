//! Builds the product component and embeds it: `cargo run` and `cargo install` then give a
//! self-contained `tokenwarden`.

fn main() {
    let wasm = tokenwarden_build::build_component("tokenwarden-plugin", &["plugin", "wit"]);
    println!(
        "cargo::rustc-env=TOKENWARDEN_PLUGIN_WASM={}",
        wasm.display()
    );
}
