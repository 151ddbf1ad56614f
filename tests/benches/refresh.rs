//! Sandbox overhead and full-refresh benchmarks, each beside a native Rust baseline doing the
//! same work in the same run. `cargo bench -p tokenwarden-tests --bench refresh`.
//!
//! - `in-process/*`: one refresh with the HTTP exchange answered in process (no network):
//!   the component (instantiate + call + secret reads and write) versus native Rust building
//!   the same request with the plugin's own OAuth code, parsing the same reply and storing it.
//!   Once with the in-memory store (the sandbox alone) and once with the durable store.
//! - `loopback/*`: one refresh against the emulator on 127.0.0.1, the component in the host
//!   versus a native hyper client; both keep one connection alive, as the host's transport does.
//!
//! - `*/component-p3/*`: the same with the WASI 0.3 build of the component (its own engine,
//!   with component-model concurrency on); `component-p2-on-p3-engine`: the 0.2 build on
//!   such an engine, what a 0.2 job pays when another job opts in to 0.3.
//!
//! After criterion's report, p50/p99 of single iterations are printed, the rows of a group
//! alternating (criterion reports means and medians of batches, not tails).

use bytes::Bytes;
use criterion::Criterion;
use http_body_util::{BodyExt, Full};
use secrecy::{ExposeSecret, SecretString};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokenwarden::MemoryStore;
use tokenwarden::NetTransport;
use tokenwarden::Pooling;
use tokenwarden::WasiVersion;
use tokenwarden::egress::{HttpLimits, Origin, SendFuture, Transport};
use tokenwarden::{JobConfig, Runtime, RuntimeOptions, SecretStore, SqliteStore, emulator};
use tokenwarden_plugin::oauth;
use tokenwarden_tests::{
    ACCESS_TOKEN, CLIENT_ID, CLIENT_SECRET, TENANT_ID, roles, seed_client_secrets,
};
use wasmtime_wasi_http::{RequestOptions, WasiBody};

const REPLY: &str = r#"{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"eyJ0eXAiOiJKV1QiLCJhbGciOiJub25lIn0.eyJhdWQiOiJodHRwczovL2dyYXBoLm1pY3Jvc29mdC5jb20iLCJleHAiOjE4MDAwMDAwMDB9.c2lnbmF0dXJl"}"#;
const TOKEN_URL: &str = "https://idp.bench.invalid/token";

/// Answers every admitted request with [`REPLY`] after reading the request body, in process.
struct Canned;

impl Transport for Canned {
    fn send(
        &self,
        request: http::Request<WasiBody>,
        _options: RequestOptions,
        _allowed: Arc<Vec<Origin>>,
        _limits: HttpLimits,
    ) -> SendFuture {
        Box::pin(async move {
            let _form = request.into_body().collect().await?.to_bytes();
            let body = Full::new(Bytes::from_static(REPLY.as_bytes()))
                .map_err(|never| match never {})
                .boxed_unsync();
            let response = http::Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .body(body)
                .expect("valid response");
            let done: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send> =
                Box::new(async { Ok(()) });
            Ok((response, done))
        })
    }
}

/// An RSA 2048 key (made by `openssl`, as the tests do) for PS256 and an EC P-256 key for
/// ES256, with a self-signed certificate each, as PEM.
fn bench_keys(
    dir: &std::path::Path,
) -> Vec<(&'static str, tokenwarden::SigningAlg, String, String)> {
    let out = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(dir.join("rsa.pem"))
        .output()
        .expect("openssl runs");
    assert!(out.status.success());
    let rsa = std::fs::read_to_string(dir.join("rsa.pem")).unwrap();
    let certify = |pem: &str| {
        let key = rcgen::KeyPair::from_pem(pem).unwrap();
        rcgen::CertificateParams::new(vec!["bench".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .pem()
    };
    let ec = rcgen::KeyPair::generate().unwrap().serialize_pem();
    vec![
        (
            "ps256-rsa2048",
            tokenwarden::SigningAlg::PS256,
            certify(&rsa),
            rsa,
        ),
        (
            "es256-p256",
            tokenwarden::SigningAlg::ES256,
            certify(&ec),
            ec,
        ),
    ]
}

fn canned_job() -> JobConfig {
    let mut job = JobConfig::new("bench", "https://graph.microsoft.com/.default", roles());
    job.token_url = Some(TOKEN_URL.into());
    job
}

/// The native equivalent of one refresh: the same secret reads, the plugin's own request
/// building and reply parsing, and the same store write; `exchange` does the HTTP part.
async fn native_refresh<F, Fut>(store: &dyn SecretStore, token_url: &str, exchange: F)
where
    F: FnOnce(oauth::HttpRequest) -> Fut,
    Fut: Future<Output = oauth::HttpReply>,
{
    let read = async |name: &str| {
        store
            .get(name)
            .await
            .unwrap()
            .unwrap()
            .value
            .expose_secret()
            .to_string()
    };
    let creds = oauth::Credentials {
        client_id: read(CLIENT_ID).await,
        proof: oauth::Proof::Secret(read(CLIENT_SECRET).await),
    };
    let _tenant = read(TENANT_ID).await;
    let req = oauth::Request {
        scope: "https://graph.microsoft.com/.default".into(),
        authority: None,
        token_url: Some(token_url.into()),
        client_auth: oauth::ClientAuth::ClientSecretPost,
        extra_params: vec![],
        signing_alg: oauth::SigningAlg::PS256,
        key_id: None,
    };
    let endpoint = oauth::endpoint(&req, None).unwrap();
    let http = oauth::build_request(&req, endpoint, &creds).unwrap();
    let reply = exchange(http).await;
    let token = oauth::parse_reply(&reply, tokenwarden_tests::unix_now()).unwrap();
    store
        .set(
            ACCESS_TOKEN,
            &SecretString::from(token.access_token),
            token.outcome.expires_at,
        )
        .await
        .unwrap();
}

/// A native client with one kept-alive connection, like the host's transport.
struct NativeClient {
    addr: std::net::SocketAddr,
    sender: Mutex<Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>>,
}

impl NativeClient {
    async fn post(&self, http: oauth::HttpRequest) -> oauth::HttpReply {
        let cached = self.sender.lock().unwrap().take();
        let mut sender = match cached {
            Some(s) if !s.is_closed() => s,
            _ => {
                let tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
                tcp.set_nodelay(true).unwrap();
                let (s, conn) = hyper::client::conn::http1::handshake(
                    wasmtime_wasi_http::io::TokioIo::new(tcp),
                )
                .await
                .unwrap();
                tokio::spawn(conn);
                s
            }
        };
        sender.ready().await.unwrap();
        let mut req = http::Request::builder()
            .method("POST")
            .uri(&http.endpoint.path_and_query)
            .header("host", self.addr.to_string());
        for (name, value) in &http.headers {
            req = req.header(name.as_str(), value.as_slice());
        }
        let response = sender
            .send_request(req.body(Full::new(Bytes::from(http.body))).unwrap())
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        *self.sender.lock().unwrap() = Some(sender);
        oauth::HttpReply {
            status,
            retry_after: None,
            body: body.to_vec(),
        }
    }
}

/// The native exchange sent through the host's own transport (connect-time vetting, limits,
/// keep-alive pool) instead of a bare hyper connection: with it, the loopback gap splits
/// into what the transport costs and what the sandbox and wasi:http cost.
struct HostTransportClient {
    transport: NetTransport,
    allowed: Arc<Vec<Origin>>,
    limits: HttpLimits,
}

impl HostTransportClient {
    async fn post(&self, http: oauth::HttpRequest) -> oauth::HttpReply {
        let mut req = http::Request::builder().method("POST").uri(format!(
            "http://{}{}",
            http.endpoint.authority, http.endpoint.path_and_query
        ));
        req = req.header("host", http.endpoint.authority.as_str());
        for (name, value) in &http.headers {
            req = req.header(name.as_str(), value.as_slice());
        }
        let body: WasiBody = Full::new(Bytes::from(http.body))
            .map_err(|never| match never {})
            .boxed_unsync();
        let (response, request_done) = self
            .transport
            .send(
                req.body(body).unwrap(),
                self.limits.clamp(None),
                self.allowed.clone(),
                self.limits,
            )
            .await
            .unwrap();
        // wasmtime_wasi_http spawns this too.
        tokio::spawn(Box::into_pin(request_done));
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        oauth::HttpReply {
            status,
            retry_after: None,
            body: body.to_vec(),
        }
    }
}

type Tails = (f64, f64);

/// Single-iteration latencies, (p50, p99) in microseconds, of each future expression,
/// made afresh and awaited in turn, so that drift on a shared machine (or in the server)
/// touches all of them alike. Gives one [`Tails`] per expression.
macro_rules! interleaved_tails {
    ($rt:expr, $n:expr, [$($run:expr),+ $(,)?]) => {{
        let n: usize = $n;
        let mut samples = [$({
            let _ = stringify!($run);
            Vec::<Duration>::with_capacity(n)
        }),+];
        $rt.block_on(async {
            // The first tenth warms up and is not recorded.
            for i in 0..n / 10 + n {
                let mut k = 0;
                $(
                    let t = Instant::now();
                    $run.await;
                    if i >= n / 10 {
                        samples[k].push(t.elapsed());
                    }
                    k += 1;
                )+
                let _ = k;
            }
        });
        samples.map(tails)
    }};
}

fn tails(mut samples: Vec<Duration>) -> Tails {
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 * q) as usize).min(samples.len() - 1);
        samples[i].as_secs_f64() * 1e6
    };
    (at(0.50), at(0.99))
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .configure_from_args();
    // One thread by default (the lowest latency for both sides); BENCH_MULTI_THREAD=1 gives
    // two workers, like the daemon's runtime on this machine.
    let rt = if std::env::var_os("BENCH_MULTI_THREAD").is_some() {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(2);
        b
    } else {
        tokio::runtime::Builder::new_current_thread()
    }
    .enable_all()
    .build()
    .unwrap();
    let dir = tempfile::tempdir().unwrap();

    // In process: the sandbox versus native, memory store and durable store. The component
    // runs with the instance pool the CLI and daemon use (16 slots, default limits), and
    // once more with on-demand allocation, the library's default.
    let job = canned_job();
    let pooling = Some(Pooling::for_runs(16, std::slice::from_ref(&job)));
    let canned = Runtime::new(RuntimeOptions {
        transport: Some(Arc::new(Canned)),
        pooling,
        ..RuntimeOptions::default()
    })
    .unwrap();
    canned.preload(&job).unwrap();
    let canned_p3 = Runtime::new(RuntimeOptions {
        transport: Some(Arc::new(Canned)),
        pooling,
        wasi: WasiVersion::P3,
        ..RuntimeOptions::default()
    })
    .unwrap();
    canned_p3.preload(&job).unwrap();
    let canned_p2_on_p3 = Runtime::new(RuntimeOptions {
        transport: Some(Arc::new(Canned)),
        pooling,
        allow_wasi_0_3: true,
        ..RuntimeOptions::default()
    })
    .unwrap();
    canned_p2_on_p3.preload(&job).unwrap();
    let on_demand = Runtime::new(RuntimeOptions {
        transport: Some(Arc::new(Canned)),
        ..RuntimeOptions::default()
    })
    .unwrap();
    on_demand.preload(&job).unwrap();
    let memory: Arc<dyn SecretStore> = Arc::new(MemoryStore::default());
    let sqlite: Arc<dyn SecretStore> =
        Arc::new(SqliteStore::open(&dir.path().join("bench.db")).unwrap());
    rt.block_on(seed_client_secrets(&*memory));
    rt.block_on(seed_client_secrets(&*sqlite));
    let canned_reply = || async {
        oauth::HttpReply {
            status: 200,
            retry_after: None,
            body: REPLY.as_bytes().to_vec(),
        }
    };

    let mut tails = Vec::new();
    {
        let mut g = c.benchmark_group("in-process");
        for (label, store) in [("memory", &memory), ("sqlite", &sqlite)] {
            g.bench_function(format!("component/{label}"), |b| {
                b.to_async(&rt)
                    .iter(|| async { canned.run(&job, store.clone()).await.unwrap() })
            });
            g.bench_function(format!("native/{label}"), |b| {
                b.to_async(&rt).iter(|| async {
                    native_refresh(&**store, TOKEN_URL, |_| canned_reply()).await
                })
            });
            let n = if label == "memory" { 20_000 } else { 2_000 };
            let [component, native] = interleaved_tails!(
                &rt,
                n,
                [
                    async {
                        canned.run(&job, store.clone()).await.unwrap();
                    },
                    native_refresh(&**store, TOKEN_URL, |_| canned_reply()),
                ]
            );
            tails.push((format!("in-process component/{label}"), component));
            tails.push((format!("in-process native/{label}"), native));
        }
        // Certificate credentials: the host parses the key and signs every run
        // (`private_key_jwt`), or parses key and certificate for the handshake
        // (`tls_client_auth`; the canned transport makes none: the identity's cost alone).
        for (label, alg, cert_pem, key_pem) in bench_keys(dir.path()) {
            let store: Arc<dyn SecretStore> = Arc::new(MemoryStore::default());
            rt.block_on(seed_client_secrets(&*store));
            rt.block_on(store.set("Bench Key", &SecretString::from(key_pem), None))
                .unwrap();
            rt.block_on(store.set("Bench Cert", &SecretString::from(cert_pem), None))
                .unwrap();
            let mut mtls = canned_job();
            mtls.client_auth = tokenwarden::ClientAuth::TlsClientAuth;
            mtls.secrets.client_secret = None;
            mtls.secrets.private_key = Some("Bench Key".into());
            mtls.secrets.certificate = Some("Bench Cert".into());
            g.bench_function(format!("component-tls-client-auth/{label}/memory"), |b| {
                b.to_async(&rt)
                    .iter(|| async { canned.run(&mtls, store.clone()).await.unwrap() })
            });
            let mut signed = canned_job();
            signed.client_auth = tokenwarden::ClientAuth::PrivateKeyJwt;
            signed.signing_alg = alg;
            signed.secrets.client_secret = None;
            signed.secrets.private_key = Some("Bench Key".into());
            g.bench_function(format!("component-private-key-jwt/{label}/memory"), |b| {
                b.to_async(&rt)
                    .iter(|| async { canned.run(&signed, store.clone()).await.unwrap() })
            });
        }
        g.bench_function("component-p3/memory", |b| {
            b.to_async(&rt)
                .iter(|| async { canned_p3.run(&job, memory.clone()).await.unwrap() })
        });
        let [p2, p3, p2_on_p3] = interleaved_tails!(
            &rt,
            20_000,
            [
                async {
                    canned.run(&job, memory.clone()).await.unwrap();
                },
                async {
                    canned_p3.run(&job, memory.clone()).await.unwrap();
                },
                async {
                    canned_p2_on_p3.run(&job, memory.clone()).await.unwrap();
                },
            ]
        );
        tails.push(("in-process component/memory (again)".into(), p2));
        tails.push(("in-process component-p3/memory".into(), p3));
        tails.push((
            "in-process component-p2-on-p3-engine/memory".into(),
            p2_on_p3,
        ));
        g.bench_function("component-on-demand/memory", |b| {
            b.to_async(&rt)
                .iter(|| async { on_demand.run(&job, memory.clone()).await.unwrap() })
        });
        let [on_demand_tails] = interleaved_tails!(
            &rt,
            20_000,
            [async {
                on_demand.run(&job, memory.clone()).await.unwrap();
            }]
        );
        tails.push((
            "in-process component-on-demand/memory".into(),
            on_demand_tails,
        ));
        g.finish();
    }

    // Loopback: the emulator, the component through the host's transport, a native client.
    let emu = rt.block_on(tokenwarden_tests::start_emulator());
    let net = Runtime::new(RuntimeOptions {
        pooling,
        ..RuntimeOptions::default()
    })
    .unwrap();
    let token_url = format!(
        "{}/{}/oauth2/v2.0/token",
        emu.authority(),
        emulator::DEMO_TENANT
    );
    let mut loop_job = canned_job();
    loop_job.token_url = Some(token_url.clone());
    net.preload(&loop_job).unwrap();
    let net_p3 = Runtime::new(RuntimeOptions {
        pooling,
        wasi: WasiVersion::P3,
        ..RuntimeOptions::default()
    })
    .unwrap();
    net_p3.preload(&loop_job).unwrap();
    let native = NativeClient {
        addr: emu.addr,
        sender: Mutex::new(None),
    };
    let via_host = HostTransportClient {
        transport: NetTransport::default(),
        allowed: Arc::new(loop_job.effective_allow_list().unwrap()),
        limits: loop_job.limits.http,
    };
    {
        let mut g = c.benchmark_group("loopback");
        g.bench_function("component/memory", |b| {
            b.to_async(&rt)
                .iter(|| async { net.run(&loop_job, memory.clone()).await.unwrap() })
        });
        g.bench_function("component-p3/memory", |b| {
            b.to_async(&rt)
                .iter(|| async { net_p3.run(&loop_job, memory.clone()).await.unwrap() })
        });
        g.bench_function("native/memory", |b| {
            b.to_async(&rt).iter(|| async {
                native_refresh(&*memory, &token_url, |http| native.post(http)).await
            })
        });
        g.bench_function("native-host-transport/memory", |b| {
            b.to_async(&rt).iter(|| async {
                native_refresh(&*memory, &token_url, |http| via_host.post(http)).await
            })
        });
        g.finish();
        let [component, component_p3, native_tails, via_host_tails] = interleaved_tails!(
            &rt,
            5_000,
            [
                async {
                    net.run(&loop_job, memory.clone()).await.unwrap();
                },
                async {
                    net_p3.run(&loop_job, memory.clone()).await.unwrap();
                },
                native_refresh(&*memory, &token_url, |http| native.post(http)),
                native_refresh(&*memory, &token_url, |http| via_host.post(http)),
            ]
        );
        tails.push(("loopback component/memory".into(), component));
        tails.push(("loopback component-p3/memory".into(), component_p3));
        tails.push(("loopback native/memory".into(), native_tails));
        tails.push((
            "loopback native-host-transport/memory".into(),
            via_host_tails,
        ));
    }

    c.final_summary();
    println!("\nsingle-iteration latency (µs)");
    println!("{:<44} {:>10} {:>10}", "benchmark", "p50", "p99");
    for (name, (p50, p99)) in &tails {
        println!("{name:<44} {p50:>10.1} {p99:>10.1}");
    }
}
