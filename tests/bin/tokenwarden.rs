//! The `tokenwarden` command for the CLI tests: cargo exposes `CARGO_BIN_EXE_*` only for
//! binaries of the test's own package. It is the product's entry point, word for word:
//! everything the command does lives in `tokenwarden::cli`.

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(tokenwarden::cli::main())
}
