//! Mutual TLS client authentication (RFC 8705 `tls_client_auth`): the host presents the
//! job's certificate chain and key in the handshake with its token endpoint, and with no
//! other origin; the component sends `client_id` only and can neither read nor sign with
//! the key. The token server here is written against the RFC: a rustls server on loopback
//! that verifies client certificates against its own CA and maps the subject to the client
//! (§2.1, the PKI method), and takes a client secret from clients that present none.

use axum::extract::State;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::response::IntoResponse;
use axum::serve::IncomingStream;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use tokenwarden::egress::{Roots, Trust};
use tokenwarden::{
    ClientAuth, JobConfig, NetTransport, RunError, Runtime, RuntimeOptions, SecretStore,
};
use tokenwarden_tests::*;
use tokio::io::AsyncWriteExt;

const BIN: &str = env!("CARGO_BIN_EXE_tokenwarden-under-test");
const KEY: &str = "Client Key";
const CERT: &str = "Client Certificate";
/// The client the token server knows, and the subject its certificate must carry.
const MTLS_CLIENT: &str = "mtls-client";
/// The secret of a client that authenticates without a certificate.
const PLAIN_SECRET: &str = "plain-secret";

/// A private PKI: a root CA, an intermediate that issues client certificates, a server
/// certificate for 127.0.0.1, and clients: the registered one, and one from a CA the
/// server does not trust. Made once per test binary.
struct Pki {
    root_pem: String,
    root_file: PathBuf,
    server: (Vec<rustls::pki_types::CertificateDer<'static>>, Vec<u8>),
    /// The registered client's key, leaf and intermediate, as an operator's files hold them.
    client_key: String,
    client_leaf: String,
    intermediate: String,
    /// The same client's renewed key and certificate.
    renewed_key: String,
    renewed_leaf: String,
    /// A client certificate for the right subject from a CA the server does not know.
    stranger_key: String,
    stranger_leaf: String,
    _dir: tempfile::TempDir,
}

fn ca(name: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p
}

fn client_params() -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, MTLS_CLIENT);
    p
}

fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let root = CertifiedIssuer::self_signed(ca("mtls test root"), KeyPair::generate().unwrap())
            .unwrap();
        let intermediate = CertifiedIssuer::signed_by(
            ca("mtls test intermediate"),
            KeyPair::generate().unwrap(),
            &root,
        )
        .unwrap();
        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&server_key, &root)
            .unwrap();
        let client_key = KeyPair::generate().unwrap();
        let client = client_params()
            .signed_by(&client_key, &intermediate)
            .unwrap();
        let renewed_key = KeyPair::generate().unwrap();
        let renewed = client_params()
            .signed_by(&renewed_key, &intermediate)
            .unwrap();
        let other_ca =
            CertifiedIssuer::self_signed(ca("unknown CA"), KeyPair::generate().unwrap()).unwrap();
        let stranger_key = KeyPair::generate().unwrap();
        let stranger = client_params().signed_by(&stranger_key, &other_ca).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let root_file = dir.path().join("root.pem");
        std::fs::write(&root_file, root.pem()).unwrap();
        Pki {
            root_pem: root.pem(),
            root_file,
            server: (
                vec![server.der().clone(), root.der().clone()],
                server_key.serialize_der(),
            ),
            client_key: client_key.serialize_pem(),
            client_leaf: client.pem(),
            intermediate: intermediate.pem(),
            renewed_key: renewed_key.serialize_pem(),
            renewed_leaf: renewed.pem(),
            stranger_key: stranger_key.serialize_pem(),
            stranger_leaf: stranger.pem(),
            _dir: dir,
        }
    })
}

/// What the token server saw of one request.
#[derive(Clone, Debug)]
struct Seen {
    connection: usize,
    /// The verified client certificate's subject CN, when one was presented.
    subject: Option<String>,
    /// Its SHA-256.
    leaf: Option<Vec<u8>>,
    form: HashMap<String, String>,
}

/// The connection's client certificate, as the handler sees it.
#[derive(Clone, Debug)]
struct Peer {
    connection: usize,
    subject: Option<String>,
    leaf: Option<Vec<u8>>,
}

impl Connected<IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        static CONNECTIONS: AtomicUsize = AtomicUsize::new(0);
        let (_, tls) = stream.io().get_ref();
        let subject = tls.peer_certificates().and_then(|chain| {
            let (_, cert) = x509_parser::parse_x509_certificate(chain.first()?).ok()?;
            let cn = cert.subject().iter_common_name().next()?;
            cn.as_str().ok().map(str::to_string)
        });
        let leaf = tls.peer_certificates().and_then(|chain| {
            Some(
                ring::digest::digest(&ring::digest::SHA256, chain.first()?)
                    .as_ref()
                    .to_vec(),
            )
        });
        Peer {
            connection: CONNECTIONS.fetch_add(1, Ordering::SeqCst),
            subject,
            leaf,
        }
    }
}

/// The token server's state: what it saw, and how many handshakes it refused.
#[derive(Clone, Default)]
struct Server {
    seen: Arc<Mutex<Vec<Seen>>>,
    refused: Arc<AtomicUsize>,
    url: String,
}

impl Server {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// RFC 8705 §2: a client that presented a certificate is the client whose registered
/// subject it carries, and sends `client_id` and no secret; one that presented none needs
/// its secret.
async fn token(
    State(s): State<Server>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    axum::extract::Form(form): axum::extract::Form<HashMap<String, String>>,
) -> axum::response::Response {
    s.seen.lock().unwrap().push(Seen {
        connection: peer.connection,
        subject: peer.subject.clone(),
        leaf: peer.leaf.clone(),
        form: form.clone(),
    });
    let refuse = |why: &str| {
        (
            axum::http::StatusCode::UNAUTHORIZED,
            axum::Json(serde_json::json!({"error": "invalid_client", "error_description": why})),
        )
            .into_response()
    };
    let client = form.get("client_id").map(String::as_str);
    let token = match (peer.subject.as_deref(), form.get("client_secret")) {
        (Some(_), Some(_)) => return refuse("two client authentication methods"),
        (Some(subject), None) if client == Some(MTLS_CLIENT) && subject == MTLS_CLIENT => {
            format!("mtls-token-{}", peer.connection)
        }
        (Some(_), None) => return refuse("the certificate is not the client's"),
        (None, Some(secret)) if secret == PLAIN_SECRET => "secret-token".to_string(),
        (None, _) => return refuse("no client authentication"),
    };
    axum::Json(
        serde_json::json!({"access_token": token, "token_type": "Bearer", "expires_in": 3600}),
    )
    .into_response()
}

/// The token server on loopback, verifying client certificates against the root CA (so a
/// client must present the intermediate too) and taking clients without one.
async fn start_server() -> Server {
    let pki = pki();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(
            x509_parser::pem::parse_x509_pem(pki.root_pem.as_bytes())
                .unwrap()
                .1
                .contents,
        ))
        .unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(pki.server.1.clone().into());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(pki.server.0.clone(), key)
        .unwrap();
    let listener = TlsListener::bind(config).await;
    let server = Server {
        url: format!(
            "https://{}/oauth2/token",
            listener.tcp.local_addr().unwrap()
        ),
        refused: listener.refused.clone(),
        ..Server::default()
    };
    let app = axum::Router::new()
        .route("/oauth2/token", axum::routing::post(token))
        .with_state(server.clone());
    tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<Peer>()).await
    });
    server
}

/// One runtime for this binary, trusting the test root CA as `[tls] ca_file` does: one
/// transport, so one connection pool for every job, as in a daemon.
fn mtls_runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        let trust = Trust {
            roots: Roots::WebPki,
            ca_file: Some(pki().root_file.clone()),
        };
        let transport = NetTransport::default().with_tls(trust.client_config().unwrap());
        Runtime::new(RuntimeOptions {
            transport: Some(Arc::new(transport)),
            ..pooled()
        })
        .unwrap()
    })
}

fn mtls_job(url: &str) -> JobConfig {
    let mut job = url_job(url, "api");
    job.name = "mtls".into();
    job.client_auth = ClientAuth::TlsClientAuth;
    job.secrets.client_secret = None;
    job.secrets.tenant_id = None;
    job.secrets.private_key = Some(KEY.into());
    job.secrets.certificate = Some(CERT.into());
    job
}

/// A store holding the registered client's id, key, and chain.
async fn registered_fixture() -> Fixture {
    let pki = pki();
    fixture_with(
        &pki.client_key,
        &format!("{}{}", pki.client_leaf, pki.intermediate),
    )
    .await
}

async fn fixture_with(key: &str, chain: &str) -> Fixture {
    let f = Fixture::new().await;
    f.set(CLIENT_ID, MTLS_CLIENT).await;
    f.set(KEY, key).await;
    f.set(CERT, chain).await;
    f
}

/// The operator's path, in real processes: `secrets import-key` reads the key, its
/// certificate and the intermediate from stdin and stores the chain; `refresh` presents it
/// and stores the token. The server trusts only the root, so the intermediate went too.
#[tokio::test]
async fn import_key_and_refresh_present_the_chain_in_the_handshake() {
    let pki = pki();
    let server = start_server().await;
    let work = operator_dir(&server, "").await;
    // A certificate the store cannot hold (over 64 KiB) stores nothing, not even the key.
    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = (0..3000)
        .map(|i| format!("n{i}.a-rather-long-name.big.example"))
        .collect();
    let big = CertificateParams::new(names)
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let out = command_in(
        BIN,
        work.path(),
        &["secrets", "import-key", KEY, "--certificate", CERT],
    )
    .stdin(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let mut child = out;
    let mut input = child.stdin.take().unwrap();
    input
        .write_all(format!("{}{}", key.serialize_pem(), big.pem()).as_bytes())
        .await
        .unwrap();
    drop(input);
    let out = child.wait_with_output().await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("nothing stored"), "{err}");
    let store = tokenwarden::SqliteStore::open(&work.path().join("data/tw.db")).unwrap();
    assert!(
        store.get(KEY).await.unwrap().is_none(),
        "the key was stored"
    );
    drop(store);

    let err = import_key(
        work.path(),
        &format!("{}{}{}", pki.client_leaf, pki.intermediate, pki.client_key),
    )
    .await;
    assert!(err.contains("the 1 certificate of its chain"), "{err}");

    let out = command_in(BIN, work.path(), &["refresh", "mtls"])
        .output()
        .await
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    let seen = server.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].subject.as_deref(), Some(MTLS_CLIENT));
    assert_eq!(seen[0].form["client_id"], MTLS_CLIENT);
    assert_eq!(seen[0].form["grant_type"], "client_credentials");
    assert!(!seen[0].form.contains_key("client_secret"));
    assert!(!seen[0].form.contains_key("client_assertion"));
    let store = tokenwarden::SqliteStore::open(&work.path().join("data/tw.db")).unwrap();
    let token = store.get(ACCESS_TOKEN).await.unwrap().unwrap();
    use secrecy::ExposeSecret;
    assert!(token.value.expose_secret().starts_with("mtls-token-"));
    let chain = store.get(CERT).await.unwrap().unwrap();
    assert_eq!(
        chain
            .value
            .expose_secret()
            .matches("BEGIN CERTIFICATE")
            .count(),
        2,
        "the leaf and the intermediate are stored"
    );
    for line in pki.client_key.lines().filter(|l| l.len() > 20) {
        assert!(!said.contains(line), "the key in the CLI's output");
    }
}

/// One transport serves a secret job and a certificate job at the same origin, as a daemon
/// does: the identity goes only on the certificate job's connections, its authenticated
/// connection is never lent to the other job (nor theirs to it), and it never resumes the
/// TLS session of a connection that presented nothing (a resumed session keeps the
/// authentication of the one that made it).
#[tokio::test]
async fn an_authenticated_connection_serves_its_own_identity_only() {
    let server = start_server().await;
    let f = registered_fixture().await;
    let job = mtls_job(&server.url);
    let mut plain = url_job(&server.url, "api");
    plain.secrets.tenant_id = None;
    f.set(CLIENT_SECRET, PLAIN_SECRET).await;
    let rt = mtls_runtime();
    for round in 0..2 {
        rt.run(&plain, f.dyn_store()).await.unwrap();
        rt.run(&job, f.dyn_store()).await.unwrap();
        let seen = server.seen();
        assert_eq!(seen.len(), 2 * (round + 1), "{seen:?}");
        let (secret, mtls) = (&seen[2 * round], &seen[2 * round + 1]);
        assert_eq!(mtls.subject.as_deref(), Some(MTLS_CLIENT), "{seen:?}");
        assert_eq!(
            secret.subject, None,
            "the secret job got a certificate: {seen:?}"
        );
        assert_ne!(mtls.connection, secret.connection);
    }
    let seen = server.seen();
    // Each identity's connection was reused for its own next run.
    assert_eq!(seen[0].connection, seen[2].connection, "{seen:?}");
    assert_eq!(seen[1].connection, seen[3].connection, "{seen:?}");
    assert!(
        f.get(ACCESS_TOKEN)
            .await
            .is_some_and(|t| t.starts_with("mtls-token-"))
    );
}

/// Certificates the server does not take, a chain without the intermediate it needs, and a
/// key that is not the certificate's: each fails with words that say so, and the last good
/// token stays.
#[tokio::test]
async fn a_refused_or_broken_identity_fails_clearly_and_keeps_the_old_token() {
    let pki = pki();
    let server = start_server().await;
    let job = mtls_job(&server.url);
    let rt = mtls_runtime();
    let cases = [
        // An unknown CA's certificate, and the right one without its intermediate.
        (
            &pki.stranger_key,
            pki.stranger_leaf.clone(),
            "refused the client certificate",
        ),
        (
            &pki.client_key,
            pki.client_leaf.clone(),
            "refused the client certificate",
        ),
    ];
    for (key, chain, words) in cases {
        let f = fixture_with(key, &chain).await;
        f.set(ACCESS_TOKEN, "last-good").await;
        let before = server.refused.load(Ordering::SeqCst);
        let e = rt.run(&job, f.dyn_store()).await.unwrap_err();
        assert!(e.to_string().contains(words), "{e}");
        assert!(server.refused.load(Ordering::SeqCst) > before);
        assert_eq!(f.get(ACCESS_TOKEN).await.as_deref(), Some("last-good"));
    }
    assert!(server.seen().is_empty(), "{:?}", server.seen());

    // Broken before any connection: a mismatched key, an unset key, no certificate.
    let chain = format!("{}{}", pki.client_leaf, pki.intermediate);
    let f = fixture_with(&pki.stranger_key, &chain).await;
    f.set(ACCESS_TOKEN, "last-good").await;
    let e = rt.run(&job, f.dyn_store()).await.unwrap_err();
    assert!(matches!(e, RunError::Config(_)), "{e:?}");
    assert!(e.to_string().contains("is not the private key's"), "{e}");
    let f = Fixture::new().await;
    f.set(CERT, &chain).await;
    let e = rt.run(&job, f.dyn_store()).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("`Client Key` (role `private-key`) is not set"),
        "{e}"
    );
    let f = fixture_with(&pki.client_key, "not a certificate").await;
    let e = rt.run(&job, f.dyn_store()).await.unwrap_err();
    assert!(e.to_string().contains("no certificate found"), "{e}");
    // A job built in code with a plain-http endpoint: there is no handshake to present in.
    let f = registered_fixture().await;
    let plain = mtls_job(&server.url.replace("https://", "http://"));
    let e = rt.run(&plain, f.dyn_store()).await.unwrap_err();
    assert!(e.to_string().contains("needs an https `token_url`"), "{e}");
    assert!(server.seen().is_empty());
}

/// The server's CA not trusted (no `[tls] ca_file`): the server's certificate is refused
/// before the client's is ever sent.
#[tokio::test]
async fn an_untrusted_server_never_sees_the_certificate() {
    let server = start_server().await;
    let f = registered_fixture().await;
    let e = runtime().run(&mtls_job(&server.url), f.dyn_store()).await;
    let e = e.unwrap_err().to_string();
    assert!(e.contains("unknown authority"), "{e}");
    assert!(server.seen().is_empty());
}

/// A component running a certificate job can neither read the key nor sign with it: the
/// key is for the host's handshake only.
#[tokio::test]
async fn the_rogue_guest_gets_nothing_from_a_certificate_jobs_key() {
    let f = registered_fixture().await;
    let mut job = mtls_job("https://127.0.0.1:9/token");
    job.scope = "steal-key".into();
    job.plugin = Some(ROGUE_COMPONENT.into());
    let report = mtls_runtime().run(&job, f.dyn_store()).await.unwrap();
    assert_eq!(
        report.outcome.token_type,
        "get:denied cert-of-key:denied sign-client-secret:denied sign-access-token:denied huge:denied es256-with-rsa:denied sign:denied"
    );
}

/// An operator's directory: `tokenwarden.toml` with a store, `store_extra` after its path,
/// `[tls] ca_file` trusting the test root, and the `mtls` job against `server`; the store
/// holds the client id.
async fn operator_dir(server: &Server, store_extra: &str) -> tempfile::TempDir {
    let work = tempfile::tempdir().unwrap();
    std::fs::write(
        work.path().join("tokenwarden.toml"),
        format!(
            r#"[store]
path = "data/tw.db"
{store_extra}

[tls]
ca_file = "{}"

[[jobs]]
name = "mtls"
scope = "api"
token_url = "{}"
client_auth = "tls_client_auth"
[jobs.secrets]
client_id = "{CLIENT_ID}"
private_key = "{KEY}"
certificate = "{CERT}"
access_token = "{ACCESS_TOKEN}"
"#,
            pki().root_file.display(),
            server.url
        ),
    )
    .unwrap();
    let store = tokenwarden::SqliteStore::open(&work.path().join("data/tw.db")).unwrap();
    store
        .set(CLIENT_ID, &MTLS_CLIENT.to_string().into(), None)
        .await
        .unwrap();
    work
}

/// Runs `tokenwarden secrets import-key KEY --certificate CERT` in `dir` with `pem` on
/// stdin, as an operator's shell would, and returns what it printed to stderr.
async fn import_key(dir: &std::path::Path, pem: &str) -> String {
    let mut import = command_in(
        BIN,
        dir,
        &["secrets", "import-key", KEY, "--certificate", CERT],
    );
    import.stdin(std::process::Stdio::piped());
    let mut child = import.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(pem.as_bytes()).await.unwrap();
    drop(input);
    let out = child.wait_with_output().await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{err}");
    err
}

/// A daemon and the CLI beside it: the job fails until the operator imports a key; then the
/// daemon presents it; when the operator imports the renewed key and certificate, the
/// daemon's next run (asked for on the admin API: the token is still good) presents those,
/// on a new connection, and nothing of either key is logged, at debug level.
#[tokio::test]
async fn the_daemon_presents_a_key_imported_and_renewed_beside_it() {
    let pki = pki();
    let server = start_server().await;
    let work = operator_dir(
        &server,
        "poll_interval = \"200ms\"\n[admin]\nlisten = \"127.0.0.1:0\"",
    )
    .await;
    let config = work.path().join("tokenwarden.toml");
    let daemon = DaemonProc::spawn(BIN, &config, &[("TOKENWARDEN_LOG", "debug")]).await;
    eventually(
        std::time::Duration::from_secs(20),
        "the first run fails without a key",
        || async {
            daemon.get("/jobs/mtls").await.json()["consecutive_failures"].as_u64() >= Some(1)
        },
    )
    .await;
    assert!(server.seen().is_empty(), "no request without an identity");

    import_key(
        work.path(),
        &format!("{}{}{}", pki.client_key, pki.client_leaf, pki.intermediate),
    )
    .await;
    daemon.wait_for_token("mtls").await;
    let first = server.seen();
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0].subject.as_deref(), Some(MTLS_CLIENT));

    import_key(
        work.path(),
        &format!(
            "{}{}{}",
            pki.renewed_key, pki.renewed_leaf, pki.intermediate
        ),
    )
    .await;
    let r = tokenwarden::cli::client::post(daemon.admin, "/jobs/mtls/refresh", None)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(server.seen().len(), 2);
    let second = &server.seen()[1];
    assert_eq!(second.subject.as_deref(), Some(MTLS_CLIENT));
    assert_ne!(second.leaf, first[0].leaf, "the renewed certificate");
    assert_ne!(second.connection, first[0].connection, "a new connection");
    let log = daemon.log();
    for key in [&pki.client_key, &pki.renewed_key] {
        for line in key.lines().filter(|l| l.len() > 20) {
            assert!(!log.contains(line), "a key in the daemon's log");
        }
    }
    assert!(log.contains("presenting a client certificate"), "{log}");
}
