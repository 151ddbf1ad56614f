//! Builds the product component and the test guests for wasm32-wasip2 and tells the tests
//! where they are (`tokenwarden_tests::ROGUE_COMPONENT`, ...).

fn main() {
    let rogue =
        tokenwarden_build::build_component("tokenwarden-rogue-guest", &["tests/guests", "wit"]);
    println!(
        "cargo::rustc-env=TOKENWARDEN_ROGUE_WASM={}",
        rogue.display()
    );
}
