//! The bearer-injecting proxy: a consumer sends plain HTTP to the daemon on loopback (TCP or
//! a Unix socket); the proxy finds the route by path prefix, checks who is calling, adds
//! `Authorization: Bearer <token>` with the route's job's current token and forwards the
//! request to the route's upstream, as Envoy's credential injector does. The consumer never
//! holds the token.
//!
//! - **Who may call.** On the Unix socket, the kernel-vouched peer credentials must be among
//!   the job's `[jobs.consumers]` (as on the token socket). On TCP, where every local user
//!   can connect, the caller presents the route's consumer secret (a store secret, read on
//!   every request) as `Proxy-Authorization: Bearer <secret>`, compared in equal time.
//! - **Where the token may go.** A route's upstream must be one of its job's `upstreams`
//!   (checked when the config loads), and the request is sent through the plugin's egress
//!   ([`crate::egress::NetTransport`]): the name is resolved and non-public addresses are refused unless the
//!   upstream names that address itself; redirects are never followed; timeouts, response
//!   header and body sizes are bounded.
//! - **Bodies stream both ways**; only a small body of an idempotent request is held, so that
//!   request can be sent again (below).
//! - **A rejected token.** When the upstream answers `401` with a `Bearer` challenge carrying
//!   `error="invalid_token"` (RFC 6750 §3.1), the token was revoked or expired early: an
//!   idempotent request is sent once more with a newer token, refreshing the job for it
//!   unless another request (or the schedule) already did. One refresh per job at a time,
//!   at most one per [`REFRESH_COOLDOWN`], so a resource that rejects every token cannot
//!   make the daemon hammer the identity provider. Otherwise the `401` goes back as it came.

mod forward;

pub(crate) use forward::clean_path;

use crate::daemon::{CurrentToken, Daemon, ProxyResult};
use crate::egress::{Origin, Transport};
use crate::listen::Peer;
use crate::socket::SocketConfig;
use crate::store::SecretStore;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Default largest request body a consumer may send.
pub const DEFAULT_MAX_REQUEST_BODY: u64 = 64 << 20;
/// Default largest upstream response body.
pub const DEFAULT_MAX_RESPONSE_BODY: u64 = 1 << 30;
/// Default time for the upstream's response head to arrive (the request body is sent
/// within it).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Default connections served at once on each of the proxy's listeners.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// The most of a request body held to send it again after a rejected token; a longer (or
/// chunked) body is streamed and its request is not retried.
pub const RETRY_BODY: u64 = 64 * 1024;
/// The least time between two refreshes one job's proxied requests force.
pub const REFRESH_COOLDOWN: Duration = Duration::from_secs(30);

/// `[proxy]`: where the proxy listens and its routes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyConfig {
    /// A loopback TCP address (every route then needs a consumer secret).
    pub listen: Option<SocketAddr>,
    /// A Unix socket (callers known by peer credentials).
    pub socket: Option<SocketConfig>,
    /// The routes, as configured.
    pub routes: Vec<Route>,
    /// Bounds on what passes through.
    pub limits: ProxyLimits,
}

/// Bounds on the proxy's traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyLimits {
    /// Largest request body, in bytes.
    pub max_request_body: u64,
    /// Largest response body, in bytes.
    pub max_response_body: u64,
    /// Time for the upstream's response head.
    pub timeout: Duration,
    /// Connections served at once, per listener.
    pub max_connections: usize,
}

impl Default for ProxyLimits {
    fn default() -> Self {
        Self {
            max_request_body: DEFAULT_MAX_REQUEST_BODY,
            max_response_body: DEFAULT_MAX_RESPONSE_BODY,
            timeout: DEFAULT_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// `[[proxy.routes]]`: requests under `prefix` go to `upstream` with `job`'s token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Path prefix, matched on whole segments (`/graph` takes `/graph` and `/graph/...`,
    /// not `/graphx`); `/` takes everything. No trailing `/` except for `/` itself.
    pub prefix: String,
    /// Where requests go.
    pub upstream: Upstream,
    /// The job whose token is added.
    pub job: String,
    /// Store name of the secret a TCP caller presents.
    pub consumer_secret: Option<String>,
}

/// An upstream: an origin and a base path the rest of the request path is appended to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    /// Scheme, host and port.
    pub origin: Origin,
    /// Base path without a trailing `/` (empty for the root).
    pub path: String,
}

impl Upstream {
    /// Parses `https://host[:port][/base/path]`; no query, fragment, credentials, wildcard
    /// or dot segments.
    pub fn parse(text: &str) -> Result<Self, String> {
        let origin = Origin::of_url(text)?;
        let url = url::Url::parse(text).map_err(|e| format!("`{text}` is not a URL: {e}"))?;
        if url.query().is_some() || url.fragment().is_some() || text.contains("://*.") {
            return Err(format!(
                "`{text}`: give scheme://host[:port][/path], without a query, fragment or wildcard"
            ));
        }
        // `url` has resolved dot segments (and read `\\` as `/`) already; the text as written
        // is checked, so what the operator wrote is what is used.
        let written = text.split_once("://").map_or("", |(_, rest)| rest);
        let written_path = written.find(['/', '\\']).map_or("", |i| &written[i..]);
        if !forward::clean_path(written_path) {
            return Err(format!(
                "`{text}`: the path may not hold `.` or `..` segments, `//`, backslashes or encoded slashes"
            ));
        }
        if origin.host == "localhost" {
            return Err(format!(
                "`{text}`: name the loopback address itself (`127.0.0.1` or `[::1]`): a name that resolves to a loopback address is refused when the connection is made"
            ));
        }
        Ok(Self {
            origin,
            path: url.path().trim_end_matches('/').to_string(),
        })
    }
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.origin, self.path)
    }
}

impl Route {
    /// The rest of `path` after this route's prefix, when the route takes it.
    fn rest<'p>(&self, path: &'p str) -> Option<&'p str> {
        if self.prefix == "/" {
            return Some(path);
        }
        let rest = path.strip_prefix(self.prefix.as_str())?;
        (rest.is_empty() || rest.starts_with('/')).then_some(rest)
    }
}

/// The proxy's shared state.
#[derive(Clone)]
struct Proxy(Arc<Inner>);

struct Inner {
    /// Longest prefix first.
    routes: Vec<(Route, Arc<Vec<Origin>>)>,
    daemon: Daemon,
    store: Arc<dyn SecretStore>,
    transport: Arc<dyn Transport>,
    limits: ProxyLimits,
    /// Each job's token as last read from the store, reused while its revision is current.
    tokens: Mutex<HashMap<String, Arc<CurrentToken>>>,
    /// Per job: when a proxied request last forced a refresh. The lock is held through the
    /// refresh, so concurrent rejected requests wait for one refresh instead of each
    /// starting their own.
    refreshes: HashMap<String, tokio::sync::Mutex<Option<Instant>>>,
}

/// The proxy's routes as an axum app: every method and path goes to the forwarder, which
/// sends through `transport` (the daemon's, shared with its runs: the egress vetting, the
/// trusted roots and the connection pool).
pub fn router(
    config: &ProxyConfig,
    daemon: Daemon,
    store: Arc<dyn SecretStore>,
    transport: Arc<dyn Transport>,
) -> Router {
    let mut routes: Vec<(Route, Arc<Vec<Origin>>)> = config
        .routes
        .iter()
        .map(|r| (r.clone(), Arc::new(vec![r.upstream.origin.clone()])))
        .collect();
    routes.sort_by_key(|(r, _)| std::cmp::Reverse(r.prefix.len()));
    let refreshes = config
        .routes
        .iter()
        .map(|r| (r.job.clone(), tokio::sync::Mutex::new(None)))
        .collect();
    let proxy = Proxy(Arc::new(Inner {
        routes,
        daemon,
        store,
        transport,
        limits: config.limits,
        tokens: Mutex::default(),
        refreshes,
    }));
    Router::new().fallback(handle).with_state(proxy)
}

/// The limits of one listener.
fn serving(limits: &ProxyLimits) -> crate::admin::AdminLimits {
    crate::admin::AdminLimits {
        max_connections: limits.max_connections,
        header_timeout: Duration::from_secs(10),
        // Long downloads are legitimate; a connection still ends some time.
        max_connection_age: Duration::from_secs(3600),
    }
}

/// Serves `app` on a loopback TCP listener until `shutdown` resolves.
pub async fn serve_tcp(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: ProxyLimits,
    shutdown: impl std::future::Future<Output = ()>,
) {
    crate::listen::serve(listener, app, serving(&limits), "proxy", shutdown).await;
}

/// Serves `app` on a Unix socket until `shutdown` resolves, then removes the file.
pub async fn serve_unix(
    listener: tokio::net::UnixListener,
    app: Router,
    limits: ProxyLimits,
    shutdown: impl std::future::Future<Output = ()>,
) {
    crate::listen::serve_unix(listener, app, serving(&limits), "proxy socket", shutdown).await;
}

/// A reply of the proxy itself (not the upstream's), as JSON with `error` and `message`.
fn refusal(status: StatusCode, error: &str, message: &str) -> Response {
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(json!({"error": error, "message": message})),
    )
        .into_response()
}

/// The answer when the store cannot be read (counted with the job's unserved requests).
fn store_down(daemon: &Daemon, job: &str, what: &str, e: &crate::store::StoreError) -> Response {
    tracing::warn!(error = %e, "proxy: cannot read {what} from the store");
    daemon.count_proxy(Some(job), ProxyResult::NoToken);
    refusal(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        "the secret store is unavailable",
    )
}

impl Proxy {
    fn route(&self, path: &str) -> Option<(&Route, &Arc<Vec<Origin>>, String)> {
        self.0
            .routes
            .iter()
            .find_map(|(r, allowed)| r.rest(path).map(|rest| (r, allowed, rest.to_string())))
    }

    /// Whether the caller may use `route`: by peer credentials on the socket, by the
    /// consumer secret on TCP.
    async fn admits(
        &self,
        route: &Route,
        peer: Option<&Peer>,
        presented: Option<&HeaderValue>,
    ) -> Result<bool, crate::store::StoreError> {
        if let Some(peer) = peer {
            return Ok(self
                .0
                .daemon
                .job_config(&route.job)
                .is_some_and(|c| c.consumers.admits(peer)));
        }
        match &route.consumer_secret {
            Some(name) => crate::bearer::matches(self.0.store.as_ref(), name, presented).await,
            // The config refuses a TCP listener with a route without a secret.
            None => Ok(false),
        }
    }

    /// `job`'s current unexpired token: the one read last while the daemon knows no newer
    /// one, else read from the store again.
    async fn token(
        &self,
        job: &str,
    ) -> Result<Option<Arc<CurrentToken>>, crate::store::StoreError> {
        let known = self.0.daemon.token_revision(job);
        let cached = self
            .0
            .tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(job)
            .cloned();
        let token = match (cached, known) {
            (Some(t), Some(rev)) if t.revision >= rev => Some(t),
            _ => self.reload(job).await?,
        };
        let now = crate::time::unix_now();
        Ok(token.filter(|t| t.unexpired_at(now)))
    }

    async fn reload(
        &self,
        job: &str,
    ) -> Result<Option<Arc<CurrentToken>>, crate::store::StoreError> {
        let fresh = self.0.daemon.token(job).await?.map(Arc::new);
        let mut tokens = self.0.tokens.lock().unwrap_or_else(|p| p.into_inner());
        match &fresh {
            Some(t) => tokens.insert(job.to_string(), t.clone()),
            None => tokens.remove(job),
        };
        Ok(fresh)
    }

    /// A token newer than revision `used` (which the upstream rejected), refreshing the job
    /// for it unless that was done less than [`REFRESH_COOLDOWN`] ago.
    async fn newer_token(&self, job: &str, used: u64) -> Option<Arc<CurrentToken>> {
        let daemon = &self.0.daemon;
        let gate = self.0.refreshes.get(job)?;
        let mut last = gate.lock().await;
        // Another request's refresh (or the schedule's) may have replaced it meanwhile.
        if let Ok(Some(t)) = self.reload(job).await
            && t.revision > used
        {
            daemon.count_proxy_retry("newer_token");
            return Some(t);
        }
        if last.is_some_and(|at| at.elapsed() < REFRESH_COOLDOWN) {
            daemon.count_proxy_retry("throttled");
            return None;
        }
        *last = Some(Instant::now());
        tracing::info!(%job, "proxy: the upstream rejected the token; refreshing");
        let refreshed = match daemon.trigger(job).await {
            Ok(record) if record.ok => self.reload(job).await.ok().flatten(),
            Ok(_) | Err(_) => None,
        };
        match refreshed.filter(|t| t.revision > used) {
            Some(t) => {
                daemon.count_proxy_retry("refreshed");
                Some(t)
            }
            None => {
                daemon.count_proxy_retry("failed");
                None
            }
        }
    }
}

async fn handle(
    State(proxy): State<Proxy>,
    peer: Option<axum::Extension<Peer>>,
    request: Request,
) -> Response {
    let daemon = proxy.0.daemon.clone();
    let Some((route, allowed, rest)) = proxy.route(request.uri().path()) else {
        daemon.count_proxy(None, ProxyResult::NoRoute);
        let mut reply = refusal(
            StatusCode::NOT_FOUND,
            "no_route",
            "no proxy route takes this path",
        );
        // Nobody was admitted: the connection is not kept.
        reply
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return reply;
    };
    let job = route.job.as_str();
    let peer = peer.map(|axum::Extension(p)| p);
    let presented = request.headers().get(header::PROXY_AUTHORIZATION).cloned();
    match proxy.admits(route, peer.as_ref(), presented.as_ref()).await {
        Ok(true) => {}
        Ok(false) => {
            daemon.count_proxy(Some(job), ProxyResult::Refused);
            let mut reply = match &peer {
                Some(p) => {
                    tracing::warn!(uid = p.uid, gid = p.gid, pid = ?p.pid, route = %route.prefix, "proxy: refused a caller");
                    refusal(
                        StatusCode::FORBIDDEN,
                        "forbidden",
                        "this caller may not use this route",
                    )
                }
                None => {
                    tracing::warn!(route = %route.prefix, "proxy: refused a caller without the route's consumer secret");
                    let mut r = refusal(
                        StatusCode::PROXY_AUTHENTICATION_REQUIRED,
                        "consumer_secret_required",
                        "send the route's consumer secret as `Proxy-Authorization: Bearer <secret>`",
                    );
                    r.headers_mut().insert(
                        header::PROXY_AUTHENTICATE,
                        HeaderValue::from_static("Bearer realm=\"tokenwarden\""),
                    );
                    r
                }
            };
            // A stranger does not keep the connection.
            reply
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return reply;
        }
        Err(e) => return store_down(&daemon, job, "the consumer secret", &e),
    }
    forward::forward(&proxy, route, allowed.clone(), &rest, request).await
}
