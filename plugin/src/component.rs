//! The component shell: WIT bindings, wasi:http transport and type conversions. All
//! decisions live in [`crate::flow`] and [`crate::oauth`].

use crate::flow::{self, Env};
use crate::oauth::{self, HttpReply, HttpRequest};
use exports::tokenwarden::refresh::action::{self, Guest};
use tokenwarden::refresh::{secrets, signing};
use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, Scheme,
};
use wasip2::io::streams::{OutputStream, StreamError};

wit_bindgen::generate!({
    path: "../wit",
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

shell!(OutgoingRequest);

fn now() -> u64 {
    wasip2::clocks::wall_clock::now().seconds
}

fn random_bytes() -> Vec<u8> {
    wasip2::random::random::get_random_bytes(16)
}

fn send(request: &HttpRequest) -> Result<HttpReply, oauth::Error> {
    let origin = request.endpoint.origin();
    let bad = |what: &str| oauth::Error::BadRequest(format!("{origin}: {what}"));
    let headers = Fields::from_list(&request.headers).map_err(|_| bad("a header was refused"))?;
    let out = OutgoingRequest::new(headers);
    address(&out, request)?;
    let body = out.body().map_err(|_| bad("body taken twice"))?;
    let stream = body.write().map_err(|_| bad("body stream taken twice"))?;
    // The form is queued and the body finished before the request is handed over when the
    // host takes it all without blocking (it does for any real form): the host then sends
    // headers and body in one write instead of the headers first and the body after more
    // round trips through the guest. Whatever did not fit is written after `handle`, which
    // lets the host start draining.
    let queued = queue_without_blocking(&stream, &request.body);
    let mut written = false;
    let mut rest = None;
    if queued == Some(request.body.len()) {
        drop(stream);
        written = OutgoingBody::finish(body, None).is_ok();
    } else {
        // The stream first: a child dropped after its parent body traps.
        rest = Some((stream, body));
    }
    let pending = outgoing_handler::handle(out, None).map_err(|c| transport(&c, &origin))?;
    // A refused request first shows up as a failed body write; the reason is on the
    // response future, so a write failure only stops writing.
    if let (Some((stream, body)), Some(n)) = (rest, queued) {
        written = write_body(body, stream, &request.body[n..]);
    }
    let pollable = pending.subscribe();
    pollable.block();
    let response = match pending.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(code))) => return Err(transport(&code, &origin)),
        Some(Err(())) | None => {
            return Err(oauth::Error::Transport(format!("{origin}: no response")));
        }
    };
    if !written {
        return Err(oauth::Error::Transport(format!(
            "{origin}: the request body could not be sent"
        )));
    }
    let status = response.status();
    let (retry_after, declared) = reply_headers(&response.headers())?;
    let incoming = response
        .consume()
        .map_err(|_| oauth::Error::Transport(format!("{origin}: body unavailable")))?;
    let body = read_body(&incoming, &origin, declared)?;
    drop(incoming);
    Ok(HttpReply {
        status,
        retry_after,
        body,
    })
}

/// Writes the prefix of `bytes` the stream accepts now; `None` when the stream failed.
fn queue_without_blocking(stream: &OutputStream, bytes: &[u8]) -> Option<usize> {
    let room = usize::try_from(stream.check_write().ok()?).unwrap_or(usize::MAX);
    let n = room.min(bytes.len());
    if n > 0 {
        stream.write(&bytes[..n]).ok()?;
    }
    Some(n)
}

/// Writes the rest of the body and finishes it.
fn write_body(body: OutgoingBody, stream: OutputStream, rest: &[u8]) -> bool {
    // `blocking-write-and-flush` takes at most 4096 bytes per call.
    let ok = rest
        .chunks(4096)
        .all(|chunk| stream.blocking_write_and_flush(chunk).is_ok());
    drop(stream);
    ok && OutgoingBody::finish(body, None).is_ok()
}

/// Reads at most `MAX_REPLY_BYTES + 1` bytes, so the parser can tell an oversized reply.
/// With a `Content-Length` it stops at that many bytes instead of waiting for the end of the
/// stream: one host round trip less per refresh (the host still checks the length).
fn read_body(
    incoming: &IncomingBody,
    origin: &str,
    declared: Option<u64>,
) -> Result<Vec<u8>, oauth::Error> {
    let stream = incoming
        .stream()
        .map_err(|_| oauth::Error::Transport(format!("{origin}: body stream unavailable")))?;
    let mut body = Vec::new();
    loop {
        match stream.blocking_read(16 * 1024) {
            Ok(chunk) => {
                body.extend_from_slice(&chunk);
                if body.len() > oauth::MAX_REPLY_BYTES
                    || declared.is_some_and(|n| body.len() as u64 >= n)
                {
                    break;
                }
            }
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => {
                return Err(oauth::Error::Transport(format!(
                    "{origin}: reading the reply failed: {}",
                    e.to_debug_string()
                )));
            }
        }
    }
    Ok(body)
}
