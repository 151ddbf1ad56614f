//! The component shell: WIT bindings, wasi:http transport and type conversions. All
//! decisions live in [`crate::flow`] and [`crate::oauth`].

use crate::flow::{self, Env};
use crate::oauth::{self, HttpReply, HttpRequest};
use exports::tokenwarden::refresh::action::{self, Guest};
use tokenwarden::refresh::secrets;
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
    },
});

struct Component;
export!(Component);

impl Guest for Component {
    fn refresh(req: action::Request) -> Result<action::Outcome, action::Error> {
        let req = oauth::Request {
            scope: req.scope,
            authority: req.authority,
            token_url: req.token_url,
            client_auth: match req.client_auth {
                action::ClientAuth::ClientSecretPost => oauth::ClientAuth::ClientSecretPost,
                action::ClientAuth::ClientSecretBasic => oauth::ClientAuth::ClientSecretBasic,
            },
            extra_params: req.extra_params,
        };
        flow::refresh(&Wasi, &req)
            .map(|o| action::Outcome {
                token_type: o.token_type,
                expires_in: o.expires_in,
                expires_at: o.expires_at,
                ext_expires_in: o.ext_expires_in,
                refresh_in: o.refresh_in,
                scope: o.scope,
            })
            .map_err(to_wit)
    }
}

fn to_wit(e: oauth::Error) -> action::Error {
    use action::Error as W;
    use oauth::Error as E;
    match e {
        E::MissingSecret { role, .. } => W::MissingSecret(role),
        E::AccessDenied(s) => W::AccessDenied(s),
        E::SecretStore(s) => W::SecretStore(s),
        E::EgressDenied(s) => W::EgressDenied(s),
        E::Transport(s) => W::Transport(s),
        E::Throttled(s) => W::Throttled(s),
        E::ServerError(s) => W::ServerError(s),
        E::Rejected(o) => W::Rejected(action::OauthError {
            status: o.status,
            error: o.error,
            description: o.description,
            error_codes: o.error_codes,
            trace_id: o.trace_id,
            correlation_id: o.correlation_id,
        }),
        E::InvalidResponse(s) => W::InvalidResponse(s),
        E::BadRequest(s) => W::BadRequest(s),
    }
}

fn from_secrets(e: secrets::Error) -> oauth::Error {
    match e {
        secrets::Error::AccessDenied(role) => oauth::Error::AccessDenied(role),
        secrets::Error::Unavailable(msg) => oauth::Error::SecretStore(msg),
    }
}

/// The real environment: the host's secrets and wasi:http.
struct Wasi;

impl Env for Wasi {
    fn secret(&self, role: &str) -> Result<Option<String>, oauth::Error> {
        secrets::get(role).map_err(from_secrets)
    }

    fn store(&self, role: &str, value: &str, expires_at: Option<u64>) -> Result<(), oauth::Error> {
        secrets::set(role, value, expires_at).map_err(from_secrets)
    }

    fn send(&self, request: &HttpRequest) -> Result<HttpReply, oauth::Error> {
        send(request)
    }

    fn now(&self) -> u64 {
        wasip2::clocks::wall_clock::now().seconds
    }
}

fn transport(code: &ErrorCode, origin: &str) -> oauth::Error {
    match code {
        // Refused by the host's policy: by origin, or by the address the name resolved to.
        ErrorCode::HttpRequestDenied => {
            oauth::Error::EgressDenied(format!("{origin}, which is not in the job's allowed_hosts"))
        }
        ErrorCode::DestinationIpProhibited => oauth::Error::EgressDenied(format!(
            "{origin}, whose name resolves only to loopback, private or link-local addresses (list the address's own origin in allowed_hosts to reach it)"
        )),
        other => oauth::Error::Transport(format!("{origin}: {}", code_name(other))),
    }
}

/// The WIT name of an error code. Hand-written because the derived `Debug` of the whole
/// enum, payloads included, costs several KB of component size.
fn code_name(code: &ErrorCode) -> String {
    use ErrorCode as E;
    let name = match code {
        E::DnsTimeout => "DNS-timeout",
        E::DnsError(p) => return format!("DNS-error {}", p.rcode.as_deref().unwrap_or("")),
        E::DestinationNotFound => "destination-not-found",
        E::DestinationUnavailable => "destination-unavailable",
        E::DestinationIpProhibited => "destination-IP-prohibited",
        E::DestinationIpUnroutable => "destination-IP-unroutable",
        E::ConnectionRefused => "connection-refused",
        E::ConnectionTerminated => "connection-terminated",
        E::ConnectionTimeout => "connection-timeout",
        E::ConnectionReadTimeout => "connection-read-timeout",
        E::ConnectionWriteTimeout => "connection-write-timeout",
        E::ConnectionLimitReached => "connection-limit-reached",
        E::TlsProtocolError => "TLS-protocol-error",
        E::TlsCertificateError => "TLS-certificate-error",
        E::TlsAlertReceived(_) => "TLS-alert-received",
        E::HttpRequestDenied => "HTTP-request-denied",
        E::HttpRequestLengthRequired => "HTTP-request-length-required",
        E::HttpRequestBodySize(_) => "HTTP-request-body-size",
        E::HttpRequestMethodInvalid => "HTTP-request-method-invalid",
        E::HttpRequestUriInvalid => "HTTP-request-URI-invalid",
        E::HttpRequestUriTooLong => "HTTP-request-URI-too-long",
        E::HttpRequestHeaderSectionSize(_) => "HTTP-request-header-section-size",
        E::HttpRequestHeaderSize(_) => "HTTP-request-header-size",
        E::HttpRequestTrailerSectionSize(_) => "HTTP-request-trailer-section-size",
        E::HttpRequestTrailerSize(_) => "HTTP-request-trailer-size",
        E::HttpResponseIncomplete => "HTTP-response-incomplete",
        E::HttpResponseHeaderSectionSize(_) => "HTTP-response-header-section-size",
        E::HttpResponseHeaderSize(_) => "HTTP-response-header-size",
        E::HttpResponseBodySize(_) => "HTTP-response-body-size",
        E::HttpResponseTrailerSectionSize(_) => "HTTP-response-trailer-section-size",
        E::HttpResponseTrailerSize(_) => "HTTP-response-trailer-size",
        E::HttpResponseTransferCoding(_) => "HTTP-response-transfer-coding",
        E::HttpResponseContentCoding(_) => "HTTP-response-content-coding",
        E::HttpResponseTimeout => "HTTP-response-timeout",
        E::HttpUpgradeFailed => "HTTP-upgrade-failed",
        E::HttpProtocolError => "HTTP-protocol-error",
        E::LoopDetected => "loop-detected",
        E::ConfigurationError => "configuration-error",
        E::InternalError(m) => return format!("internal-error {}", m.as_deref().unwrap_or("")),
    };
    name.to_string()
}

fn send(request: &HttpRequest) -> Result<HttpReply, oauth::Error> {
    let origin = request.endpoint.origin();
    let bad = |what: &str| oauth::Error::BadRequest(format!("{origin}: {what}"));
    let entries: Vec<(String, Vec<u8>)> = request.headers.clone();
    let headers = Fields::from_list(&entries).map_err(|_| bad("a header was refused"))?;
    let out = OutgoingRequest::new(headers);
    out.set_method(&Method::Post).map_err(|_| bad("method"))?;
    let scheme = if request.endpoint.https {
        Scheme::Https
    } else {
        Scheme::Http
    };
    out.set_scheme(Some(&scheme)).map_err(|_| bad("scheme"))?;
    out.set_authority(Some(&request.endpoint.authority))
        .map_err(|_| bad("invalid authority"))?;
    out.set_path_with_query(Some(&request.endpoint.path_and_query))
        .map_err(|_| bad("invalid path"))?;
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
    let headers = response.headers();
    let retry_after = headers
        .get("retry-after")
        .into_iter()
        .next()
        .and_then(|v| String::from_utf8(v).ok());
    let declared = headers
        .get("content-length")
        .into_iter()
        .next()
        .and_then(|v| std::str::from_utf8(&v).ok()?.trim().parse::<u64>().ok());
    drop(headers);
    if declared.is_some_and(|n| n > oauth::MAX_REPLY_BYTES as u64) {
        return Err(oauth::Error::InvalidResponse(format!(
            "reply body larger than {} bytes",
            oauth::MAX_REPLY_BYTES
        )));
    }
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
