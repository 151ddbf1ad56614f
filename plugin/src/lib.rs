//! tokenwarden's token-refresh component.
//!
//! Built for `wasm32-wasip2`, it exports `tokenwarden:refresh/action` (world `refresher`,
//! WASI 0.2), or with the `p3` feature `tokenwarden:refresh/async-action` (world
//! `refresher-p3`, WASI 0.3; see `wit/refresh.wit`):
//! it reads the client credentials from the host's `secrets`, POSTs a client-credentials
//! request over wasi:http, and stores the access token only when the reply holds one.
//! On the native target only the plain-Rust core builds, for unit tests.

pub mod flow;
pub mod jwt;
pub mod oauth;

#[cfg(target_arch = "wasm32")]
#[macro_use]
mod shell;

#[cfg(all(target_arch = "wasm32", not(feature = "p3")))]
#[allow(missing_docs, unsafe_code)] // generated bindings
mod component;

#[cfg(all(target_arch = "wasm32", feature = "p3"))]
#[allow(missing_docs, unsafe_code)] // generated bindings
mod component_p3;

#[cfg(test)]
mod tests;
