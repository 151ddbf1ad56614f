//! Host bindings of the two worlds in `wit/refresh.wit`: `refresher` (WASI 0.2, the exported
//! `action`) and `refresher-p3` (WASI 0.3, the exported `async-action`). The imports are
//! linked by their own capabilities: wasi from wasmtime-wasi and wasmtime-wasi-http,
//! `secrets` from [`crate::secrets`].

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
        "tokenwarden:refresh/signing": crate::signing::bindings,
        "wasi:random": wasmtime_wasi::p2::bindings::random,
    },
});

pub use self::exports::tokenwarden::refresh::action;

/// The WASI 0.3 world. Experimental in wasmtime 48: a job runs it only when it opts in.
pub mod p3 {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "tokenwarden:refresh/refresher-p3",
        imports: { default: async },
        exports: { default: async | store },
        with: {
            "wasi:http/types@0.3.0": wasmtime_wasi_http::p3::bindings::http::types,
            "wasi:http/client@0.3.0": wasmtime_wasi_http::p3::bindings::http::client,
            "wasi:clocks/types@0.3.0": wasmtime_wasi::p3::bindings::clocks::types,
            "wasi:clocks/system-clock@0.3.0": wasmtime_wasi::p3::bindings::clocks::system_clock,
            "wasi:random/random@0.3.0": wasmtime_wasi::p3::bindings::random::random,
            "tokenwarden:refresh/secrets": crate::secrets::bindings,
            "tokenwarden:refresh/signing": crate::signing::bindings,
        },
    });

    pub use self::exports::tokenwarden::refresh::async_action;
    use super::action;

    /// The export's name, by which [`crate::Runtime`] tells a 0.3 component from a 0.2 one.
    pub const EXPORT: &str = "tokenwarden:refresh/async-action@0.2.0";

    // The two worlds' types are the same WIT types in two interfaces, hence two sets of Rust
    // types: these conversions let the runtime handle one set.

    impl From<&action::Request> for async_action::Request {
        fn from(r: &action::Request) -> Self {
            Self {
                scope: r.scope.clone(),
                authority: r.authority.clone(),
                token_url: r.token_url.clone(),
                client_auth: match r.client_auth {
                    action::ClientAuth::ClientSecretPost => {
                        async_action::ClientAuth::ClientSecretPost
                    }
                    action::ClientAuth::ClientSecretBasic => {
                        async_action::ClientAuth::ClientSecretBasic
                    }
                    action::ClientAuth::PrivateKeyJwt => async_action::ClientAuth::PrivateKeyJwt,
                    action::ClientAuth::ClientAssertion => {
                        async_action::ClientAuth::ClientAssertion
                    }
                    action::ClientAuth::ManagedIdentity => {
                        async_action::ClientAuth::ManagedIdentity
                    }
                    action::ClientAuth::TlsClientAuth => async_action::ClientAuth::TlsClientAuth,
                },
                extra_params: r.extra_params.clone(),
                signing_alg: match r.signing_alg {
                    action::SigningAlg::Ps256 => async_action::SigningAlg::Ps256,
                    action::SigningAlg::Rs256 => async_action::SigningAlg::Rs256,
                    action::SigningAlg::Es256 => async_action::SigningAlg::Es256,
                },
                key_id: r.key_id.clone(),
            }
        }
    }

    impl From<async_action::Outcome> for action::Outcome {
        fn from(o: async_action::Outcome) -> Self {
            Self {
                token_type: o.token_type,
                expires_in: o.expires_in,
                expires_at: o.expires_at,
                ext_expires_in: o.ext_expires_in,
                refresh_in: o.refresh_in,
                scope: o.scope,
            }
        }
    }

    impl From<async_action::Error> for action::Error {
        fn from(e: async_action::Error) -> Self {
            use async_action::Error as E;
            match e {
                E::MissingSecret(s) => Self::MissingSecret(s),
                E::AccessDenied(s) => Self::AccessDenied(s),
                E::SecretStore(s) => Self::SecretStore(s),
                E::EgressDenied(s) => Self::EgressDenied(s),
                E::Transport(s) => Self::Transport(s),
                E::Throttled(s) => Self::Throttled(s),
                E::ServerError(s) => Self::ServerError(s),
                E::Rejected(o) => Self::Rejected(action::OauthError {
                    status: o.status,
                    error: o.error,
                    description: o.description,
                    error_codes: o.error_codes,
                    trace_id: o.trace_id,
                    correlation_id: o.correlation_id,
                }),
                E::InvalidResponse(s) => Self::InvalidResponse(s),
                E::BadRequest(s) => Self::BadRequest(s),
            }
        }
    }
}
