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
use tokenwarden::emulator::{self, Emulator, EmulatorConfig};
use tokenwarden::{JobConfig, SecretRoles};
use tokenwarden::{Runtime, RuntimeOptions, SecretStore, SqliteStore};

/// Unix seconds now: the clock the store and the daemon stamp records with.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

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

/// The same, shared as a daemon takes it: each caller gets a handle on the one engine (and
/// its compile cache) of this test binary.
pub fn shared_runtime() -> Arc<Runtime> {
    static RT: OnceLock<Arc<Runtime>> = OnceLock::new();
    RT.get_or_init(|| Arc::new(Runtime::new(pooled()).expect("runtime")))
        .clone()
}

/// Engine options like the CLI's: an instance pool (roomy, as tests run in parallel), and
/// the WASI version `$TOKENWARDEN_WASI` names, as the CLI reads it: `.ci/run` runs the
/// whole suite once per version.
pub fn pooled() -> RuntimeOptions {
    RuntimeOptions {
        pooling: Some(tokenwarden::Pooling::for_runs(64, &[])),
        ..unpooled()
    }
}

/// [`pooled`] without the pool (the library's default allocation).
pub fn unpooled() -> RuntimeOptions {
    RuntimeOptions {
        wasi: wasi(),
        ..RuntimeOptions::default()
    }
}

/// The WASI version this run of the suite tests: `$TOKENWARDEN_WASI`, else 0.2.
pub fn wasi() -> tokenwarden::WasiVersion {
    tokenwarden::WasiVersion::from_env()
        .expect("TOKENWARDEN_WASI is 0.2 or 0.3")
        .unwrap_or_default()
}

/// `bin ARGS` in `dir`, as a shell there would run it but without the test process's own
/// config, log or identity variables (each test sets the ones it means); stdout and
/// stderr piped, stdin empty.
pub fn command_in(bin: &str, dir: &std::path::Path, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for var in [
        "TOKENWARDEN_CONFIG",
        "TOKENWARDEN_LOG",
        "TOKENWARDEN_PKCS12_PASSWORD",
        "AZURE_FEDERATED_TOKEN_FILE",
        "AZURE_CLIENT_ID",
        "AZURE_TENANT_ID",
        "AZURE_AUTHORITY_HOST",
        "IDENTITY_ENDPOINT",
        "IDENTITY_HEADER",
    ] {
        cmd.env_remove(var);
    }
    cmd
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
        client_id: Some(CLIENT_ID.into()),
        client_secret: Some(CLIENT_SECRET.into()),
        tenant_id: Some(TENANT_ID.into()),
        access_token: ACCESS_TOKEN.into(),
        private_key: None,
        certificate: None,
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

/// A `[[jobs]]` entry against an Entra-style `authority`, with the fixture's client id and
/// secret, the tenant from `tenant_secret` and the token stored as `token_secret`.
pub fn job_toml(name: &str, authority: &str, tenant_secret: &str, token_secret: &str) -> String {
    format!(
        "[[jobs]]\nname = \"{name}\"\nscope = \"{SCOPE}\"\nauthority = \"{authority}\"\n[jobs.secrets]\nclient_id = \"{CLIENT_ID}\"\nclient_secret = \"{CLIENT_SECRET}\"\ntenant_id = \"{tenant_secret}\"\naccess_token = \"{token_secret}\"\n"
    )
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
    /// When it arrived.
    pub at: std::time::SystemTime,
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
    /// Replace `{body}` and `{authorization}` in the body with the request's (JSON-escaped):
    /// a server, or a proxy in front of it, that echoes the request.
    pub echo: bool,
}

impl Scripted {
    pub fn json(status: u16, body: &str) -> Self {
        Self {
            status,
            headers: vec![("content-type", "application/json".into())],
            body: body.as_bytes().to_vec(),
            delay: Duration::ZERO,
            chunked: false,
            echo: false,
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
        at: std::time::SystemTime::now(),
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
    let mut reply = reply;
    if reply.echo {
        let escape = |b: &[u8]| {
            let s = serde_json::to_string(&String::from_utf8_lossy(b)).unwrap();
            s[1..s.len() - 1].to_string()
        };
        let last = state.received.lock().unwrap().last().cloned().unwrap();
        let auth = last
            .headers
            .get("authorization")
            .map(|v| v.as_bytes().to_vec())
            .unwrap_or_default();
        reply.body = String::from_utf8_lossy(&reply.body)
            .replace("{body}", &escape(&last.body))
            .replace("{authorization}", &escape(&auth))
            .into_bytes();
    }
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

/// A throwaway PostgreSQL cluster of the test's own: `initdb` in a temporary folder,
/// listening only on a Unix socket in that folder, stopped and removed on drop. As root,
/// the server runs as the `postgres` user (PostgreSQL refuses to run as root).
pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    as_postgres: bool,
    fsync: bool,
    /// The TCP port it also listens on with TLS, when started by [`PgCluster::start_tls`].
    tls_port: Option<u16>,
}

/// Where the PostgreSQL server binaries are: `$TOKENWARDEN_PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin` (Debian's layout), else `pg_ctl` on `PATH`.
fn pg_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("TOKENWARDEN_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_ctl").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    let on_path = std::process::Command::new("sh")
        .args(["-c", "command -v pg_ctl"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    on_path.and_then(|p| p.parent().map(PathBuf::from)).expect(
        "the PostgreSQL tests need the server binaries: `apt-get install postgresql` \
             (or set TOKENWARDEN_PG_BIN to the folder holding initdb and pg_ctl)",
    )
}

impl PgCluster {
    /// Creates and starts a cluster with a `tokenwarden` database, without fsync: tests
    /// need the server's behaviour, not its durability, and run faster without it.
    pub fn start() -> Self {
        Self::create(false)
    }

    /// Like [`PgCluster::start`], but with fsync on, as a production server runs: for
    /// benchmarks, whose figures must include the cost of durable commits.
    pub fn start_durable() -> Self {
        Self::create(true)
    }

    fn create(fsync: bool) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let bin = pg_bin();
        let dir = tempfile::Builder::new()
            .prefix("twpg")
            .tempdir()
            .expect("tempdir");
        let as_postgres = is_root();
        if as_postgres {
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        let cluster = Self {
            dir,
            bin,
            as_postgres,
            fsync,
            tls_port: None,
        };
        cluster.run(
            "initdb",
            &[
                "-D",
                &cluster.data().display().to_string(),
                "--auth=trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        cluster.start_again();
        cluster.run(
            "createdb",
            &[
                "-h",
                &cluster.socket_dir().display().to_string(),
                "-U",
                "postgres",
                "tokenwarden",
            ],
        );
        cluster
    }

    /// Like [`PgCluster::start`], and also listening on 127.0.0.1 with TLS only (`ssl =
    /// on`, and `pg_hba` refusing plain TCP), under the PEM certificate chain `cert_pem`
    /// (for 127.0.0.1) and its key `key_pem`; [`PgCluster::tls_url`] reaches it.
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let mut cluster = Self::create(false);
        cluster.stop();
        let data = cluster.data();
        std::fs::write(data.join("server.crt"), cert_pem).unwrap();
        std::fs::write(data.join("server.key"), key_pem).unwrap();
        std::fs::set_permissions(
            data.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        // Plain TCP is refused: a client that did not do TLS gets nowhere.
        let hba = std::fs::read_to_string(data.join("pg_hba.conf")).unwrap();
        std::fs::write(
            data.join("pg_hba.conf"),
            format!("hostnossl all all 0.0.0.0/0 reject\nhostnossl all all ::/0 reject\n{hba}"),
        )
        .unwrap();
        if cluster.as_postgres {
            let out = std::process::Command::new("chown")
                .args([
                    "postgres:postgres",
                    "server.crt",
                    "server.key",
                    "pg_hba.conf",
                ])
                .current_dir(&data)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        cluster.tls_port = Some(port);
        cluster.start_again();
        cluster
    }

    /// The store URL over TCP with TLS required (after [`PgCluster::start_tls`]).
    pub fn tls_url(&self) -> String {
        let port = self.tls_port.expect("started with start_tls");
        format!("postgresql://postgres@127.0.0.1:{port}/tokenwarden?sslmode=require")
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The folder of the server's Unix socket.
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// The store URL for the `tokenwarden` database (libpq URL with a socket host).
    pub fn url(&self) -> String {
        let port = self
            .tls_port
            .map_or(String::new(), |p| format!("&port={p}"));
        format!(
            "postgresql://postgres@/tokenwarden?host={}{port}",
            self.socket_dir().display()
        )
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            std::process::Command::new(&exe)
        };
        let out = cmd
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()));
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the server (again, after [`PgCluster::stop`]) and waits until it accepts
    /// connections.
    pub fn start_again(&self) {
        let mut options = format!(
            "-k {} -c fsync={} -c max_connections=200",
            self.socket_dir().display(),
            if self.fsync { "on" } else { "off" }
        );
        match self.tls_port {
            None => options.push_str(" -c listen_addresses=''"),
            Some(port) => options.push_str(&format!(
                " -c listen_addresses=127.0.0.1 -c port={port} -c ssl=on"
            )),
        }
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data().display().to_string(),
                "-l",
                &self.dir.path().join("server.log").display().to_string(),
                "-w",
                "-o",
                &options,
                "start",
            ],
        );
    }

    /// Adds a login role that must give `password` (SCRAM) on the socket.
    pub fn add_password_user(&self, user: &str, password: &str) {
        self.run(
            "psql",
            &[
                "-h",
                &self.socket_dir().display().to_string(),
                "-U",
                "postgres",
                "-d",
                "tokenwarden",
                "-c",
                &format!(
                    "CREATE ROLE {user} LOGIN PASSWORD '{password}'; GRANT ALL ON SCHEMA public TO {user};"
                ),
            ],
        );
        let hba = self.data().join("pg_hba.conf");
        let old = std::fs::read_to_string(&hba).unwrap();
        std::fs::write(&hba, format!("local all {user} scram-sha-256\n{old}")).unwrap();
        self.run(
            "pg_ctl",
            &["-D", &self.data().display().to_string(), "reload"],
        );
    }

    /// Stops the server at once (connections are cut, like a crash or a restart).
    pub fn stop(&self) {
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data().display().to_string(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let exe = self.bin.join("pg_ctl");
        let data = self.data();
        let mut cmd = if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            std::process::Command::new(&exe)
        };
        let _ = cmd
            .args(["-D", &data.display().to_string(), "-m", "immediate", "stop"])
            .output();
    }
}

/// Whether the tests run as root (they then run some processes as another user).
pub fn is_root() -> bool {
    // `id -u` rather than a libc call: the workspace denies unsafe code.
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `tokenwarden run` as a child process, with its JSON log collected.
pub struct DaemonProc {
    pub child: tokio::process::Child,
    /// Where its admin API listens.
    pub admin: std::net::SocketAddr,
    /// Its process id.
    pub pid: u32,
    log: Arc<Mutex<String>>,
}

impl DaemonProc {
    /// Starts `bin run --config config` (with `env` added) and waits until it serves its
    /// admin API.
    pub async fn spawn(bin: &str, config: &std::path::Path, env: &[(&str, &str)]) -> Self {
        let mut cmd = tokio::process::Command::new(bin);
        cmd.args(["run", "--log-format", "json", "--config"])
            .arg(config);
        Self::spawn_command(cmd, env).await
    }

    /// Like [`DaemonProc::spawn`], with the open-file limit (soft and hard) set to `nofile`.
    pub async fn spawn_with_nofile(bin: &str, config: &std::path::Path, nofile: u64) -> Self {
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c")
            .arg(format!(
                "ulimit -n {nofile} && exec \"$0\" run --log-format json --config \"$1\""
            ))
            .arg(bin)
            .arg(config);
        Self::spawn_command(cmd, &[]).await
    }

    async fn spawn_command(mut cmd: tokio::process::Command, env: &[(&str, &str)]) -> Self {
        use tokio::io::AsyncBufReadExt;
        cmd.env_remove("TOKENWARDEN_CONFIG")
            .env("TOKENWARDEN_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn the daemon");
        let pid = child.id().expect("pid");
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let log = Arc::new(Mutex::new(String::new()));
        let admin = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                log.lock().unwrap().push_str(&line);
                log.lock().unwrap().push('\n');
                let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if v["fields"]["message"] == "tokenwarden running" {
                    return v["fields"]["admin"].as_str().unwrap().parse().unwrap();
                }
            }
            panic!("the daemon exited before serving: {}", log.lock().unwrap());
        })
        .await
        .expect("the daemon serves within a minute");
        let sink = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        Self {
            child,
            admin,
            pid,
            log,
        }
    }

    /// Waits (up to 20 s) until `job` has a stored token.
    pub async fn wait_for_token(&self, job: &str) {
        let path = format!("/jobs/{job}");
        eventually(
            Duration::from_secs(20),
            "the daemon stores a token",
            || async { self.get(&path).await.json()["token_expires_at"].is_u64() },
        )
        .await;
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// `GET path` on its admin API (no auth: the tests' daemons listen on loopback).
    pub async fn get(&self, path: &str) -> tokenwarden::cli::client::Reply {
        tokenwarden::cli::client::get(self.admin, path, None)
            .await
            .expect("admin API answers")
    }

    /// Sends `signal` (`-KILL`, `-TERM`, ...).
    pub fn signal(&self, signal: &str) {
        let ok = std::process::Command::new("kill")
            .args([signal, &self.pid.to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

/// Waits up to `within` for `check` to hold, polling every 50 ms.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < until,
            "not within {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TLS listener for `axum::serve` on loopback: a handshake that fails (the client does not
/// trust the server, or the server refuses the client's certificate) is counted in
/// `refused` and the next connection is taken.
pub struct TlsListener {
    /// The TCP listener.
    pub tcp: tokio::net::TcpListener,
    /// The server's TLS.
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// Handshakes that failed.
    pub refused: Arc<std::sync::atomic::AtomicUsize>,
}

impl TlsListener {
    /// Listens on 127.0.0.1 (a free port) with `config`.
    pub async fn bind(config: rustls::ServerConfig) -> Self {
        Self {
            tcp: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            refused: Arc::default(),
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;
    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            match self.acceptor.accept(tcp).await {
                Ok(tls) => return (tls, addr),
                Err(_) => {
                    self.refused
                        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
        }
    }
    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// A server certificate for 127.0.0.1 that a private CA ("tokenwarden test CA") signed.
pub struct LoopbackCert {
    /// The CA's certificate, PEM: what a client's `[tls] ca_file` names.
    pub ca_pem: String,
    /// The server's certificate, PEM.
    pub cert_pem: String,
    /// The server's chain, DER: its certificate, then the CA's.
    pub chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// The server's key, PKCS#8 PEM.
    pub key_pem: String,
    /// The same key, PKCS#8 DER.
    pub key_der: Vec<u8>,
}

/// A new private CA and a certificate for 127.0.0.1 it signed.
pub fn loopback_cert() -> LoopbackCert {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "tokenwarden test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    LoopbackCert {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        chain: vec![cert.der().clone(), ca.der().clone()],
        key_pem: key.serialize_pem(),
        key_der: key.serialize_der(),
    }
}
