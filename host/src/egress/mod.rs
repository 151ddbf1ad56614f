//! Outbound HTTP policy for plugins (and the bearer-injecting proxy, which sends through
//! the same transport).
//!
//! Isolation model: a plugin reaches only its job's allowed origins, matched exactly on
//! scheme, host and port (a leading `*.` matches subdomains). Everything else is refused in
//! [`WasiHttpHooks::send_request`] before any connection is made, and the guest sees
//! `HTTP-request-denied`. The guest cannot set `Host` or hop-by-hop headers (wasi:http's
//! forbidden list), so the origin checked is the origin reached. [`send`] then resolves the
//! name and refuses non-public addresses unless their own origin is allowed, connects to
//! the vetted address, never follows redirects, and bounds timeouts, header and body sizes
//! whatever the guest asks. What TLS trusts is [`Trust`] (`[tls]`); an outbound proxy, where
//! the network demands one, is [`EgressProxy`] (`[egress]`, a `CONNECT` tunnel: see
//! `tunnel.rs` for how vetting works through it).

mod identity;
mod send;
mod trust;
mod tunnel;

pub use identity::{ClientIdentity, IdentityError};
pub use send::NetTransport;
pub(crate) use send::tls_config;
pub use trust::{Roots, Trust, TrustError};
pub use tunnel::{EgressProxy, NoProxy};

use std::sync::Arc;
use std::time::Duration;
use wasmtime_wasi_http::{RequestOptions, WasiBody, WasiHttpHooks};

/// `scheme://host:port`, with the port made explicit.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    /// `http` or `https`.
    pub scheme: String,
    /// Lower-case host; for a wildcard origin, the suffix after `*.`.
    pub host: String,
    /// Port, defaulted from the scheme.
    pub port: u16,
    /// `*.host`: any subdomain of `host` (not `host` itself).
    pub wildcard: bool,
}

impl Origin {
    /// Parses an allow-list entry: `https://host[:port]`, optionally `https://*.host`.
    /// A path other than `/`, a query or credentials are refused: an origin is not a URL.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (wildcard, to_parse) = match text.split_once("://*.") {
            Some((scheme, rest)) => (true, format!("{scheme}://{rest}")),
            None => (false, text.to_string()),
        };
        let url =
            url::Url::parse(&to_parse).map_err(|e| format!("`{text}` is not an origin: {e}"))?;
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "`{text}` is not an origin: give scheme://host[:port] without a path"
            ));
        }
        let mut origin = Self::from_url(&url, text)?;
        origin.wildcard = wildcard;
        Ok(origin)
    }

    /// The origin of a full URL (a token endpoint or authority).
    pub fn of_url(text: &str) -> Result<Self, String> {
        let url = url::Url::parse(text).map_err(|e| format!("`{text}` is not a URL: {e}"))?;
        Self::from_url(&url, text)
    }

    fn from_url(url: &url::Url, text: &str) -> Result<Self, String> {
        let scheme = url.scheme();
        if scheme != "http" && scheme != "https" {
            return Err(format!("`{text}`: the scheme must be http or https"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!("`{text}`: credentials in a URL are not allowed"));
        }
        let host = url
            .host_str()
            .ok_or_else(|| format!("`{text}` has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let port = url
            .port_or_known_default()
            .ok_or_else(|| format!("`{text}` has no port"))?;
        Ok(Self {
            scheme: scheme.to_string(),
            host,
            port,
            wildcard: false,
        })
    }

    /// Whether a request to `scheme://host:port` falls under this origin.
    pub fn matches(&self, scheme: &str, host: &str, port: u16) -> bool {
        if self.scheme != scheme || self.port != port {
            return false;
        }
        if self.wildcard {
            host.len() > self.host.len() + 1
                && host.ends_with(&self.host)
                && host.as_bytes()[host.len() - self.host.len() - 1] == b'.'
        } else {
            self.host == host
        }
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let star = if self.wildcard { "*." } else { "" };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(f, "{}://{star}{host}:{}", self.scheme, self.port)
    }
}

/// Host-side bounds on one HTTP exchange, applied whatever the guest asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// TCP (and TLS) connect.
    pub connect_timeout: Duration,
    /// Until the response head arrives.
    pub first_byte_timeout: Duration,
    /// Between body frames.
    pub between_bytes_timeout: Duration,
    /// Largest response body, in bytes.
    pub max_response_body: u64,
    /// Most response header fields.
    pub max_response_headers: usize,
    /// Largest response header section, in bytes.
    pub max_response_header_bytes: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            first_byte_timeout: Duration::from_secs(30),
            between_bytes_timeout: Duration::from_secs(30),
            max_response_body: 1 << 20,
            max_response_headers: 100,
            max_response_header_bytes: 64 * 1024,
        }
    }
}

impl HttpLimits {
    /// The guest's options, each clamped to the host's bound.
    pub fn clamp(&self, guest: Option<RequestOptions>) -> RequestOptions {
        let guest = guest.unwrap_or_default();
        let pick = |asked: Option<Duration>, cap: Duration| Some(asked.map_or(cap, |a| a.min(cap)));
        RequestOptions {
            connect_timeout: pick(guest.connect_timeout, self.connect_timeout),
            first_byte_timeout: pick(guest.first_byte_timeout, self.first_byte_timeout),
            between_bytes_timeout: pick(guest.between_bytes_timeout, self.between_bytes_timeout),
        }
    }
}

/// A response head and the future wasi:http awaits for the request body's completion.
pub type Sent = (
    http::Response<WasiBody>,
    Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
);

/// What a [`Transport`] returns.
pub type SendFuture =
    std::pin::Pin<Box<dyn Future<Output = wasmtime_wasi_http::Result<Sent>> + Send>>;

/// Sends the requests the allow-list admitted. The default is [`send::NetTransport`]
/// (connect-time address vetting, limits, keep-alive); an embedder may supply another one
/// (a proxy, or an in-process responder for benchmarks) through
/// [`crate::RuntimeOptions::transport`], and then owns those guarantees. A request for a
/// `tls_client_auth` job's token endpoint carries the job's [`ClientIdentity`] in its
/// extensions: a transport presents it in the TLS handshake, or the server refuses.
pub trait Transport: Send + Sync + 'static {
    /// Sends `request` (already admitted by the allow-list `allowed`) under `limits`, with
    /// `options` the guest's timeouts clamped to the host's.
    fn send(
        &self,
        request: http::Request<WasiBody>,
        options: RequestOptions,
        allowed: Arc<Vec<Origin>>,
        limits: HttpLimits,
    ) -> SendFuture;
}

/// The per-run wasi:http hooks: the allow-list and the limits.
pub struct EgressPolicy {
    allowed: Arc<Vec<Origin>>,
    limits: HttpLimits,
    transport: Arc<dyn Transport>,
    /// Origins refused during this run, for the run report.
    pub denied: Vec<String>,
    /// Why the last request failed below HTTP (connect, TLS), in words: the plugin only
    /// sees an error code, and the run's error should say the cause ("the certificate's
    /// issuer is unknown").
    pub failure: Option<String>,
    /// The TLS client identity presented to one origin (the token endpoint's).
    identity: Option<(Origin, ClientIdentity)>,
}

impl EgressPolicy {
    /// A policy allowing exactly `allowed`, sending through `transport`.
    pub fn new(allowed: Vec<Origin>, limits: HttpLimits, transport: Arc<dyn Transport>) -> Self {
        Self {
            allowed: Arc::new(allowed),
            limits,
            transport,
            denied: Vec::new(),
            failure: None,
            identity: None,
        }
    }

    /// This policy presenting `identity` in the TLS handshake with `origin`, and with no
    /// other origin: a client certificate says who the job is to its token endpoint only.
    pub fn with_client_identity(mut self, origin: Origin, identity: ClientIdentity) -> Self {
        self.identity = Some((origin, identity));
        self
    }

    /// A policy allowing exactly `allowed` over the network, with the default limits.
    pub fn allow(allowed: Vec<Origin>) -> Self {
        Self::new(
            allowed,
            HttpLimits::default(),
            Arc::new(NetTransport::default()),
        )
    }

    /// Whether the URI's origin is allowed.
    pub fn allows(&self, uri: &http::Uri) -> bool {
        self.matching(uri).is_some()
    }

    /// The allow-list entry that admits the URI's origin.
    pub fn matching(&self, uri: &http::Uri) -> Option<&Origin> {
        let (scheme, host, port) = uri_origin(uri)?;
        self.allowed.iter().find(|o| o.matches(scheme, &host, port))
    }
}

/// Whether the URI's origin is `origin` itself (not merely under a wildcard).
fn is_origin(uri: &http::Uri, origin: &Origin) -> bool {
    uri_origin(uri)
        .is_some_and(|(scheme, host, port)| !origin.wildcard && origin.matches(scheme, &host, port))
}

/// A URI's scheme, lower-case host (without IPv6 brackets) and port (defaulted).
fn uri_origin(uri: &http::Uri) -> Option<(&str, String, u16)> {
    let scheme = uri.scheme_str()?;
    let host = uri
        .host()?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let port = match (uri.port_u16(), scheme) {
        (Some(p), _) => p,
        (None, "https") => 443,
        (None, "http") => 80,
        _ => return None,
    };
    Some((scheme, host, port))
}

type SendResult = wasmtime_wasi_http::Result<Sent>;

type ErrorCode = wasmtime_wasi_http::p2::bindings::http::types::ErrorCode;

/// A connect failure as a wasi:http code and words.
fn connect_failure(err: &std::io::Error) -> (ErrorCode, String) {
    use std::io::ErrorKind as K;
    let code = match err.kind() {
        K::ConnectionRefused => ErrorCode::ConnectionRefused,
        K::TimedOut => ErrorCode::ConnectionTimeout,
        K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => {
            ErrorCode::ConnectionTerminated
        }
        K::HostUnreachable | K::NetworkUnreachable | K::AddrNotAvailable => {
            ErrorCode::DestinationUnavailable
        }
        _ => ErrorCode::ConnectionRefused,
    };
    // The OS's words, without Rust's `Os { code: .., kind: .. }` dump.
    let words = err.to_string();
    let words = words
        .split(" (os error")
        .next()
        .unwrap_or(&words)
        .to_string();
    (code, format!("cannot connect: {}", words.to_lowercase()))
}

/// A TLS failure as a wasi:http code and words naming the cause.
fn tls_failure(err: &std::io::Error) -> (ErrorCode, String) {
    match err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(tls) => rustls_failure(tls),
        None => (ErrorCode::TlsProtocolError, format!("TLS failed: {err}")),
    }
}

/// A failure while exchanging HTTP; a TLS alert under it is named as such. (With TLS 1.3
/// a server's refusal of the client certificate arrives after the handshake, with the
/// response.)
fn hyper_failure(err: &hyper::Error) -> (ErrorCode, String) {
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        let tls = s.downcast_ref::<rustls::Error>().or_else(|| {
            s.downcast_ref::<std::io::Error>()?
                .get_ref()?
                .downcast_ref::<rustls::Error>()
        });
        if let Some(tls) = tls {
            return rustls_failure(tls);
        }
        source = s.source();
    }
    (ErrorCode::HttpProtocolError, format!("HTTP: {err}"))
}

/// A rustls error as a wasi:http code and words naming the cause.
fn rustls_failure(tls: &rustls::Error) -> (ErrorCode, String) {
    use rustls::{CertificateError as C, Error as R};
    let cert = |why: &str| {
        (
            ErrorCode::TlsCertificateError,
            format!("TLS: the server's certificate {why}"),
        )
    };
    match tls {
        R::InvalidCertificate(C::UnknownIssuer) => {
            cert("was issued by an unknown authority (not in the trusted roots)")
        }
        R::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => cert("has expired"),
        R::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            cert("is not valid yet")
        }
        R::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            cert("is not valid for this host name")
        }
        R::InvalidCertificate(C::Revoked) => cert("has been revoked"),
        R::InvalidCertificate(other) => cert(&format!("was refused ({other:?})")),
        R::AlertReceived(alert) => (
            ErrorCode::TlsAlertReceived(
                wasmtime_wasi_http::p2::bindings::http::types::TlsAlertReceivedPayload {
                    alert_id: None,
                    alert_message: Some(format!("{alert:?}")),
                },
            ),
            alert_words(*alert),
        ),
        other => (ErrorCode::TlsProtocolError, format!("TLS failed: {other}")),
    }
}

/// A TLS alert from the server in words; those about certificates are, from a token
/// endpoint, about the job's client certificate (`tls_client_auth`).
fn alert_words(alert: rustls::AlertDescription) -> String {
    use rustls::AlertDescription as A;
    match alert {
        A::CertificateRequired => {
            "TLS: the server requires a client certificate (alert CertificateRequired)".into()
        }
        A::BadCertificate
        | A::UnknownCA
        | A::CertificateUnknown
        | A::CertificateExpired
        | A::CertificateRevoked
        | A::UnsupportedCertificate
        | A::AccessDenied => format!(
            "TLS: the server refused the client certificate (alert {alert:?}): is it the one registered for this client, from a CA the server trusts?"
        ),
        other => format!("TLS: the server sent the alert {other:?}"),
    }
}

/// A failed exchange in words: the cause of a connect or TLS failure, else the error's own.
pub(crate) fn describe(err: &wasmtime_wasi_http::Error) -> String {
    use wasmtime_wasi_http::Error as E;
    match err {
        E::Connect(io) => connect_failure(io).1,
        E::Tls(io) => tls_failure(io).1,
        E::DestinationIpProhibited => {
            "the upstream's name resolves only to non-public addresses it may not reach".into()
        }
        E::Hyper(h) => hyper_failure(h).1,
        other => other.to_string(),
    }
}

impl WasiHttpHooks for EgressPolicy {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        _ = fut;
        let Some(entry) = self.matching(request.uri()) else {
            let uri = request.uri();
            // Logged by the runtime after the run, scrubbed of the run's secrets: a plugin
            // could put a secret in the host name.
            self.denied.push(format!(
                "{}://{}",
                uri.scheme_str().unwrap_or("?"),
                uri.authority().map_or("?", |a| a.as_str())
            ));
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        };
        // The allow-list entry, not the URL: the entry is the operator's text.
        tracing::debug!(allowed = %entry, method = %request.method(), "plugin request admitted");
        if let Some((origin, identity)) = &self.identity
            && is_origin(request.uri(), origin)
        {
            request.extensions_mut().insert(identity.clone());
        }
        let options = self.limits.clamp(options);
        Box::new(
            self.transport
                .send(request, options, self.allowed.clone(), self.limits),
        )
    }

    fn p2_error_from_connect(&mut self, err: &std::io::Error) -> ErrorCode {
        let (code, words) = connect_failure(err);
        self.failure = Some(words);
        code
    }

    fn p2_error_from_tls(&mut self, err: &std::io::Error) -> ErrorCode {
        let (code, words) = tls_failure(err);
        self.failure = Some(words);
        code
    }

    fn p2_error_from_hyper(&mut self, err: &hyper::Error) -> ErrorCode {
        let (code, words) = hyper_failure(err);
        self.failure = Some(words);
        code
    }

    fn p3_error_from_connect(&mut self, err: &std::io::Error) -> P3ErrorCode {
        to_p3(self.p2_error_from_connect(err))
    }

    fn p3_error_from_tls(&mut self, err: &std::io::Error) -> P3ErrorCode {
        to_p3(self.p2_error_from_tls(err))
    }

    fn p3_error_from_hyper(&mut self, err: &hyper::Error) -> P3ErrorCode {
        to_p3(self.p2_error_from_hyper(err))
    }
}

type P3ErrorCode = wasmtime_wasi_http::p3::bindings::http::types::ErrorCode;

/// The WASI 0.3 twin of a code the failures above produce (the two worlds' `error-code`s
/// have the same cases, as distinct Rust types).
fn to_p3(code: ErrorCode) -> P3ErrorCode {
    use P3ErrorCode as P3;
    match code {
        ErrorCode::ConnectionRefused => P3::ConnectionRefused,
        ErrorCode::ConnectionTimeout => P3::ConnectionTimeout,
        ErrorCode::ConnectionTerminated => P3::ConnectionTerminated,
        ErrorCode::DestinationUnavailable => P3::DestinationUnavailable,
        ErrorCode::TlsCertificateError => P3::TlsCertificateError,
        ErrorCode::TlsAlertReceived(p) => P3::TlsAlertReceived(
            wasmtime_wasi_http::p3::bindings::http::types::TlsAlertReceivedPayload {
                alert_id: p.alert_id,
                alert_message: p.alert_message,
            },
        ),
        ErrorCode::TlsProtocolError => P3::TlsProtocolError,
        ErrorCode::HttpProtocolError => P3::HttpProtocolError,
        // Not produced above.
        _ => P3::InternalError(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records whether each request it is given carries a client identity.
    struct Recording(std::sync::Mutex<Vec<(String, bool)>>);

    impl Transport for Recording {
        fn send(
            &self,
            request: http::Request<WasiBody>,
            _: RequestOptions,
            _: Arc<Vec<Origin>>,
            _: HttpLimits,
        ) -> SendFuture {
            let has = request.extensions().get::<ClientIdentity>().is_some();
            self.0
                .lock()
                .unwrap()
                .push((request.uri().to_string(), has));
            Box::pin(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
        }
    }

    #[tokio::test]
    async fn a_client_identity_goes_to_the_token_endpoints_origin_only() {
        use http_body_util::BodyExt;
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["client".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let identity = ClientIdentity::from_pem(&key.serialize_pem(), &cert.pem()).unwrap();
        let recording = Arc::new(Recording(Default::default()));
        let allowed = [
            "https://idp.example",
            "https://other.example",
            "https://*.idp.example",
        ]
        .map(|o| Origin::parse(o).unwrap());
        let mut policy =
            EgressPolicy::new(allowed.to_vec(), HttpLimits::default(), recording.clone())
                .with_client_identity(
                    Origin::of_url("https://idp.example/token").unwrap(),
                    identity,
                );
        let urls = [
            "https://idp.example/token",
            "https://IDP.example:443/other",
            "https://other.example/token",
            "https://sub.idp.example/token",
        ];
        for url in urls {
            let body = http_body_util::Empty::<bytes::Bytes>::new()
                .map_err(|never| match never {})
                .boxed_unsync();
            let request = http::Request::post(url).body(body).unwrap();
            let sent = policy.send_request(request, None, Box::new(async { Ok(()) }));
            assert!(Box::into_pin(sent).await.is_err());
        }
        let got: Vec<bool> = recording.0.lock().unwrap().iter().map(|r| r.1).collect();
        assert_eq!(got, [true, true, false, false]);
    }

    #[test]
    fn origins_match_exactly() {
        let o = Origin::parse("https://login.microsoftonline.com").unwrap();
        assert!(o.matches("https", "login.microsoftonline.com", 443));
        assert!(!o.matches("http", "login.microsoftonline.com", 443));
        assert!(!o.matches("https", "login.microsoftonline.com", 8443));
        assert!(!o.matches("https", "evil.login.microsoftonline.com", 443));
        assert!(!o.matches("https", "login.microsoftonline.com.evil", 443));
    }

    #[test]
    fn wildcards_match_subdomains_only() {
        let o = Origin::parse("https://*.example.com").unwrap();
        assert!(o.matches("https", "a.example.com", 443));
        assert!(o.matches("https", "a.b.example.com", 443));
        assert!(!o.matches("https", "example.com", 443));
        assert!(!o.matches("https", "badexample.com", 443));
    }

    #[test]
    fn origin_parsing_refuses_non_origins() {
        for bad in [
            "ftp://x",
            "https://u:p@x",
            "https://x/path",
            "https://x?q",
            "not a url",
        ] {
            assert!(Origin::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Origin::parse("http://127.0.0.1:9").unwrap().port, 9);
        assert_eq!(
            Origin::parse("HTTPS://Host.Example/").unwrap().host,
            "host.example"
        );
    }

    #[test]
    fn allow_list_checks_uri_scheme_host_and_port() {
        let p = EgressPolicy::new(
            vec![Origin::parse("http://127.0.0.1:8080").unwrap()],
            HttpLimits::default(),
            Arc::new(send::NetTransport::default()),
        );
        assert!(p.allows(&"http://127.0.0.1:8080/t".parse().unwrap()));
        assert!(!p.allows(&"http://127.0.0.1:8081/t".parse().unwrap()));
        assert!(!p.allows(&"https://127.0.0.1:8080/t".parse().unwrap()));
        assert!(!p.allows(&"http://localhost:8080/t".parse().unwrap()));
    }

    #[test]
    fn transport_failures_are_explained_in_words() {
        use rustls::{CertificateError as C, Error as R};
        for (cause, words) in [
            (C::UnknownIssuer, "unknown authority"),
            (C::Expired, "has expired"),
            (C::NotValidForName, "not valid for this host name"),
        ] {
            let io = std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                R::InvalidCertificate(cause),
            );
            let (code, text) = tls_failure(&io);
            assert!(matches!(code, ErrorCode::TlsCertificateError), "{code:?}");
            assert!(text.contains(words), "{text}");
        }
        let os = std::io::Error::from_raw_os_error(111);
        let (code, text) = connect_failure(&os);
        assert!(matches!(code, ErrorCode::ConnectionRefused));
        assert_eq!(text, "cannot connect: connection refused");
        assert!(!text.contains("os error"));
    }

    #[test]
    fn guest_timeouts_are_clamped() {
        let limits = HttpLimits::default();
        let asked = RequestOptions {
            connect_timeout: Some(Duration::from_secs(3600)),
            first_byte_timeout: Some(Duration::ZERO),
            between_bytes_timeout: None,
        };
        let got = limits.clamp(Some(asked));
        assert_eq!(got.connect_timeout, Some(limits.connect_timeout));
        assert_eq!(got.first_byte_timeout, Some(Duration::ZERO));
        assert_eq!(
            got.between_bytes_timeout,
            Some(limits.between_bytes_timeout)
        );
    }
}
