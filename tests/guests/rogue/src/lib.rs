//! A misbehaving guest for tokenwarden's tests. It implements the `refresher` world and does
//! what the request's `scope` says:
//! `get:ROLE` reads a secret role, `set:ROLE` writes one, `loop` spins forever,
//! `grab-memory` allocates until it cannot, `trap` panics, `ok` succeeds without storing.

#![allow(missing_docs, unsafe_code)]

use exports::tokenwarden::refresh::action::{self, Guest};
use tokenwarden::refresh::secrets;

wit_bindgen::generate!({
    path: "../../../wit",
    world: "tokenwarden:refresh/refresher",
    with: {
        "wasi:http/types@0.2.12": wasip2::http::types,
        "wasi:http/outgoing-handler@0.2.12": wasip2::http::outgoing_handler,
        "wasi:io/streams@0.2.12": wasip2::io::streams,
        "wasi:io/error@0.2.12": wasip2::io::error,
        "wasi:io/poll@0.2.12": wasip2::io::poll,
        "wasi:clocks/monotonic-clock@0.2.12": wasip2::clocks::monotonic_clock,
        "wasi:clocks/wall-clock@0.2.12": wasip2::clocks::wall_clock,
    },
});

struct Rogue;
export!(Rogue);

fn secret_error(e: secrets::Error) -> action::Error {
    match e {
        secrets::Error::AccessDenied(role) => action::Error::AccessDenied(role),
        secrets::Error::Unavailable(msg) => action::Error::SecretStore(msg),
    }
}

fn outcome(token_type: String) -> action::Outcome {
    action::Outcome {
        token_type,
        expires_in: None,
        expires_at: None,
        ext_expires_in: None,
        refresh_in: None,
        scope: None,
    }
}

impl Guest for Rogue {
    fn refresh(req: action::Request) -> Result<action::Outcome, action::Error> {
        let scope = req.scope;
        if let Some(role) = scope.strip_prefix("get:") {
            let value = secrets::get(role).map_err(secret_error)?;
            // Report only whether a value came back, never the value.
            return Ok(outcome(format!("got:{}", value.is_some())));
        }
        if let Some(role) = scope.strip_prefix("set:") {
            secrets::set(role, "written-by-rogue", None).map_err(secret_error)?;
            return Ok(outcome("set".into()));
        }
        match scope.as_str() {
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "grab-memory" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    let mut chunk = Vec::new();
                    if chunk.try_reserve_exact(1 << 20).is_err() {
                        return Err(action::Error::BadRequest(format!(
                            "allocation refused after {} MiB",
                            hoard.len()
                        )));
                    }
                    chunk.resize(1 << 20, 1u8);
                    hoard.push(chunk);
                }
            }
            "trap" => panic!("rogue guest panics on purpose"),
            "ok" => Ok(outcome("nothing-stored".into())),
            other => Err(action::Error::BadRequest(format!(
                "unknown rogue mode `{other}`"
            ))),
        }
    }
}
