//! The `tokenwarden` binary: all logic lives in the library.

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(tokenwarden::cli::main())
}
