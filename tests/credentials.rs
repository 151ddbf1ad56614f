//! Credentials without shared secrets, end to end: `private_key_jwt` assertions built by
//! the component and signed by the host (keys made by `openssl`, imported by the CLI from
//! PEM and PKCS#12) against the emulator and a generic RFC 7523 server on loopback;
//! federated assertions the host reads from a file at every run; and a rogue guest that
//! tries every way to the key.

use axum::extract::State;
use axum::response::IntoResponse;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use tokenwarden::emulator::{self, EmulatorConfig, FederatedCredential};
use tokenwarden::signing::keys::{Certificate, SigningKey};
use tokenwarden::{ClientAuth, JobConfig, PluginError, RunError, SecretStore, SigningAlg};
use tokenwarden_tests::*;
use tokio::io::AsyncWriteExt;

const BIN: &str = env!("CARGO_BIN_EXE_tokenwarden-under-test");
const KEY: &str = "Signing Key";
const CERT: &str = "Signing Cert";

/// A key pair and its self-signed certificate, made by `openssl` as an operator would.
struct KeyFiles {
    key_pem: String,
    cert_pem: String,
    cert_der: Vec<u8>,
    dir: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs (the openssl package)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn tokenwarden(dir: &Path, args: &[&str]) -> tokio::process::Command {
    command_in(BIN, dir, args)
}

/// `kind`: `rsa:2048`, `rsa:4096` or `ec`.
fn key_files(dir: &Path, kind: &str) -> KeyFiles {
    let sub = dir.join(kind.replace(':', "-"));
    std::fs::create_dir_all(&sub).unwrap();
    let mut args = vec![
        "req",
        "-x509",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=tokenwarden-test",
    ];
    if kind == "ec" {
        args.extend(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]);
    } else {
        args.extend(["-newkey", kind]);
    }
    args.extend(["-keyout", "key.pem", "-out", "cert.pem"]);
    openssl(&sub, &args);
    let cert_pem = std::fs::read_to_string(sub.join("cert.pem")).unwrap();
    KeyFiles {
        key_pem: std::fs::read_to_string(sub.join("key.pem")).unwrap(),
        cert_der: Certificate::from_pem(&cert_pem).unwrap().der().to_vec(),
        cert_pem,
        dir: sub,
    }
}

fn emulator_trusting(certs: &[&KeyFiles]) -> EmulatorConfig {
    EmulatorConfig {
        certificates: certs
            .iter()
            .map(|k| (emulator::DEMO_CLIENT_ID.to_string(), k.cert_der.clone()))
            .collect(),
        ..EmulatorConfig::default()
    }
}

fn jwt_job(authority: &str, alg: SigningAlg) -> JobConfig {
    let mut job = entra_job(authority);
    job.client_auth = ClientAuth::PrivateKeyJwt;
    job.signing_alg = alg;
    job.secrets.client_secret = None;
    job.secrets.private_key = Some(KEY.into());
    job.secrets.certificate = Some(CERT.into());
    job
}

fn rejected_with(r: Result<tokenwarden::RunReport, RunError>) -> Vec<u32> {
    match plugin_error(r) {
        PluginError::Rejected(e) => e.error_codes,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn each_algorithm_signed_by_the_host_gets_a_token_entra_style() {
    let dir = tempfile::tempdir().unwrap();
    for (kind, alg) in [
        ("rsa:2048", SigningAlg::PS256),
        ("rsa:4096", SigningAlg::RS256),
        ("ec", SigningAlg::ES256),
    ] {
        let keys = key_files(dir.path(), kind);
        let emu = start_emulator_with(emulator_trusting(&[&keys])).await;
        let f = Fixture::new().await;
        f.set(CLIENT_SECRET, "never-sent-canary").await;
        f.set(KEY, &keys.key_pem).await;
        f.set(CERT, &keys.cert_pem).await;
        let report = runtime()
            .run(&jwt_job(&emu.authority(), alg), f.dyn_store())
            .await
            .unwrap_or_else(|e| panic!("{kind} {alg:?}: {e}"));
        assert_eq!(report.outcome.token_type, "Bearer");
        let token = f.get(ACCESS_TOKEN).await.unwrap();
        assert!(emu.state.accepts(&token), "{kind} {alg:?}");
        // The second run signs a fresh assertion (new jti): replay protection does not
        // stop a job that refreshes.
        runtime()
            .run(&jwt_job(&emu.authority(), alg), f.dyn_store())
            .await
            .unwrap_or_else(|e| panic!("{kind} {alg:?} again: {e}"));
        assert_eq!(emu.state.stats().tokens_issued, 2);
    }
}

#[tokio::test]
async fn a_key_entra_does_not_know_or_the_wrong_algorithm_keeps_the_old_token() {
    let dir = tempfile::tempdir().unwrap();
    let registered = key_files(dir.path(), "rsa:2048");
    let other = key_files(dir.path(), "ec");
    let emu = start_emulator_with(emulator_trusting(&[&registered])).await;
    let f = Fixture::new().await;
    f.set(ACCESS_TOKEN, "previous-good-token").await;
    // A key and certificate Entra has never seen: refused by thumbprint.
    f.set(KEY, &other.key_pem).await;
    f.set(CERT, &other.cert_pem).await;
    let job = jwt_job(&emu.authority(), SigningAlg::ES256);
    assert_eq!(
        rejected_with(runtime().run(&job, f.dyn_store()).await),
        vec![700027]
    );
    // The registered certificate, but signed by another key: refused by signature.
    f.set(CERT, &registered.cert_pem).await;
    assert_eq!(
        rejected_with(runtime().run(&job, f.dyn_store()).await),
        vec![700027]
    );
    // An RSA key asked for ES256: the host refuses to sign, nothing is sent.
    f.set(KEY, &registered.key_pem).await;
    let before = emu.state.stats().token_requests;
    match plugin_error(runtime().run(&job, f.dyn_store()).await) {
        PluginError::BadRequest(m) => assert!(m.contains("ES256"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(emu.state.stats().token_requests, before);
    // No key stored: a clear error naming the store name.
    f.store.delete(KEY).await.unwrap();
    match plugin_error(runtime().run(&job, f.dyn_store()).await) {
        PluginError::BadRequest(m) => assert!(m.contains(KEY) && m.contains("import-key"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        f.get(ACCESS_TOKEN).await.as_deref(),
        Some("previous-good-token")
    );
}

/// A generic RFC 7523 token endpoint: it knows one client's public key by `kid`, checks
/// the assertion's signature, `iss`/`sub`, `aud` (its own URL) and `exp`, and answers with
/// a token. Written against the RFC, not against tokenwarden's emulator.
#[derive(Clone)]
struct Rfc7523 {
    public_key: Arc<Vec<u8>>,
    audience: Arc<Mutex<String>>,
    seen: Arc<Mutex<Vec<serde_json::Value>>>,
}

async fn rfc7523_token(
    State(s): State<Rfc7523>,
    axum::extract::Form(form): axum::extract::Form<std::collections::HashMap<String, String>>,
) -> axum::response::Response {
    let refuse = |why: &str| {
        (
            axum::http::StatusCode::UNAUTHORIZED,
            axum::Json(serde_json::json!({"error": "invalid_client", "error_description": why})),
        )
            .into_response()
    };
    if form.get("client_assertion_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    {
        return refuse("client_assertion_type");
    }
    let jwt = form.get("client_assertion").cloned().unwrap_or_default();
    let parts: Vec<&str> = jwt.split('.').collect();
    if parts.len() != 3 {
        return refuse("not a JWS");
    }
    let decode = |p: &str| URL_SAFE_NO_PAD.decode(p).unwrap_or_default();
    let header: serde_json::Value = serde_json::from_slice(&decode(parts[0])).unwrap_or_default();
    let claims: serde_json::Value = serde_json::from_slice(&decode(parts[1])).unwrap_or_default();
    if header["alg"] != "ES256" || header["kid"] != "key-2026" {
        return refuse("alg or kid");
    }
    let key = ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_FIXED,
        s.public_key.as_slice(),
    );
    let input = format!("{}.{}", parts[0], parts[1]);
    if key.verify(input.as_bytes(), &decode(parts[2])).is_err() {
        return refuse("signature");
    }
    let now = unix_now();
    let exp = claims["exp"].as_u64().unwrap_or(0);
    if claims["iss"] != "generic-client"
        || claims["sub"] != "generic-client"
        || claims["aud"] != *s.audience.lock().unwrap()
        || exp < now
        || exp > now + 3600
    {
        return refuse("claims");
    }
    s.seen.lock().unwrap().push(claims);
    axum::Json(serde_json::json!({"access_token": "rfc7523-token", "token_type": "Bearer", "expires_in": 600}))
        .into_response()
}

#[tokio::test]
async fn a_generic_rfc7523_server_takes_an_es256_assertion_named_by_key_id() {
    let dir = tempfile::tempdir().unwrap();
    let keys = key_files(dir.path(), "ec");
    let public_key = match SigningKey::from_pem(&keys.key_pem).unwrap() {
        SigningKey::P256(k) => ring::signature::KeyPair::public_key(&k).as_ref().to_vec(),
        other => panic!("{other:?}"),
    };
    let state = Rfc7523 {
        public_key: Arc::new(public_key),
        audience: Arc::default(),
        seen: Arc::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/oauth/token?tenant=a",
        listener.local_addr().unwrap()
    );
    *state.audience.lock().unwrap() = url.clone();
    let app = axum::Router::new()
        .route("/oauth/token", axum::routing::post(rfc7523_token))
        .with_state(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let f = Fixture::new().await;
    f.set(CLIENT_ID, "generic-client").await;
    f.set(KEY, &keys.key_pem).await;
    let mut job = url_job(&url, "api");
    job.client_auth = ClientAuth::PrivateKeyJwt;
    job.signing_alg = SigningAlg::ES256;
    job.key_id = Some("key-2026".into());
    job.secrets.client_secret = None;
    job.secrets.private_key = Some(KEY.into());
    runtime().run(&job, f.dyn_store()).await.unwrap();
    assert_eq!(f.get(ACCESS_TOKEN).await.as_deref(), Some("rfc7523-token"));
    let seen = state.seen.lock().unwrap().clone();
    let claims = &seen[0];
    let (iat, nbf, exp) = (
        claims["iat"].as_u64().unwrap(),
        claims["nbf"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    );
    assert_eq!(iat, nbf);
    assert_eq!(exp - iat, 300, "a short lifetime");
    assert_eq!(claims["jti"].as_str().unwrap().len(), 36);
}

/// A signed JWT as a Kubernetes API server would issue for a service account, signed
/// with `issuer`'s key.
fn service_account_token(issuer: &KeyFiles, iss: &str, sub: &str, aud: &str, exp: u64) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","kid":"k8s"}"#);
    let now = unix_now();
    let claims = URL_SAFE_NO_PAD.encode(
        serde_json::json!({"iss": iss, "sub": sub, "aud": [aud], "iat": now, "nbf": now, "exp": exp})
            .to_string(),
    );
    let input = format!("{header}.{claims}");
    let key = SigningKey::from_pem(&issuer.key_pem).unwrap();
    let sig = key.sign(SigningAlg::RS256, input.as_bytes()).unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

/// The emulator with one federated identity record for the demo client: `iss` and `sub`,
/// Entra's audience, tokens signed by `issuer`'s key.
async fn federated_emulator(issuer: &KeyFiles, iss: &str, sub: &str) -> emulator::Emulator {
    start_emulator_with(EmulatorConfig {
        federated: vec![FederatedCredential {
            client_id: emulator::DEMO_CLIENT_ID.into(),
            issuer: iss.into(),
            subject: sub.into(),
            audience: emulator::assertion::FEDERATED_AUDIENCE.into(),
            issuer_certificate: issuer.cert_der.clone(),
        }],
        ..EmulatorConfig::default()
    })
    .await
}

#[tokio::test]
async fn a_federated_assertion_is_read_from_its_file_at_every_run() {
    let dir = tempfile::tempdir().unwrap();
    let issuer_key = key_files(dir.path(), "rsa:2048");
    let iss = "https://oidc.cluster.example/abc";
    let sub = "system:serviceaccount:payments:graph-reader";
    let emu = federated_emulator(&issuer_key, iss, sub).await;
    let f = Fixture::new().await;
    let file = dir.path().join("azure-identity-token");
    let aud = emulator::assertion::FEDERATED_AUDIENCE;
    let later = unix_now() + 3600;
    std::fs::write(
        &file,
        service_account_token(&issuer_key, iss, sub, aud, later) + "\n",
    )
    .unwrap();
    let mut job = entra_job(&emu.authority());
    job.client_auth = ClientAuth::ClientAssertion;
    job.secrets.client_secret = None;
    job.assertion_file = Some(file.clone());
    runtime().run(&job, f.dyn_store()).await.unwrap();
    assert!(emu.state.accepts(&f.get(ACCESS_TOKEN).await.unwrap()));

    // The file is rotated (as the kubelet does): the next run sends the new content. A
    // subject with no federated record is refused, which proves it was read again.
    std::fs::write(
        &file,
        service_account_token(
            &issuer_key,
            iss,
            "system:serviceaccount:other:x",
            aud,
            later,
        ),
    )
    .unwrap();
    assert_eq!(
        rejected_with(runtime().run(&job, f.dyn_store()).await),
        vec![70021]
    );
    for (token, code) in [
        (
            service_account_token(&issuer_key, "https://elsewhere", sub, aud, later),
            700211,
        ),
        (
            service_account_token(&issuer_key, iss, sub, "api://other", later),
            700212,
        ),
        (
            service_account_token(&issuer_key, iss, sub, aud, unix_now() - 3600),
            700024,
        ),
    ] {
        std::fs::write(&file, token).unwrap();
        assert_eq!(
            rejected_with(runtime().run(&job, f.dyn_store()).await),
            vec![code]
        );
    }
    // Signed by someone else: refused by signature.
    let forger = key_files(dir.path(), "rsa:3072");
    std::fs::write(&file, service_account_token(&forger, iss, sub, aud, later)).unwrap();
    assert_eq!(
        rejected_with(runtime().run(&job, f.dyn_store()).await),
        vec![700027]
    );

    // A missing file or one that is no token: a clear error, nothing sent.
    let before = emu.state.stats().token_requests;
    std::fs::remove_file(&file).unwrap();
    let e = plugin_error(runtime().run(&job, f.dyn_store()).await);
    assert!(
        matches!(&e, PluginError::SecretStore(m) if m.contains("azure-identity-token")),
        "{e:?}"
    );
    std::fs::write(&file, vec![b'x'; 64 * 1024 + 1]).unwrap();
    let e = plugin_error(runtime().run(&job, f.dyn_store()).await);
    assert!(
        matches!(&e, PluginError::SecretStore(m) if m.contains("larger than")),
        "{e:?}"
    );
    std::fs::write(&file, "\n").unwrap();
    let e = plugin_error(runtime().run(&job, f.dyn_store()).await);
    assert!(matches!(&e, PluginError::MissingSecret { .. }), "{e:?}");
    // A FIFO (or a device) is refused before it is opened: reading one would block.
    std::fs::remove_file(&file).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&file)
        .status()
        .unwrap();
    assert!(made.success());
    let e = plugin_error(runtime().run(&job, f.dyn_store()).await);
    assert!(
        matches!(&e, PluginError::SecretStore(m) if m.contains("not a regular file")),
        "{e:?}"
    );
    assert_eq!(emu.state.stats().token_requests, before);
}

#[tokio::test]
async fn the_rogue_guest_can_sign_but_never_read_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let keys = key_files(dir.path(), "rsa:2048");
    let f = Fixture::new().await;
    f.set(KEY, &keys.key_pem).await;
    f.set(CERT, &keys.cert_pem).await;
    let mut job = jwt_job("http://127.0.0.1:9", SigningAlg::PS256);
    job.secrets.client_secret = Some(CLIENT_SECRET.into());
    job.scope = "steal-key".into();
    job.plugin = Some(ROGUE_COMPONENT.into());
    let report = runtime().run(&job, f.dyn_store()).await.unwrap();
    assert_eq!(
        report.outcome.token_type,
        "get:denied cert-of-key:denied sign-client-secret:denied sign-access-token:denied huge:unusable es256-with-rsa:unusable sign:ok"
    );
    // It returned the signature it got: the host scrubbed it (with its signature, a
    // leaked assertion would be a credential). Emulator and RFC 7523 tests verify them.
    assert_eq!(report.outcome.scope.as_deref(), Some("[redacted]"));
    // Nothing of the key in anything the run reported.
    let reported = format!("{report:?}");
    for line in keys.key_pem.lines().filter(|l| l.len() > 20) {
        assert!(!reported.contains(line));
    }
}

/// The CLI as an operator runs it: the key and certificate from PEM on stdin, then from
/// PKCS#12 with its password from the environment, then a refresh by a real process.
#[tokio::test]
async fn import_key_reads_pem_and_pkcs12_from_stdin_and_the_job_refreshes() {
    let dir = tempfile::tempdir().unwrap();
    let keys = key_files(dir.path(), "rsa:2048");
    let emu = start_emulator_with(emulator_trusting(&[&keys])).await;
    let work = tempfile::tempdir().unwrap();
    let config = format!(
        r#"[store]
path = "data/tw.db"

[[jobs]]
name = "graph"
scope = "{SCOPE}"
authority = "{}"
client_auth = "private_key_jwt"
[jobs.secrets]
client_id = "{CLIENT_ID}"
tenant_id = "{TENANT_ID}"
private_key = "{KEY}"
certificate = "{CERT}"
access_token = "{ACCESS_TOKEN}"
"#,
        emu.authority()
    );
    std::fs::write(work.path().join("tokenwarden.toml"), config).unwrap();
    let store = tokenwarden::SqliteStore::open(&work.path().join("data/tw.db")).unwrap();
    seed_client_secrets(&store).await;
    drop(store);
    let run = |args: Vec<String>, stdin: Vec<u8>, env: Vec<(&'static str, String)>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut cmd = tokenwarden(work.path(), &args);
        cmd.envs(env).stdin(Stdio::piped());
        async move {
            let mut child = cmd.spawn().unwrap();
            let mut input = child.stdin.take().unwrap();
            input.write_all(&stdin).await.unwrap();
            drop(input);
            child.wait_with_output().await.unwrap()
        }
    };
    let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    let both = format!("{}{}", keys.cert_pem, keys.key_pem);
    let out = run(
        s(&["secrets", "import-key", KEY, "--certificate", CERT]),
        both.into_bytes(),
        vec![],
    )
    .await;
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("RSA 2048-bit") && err.contains("x5t#S256"),
        "{err}"
    );
    for line in keys.key_pem.lines().filter(|l| l.len() > 20) {
        assert!(!err.contains(line) && !String::from_utf8_lossy(&out.stdout).contains(line));
    }
    let out = run(s(&["refresh", "graph"]), vec![], vec![]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // PKCS#12 with a password, as `openssl pkcs12 -export` (and Windows) write it.
    let other = key_files(dir.path(), "ec");
    openssl(
        &other.dir,
        &[
            "pkcs12",
            "-export",
            "-inkey",
            "key.pem",
            "-in",
            "cert.pem",
            "-out",
            "k.p12",
            "-passout",
            "pass:pfx-pass",
        ],
    );
    let p12 = std::fs::read(other.dir.join("k.p12")).unwrap();
    let wrong = run(
        s(&["secrets", "import-key", KEY, "--certificate", CERT]),
        p12.clone(),
        vec![("TOKENWARDEN_PKCS12_PASSWORD", "nope".into())],
    )
    .await;
    assert_eq!(
        wrong.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("wrong password"));
    let out = run(
        s(&["secrets", "import-key", KEY, "--certificate", CERT]),
        p12,
        vec![("TOKENWARDEN_PKCS12_PASSWORD", "pfx-pass".into())],
    )
    .await;
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success() && err.contains("EC P-256"), "{err}");
    // The legacy encryption Windows and older tools still write (3DES, SHA-1 MAC).
    openssl(
        &other.dir,
        &[
            "pkcs12",
            "-export",
            "-inkey",
            "key.pem",
            "-in",
            "cert.pem",
            "-out",
            "legacy.p12",
            "-passout",
            "pass:pfx-pass",
            "-keypbe",
            "PBE-SHA1-3DES",
            "-certpbe",
            "PBE-SHA1-3DES",
            "-macalg",
            "sha1",
        ],
    );
    let out = run(
        s(&[
            "secrets",
            "import-key",
            "Legacy Key",
            "--certificate",
            "Legacy Cert",
        ]),
        std::fs::read(other.dir.join("legacy.p12")).unwrap(),
        vec![("TOKENWARDEN_PKCS12_PASSWORD", "pfx-pass".into())],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The job still says PS256 (the default), which an EC key cannot make: the host
    // refuses to sign, the run says why, and nothing is sent.
    let before = emu.state.stats().token_requests;
    let out = run(s(&["refresh", "graph"]), vec![], vec![]).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("PS256"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(emu.state.stats().token_requests, before);

    // Refusals store nothing: a key with a certificate that is not its own, garbage, and
    // an RSA key too small, which says so.
    let mismatched = format!("{}{}", keys.cert_pem, other.key_pem);
    openssl(
        &other.dir,
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:1024",
            "-out",
            "small.pem",
        ],
    );
    let small = std::fs::read(other.dir.join("small.pem")).unwrap();
    let out = run(s(&["secrets", "import-key", "Other Key"]), small, vec![]).await;
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.code() == Some(2) && err.contains("2048 to 4096 bits"),
        "{err}"
    );
    for input in [
        mismatched.as_bytes(),
        b"not a key".as_slice(),
        b"".as_slice(),
    ] {
        let out = run(
            s(&["secrets", "import-key", "Other Key"]),
            input.to_vec(),
            vec![],
        )
        .await;
        assert_eq!(
            out.status.code(),
            Some(2),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("nothing stored"));
    }
    let list = run(s(&["secrets", "list"]), vec![], vec![]).await;
    assert!(!String::from_utf8_lossy(&list.stdout).contains("Other Key"));
}

/// A pod with Azure workload identity: the four variables, a config that names none of
/// them, and a real `tokenwarden` process.
#[tokio::test]
async fn workload_identity_variables_are_a_client_assertion_jobs_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let issuer_key = key_files(dir.path(), "rsa:2048");
    let iss = "https://oidc.cluster.example/wi";
    let sub = "system:serviceaccount:default:tokenwarden";
    let emu = federated_emulator(&issuer_key, iss, sub).await;
    let token_file = dir.path().join("azure-identity-token");
    let aud = emulator::assertion::FEDERATED_AUDIENCE;
    std::fs::write(
        &token_file,
        service_account_token(&issuer_key, iss, sub, aud, unix_now() + 3600),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("tokenwarden.toml"),
        format!(
            "[store]\npath = \"data/tw.db\"\n\n[[jobs]]\nname = \"graph\"\nscope = \"{SCOPE}\"\nclient_auth = \"client_assertion\"\n[jobs.secrets]\naccess_token = \"{ACCESS_TOKEN}\"\n"
        ),
    )
    .unwrap();
    let run = |args: &'static [&'static str], with_env: bool| {
        let mut cmd = tokenwarden(dir.path(), args);
        if with_env {
            cmd.env("AZURE_FEDERATED_TOKEN_FILE", &token_file)
                .env("AZURE_CLIENT_ID", emulator::DEMO_CLIENT_ID)
                .env("AZURE_TENANT_ID", emulator::DEMO_TENANT)
                .env("AZURE_AUTHORITY_HOST", emu.authority());
        }
        cmd.output()
    };
    let out = run(&["config", "check", "--json"], true).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let job = &v["jobs"][0];
    assert_eq!(job["client_auth"], "client_assertion");
    assert_eq!(job["assertion_file"], token_file.to_str().unwrap());
    assert_eq!(
        job["token_endpoint"],
        format!("{}/{{tenant}}/oauth2/v2.0/token", emu.authority())
    );
    assert_eq!(job["given_ids"][0]["value"], emulator::DEMO_CLIENT_ID);
    assert_eq!(job["given_ids"][1]["value"], emulator::DEMO_TENANT);
    let out = run(&["refresh", "graph"], true).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(emu.state.stats().tokens_issued, 1);
    // Without the variables, the config says what is missing.
    let out = run(&["config", "check"], false).await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("AZURE_FEDERATED_TOKEN_FILE"), "{err}");
}

fn identity_job(authority: &str, path_and_version: &str) -> JobConfig {
    let mut job = JobConfig::new("mi", SCOPE, roles());
    job.client_auth = ClientAuth::ManagedIdentity;
    job.token_url = Some(format!("{authority}{path_and_version}"));
    job.identity_source = Some(tokenwarden::IdentitySource::Imds);
    job.secrets.client_id = None;
    job.secrets.client_secret = None;
    job.secrets.tenant_id = None;
    job
}

#[tokio::test]
async fn a_managed_identity_gets_its_token_from_imds_and_waits_out_an_endpoint_not_ready() {
    let emu = start_emulator().await;
    let f = Fixture::new().await;
    f.set(ACCESS_TOKEN, "previous-good-token").await;
    let job = identity_job(
        &emu.authority(),
        "/metadata/identity/oauth2/token?api-version=2018-02-01",
    );
    // Not ready (404), being updated (410), throttled, failing: each is retryable, and the
    // last good token stays.
    emu.state.push_faults([
        emulator::Fault::Status { status: 404 },
        emulator::Fault::Status { status: 410 },
        emulator::Fault::Throttle {
            retry_after: Some(2),
        },
        emulator::Fault::Status { status: 500 },
    ]);
    for want in ["404", "410", "429", "500"] {
        let e = runtime().run(&job, f.dyn_store()).await.unwrap_err();
        assert_eq!(e.retry(), tokenwarden::Retry::Retryable, "{want}: {e}");
        assert!(e.to_string().contains(want), "{e}");
        assert_eq!(
            f.get(ACCESS_TOKEN).await.as_deref(),
            Some("previous-good-token")
        );
    }
    let report = runtime().run(&job, f.dyn_store()).await.unwrap();
    let token = f.get(ACCESS_TOKEN).await.unwrap();
    assert!(emu.state.accepts(&token));
    // IMDS sends its numbers as strings: the expiry is still read.
    assert_eq!(report.outcome.expires_in, Some(3599));

    // A user-assigned identity: its client id, from the store, goes along.
    f.set("UAMI Client ID", "11111111-2222-4333-8444-555555555555")
        .await;
    let mut user_assigned = job.clone();
    user_assigned.secrets.client_id = Some("UAMI Client ID".into());
    runtime().run(&user_assigned, f.dyn_store()).await.unwrap();
    let token = f.get(ACCESS_TOKEN).await.unwrap();
    let claims = token.split('.').nth(1).unwrap();
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
    assert_eq!(claims["appid"], "11111111-2222-4333-8444-555555555555");
}

/// App Service from a real process: the endpoint and its header come from the environment
/// as the platform sets them; a wrong header is a permanent failure that never shows it.
#[tokio::test]
async fn app_service_identity_from_the_environment_and_the_metadata_address_only_for_it() {
    let emu = start_emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let write = |job: &str| {
        let secrets = if job.contains("managed_identity\"") {
            ""
        } else {
            "client_id = \"id\"\nclient_secret = \"secret\"\n"
        };
        std::fs::write(
            dir.path().join("tokenwarden.toml"),
            format!("[store]\npath = \"data/tw.db\"\n\n[[jobs]]\nname = \"mi\"\nscope = \"{SCOPE}\"\n{job}\n[jobs.secrets]\n{secrets}access_token = \"{ACCESS_TOKEN}\"\n"),
        )
        .unwrap()
    };
    let run = |args: &'static [&'static str], header: Option<&'static str>| {
        let mut cmd = tokenwarden(dir.path(), args);
        if let Some(h) = header {
            cmd.env(
                "IDENTITY_ENDPOINT",
                format!("{}/msi/token", emu.authority()),
            )
            .env("IDENTITY_HEADER", h);
        }
        cmd.output()
    };
    write("client_auth = \"managed_identity\"");
    let out = run(
        &["config", "check", "--json"],
        Some(emulator::DEMO_IDENTITY_HEADER),
    )
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["jobs"][0]["token_endpoint"],
        format!("{}/msi/token?api-version=2019-08-01", emu.authority())
    );
    let out = run(&["refresh", "mi"], Some(emulator::DEMO_IDENTITY_HEADER))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(emu.state.stats().tokens_issued, 1);
    let out = run(
        &["--log-format", "json", "refresh", "mi"],
        Some("wrong-identity-header"),
    )
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        err.contains("unauthorized_client") && !err.contains("wrong-identity-header"),
        "{err}"
    );

    // Without App Service's variables the job asks IMDS, at the link-local address, which
    // it may reach over plain http; no other job may name that address.
    let out = run(&["config", "check", "--json"], None).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["jobs"][0]["token_endpoint"],
        "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01"
    );
    assert_eq!(
        v["jobs"][0]["allowed_hosts"][0],
        "http://169.254.169.254:80"
    );
    for (job, why) in [
        (
            "token_url = \"http://169.254.169.254/metadata/identity/oauth2/token\"\nallow_insecure_http = true",
            "link-local",
        ),
        (
            "token_url = \"https://idp.example/token\"\nallowed_hosts = [\"https://idp.example\", \"http://169.254.169.254\"]",
            "link-local",
        ),
        (
            "token_url = \"http://[fe80::1]/token\"\nallow_insecure_http = true",
            "link-local",
        ),
        (
            "token_url = \"https://idp.example/token\"\nmanaged_identity = \"imds\"",
            "needs `client_auth",
        ),
    ] {
        write(&format!("{job}\n"));
        let out = run(&["config", "check"], None).await.unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.code() == Some(2) && err.contains(why),
            "{job}: {err}"
        );
    }
    write("client_auth = \"managed_identity\"\nmanaged_identity = \"app_service\"");
    let out = run(&["config", "check"], None).await.unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("IDENTITY_ENDPOINT"));
}

/// A daemon and the CLI beside it: the job starts without a key and fails; the operator
/// imports one with `secrets import-key` (another process), and the daemon, seeing its
/// input change, runs the job again at once and logs nothing of the key, at debug level.
#[tokio::test]
async fn the_daemon_picks_up_a_key_imported_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    let keys = key_files(dir.path(), "ec");
    let emu = start_emulator_with(emulator_trusting(&[&keys])).await;
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("tokenwarden.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\npath = \"data/tw.db\"\npoll_interval = \"200ms\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[[jobs]]\nname = \"graph\"\nscope = \"{SCOPE}\"\nauthority = \"{}\"\nclient_auth = \"private_key_jwt\"\nsigning_alg = \"ES256\"\n[jobs.secrets]\nclient_id = \"{CLIENT_ID}\"\ntenant_id = \"{TENANT_ID}\"\nprivate_key = \"{KEY}\"\ncertificate = \"{CERT}\"\naccess_token = \"{ACCESS_TOKEN}\"\n",
            emu.authority()
        ),
    )
    .unwrap();
    let store = tokenwarden::SqliteStore::open(&work.path().join("data/tw.db")).unwrap();
    seed_client_secrets(&store).await;
    drop(store);
    let daemon = DaemonProc::spawn(BIN, &config, &[("TOKENWARDEN_LOG", "debug")]).await;
    eventually(
        std::time::Duration::from_secs(20),
        "the first run fails",
        || async {
            daemon.get("/jobs/graph").await.json()["consecutive_failures"].as_u64() >= Some(1)
        },
    )
    .await;
    let mut import = tokenwarden(
        work.path(),
        &["secrets", "import-key", KEY, "--certificate", CERT],
    );
    import.stdin(Stdio::piped());
    let mut child = import.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    input
        .write_all(format!("{}{}", keys.key_pem, keys.cert_pem).as_bytes())
        .await
        .unwrap();
    drop(input);
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    daemon.wait_for_token("graph").await;
    assert!(
        emu.state
            .accepts(&daemon_token(&work.path().join("data/tw.db")).await)
    );
    let log = daemon.log();
    for line in keys.key_pem.lines().filter(|l| l.len() > 20) {
        assert!(!log.contains(line), "the key in the daemon's log");
    }
}

async fn daemon_token(db: &Path) -> String {
    use secrecy::ExposeSecret;
    let store = tokenwarden::SqliteStore::open(db).unwrap();
    store
        .get(ACCESS_TOKEN)
        .await
        .unwrap()
        .unwrap()
        .value
        .expose_secret()
        .to_string()
}
