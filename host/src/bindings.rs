//! Host bindings generated from `wit/refresh.wit`. The wasi packages come from
//! wasmtime-wasi and wasmtime-wasi-http, which the runtime links separately.

#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "../wit",
    world: "tokenwarden:refresh/refresher",
    imports: { "tokenwarden:refresh/secrets": async },
    exports: { default: async },
    with: {
        "wasi:http": wasmtime_wasi_http::p2::bindings::http,
        "wasi:io": wasmtime_wasi::p2::bindings::io,
        "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
    },
});

pub use self::exports::tokenwarden::refresh::action;
pub use self::tokenwarden::refresh::secrets;
