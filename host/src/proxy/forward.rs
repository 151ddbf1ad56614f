//! One proxied exchange: the upstream request built from the consumer's (hop-by-hop headers
//! and the consumer's own credentials dropped, the token added), sent through the egress
//! transport, and the reply streamed back; sent once more with a newer token when the
//! upstream rejects the token and the request can be repeated.

use super::{Proxy, RETRY_BODY, Route, refusal};
use crate::daemon::{CurrentToken, ProxyResult};
use crate::egress::{HttpLimits, Origin};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use http_body::Body as _;
use http_body_util::BodyExt as _;
use secrecy::ExposeSecret;
use std::sync::Arc;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

/// Whether a path is safe to append to an upstream's base path, so a consumer cannot climb
/// out of it on any server: every segment, percent-decoded once and cut at a `;` (Tomcat
/// and Spring drop path parameters: `..;` is `..` there), must not be `.` or `..`, hold a
/// slash, backslash or NUL, or be anything but UTF-8 (overlong `%c0%ae` is a dot to some
/// decoders); no segment is empty (`//`) but a trailing one; and nothing is encoded twice
/// (`%25`), as servers that decode twice would see `%2e%2e` as `..`.
pub(crate) fn clean_path(path: &str) -> bool {
    if path.contains('\\') || path.to_ascii_lowercase().contains("%25") {
        return false;
    }
    let mut segments = path.split('/');
    // A path starts with `/` (or is empty): its first piece is empty.
    if segments.next().is_some_and(|s| !s.is_empty()) {
        return false;
    }
    let segments: Vec<&str> = segments.collect();
    let last = segments.len().saturating_sub(1);
    segments.iter().enumerate().all(|(i, raw)| {
        if raw.is_empty() {
            // A trailing `/` leaves one empty last segment; `//` anywhere else is refused.
            return i == last;
        }
        let Ok(decoded) = percent_encoding::percent_decode_str(raw).decode_utf8() else {
            return false;
        };
        let name = decoded.split(';').next().unwrap_or("");
        !decoded.contains(['/', '\\', '\0']) && name != "." && name != ".."
    })
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), and the
/// proxy's own credentials: never forwarded either way.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

/// Drops the hop-by-hop headers, and those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(&named) {
        headers.remove(name);
    }
}

/// Whether a reply says the token itself was refused: a `401` whose `Bearer` challenge
/// carries `error="invalid_token"` (RFC 6750 §3.1). A bare `401` (no token, wrong
/// audience reported otherwise) is the consumer's business and goes back as it came.
pub(super) fn rejects_token(status: StatusCode, headers: &HeaderMap) -> bool {
    status == StatusCode::UNAUTHORIZED
        && headers
            .get_all(header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                let v = v.trim_start();
                let Some((scheme, params)) = v.split_once(' ') else {
                    return false;
                };
                scheme.eq_ignore_ascii_case("bearer")
                    && params.split(',').any(|p| {
                        p.split_once('=').is_some_and(|(k, val)| {
                            k.trim().eq_ignore_ascii_case("error")
                                && val.trim().trim_matches('"') == "invalid_token"
                        })
                    })
            })
}

/// Whether sending the request twice means what sending it once does (RFC 9110 §9.2.2).
/// (`TRACE` is never forwarded: see [`forward`].)
fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

/// The request's body as sent upstream: held (so it can be sent again) or streamed.
enum Outgoing {
    Held(Bytes),
    Streamed(WasiBody),
}

/// The upstream request's parts that do not change between tries.
struct Prepared {
    method: Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
}

fn as_wasi(bytes: Bytes) -> WasiBody {
    http_body_util::Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Why the upstream exchange failed, for the consumer and the log.
fn upstream_failure(e: &Error) -> Response {
    let timeout = matches!(
        e,
        Error::ConnectionTimeout
            | Error::ConnectionReadTimeout
            | Error::DnsTimeout
            | Error::HttpResponseTimeout
    );
    let words = crate::egress::describe(e);
    tracing::warn!(error = %words, "proxy: the upstream exchange failed");
    if timeout {
        refusal(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", &words)
    } else {
        refusal(StatusCode::BAD_GATEWAY, "upstream_failed", &words)
    }
}

/// Forwards `request` (admitted on `route`; `rest` is its path after the prefix).
pub(super) async fn forward(
    proxy: &Proxy,
    route: &Route,
    allowed: Arc<Vec<Origin>>,
    rest: &str,
    request: Request,
) -> Response {
    let daemon = &proxy.0.daemon;
    let job = route.job.as_str();
    let limits = proxy.0.limits;
    // A request not forwarded as it came: counted, and answered by the proxy itself.
    let refuse = |status: StatusCode, error: &str, message: &str| {
        daemon.count_proxy(Some(job), ProxyResult::BadRequest);
        refusal(status, error, message)
    };
    let bad = |message: &str| refuse(StatusCode::BAD_REQUEST, "bad_request", message);
    if !clean_path(rest) {
        return bad("the path may not hold `.` or `..` segments, `//` or encoded slashes");
    }
    if request.method() == Method::CONNECT {
        return bad("CONNECT is not proxied: send the request itself");
    }
    // A server (or a proxy in front of it) that answers TRACE sends the request back, with
    // the token the proxy added (RFC 9110 §9.3.8: no credentials in a TRACE).
    if request.method() == Method::TRACE {
        return refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "TRACE is not proxied: the reply would echo the token",
        );
    }
    // Only chunked is undone here; a body in another transfer coding would reach the
    // upstream without its label.
    let codings = request
        .headers()
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .any(|c| !c.trim().eq_ignore_ascii_case("chunked"));
    if codings {
        return refuse(
            StatusCode::NOT_IMPLEMENTED,
            "transfer_coding",
            "only the chunked transfer coding is proxied; send gzip as Content-Encoding",
        );
    }
    let (parts, body) = request.into_parts();
    let declared = body.size_hint().exact();
    let too_large = || {
        refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            &format!(
                "the request body is over the proxy's max_request_body ({} bytes)",
                limits.max_request_body
            ),
        )
    };
    if body.size_hint().lower() > limits.max_request_body {
        return too_large();
    }
    let upstream = &route.upstream;
    let path = format!("{}{rest}", upstream.path);
    let path = if path.is_empty() { "/" } else { &path };
    let query = parts.uri.query().map_or(String::new(), |q| format!("?{q}"));
    let authority = authority(&upstream.origin);
    let Ok(uri) = format!("{}://{authority}{path}{query}", upstream.origin.scheme).parse() else {
        return bad("the request target cannot be forwarded");
    };
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    headers.remove(header::AUTHORIZATION);
    // The consumer's `100-continue` was answered here, when its body was first read.
    headers.remove(header::EXPECT);
    match HeaderValue::from_str(&authority) {
        Ok(h) => headers.insert(header::HOST, h),
        Err(_) => return bad("the upstream's authority is not a header value"),
    };
    let prepared = Prepared {
        method: parts.method,
        uri,
        headers,
    };
    let replayable = idempotent(&prepared.method) && declared.is_some_and(|n| n <= RETRY_BODY);
    // Set when a streamed body runs over the limit, so the consumer hears `413`, not `502`.
    let over_limit = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let body = if replayable {
        match http_body_util::Limited::new(body, RETRY_BODY as usize)
            .collect()
            .await
        {
            Ok(c) => Outgoing::Held(c.to_bytes()),
            Err(_) => return bad("the request body ended early"),
        }
    } else {
        let max = limits.max_request_body;
        let over = over_limit.clone();
        Outgoing::Streamed(
            http_body_util::Limited::new(body, usize::try_from(max).unwrap_or(usize::MAX))
                .map_err(move |e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        over.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    Error::HttpRequestBodySize(Some(max))
                })
                .boxed_unsync(),
        )
    };

    let token = match proxy.token(job).await {
        Ok(Some(t)) => t,
        Ok(None) => {
            daemon.count_proxy(Some(job), ProxyResult::NoToken);
            return refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_token",
                "the route's job has no unexpired token yet; see the daemon's log",
            );
        }
        Err(e) => return super::store_down(daemon, job, "the token", &e),
    };
    let http = HttpLimits {
        first_byte_timeout: limits.timeout,
        max_response_body: limits.max_response_body,
        ..HttpLimits::default()
    };
    let held = match &body {
        Outgoing::Held(b) => Some(b.clone()),
        Outgoing::Streamed(_) => None,
    };
    let first_body = match body {
        Outgoing::Held(b) => as_wasi(b),
        Outgoing::Streamed(b) => b,
    };
    let reply = match send(proxy, &prepared, &token, first_body, &allowed, http).await {
        Ok(r) => r,
        Err(_) if over_limit.load(std::sync::atomic::Ordering::Relaxed) => return too_large(),
        Err(e) => {
            daemon.count_proxy(Some(job), ProxyResult::UpstreamFailed);
            return e;
        }
    };
    let reply = match held {
        Some(held) if rejects_token(reply.status(), reply.headers()) => {
            match proxy.newer_token(job, token.revision).await {
                Some(newer) => {
                    drop(reply);
                    match send(proxy, &prepared, &newer, as_wasi(held), &allowed, http).await {
                        Ok(r) => r,
                        Err(e) => {
                            daemon.count_proxy(Some(job), ProxyResult::UpstreamFailed);
                            return e;
                        }
                    }
                }
                None => reply,
            }
        }
        _ => reply,
    };
    daemon.count_proxy(Some(job), ProxyResult::Upstream(reply.status().as_u16()));
    reply
}

/// `host[:port]` as the `Host` header carries it (the port only when not the scheme's).
fn authority(origin: &Origin) -> String {
    let host = if origin.host.contains(':') {
        format!("[{}]", origin.host)
    } else {
        origin.host.clone()
    };
    let default = if origin.scheme == "https" { 443 } else { 80 };
    if origin.port == default {
        host
    } else {
        format!("{host}:{}", origin.port)
    }
}

/// One try: the prepared request with `token`, its reply streamed back.
async fn send(
    proxy: &Proxy,
    prepared: &Prepared,
    token: &CurrentToken,
    body: WasiBody,
    allowed: &Arc<Vec<Origin>>,
    limits: HttpLimits,
) -> Result<Response, Response> {
    let mut request = http::Request::new(body);
    *request.method_mut() = prepared.method.clone();
    *request.uri_mut() = prepared.uri.clone();
    *request.headers_mut() = prepared.headers.clone();
    let Ok(mut bearer) = HeaderValue::from_str(&format!("Bearer {}", token.value.expose_secret()))
    else {
        return Err(refusal(
            StatusCode::BAD_GATEWAY,
            "unusable_token",
            "the stored token cannot be sent in a header",
        ));
    };
    // Kept out of hyper's debug output and any header dump.
    bearer.set_sensitive(true);
    request.headers_mut().insert(header::AUTHORIZATION, bearer);
    let options = RequestOptions {
        connect_timeout: Some(limits.connect_timeout),
        first_byte_timeout: Some(limits.first_byte_timeout),
        between_bytes_timeout: Some(limits.between_bytes_timeout),
    };
    let sent = proxy
        .0
        .transport
        .send(request, options, allowed.clone(), limits)
        .await;
    let (mut reply, _) = sent.map_err(|e| upstream_failure(&e))?;
    strip_hop_by_hop(reply.headers_mut());
    Ok(reply.map(axum::body::Body::new))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_climb_or_smuggle_are_refused() {
        for ok in [
            "",
            "/",
            "/v1.0/me",
            "/a/b/",
            "/a.b/c..d/...",
            "/%41",
            "/a;v=1/b",
            "/%C3%A9",
        ] {
            assert!(clean_path(ok), "{ok}");
        }
        for bad in [
            "/..",
            "/../x",
            "/a/./b",
            "/a/%2e%2e/b",
            "/a/%2E./b",
            "/a/.%2e",
            "/a//b",
            "//evil.example/x",
            "/a%2fb",
            "/a%5C..",
            "/a\\b",
            "relative",
            "/..;/x",
            "/a/..;jsessionid=1/b",
            "/a/%2e%2e%3b/b",
            "/%252e%252e/x",
            "/..%00/x",
            "/%c0%ae%c0%ae/x",
            "/a%00b",
        ] {
            assert!(!clean_path(bad), "{bad}");
        }
    }

    #[test]
    fn only_an_invalid_token_challenge_asks_for_a_new_token() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.append(header::WWW_AUTHENTICATE, HeaderValue::from_str(v).unwrap());
            h
        };
        let unauthorized = StatusCode::UNAUTHORIZED;
        for yes in [
            "Bearer error=\"invalid_token\"",
            "bearer realm=\"x\", error=\"invalid_token\", error_description=\"expired\"",
            "Bearer error=invalid_token",
        ] {
            assert!(rejects_token(unauthorized, &with(yes)), "{yes}");
        }
        for no in [
            "Bearer",
            "Bearer error=\"insufficient_scope\"",
            "Basic realm=\"invalid_token\"",
            "Bearer error_description=\"invalid_token\"",
        ] {
            assert!(!rejects_token(unauthorized, &with(no)), "{no}");
        }
        let challenge = with("Bearer error=\"invalid_token\"");
        assert!(!rejects_token(StatusCode::FORBIDDEN, &challenge));
        assert!(!rejects_token(unauthorized, &HeaderMap::new()));
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert(
            header::PROXY_AUTHORIZATION,
            HeaderValue::from_static("Bearer k"),
        );
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key(header::ACCEPT));
    }

    #[test]
    fn only_idempotent_methods_are_repeated() {
        for m in [
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ] {
            assert!(idempotent(&m), "{m}");
        }
        for m in [Method::POST, Method::PATCH] {
            assert!(!idempotent(&m), "{m}");
        }
    }

    #[test]
    fn the_host_header_omits_the_default_port() {
        let o = |t: &str| Origin::of_url(t).unwrap();
        assert_eq!(
            authority(&o("https://graph.microsoft.com")),
            "graph.microsoft.com"
        );
        assert_eq!(authority(&o("http://127.0.0.1:8080")), "127.0.0.1:8080");
        assert_eq!(authority(&o("https://[::1]:443")), "[::1]");
    }
}
