//! tokenwarden's token-refresh component.
//!
//! Built for `wasm32-wasip2`, it exports `tokenwarden:refresh/action` (see `wit/refresh.wit`):
//! it reads the client credentials from the host's `secrets`, POSTs a client-credentials
//! request over wasi:http, and stores the access token only when the reply holds one.
//! On the native target only the plain-Rust core builds, for unit tests.

pub mod flow;
pub mod oauth;

#[cfg(target_arch = "wasm32")]
#[allow(missing_docs, unsafe_code)] // generated bindings
mod component;

#[cfg(test)]
mod tests;
