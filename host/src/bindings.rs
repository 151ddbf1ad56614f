//! Host bindings of the `refresher` world (`wit/refresh.wit`): the exported `action` an
//! embedder calls. The imports are linked by their own capabilities: wasi from
//! wasmtime-wasi and wasmtime-wasi-http, `secrets` from [`crate::secrets`].

#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "../wit",
    world: "tokenwarden:refresh/refresher",
    imports: { default: async },
    exports: { default: async },
    with: {
        "wasi:http": wasmtime_wasi_http::p2::bindings::http,
        "wasi:io": wasmtime_wasi::p2::bindings::io,
        "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
        "tokenwarden:refresh/secrets": crate::secrets::bindings,
    },
});

pub use self::exports::tokenwarden::refresh::action;
