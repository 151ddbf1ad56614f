//! Shared fixtures for tokenwarden's end-to-end tests: real components, the real host
//! library, real HTTP servers on 127.0.0.1 and real SQLite files in temporary folders.

#![allow(missing_docs)]

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use secrecy::{ExposeSecret, SecretString};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokenwarden::config::{JobConfig, SecretRoles};
use tokenwarden::emulator::{self, Emulator, EmulatorConfig};
use tokenwarden::{Runtime, RuntimeOptions, SecretStore, SqliteStore};

/// The misbehaving test guest (see `tests/guests/rogue`).
pub const ROGUE_COMPONENT: &str = env!("TOKENWARDEN_ROGUE_WASM");

pub const CLIENT_ID: &str = "Microsoft Client ID";
pub const CLIENT_SECRET: &str = "Microsoft Client Secret";
pub const TENANT_ID: &str = "Microsoft Tenant ID";
pub const ACCESS_TOKEN: &str = "Microsoft Access Token";
pub const SCOPE: &str = "https://graph.microsoft.com/.default";

/// One runtime per test binary: compiling a component in a debug build takes seconds. It
/// uses an instance pool, as the CLI and daemon do.
pub fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| Runtime::new(pooled()).expect("runtime"))
}

/// Engine options like the CLI's: an instance pool (roomy, as tests run in parallel).
pub fn pooled() -> RuntimeOptions {
    RuntimeOptions {
        pooling: Some(tokenwarden::runtime::Pooling::for_runs(64, &[])),
        ..RuntimeOptions::default()
    }
}

/// A temporary store holding the demo credentials.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub store: Arc<SqliteStore>,
}

/// Stores the emulator's demo client id, secret and tenant under the fixture names.
pub async fn seed_client_secrets(store: &dyn SecretStore) {
    for (name, value) in [
        (CLIENT_ID, emulator::DEMO_CLIENT_ID),
        (CLIENT_SECRET, emulator::DEMO_CLIENT_SECRET),
        (TENANT_ID, emulator::DEMO_TENANT),
    ] {
        store
            .set(name, &SecretString::from(value.to_string()), None)
            .await
            .expect("set");
    }
}

/// The plugin's typed error, or a panic naming what came instead.
pub fn plugin_error(
    r: Result<tokenwarden::RunReport, tokenwarden::RunError>,
) -> tokenwarden::PluginError {
    match r {
        Err(tokenwarden::RunError::Plugin(e)) => e,
        other => panic!("expected a plugin error, got {other:?}"),
    }
}

impl Fixture {
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(SqliteStore::open(&dir.path().join("data/tw.db")).expect("store"));
        seed_client_secrets(&*store).await;
        Self { dir, store }
    }

    pub async fn set(&self, name: &str, value: &str) {
        self.store
            .set(name, &SecretString::from(value.to_string()), None)
            .await
            .expect("set");
    }

    pub async fn get(&self, name: &str) -> Option<String> {
        self.store
            .get(name)
            .await
            .expect("get")
            .map(|s| s.value.expose_secret().to_string())
    }

    pub fn store_path(&self) -> PathBuf {
        self.store.path().to_path_buf()
    }

    pub fn dyn_store(&self) -> Arc<dyn SecretStore> {
        self.store.clone()
    }
}

/// The grants every test job uses.
pub fn roles() -> SecretRoles {
    SecretRoles {
        client_id: CLIENT_ID.into(),
        client_secret: CLIENT_SECRET.into(),
        tenant_id: Some(TENANT_ID.into()),
        access_token: ACCESS_TOKEN.into(),
    }
}

/// A job against `authority` (Entra layout).
pub fn entra_job(authority: &str) -> JobConfig {
    let mut job = JobConfig::new("graph", SCOPE, roles());
    job.authority = Some(authority.to_string());
    job
}

/// A job against a generic token endpoint.
pub fn url_job(token_url: &str, scope: &str) -> JobConfig {
    let mut job = JobConfig::new("generic", scope, roles());
    job.token_url = Some(token_url.to_string());
    job
}

/// The emulator with default (demo) credentials on an ephemeral port.
pub async fn start_emulator() -> Emulator {
    start_emulator_with(EmulatorConfig::default()).await
}

pub async fn start_emulator_with(config: EmulatorConfig) -> Emulator {
    Emulator::start("127.0.0.1:0".parse().unwrap(), config)
        .await
        .expect("emulator")
}

/// A request the scripted server received.
#[derive(Clone, Debug)]
pub struct Received {
    /// The client's address: the same one for requests on one kept-alive connection.
    pub peer: std::net::SocketAddr,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Received {
    pub fn form(&self) -> std::collections::HashMap<String, String> {
        form_urlencoded::parse(&self.body).into_owned().collect()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    }
}

/// What the scripted server answers.
#[derive(Clone, Debug)]
pub struct Scripted {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    pub delay: Duration,
    /// Send the body in 4 KiB chunks with no `Content-Length` (chunked transfer coding).
    pub chunked: bool,
}

impl Scripted {
    pub fn json(status: u16, body: &str) -> Self {
        Self {
            status,
            headers: vec![("content-type", "application/json".into())],
            body: body.as_bytes().to_vec(),
            delay: Duration::ZERO,
            chunked: false,
        }
    }

    /// Adds `n` headers `x-h0: v` ... to the reply.
    pub fn with_extra_headers(mut self, n: usize) -> Self {
        for i in 0..n {
            self.headers
                .push((Box::leak(format!("x-h{i}").into_boxed_str()), "v".into()));
        }
        self
    }
}

/// A body of known frames and unknown length, which hyper sends chunked.
struct Chunks(std::collections::VecDeque<Bytes>);

impl axum::body::HttpBody for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(http_body::Frame::data(b))))
    }
}

#[derive(Clone, Default)]
struct ScriptState {
    replies: Arc<Mutex<Vec<Scripted>>>,
    received: Arc<Mutex<Vec<Received>>>,
}

/// A plain HTTP server the test controls: it answers each request with the next scripted
/// reply (the last one repeats) and records what it received.
pub struct ScriptedServer {
    pub addr: std::net::SocketAddr,
    state: ScriptState,
    task: tokio::task::JoinHandle<()>,
}

impl ScriptedServer {
    pub async fn start(replies: Vec<Scripted>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = ScriptState {
            replies: Arc::new(Mutex::new(replies)),
            received: Arc::default(),
        };
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, state, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    State(state): State<ScriptState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.received.lock().unwrap().push(Received {
        peer,
        path: uri.path().to_string(),
        headers,
        body: body.to_vec(),
    });
    let reply = {
        let mut replies = state.replies.lock().unwrap();
        if replies.len() > 1 {
            replies.remove(0)
        } else {
            replies[0].clone()
        }
    };
    tokio::time::sleep(reply.delay).await;
    let status = StatusCode::from_u16(reply.status).unwrap();
    let mut r = if reply.chunked {
        let chunks = reply.body.chunks(4096).map(Bytes::copy_from_slice);
        (status, axum::body::Body::new(Chunks(chunks.collect()))).into_response()
    } else {
        (status, reply.body).into_response()
    };
    for (k, v) in reply.headers {
        r.headers_mut().insert(k, v.parse().unwrap());
    }
    r
}

/// `GET path` with a bearer token over a raw HTTP/1.1 connection; returns the status.
pub async fn get_with_bearer(addr: std::net::SocketAddr, path: &str, token: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    resp.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}
