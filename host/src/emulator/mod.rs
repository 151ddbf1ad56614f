//! An Entra-compatible token endpoint for offline use, demos and tests.
//!
//! `POST /{tenant}/oauth2/v2.0/token` checks grant type, tenant, client, secret and scope in
//! the order Entra does and answers with Entra-shaped errors (AADSTS codes, trace and
//! correlation ids) or JWT-shaped tokens. `GET /v1.0/me` is a protected resource that
//! accepts only unexpired tokens it issued, so a test can prove a stored token works;
//! `/v1.0/echo` (any method) is another that sends the request body back, to prove bodies
//! cross a proxy whole. A presented token that is unknown, expired or revoked gets `401` with
//! `WWW-Authenticate: Bearer error="invalid_token"` (RFC 6750 §3.1);
//! `POST /_emulator/revoke` revokes every token issued so far, as a continuous access
//! evaluation event does. `GET /metadata/identity/oauth2/token` (the Instance Metadata
//! Service) and `GET /msi/token` (App Service) issue managed-identity tokens ([`identity`]).
//! Client assertions (`private_key_jwt` with a registered
//! certificate, and federated credentials) are checked as Entra checks them ([`assertion`]). Faults are queued per request: from the command line (`--fault`)
//! or at run time with `POST /_emulator/faults`; `GET /_emulator/stats` counts requests.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokenwarden_contract::entra::{self, DEFAULT_AUTHORITY, TOKEN_PATH};
use tokio::net::TcpListener;

pub mod assertion;
mod identity;
pub use assertion::FederatedCredential;

/// The demo App Service identity header (public: it is in this binary).
pub const DEMO_IDENTITY_HEADER: &str = "demo-identity-header-5f0e";

/// Where `tokenwarden emulator` listens by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8421";
/// Tenant the demo and the default emulator know.
pub const DEMO_TENANT: &str = "8f3c2d1e-4b5a-4c6d-9e8f-0a1b2c3d4e5f";
/// Client id the demo and the default emulator know.
pub const DEMO_CLIENT_ID: &str = "5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d";
/// Its secret: Entra-like, with characters that need form encoding.
pub const DEMO_CLIENT_SECRET: &str = "Xq8~demo.Secret_not-for+production/0123=";

/// One injected fault; each consumes one token request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Fault {
    /// Answer with this status and an empty body.
    Status {
        /// HTTP status.
        status: u16,
    },
    /// 429 with `Retry-After` (seconds) when given.
    Throttle {
        /// `Retry-After` seconds.
        retry_after: Option<u32>,
    },
    /// 503 with Entra's `temporarily_unavailable` body.
    Unavailable,
    /// 200 with a body that is not JSON.
    Malformed,
    /// 200 with `"access_token": ""`.
    EmptyToken,
    /// 200 without `access_token`.
    MissingToken,
    /// Wait this long, then answer normally.
    Delay {
        /// Milliseconds.
        ms: u64,
    },
}

impl std::str::FromStr for Fault {
    type Err = String;

    /// `503`, `429`, `429:5`, `unavailable`, `malformed`, `empty-token`, `missing-token`,
    /// `delay:1500`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (head, arg) = match s.split_once(':') {
            Some((h, a)) => (h, Some(a)),
            None => (s, None),
        };
        let num = |a: Option<&str>| -> Result<Option<u64>, String> {
            a.map(|a| {
                a.parse()
                    .map_err(|_| format!("fault `{s}`: `{a}` is not a number"))
            })
            .transpose()
        };
        Ok(match head {
            "429" => Fault::Throttle {
                retry_after: num(arg)?.map(|n| n as u32),
            },
            "unavailable" => Fault::Unavailable,
            "malformed" => Fault::Malformed,
            "empty-token" => Fault::EmptyToken,
            "missing-token" => Fault::MissingToken,
            "delay" => Fault::Delay {
                ms: num(arg)?.ok_or_else(|| format!("fault `{s}`: give delay:MILLISECONDS"))?,
            },
            code => match code.parse::<u16>() {
                Ok(status) if (100..600).contains(&status) && arg.is_none() => {
                    Fault::Status { status }
                }
                _ => {
                    return Err(format!(
                        "unknown fault `{s}` (try 503, 429:5, unavailable, malformed, empty-token, missing-token, delay:1500)"
                    ));
                }
            },
        })
    }
}

/// What the emulator accepts and how it answers.
#[derive(Clone, Debug)]
pub struct EmulatorConfig {
    /// Known tenants (GUIDs or domain names).
    pub tenants: Vec<String>,
    /// Known clients: id and secret.
    pub clients: Vec<(String, String)>,
    /// Certificate credentials: a client id and a certificate (DER) registered for it.
    pub certificates: Vec<(String, Vec<u8>)>,
    /// Federated identity records.
    pub federated: Vec<FederatedCredential>,
    /// App Service's `IDENTITY_HEADER`: what its identity endpoint requires as
    /// `X-IDENTITY-HEADER`.
    pub identity_header: String,
    /// Lifetime of issued tokens.
    pub token_lifetime: Duration,
    /// Added to every token request.
    pub latency: Duration,
    /// Faults for the first requests, in order.
    pub faults: Vec<Fault>,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            tenants: vec![DEMO_TENANT.to_string()],
            clients: vec![(DEMO_CLIENT_ID.to_string(), DEMO_CLIENT_SECRET.to_string())],
            certificates: Vec::new(),
            federated: Vec::new(),
            identity_header: DEMO_IDENTITY_HEADER.to_string(),
            token_lifetime: Duration::from_secs(3599),
            latency: Duration::ZERO,
            faults: Vec::new(),
        }
    }
}

/// Request counters, from `GET /_emulator/stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Token requests received.
    pub token_requests: u64,
    /// Tokens issued.
    pub tokens_issued: u64,
    /// Token requests answered by an injected fault.
    pub faults_served: u64,
    /// Requests to the protected resources (`/v1.0/...`).
    pub resource_requests: u64,
    /// Of those, the ones refused for their token.
    pub resource_refused: u64,
}

struct Issued {
    client_id: String,
    tenant: String,
    expires: SystemTime,
}

struct Inner {
    config: EmulatorConfig,
    /// The tenants, lower-cased, for a constant-time check whatever their number.
    tenants: std::collections::HashSet<String>,
    /// When tokens were issued, per tenant (lower-cased): tests count refreshes per job.
    issued_at: HashMap<String, Vec<SystemTime>>,
    faults: VecDeque<Fault>,
    issued: HashMap<String, Issued>,
    /// Size of `issued` at which expired tokens are next swept out.
    sweep_at: usize,
    stats: Stats,
    /// Certificate credentials' `jti`s, against replay.
    replay: assertion::Replay,
}

/// Shared emulator state; also usable in-process by tests (`push_fault`, `stats`).
#[derive(Clone)]
pub struct EmulatorState(Arc<Mutex<Inner>>);

impl EmulatorState {
    /// State for `config`.
    pub fn new(config: EmulatorConfig) -> Self {
        let faults = config.faults.iter().cloned().collect();
        let tenants = config
            .tenants
            .iter()
            .map(|t| t.to_ascii_lowercase())
            .collect();
        Self(Arc::new(Mutex::new(Inner {
            config,
            tenants,
            issued_at: HashMap::new(),
            faults,
            issued: HashMap::new(),
            sweep_at: 1024,
            stats: Stats::default(),
            replay: assertion::Replay::default(),
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues faults for the next token requests.
    pub fn push_faults(&self, faults: impl IntoIterator<Item = Fault>) {
        self.lock().faults.extend(faults);
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        self.lock().stats.clone()
    }

    /// When tokens were issued for `tenant`, oldest first.
    pub fn issue_times(&self, tenant: &str) -> Vec<SystemTime> {
        self.lock()
            .issued_at
            .get(&tenant.to_ascii_lowercase())
            .cloned()
            .unwrap_or_default()
    }

    /// Whether a token issued for `tenant` is valid now.
    pub fn has_valid_token(&self, tenant: &str) -> bool {
        let now = SystemTime::now();
        self.lock()
            .issued
            .values()
            .any(|i| i.tenant.eq_ignore_ascii_case(tenant) && i.expires > now)
    }

    /// Revokes every token issued so far: the protected resources refuse them from now on.
    pub fn revoke_all(&self) {
        self.lock().issued.clear();
    }

    /// Whether `token` is one this emulator issued and has not expired.
    pub fn accepts(&self, token: &str) -> bool {
        self.lock()
            .issued
            .get(token)
            .is_some_and(|i| i.expires > SystemTime::now())
    }
}

/// A running emulator.
pub struct Emulator {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its state.
    pub state: EmulatorState,
    task: tokio::task::JoinHandle<()>,
}

impl Emulator {
    /// Serves on `listener` until dropped.
    pub fn serve(listener: TcpListener, config: EmulatorConfig) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let state = EmulatorState::new(config);
        let app = router(state.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "emulator stopped");
            }
        });
        Ok(Self { addr, state, task })
    }

    /// Binds `addr` and serves.
    pub async fn start(addr: SocketAddr, config: EmulatorConfig) -> std::io::Result<Self> {
        Self::serve(TcpListener::bind(addr).await?, config)
    }

    /// `http://ADDR`, the authority to configure jobs with.
    pub fn authority(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits until the server stops (it does not, unless it fails).
    pub async fn wait(mut self) {
        let _ = (&mut self.task).await;
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The emulator's routes, for embedding in another axum app.
pub fn router(state: EmulatorState) -> Router {
    Router::new()
        .route(&format!("/{{tenant}}{TOKEN_PATH}"), post(token))
        .route(identity::IMDS_PATH, get(identity::imds))
        .route(identity::APP_SERVICE_PATH, get(identity::app_service))
        .route("/v1.0/me", get(me))
        .route("/v1.0/echo", any(echo))
        .route("/_emulator/faults", post(add_faults))
        .route("/_emulator/revoke", post(revoke))
        .route("/_emulator/stats", get(stats))
        .with_state(state)
}

async fn add_faults(
    State(state): State<EmulatorState>,
    Json(faults): Json<Vec<Fault>>,
) -> StatusCode {
    state.push_faults(faults);
    StatusCode::NO_CONTENT
}

async fn revoke(State(state): State<EmulatorState>) -> StatusCode {
    state.revoke_all();
    StatusCode::NO_CONTENT
}

async fn stats(State(state): State<EmulatorState>) -> Json<Stats> {
    Json(state.stats())
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// An Entra-shaped error reply.
fn entra_error(status: StatusCode, error: &str, code: u32, message: &str) -> Response {
    let trace = uuid::Uuid::new_v4().to_string();
    let correlation = uuid::Uuid::new_v4().to_string();
    let ts = now_rfc3339();
    let body = json!({
        "error": error,
        "error_description": format!(
            "AADSTS{code}: {message} Trace ID: {trace} Correlation ID: {correlation} Timestamp: {ts}"
        ),
        "error_codes": [code],
        "timestamp": ts,
        "trace_id": trace,
        "correlation_id": correlation,
        "error_uri": format!("{DEFAULT_AUTHORITY}/error?code={code}"),
    });
    (status, Json(body)).into_response()
}

fn missing(param: &str) -> Response {
    entra_error(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        900144,
        &format!("The request body must contain the following parameter: '{param}'."),
    )
}

/// `Authorization: Basic` decoded per RFC 6749 §2.3.1 (form-urlencoded id and secret).
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (user, pass) = decoded.split_once(':')?;
    let unescape = |s: &str| {
        form_urlencoded::parse(format!("v={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
    };
    Some((unescape(user)?, unescape(pass)?))
}

async fn token(
    State(state): State<EmulatorState>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(fault) = next_fault(&state).await {
        return fault;
    }
    issue(&state, &tenant, &headers, &body)
}

/// Counts a token request, waits out the configured latency, and answers with the next
/// queued fault, if any (a `delay` fault only waits).
async fn next_fault(state: &EmulatorState) -> Option<Response> {
    let (fault, latency) = {
        let mut inner = state.lock();
        inner.stats.token_requests += 1;
        let fault = inner.faults.pop_front();
        if fault.is_some() {
            inner.stats.faults_served += 1;
        }
        (fault, inner.config.latency)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    Some(match fault? {
        Fault::Delay { ms } => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            return None;
        }
        Fault::Status { status } => StatusCode::from_u16(status)
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            .into_response(),
        Fault::Throttle { retry_after } => {
            let mut r = entra_error(
                StatusCode::TOO_MANY_REQUESTS,
                "temporarily_unavailable",
                50196,
                "The server terminated an operation because it encountered a client request loop.",
            );
            if let Some(s) = retry_after {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, s.to_string().parse().expect("digits"));
            }
            r
        }
        Fault::Unavailable => entra_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            90006,
            "The service is temporarily unavailable.",
        ),
        Fault::Malformed => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            "{\"token_type\":\"Bearer\",\"access_tok",
        )
            .into_response(),
        Fault::EmptyToken => {
            Json(json!({"token_type": "Bearer", "expires_in": 3599, "access_token": ""}))
                .into_response()
        }
        Fault::MissingToken => {
            Json(json!({"token_type": "Bearer", "expires_in": 3599})).into_response()
        }
    })
}

fn issue(state: &EmulatorState, tenant: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    let form: HashMap<String, String> = form_urlencoded::parse(body).into_owned().collect();
    let mut guard = state.lock();
    // A plain reference, so the registrations and the replay record borrow apart.
    let inner = &mut *guard;
    if !inner.tenants.contains(&tenant.to_ascii_lowercase()) {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90002,
            &format!(
                "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
            ),
        );
    }
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return missing("grant_type");
    }
    match form.get("grant_type").map(String::as_str) {
        None | Some("") => return missing("grant_type"),
        Some("client_credentials") => {}
        Some(other) => {
            return entra_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                70003,
                &format!("The app requested an unsupported grant type '{other}'."),
            );
        }
    }
    let basic = basic_credentials(headers);
    let posted = form.get("client_id").cloned();
    let assertion = form.get("client_assertion").cloned();
    if assertion.is_some() && (basic.is_some() || form.contains_key("client_secret")) {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            50027,
            "A client secret and a client assertion were both presented; send one.",
        );
    }
    let (client_id, secret) = match (basic, posted) {
        (Some(_), Some(_)) if form.contains_key("client_secret") => {
            return entra_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                50027,
                "Client credentials were sent both in the Authorization header and in the request body.",
            );
        }
        (Some((id, secret)), _) => (id, Some(secret)),
        (None, Some(id)) => (id, form.get("client_secret").cloned()),
        (None, None) => return missing("client_id"),
    };
    let config = &inner.config;
    let known_secret = config
        .clients
        .iter()
        .find(|(id, _)| *id == client_id)
        .map(|(_, s)| s.clone());
    let certificates: Vec<&[u8]> = config
        .certificates
        .iter()
        .filter(|(id, _)| *id == client_id)
        .map(|(_, der)| der.as_slice())
        .collect();
    let federated: Vec<&FederatedCredential> = config
        .federated
        .iter()
        .filter(|f| f.client_id == client_id)
        .collect();
    if known_secret.is_none() && certificates.is_empty() && federated.is_empty() {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            &format!(
                "Application with identifier '{client_id}' was not found in the directory '{tenant}'."
            ),
        );
    }
    if let Some(jwt) = assertion {
        match form.get("client_assertion_type").map(String::as_str) {
            None => return missing("client_assertion_type"),
            Some(tokenwarden_contract::assertion::JWT_BEARER) => {}
            Some(other) => {
                return entra_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    50027,
                    &format!("The client_assertion_type '{other}' is not supported."),
                );
            }
        }
        let presented = assertion::Presented {
            assertion: &jwt,
            client_id: &client_id,
            tenant,
            host: headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or_default(),
            now: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        // Entra tells the two kinds apart by the issuer: the app itself signs a
        // certificate credential's assertion.
        let is_own = jwt
            .split('.')
            .nth(1)
            .and_then(|c| URL_SAFE_NO_PAD.decode(c).ok())
            .and_then(|c| serde_json::from_slice::<serde_json::Value>(&c).ok())
            .is_some_and(|c| c["iss"].as_str() == Some(client_id.as_str()));
        let checked = if is_own {
            assertion::check_signed(&presented, &certificates, &mut inner.replay)
        } else {
            assertion::check_federated(&presented, &federated)
        };
        if let Err(r) = checked {
            return entra_error(r.status, r.error, r.code, &r.message);
        }
    } else {
        match (secret, known_secret) {
            (None, _) => {
                return entra_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    7000218,
                    "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
                );
            }
            (Some(s), Some(known)) if s == known => {}
            (Some(_), _) => {
                return entra_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    7000215,
                    &format!(
                        "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."
                    ),
                );
            }
        }
    }
    let scope = match form.get("scope") {
        None => return missing("scope"),
        Some(s) => s.clone(),
    };
    // Entra's rule, and its refusal of a list of several scopes.
    if !entra::accepts_scope(&scope) || scope.contains(' ') {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            1002012,
            &format!(
                "The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
            ),
        );
    }

    let (token, lifetime) = mint(inner, client_id, tenant, &scope);
    Json(json!({
        "token_type": "Bearer",
        "expires_in": lifetime.as_secs(),
        "ext_expires_in": lifetime.as_secs(),
        "access_token": token,
    }))
    .into_response()
}

/// Issues a JWT-shaped token for `client_id` in `tenant` for `scope`'s resource, and
/// remembers it for the protected resources: the token and its lifetime.
fn mint(inner: &mut Inner, client_id: String, tenant: &str, scope: &str) -> (String, Duration) {
    let lifetime = inner.config.token_lifetime;
    let now = SystemTime::now();
    let iat = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let audience = scope.trim_end_matches("/.default");
    let header =
        URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"RS256","kid":"tokenwarden-emulator"}"#);
    let claims = json!({
        "aud": audience,
        "iss": format!("https://sts.windows.net/{tenant}/"),
        "iat": iat, "nbf": iat, "exp": iat + lifetime.as_secs(),
        "appid": client_id, "tid": tenant, "roles": [],
        "uti": uuid::Uuid::new_v4().to_string(),
    });
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signature = URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes());
    let token = format!("{header}.{payload}.{signature}");

    // Expired tokens are swept when the map has doubled since the last sweep: a sweep on
    // every issue made each request cost O(tokens alive) and slowed long benchmarks.
    if inner.issued.len() >= inner.sweep_at {
        inner.issued.retain(|_, i| i.expires > now);
        inner.sweep_at = (inner.issued.len() * 2).max(1024);
    }
    inner.issued.insert(
        token.clone(),
        Issued {
            client_id,
            tenant: tenant.to_string(),
            expires: now + lifetime,
        },
    );
    inner.stats.tokens_issued += 1;
    inner
        .issued_at
        .entry(tenant.to_ascii_lowercase())
        .or_default()
        .push(now);
    (token, lifetime)
}

/// The caller's token, when it is one this emulator issued and it has not expired; else
/// the `401` a protected resource answers (counted either way).
fn authorized(
    state: &EmulatorState,
    headers: &HeaderMap,
) -> Result<Json<serde_json::Value>, Box<Response>> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let mut inner = state.lock();
    inner.stats.resource_requests += 1;
    let now = SystemTime::now();
    match token.and_then(|t| inner.issued.get(t)) {
        Some(i) if i.expires > now => Ok(Json(json!({
            "appId": i.client_id,
            "tenantId": i.tenant,
            "expiresInSeconds": i.expires.duration_since(now).map_or(0, |d| d.as_secs()),
        }))),
        _ => {
            inner.stats.resource_refused += 1;
            // RFC 6750 §3.1: no token at all gets a bare challenge; a bad one says why.
            let challenge = if token.is_some() {
                "Bearer error=\"invalid_token\", error_description=\"The access token is expired, revoked or was not issued here\""
            } else {
                "Bearer"
            };
            Err(Box::new((
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, challenge)],
                Json(json!({"error": {"code": "InvalidAuthenticationToken", "message": "Access token is empty, expired or was not issued by this emulator."}})),
            )
                .into_response()))
        }
    }
}

async fn me(State(state): State<EmulatorState>, headers: HeaderMap) -> Response {
    match authorized(&state, &headers) {
        Ok(me) => me.into_response(),
        Err(refused) => *refused,
    }
}

/// Sends the request body back as it came (streamed), with the method in `X-Method`.
async fn echo(
    State(state): State<EmulatorState>,
    method: axum::http::Method,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    if let Err(refused) = authorized(&state, &headers) {
        return *refused;
    }
    let mut reply = Response::new(body);
    if let Ok(m) = axum::http::HeaderValue::from_str(method.as_str()) {
        reply.headers_mut().insert("x-method", m);
    }
    if let Some(t) = headers.get(header::CONTENT_TYPE) {
        reply.headers_mut().insert(header::CONTENT_TYPE, t.clone());
    }
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_specs_parse() {
        assert_eq!("503".parse(), Ok(Fault::Status { status: 503 }));
        assert_eq!("429".parse(), Ok(Fault::Throttle { retry_after: None }));
        assert_eq!(
            "429:5".parse(),
            Ok(Fault::Throttle {
                retry_after: Some(5)
            })
        );
        assert_eq!("delay:20".parse(), Ok(Fault::Delay { ms: 20 }));
        assert_eq!("empty-token".parse(), Ok(Fault::EmptyToken));
        assert!("delay".parse::<Fault>().is_err());
        assert!("teapot".parse::<Fault>().is_err());
        assert!("700".parse::<Fault>().is_err());
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        let mut h = HeaderMap::new();
        let enc = STANDARD.encode("a%2Bb:c+d%3D");
        h.insert(
            header::AUTHORIZATION,
            format!("Basic {enc}").parse().unwrap(),
        );
        assert_eq!(basic_credentials(&h), Some(("a+b".into(), "c d=".into())));
    }
}
