//! The bearer-injecting proxy end to end: the real daemon process proxies curl and a small
//! HTTP client to the emulator's protected resources (which accept only unexpired tokens
//! they issued) across refreshes, on loopback TCP with a consumer secret and on a Unix
//! socket with peer credentials; bodies stream both ways within their limits; a token the
//! upstream rejects is refreshed once and the request sent again, only for idempotent
//! methods and at most once per cooldown; and the token reaches no consumer, log or report.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tokenwarden::emulator::Emulator;
use tokenwarden_tests::*;

const BIN: &str = env!("CARGO_BIN_EXE_tokenwarden-under-test");
const KEY_NAME: &str = "Graph Proxy Key";
const KEY: &str = "consumer-key-7f3a9c";

struct Proxied {
    daemon: DaemonProc,
    /// The proxy's TCP address.
    tcp: String,
    /// Its Unix socket.
    socket: PathBuf,
}

/// The daemon with a proxy in front of `emulator`: `/graph` to its `/v1.0` by address (the
/// job's upstream), `/named` to the same port by this machine's host name (which resolves to
/// a loopback or private address the route does not name, so the egress vetting refuses it;
/// `localhost` itself is refused when the config loads).
async fn proxied(f: &Fixture, emulator: &Emulator) -> Proxied {
    f.set(KEY_NAME, KEY).await;
    let port = emulator.addr.port();
    let host = hostname();
    let config = f.dir.path().join("tokenwarden.toml");
    let job = job_toml("graph", &emulator.authority(), TENANT_ID, ACCESS_TOKEN).replace(
        "[jobs.secrets]",
        &format!(
            "upstreams = [\"http://127.0.0.1:{port}\", \"http://{host}:{port}\"]\nallow_insecure_http = true\n[jobs.secrets]"
        ),
    );
    std::fs::write(
        &config,
        format!(
            r#"[store]
path = "data/tw.db"
[admin]
listen = "127.0.0.1:0"
[proxy]
listen = "127.0.0.1:0"
max_request_body = "16 MiB"
max_response_body = "12 MiB"
[proxy.socket]
path = "proxy.sock"
[[proxy.routes]]
prefix = "/graph"
upstream = "http://127.0.0.1:{port}/v1.0"
job = "graph"
consumer_secret = "{KEY_NAME}"
[[proxy.routes]]
prefix = "/named"
upstream = "http://{host}:{port}/v1.0"
job = "graph"
consumer_secret = "{KEY_NAME}"

{job}"#
        ),
    )
    .unwrap();
    let daemon = DaemonProc::spawn(BIN, &config, &[]).await;
    daemon.wait_for_token("graph").await;
    let tcp = daemon
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["message"] == "proxy serving" && v["fields"]["listen"].is_string())
        .map(|v| v["fields"]["listen"].as_str().unwrap().to_string())
        .expect("the proxy logs its address");
    Proxied {
        daemon,
        tcp,
        socket: f.dir.path().join("proxy.sock"),
    }
}

/// This machine's host name, lower-cased (a name that resolves to a loopback or private
/// address, or not at all).
fn hostname() -> String {
    let out = std::process::Command::new("hostname").output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .to_ascii_lowercase()
}

/// curl's status code and body for `args` (tokio's Command: the emulator runs on this
/// test's own thread).
async fn curl(args: &[&str]) -> (String, Vec<u8>) {
    curl_as(args, None).await
}

async fn curl_as(args: &[&str], uid: Option<u32>) -> (String, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let body = dir.path().join("body");
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["-sS", "-w", "%{http_code}", "-o"])
        .arg(&body)
        .args(args);
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    let out = cmd.output().await.unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        std::fs::read(&body).unwrap_or_default(),
    )
}

fn key_header() -> String {
    format!("Proxy-Authorization: Bearer {KEY}")
}

/// `GET path` through the proxy's TCP port with the consumer secret.
async fn get(p: &Proxied, path: &str) -> (String, Vec<u8>) {
    curl(&["-H", &key_header(), &format!("http://{}{path}", p.tcp)]).await
}

async fn metric(daemon: &DaemonProc, series: &str) -> u64 {
    let text = daemon.get("/metrics").await.body;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
}

/// A small HTTP/1.1 client: `n` requests on one keep-alive connection over the proxy's Unix
/// socket, each status returned.
async fn unix_client(socket: &Path, path: &str, n: usize) -> Vec<u16> {
    use http_body_util::BodyExt;
    let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(wasmtime_wasi_http::io::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut statuses = Vec::new();
    for _ in 0..n {
        let request = http::Request::get(path)
            .header(http::header::HOST, "proxy")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        sender.ready().await.unwrap();
        let reply = sender.send_request(request).await.unwrap();
        statuses.push(reply.status().as_u16());
        let body = reply.into_body().collect().await.unwrap().to_bytes();
        assert!(!body.is_empty());
    }
    statuses
}

/// curl and a small client reach the protected resource through the proxy on TCP (with the
/// consumer secret) and on the Unix socket (by peer credentials) across refreshes that
/// revoke every older token; strangers, climbing paths, unknown prefixes and names that
/// resolve to addresses the route does not name are refused; bodies stream both ways within
/// the limits; the token shows up nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_reach_the_resource_through_the_proxy_across_refreshes() {
    let f = Fixture::new().await;
    let emulator = start_emulator().await;
    // Other users must reach the socket's folder to be refused by the daemon.
    std::fs::set_permissions(f.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let p = proxied(&f, &emulator).await;

    let (status, body) = get(&p, "/graph/me").await;
    assert_eq!(status, "200", "{}", String::from_utf8_lossy(&body));
    let me: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(me["appId"], tokenwarden::emulator::DEMO_CLIENT_ID);

    // Each refresh revokes every older token: the proxy must send the new one, without
    // first being refused (the resource's refusals do not grow).
    for round in 0..3 {
        let before = f.get(ACCESS_TOKEN).await.unwrap();
        emulator.state.revoke_all();
        let refreshed = tokenwarden::cli::client::post(p.daemon.admin, "/jobs/graph/refresh", None)
            .await
            .unwrap();
        assert_eq!(refreshed.status, 200, "{}", refreshed.body);
        assert_ne!(f.get(ACCESS_TOKEN).await.unwrap(), before);
        let refused = emulator.state.stats().resource_refused;
        let (status, _) = get(&p, "/graph/me").await;
        assert_eq!(status, "200", "round {round}");
        assert_eq!(
            emulator.state.stats().resource_refused,
            refused,
            "round {round}"
        );
        assert_eq!(unix_client(&p.socket, "/graph/me", 5).await, vec![200; 5]);
    }

    // Consumers without the secret, or with a wrong one, are refused.
    let url = format!("http://{}/graph/me", p.tcp);
    let (status, body) = curl(&[&url]).await;
    assert_eq!(status, "407");
    assert!(String::from_utf8_lossy(&body).contains("Proxy-Authorization"));
    let (status, _) = curl(&["-H", "Proxy-Authorization: Bearer guess", &url]).await;
    assert_eq!(status, "407");
    // The consumer's own Authorization is replaced, never forwarded.
    let (status, _) = curl(&[
        "-H",
        &key_header(),
        "-H",
        "Authorization: Bearer mine",
        &url,
    ])
    .await;
    assert_eq!(status, "200");

    // curl on the Unix socket: this test's user is the daemon's, which is always admitted;
    // another user is refused unless the job lists it.
    let socket = p.socket.to_str().unwrap();
    let (status, _) = curl(&["--unix-socket", socket, "http://proxy/graph/me"]).await;
    assert_eq!(status, "200");
    if is_root() {
        let (status, body) = curl_as(
            &["--unix-socket", socket, "http://proxy/graph/me"],
            Some(65534),
        )
        .await;
        assert_eq!(status, "403", "{}", String::from_utf8_lossy(&body));
    } else {
        println!("not root: the other-uid caller is not tried");
    }

    // Paths that would climb out of the upstream's base path, and unknown prefixes.
    let (status, _) = curl(&[
        "--path-as-is",
        "-H",
        &key_header(),
        &format!("http://{}/graph/../_emulator/stats", p.tcp),
    ])
    .await;
    assert_eq!(status, "400");
    let (status, _) = curl(&[
        "-H",
        &key_header(),
        &format!("http://{}/graph/%2e%2e/_emulator/stats", p.tcp),
    ])
    .await;
    assert_eq!(status, "400");
    let (status, _) = curl(&[
        "--path-as-is",
        "-H",
        &key_header(),
        &format!("http://{}/graph/..;/_emulator/stats", p.tcp),
    ])
    .await;
    assert_eq!(status, "400", "Java servers read `..;` as `..`");
    let (status, _) = get(&p, "/graphx/me").await;
    assert_eq!(status, "404");
    // TRACE would come back with the token the proxy added: refused.
    let (status, body) = curl(&["-X", "TRACE", "-H", &key_header(), &url]).await;
    assert_eq!(status, "405");
    assert!(!String::from_utf8_lossy(&body).contains("Bearer"));
    // A body in a transfer coding the proxy does not undo is refused, not relabelled.
    let (status, _) = curl(&[
        "-H",
        &key_header(),
        "-H",
        "Transfer-Encoding: gzip, chunked",
        "--data-binary",
        "x",
        &format!("http://{}/graph/echo", p.tcp),
    ])
    .await;
    assert_eq!(status, "501");
    // The host name resolves to an address the route does not name: refused before any
    // connection, as the plugin's egress is (the emulator never sees the request).
    let reached = emulator.state.stats().resource_requests;
    let (status, body) = get(&p, "/named/me").await;
    assert_eq!(status, "502", "{}", String::from_utf8_lossy(&body));
    println!("{}: {}", hostname(), String::from_utf8_lossy(&body));
    assert_eq!(emulator.state.stats().resource_requests, reached);

    // Bodies stream both ways: 8 MiB up and back, with a length and chunked.
    let dir = tempfile::tempdir().unwrap();
    let upload = dir.path().join("up");
    let data: Vec<u8> = (0..8u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&upload, &data).unwrap();
    let file = format!("@{}", upload.display());
    let echo = format!("http://{}/graph/echo", p.tcp);
    let (status, back) = curl(&["-H", &key_header(), "--data-binary", &file, &echo]).await;
    assert_eq!(status, "200");
    assert!(
        back == data,
        "the echoed body differs ({} bytes back)",
        back.len()
    );
    let (status, back) = curl(&[
        "-H",
        &key_header(),
        "-H",
        "Transfer-Encoding: chunked",
        "-X",
        "PUT",
        "--data-binary",
        &file,
        &echo,
    ])
    .await;
    assert_eq!(status, "200");
    assert!(
        back == data,
        "the chunked echo differs ({} bytes back)",
        back.len()
    );
    // Over max_request_body (16 MiB) with a declared length: refused before sending.
    let big = dir.path().join("big");
    std::fs::write(&big, vec![b'x'; 17 << 20]).unwrap();
    let post_big = async || {
        curl(&[
            "-H",
            &key_header(),
            "--data-binary",
            &format!("@{}", big.display()),
            &echo,
        ])
        .await
    };
    assert_eq!(post_big().await.0, "413");
    // A 14 MiB reply is over max_response_body (12 MiB): cut off, never passed whole.
    std::fs::write(&big, vec![b'y'; 14 << 20]).unwrap();
    let (_, back) = post_big().await;
    assert!(back.len() < 14 << 20, "{} bytes passed", back.len());

    // Reported, never the token.
    let jobs = p.daemon.get("/jobs/graph").await.json();
    let proxy = &jobs["proxy"];
    assert!(proxy["upstream_2xx"].as_u64().unwrap() >= 20, "{jobs}");
    assert!(proxy["refused"].as_u64().unwrap() >= 2, "{jobs}");
    assert!(proxy["failed"].as_u64().unwrap() >= 7, "{jobs}");
    assert!(
        metric(
            &p.daemon,
            "tokenwarden_proxy_requests_total{result=\"2xx\"}"
        )
        .await
            >= 20
    );
    assert!(
        metric(
            &p.daemon,
            "tokenwarden_proxy_requests_total{result=\"refused\"}"
        )
        .await
            >= 2
    );
    assert_eq!(
        metric(
            &p.daemon,
            "tokenwarden_proxy_requests_total{result=\"no_route\"}"
        )
        .await,
        1
    );
    let token = f.get(ACCESS_TOKEN).await.unwrap();
    assert!(!p.daemon.log().contains(&token));
    assert!(!p.daemon.log().contains(KEY));
    assert!(!p.daemon.get("/jobs").await.body.contains(&token));
    assert!(!p.daemon.get("/metrics").await.body.contains(&token));
}

/// A token the resource rejects (`401`, `error="invalid_token"`): concurrent idempotent
/// requests share one refresh and are each sent again once; a POST gets the `401` as it
/// came; within the cooldown no second refresh is forced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_token_is_refreshed_once_and_idempotent_requests_sent_again() {
    let f = Fixture::new().await;
    let emulator = start_emulator().await;
    let p = proxied(&f, &emulator).await;
    assert_eq!(get(&p, "/graph/me").await.0, "200");
    let issued = emulator.state.stats().tokens_issued;

    // Revoked (as a continuous access evaluation event does). A POST is not sent twice:
    // the 401 goes back with its challenge, and nothing is refreshed for it.
    emulator.state.revoke_all();
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "-X",
            "POST",
            "--data",
            "x",
            "-H",
        ])
        .arg(key_header())
        .arg(format!("http://{}/graph/echo", p.tcp))
        .output()
        .await
        .unwrap();
    let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(head.starts_with("http/1.1 401"), "{head}");
    assert!(head.contains("error=\"invalid_token\""), "{head}");
    assert_eq!(emulator.state.stats().tokens_issued, issued);

    // Eight GETs at once with the revoked token: one refresh, each sent again.
    let requests: Vec<_> = (0..8)
        .map(|_| {
            let url = format!("http://{}/graph/me", p.tcp);
            tokio::spawn(async move { curl(&["-H", &key_header(), &url]).await.0 })
        })
        .collect();
    for r in requests {
        assert_eq!(r.await.unwrap(), "200");
    }
    assert_eq!(
        emulator.state.stats().tokens_issued,
        issued + 1,
        "one refresh for all of them"
    );
    assert_eq!(
        metric(
            &p.daemon,
            "tokenwarden_proxy_refresh_retries_total{result=\"refreshed\"}"
        )
        .await,
        1
    );

    // Revoked again, within the cooldown of the last forced refresh: the 401 goes back.
    emulator.state.revoke_all();
    let (status, _) = get(&p, "/graph/me").await;
    assert_eq!(status, "401");
    assert_eq!(emulator.state.stats().tokens_issued, issued + 1);
    assert_eq!(
        metric(
            &p.daemon,
            "tokenwarden_proxy_refresh_retries_total{result=\"throttled\"}"
        )
        .await,
        1
    );
    assert_eq!(
        metric(
            &p.daemon,
            "tokenwarden_proxy_requests_total{result=\"4xx\"}"
        )
        .await,
        2
    );
    // A refresh the schedule (here: the admin API) makes lifts it at once.
    let refreshed = tokenwarden::cli::client::post(p.daemon.admin, "/jobs/graph/refresh", None)
        .await
        .unwrap();
    assert_eq!(refreshed.status, 200);
    assert_eq!(get(&p, "/graph/me").await.0, "200");
}
