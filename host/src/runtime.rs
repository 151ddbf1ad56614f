//! The wasmtime runtime: one Engine and Linker, one `InstancePre` per component, and a fresh
//! Store and instance for every run.
//!
//! Isolation model: a run's Store holds only what its job grants: an empty WASI context (no
//! files, environment, arguments or sockets), wasi:http behind [`EgressPolicy`], and the
//! job's secret roles. It is bounded by a memory cap ([`wasmtime::StoreLimits`]), an epoch
//! deadline for CPU loops and a wall-clock timeout for waits. A trap ends that run only.

use crate::bindings::p3::{RefresherP3Pre, async_action};
use crate::bindings::{Refresher, RefresherPre, action};
use crate::cache::CompileCache;
use crate::egress::NetTransport;
use crate::egress::{EgressPolicy, Transport};
use crate::job::{ClientAuth, JobConfig, WasiVersion};
use crate::outcome::{OAuthError, Outcome, PluginError, RunError};
use crate::secrets::{Grants, SecretsCtx};
use crate::signing::SigningCtx;
use crate::store::{Lease, SecretStore};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokenwarden_contract::SigningAlg;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// The component built into this binary (see `build.rs`), for WASI 0.2.
pub static BUILTIN_COMPONENT: &[u8] = include_bytes!(env!("TOKENWARDEN_PLUGIN_WASM"));

/// The same component built for WASI 0.3 (`refresher-p3`).
pub static BUILTIN_COMPONENT_P3: &[u8] = include_bytes!(env!("TOKENWARDEN_PLUGIN_P3_WASM"));

/// The built-in component for `wasi`.
pub fn builtin_component(wasi: WasiVersion) -> &'static [u8] {
    match wasi {
        WasiVersion::P2 => BUILTIN_COMPONENT,
        WasiVersion::P3 => BUILTIN_COMPONENT_P3,
    }
}

/// The wasmtime version this binary was built with.
pub const WASMTIME_VERSION: &str = env!("TOKENWARDEN_WASMTIME_VERSION");

/// How often the epoch advances; deadlines are counted in these ticks.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Engine-wide settings. Per-run limits are per job: [`crate::limits::RunLimits`].
#[derive(Clone, Default)]
pub struct RuntimeOptions {
    /// How admitted plugin requests are sent; default [`NetTransport`] (vetted, bounded,
    /// keep-alive).
    pub transport: Option<Arc<dyn Transport>>,
    /// Where compiled components are kept between starts; `None` compiles every start.
    pub compile_cache: Option<CompileCache>,
    /// Pre-allocated instance slots; `None` allocates per run (on demand). The CLI and
    /// daemon use [`Pooling::for_runs`].
    pub pooling: Option<Pooling>,
    /// The WASI version of jobs that do not choose one ([`JobConfig::wasi`]). 0.3 turns on
    /// wasmtime's experimental component-model concurrency for the engine.
    pub wasi: WasiVersion,
    /// Lets jobs that choose 0.3, or components that export the 0.3 world, run while the
    /// default stays 0.2. Implied by `wasi` 0.3; off, the engine has no 0.3 support at all.
    pub allow_wasi_0_3: bool,
}

impl RuntimeOptions {
    /// Whether this engine runs WASI 0.3 components.
    pub fn wasi_0_3(&self) -> bool {
        self.allow_wasi_0_3 || self.wasi == WasiVersion::P3
    }
}

/// wasmtime's pooling allocator, sized for the runs in flight: instantiation reuses warm
/// slots instead of mapping fresh memory every run (BENCHMARKS.md has what that saves). A
/// run waits for a free slot, within its job's timeout, when all `instances` are in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pooling {
    /// Component instances alive at once.
    pub instances: u32,
    /// Largest linear memory of any job (its `max_memory`); a slot cannot grow beyond it.
    pub max_memory: usize,
    /// Largest table of any job (its `max_table_elements`).
    pub max_table_elements: usize,
}

impl Pooling {
    /// Most slots [`Pooling::for_runs`] makes: each reserves address space for its memories
    /// (gigabytes, virtual), and a run takes a slot for well under a millisecond of CPU, so
    /// more runs than this wait briefly for a slot rather than exhausting the address space.
    pub const MAX_INSTANCES: u32 = 256;

    /// Slots for `runs` runs at once (at most [`Pooling::MAX_INSTANCES`]), each able to hold
    /// the largest limits among `jobs`.
    pub fn for_runs(runs: usize, jobs: &[JobConfig]) -> Self {
        let defaults = crate::limits::RunLimits::default();
        Self {
            instances: u32::try_from(runs.clamp(1, Self::MAX_INSTANCES as usize))
                .unwrap_or(Self::MAX_INSTANCES),
            max_memory: jobs
                .iter()
                .map(|j| j.limits.max_memory)
                .max()
                .unwrap_or(defaults.max_memory),
            max_table_elements: jobs
                .iter()
                .map(|j| j.limits.max_table_elements)
                .max()
                .unwrap_or(defaults.max_table_elements),
        }
    }
}

/// Core instances, memories and tables per component instance: the plugin has a handful
/// (its module plus the adapter shims).
const PER_COMPONENT: u32 = 8;

impl std::fmt::Debug for RuntimeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeOptions")
            .field("custom_transport", &self.transport.is_some())
            .field("compile_cache", &self.compile_cache)
            .field("pooling", &self.pooling)
            .field("wasi", &self.wasi)
            .field("allow_wasi_0_3", &self.allow_wasi_0_3)
            .finish()
    }
}

/// What a run reports besides the plugin's outcome.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RunReport {
    /// The plugin's outcome.
    pub outcome: Outcome,
    /// Store name the token went to.
    pub token_secret: String,
    /// Wall-clock duration of the run.
    #[serde(with = "millis")]
    pub duration: Duration,
    /// The WASI version the component ran in.
    #[serde(serialize_with = "as_str")]
    pub wasi: WasiVersion,
    /// The store revision of the token write, so a daemon knows its own write when the
    /// change feed reports it.
    #[serde(skip)]
    pub token_revision: Option<u64>,
}

fn as_str<S: serde::Serializer>(v: &WasiVersion, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v.as_str())
}

mod millis {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u128(d.as_millis())
    }
}

/// A guest's stdout or stderr: kept up to a cap for the log, the rest dropped (not an
/// error, so a chatty plugin does not trap).
#[derive(Clone)]
struct CappedPipe {
    buf: Arc<Mutex<Vec<u8>>>,
    cap: usize,
    dropped: Arc<std::sync::atomic::AtomicUsize>,
}

impl CappedPipe {
    fn new(cap: usize) -> Self {
        Self {
            buf: Arc::default(),
            cap,
            dropped: Arc::default(),
        }
    }

    fn take(&self) -> (Vec<u8>, usize) {
        let buf = std::mem::take(&mut *self.buf.lock().unwrap_or_else(|p| p.into_inner()));
        (buf, self.dropped.load(std::sync::atomic::Ordering::Relaxed))
    }
}

impl wasmtime_wasi::cli::IsTerminal for CappedPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for CappedPipe {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl tokio::io::AsyncWrite for CappedPipe {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let mut buf = self.buf.lock().unwrap_or_else(|p| p.into_inner());
        let room = self.cap.saturating_sub(buf.len());
        let kept = room.min(data.len());
        buf.extend_from_slice(&data[..kept]);
        self.dropped
            .fetch_add(data.len() - kept, std::sync::atomic::Ordering::Relaxed);
        std::task::Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// Logs what a plugin printed, with every secret value it saw replaced.
fn log_output(job: &str, stream: &str, pipe: &CappedPipe, run: &RunState) {
    let (bytes, dropped) = pipe.take();
    if bytes.is_empty() && dropped == 0 {
        return;
    }
    let text = crate::text::clean(&run.redact(&String::from_utf8_lossy(&bytes)), usize::MAX);
    tracing::info!(job, stream, dropped_bytes = dropped, output = %text.trim_end(), "plugin output");
}

/// The per-run Store data.
struct RunState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    egress: EgressPolicy,
    secrets: SecretsCtx,
    signing: SigningCtx,
    limits: StoreLimits,
}

impl RunState {
    /// `text` without any secret value the run read or wrote, nor any signature the host
    /// made for it (with its signature, a logged assertion would be a credential).
    fn redact(&self, text: &str) -> String {
        self.signing.redact(&self.secrets.redact(text))
    }
}

impl WasiView for RunState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for RunState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.egress,
        }
    }
}

/// Runs token-refresh components. Cheap to share (`Arc`); compile work happens once per
/// component.
pub struct Runtime {
    engine: Engine,
    linker: Linker<RunState>,
    options: RuntimeOptions,
    transport: Arc<dyn Transport>,
    /// The built-in component, per WASI version.
    builtin: [OnceLock<Pre>; 2],
    custom: Mutex<HashMap<PathBuf, Pre>>,
    /// Free pool slots, when pooling: a run waits here instead of failing to instantiate.
    slots: Option<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// A component ready to instantiate, by the world it exports.
#[derive(Clone)]
enum Pre {
    P2(RefresherPre<RunState>),
    P3(RefresherP3Pre<RunState>),
}

fn component_err(context: &str) -> impl Fn(wasmtime::Error) -> RunError + '_ {
    move |e| RunError::Component(format!("{context}: {e:#}"))
}

impl Runtime {
    /// Builds the engine and linker and starts the epoch ticker.
    pub fn new(options: RuntimeOptions) -> Result<Self, RunError> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        // Component-model concurrency (what WASI 0.3 runs on) only when asked for: it is
        // experimental in wasmtime 48, and off, a 0.2 run takes the same path as without it.
        let p3 = options.wasi_0_3();
        config.wasm_component_model_async(p3);
        config.concurrency_support(p3);
        let mut slots = None;
        if let Some(p) = options.pooling {
            let mut pool = wasmtime::PoolingAllocationConfig::default();
            let n = p.instances.max(1);
            slots = Some(tokio::sync::Semaphore::new(n as usize));
            pool.total_component_instances(n)
                .total_core_instances(n * PER_COMPONENT)
                .total_memories(n * PER_COMPONENT)
                .total_tables(n * PER_COMPONENT)
                // A concurrent (0.3) store may take a second fiber when its first is busy.
                .total_stacks(if p3 { 2 * n } else { n })
                .max_core_instances_per_component(PER_COMPONENT)
                .max_memories_per_component(PER_COMPONENT)
                .max_tables_per_component(PER_COMPONENT)
                .max_memory_size(p.max_memory)
                .table_elements(p.max_table_elements);
            // With PAGEMAP_SCAN (Linux 6.7+) a freed slot is reset by rewriting only the
            // pages its run touched, which stay mapped, so the next run takes no page
            // faults. Without it, wasmtime's fallback (a memset of a fixed prefix) costs
            // more than it saves, so the whole slot is reset by madvise. BENCHMARKS.md has
            // the figures.
            if wasmtime::PoolingAllocationConfig::is_pagemap_scan_available() {
                pool.pagemap_scan(wasmtime::Enabled::Yes)
                    .linear_memory_keep_resident(1 << 20)
                    .table_keep_resident(256 << 10);
            }
            config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        }
        let engine = Engine::new(&config).map_err(component_err("engine"))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(component_err("linker"))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(component_err("linker"))?;
        if p3 {
            // Only the clocks, randomness and HTTP of 0.3: the component imports nothing
            // else of it.
            wasmtime_wasi::p3::clocks::add_to_linker(&mut linker)
                .map_err(component_err("linker"))?;
            wasmtime_wasi::p3::random::add_to_linker(&mut linker)
                .map_err(component_err("linker"))?;
            wasmtime_wasi_http::p3::add_to_linker(&mut linker).map_err(component_err("linker"))?;
        }
        crate::secrets::add_to_linker(&mut linker, |s: &mut RunState| &mut s.secrets)
            .map_err(component_err("linker"))?;
        crate::signing::add_to_linker(&mut linker, |s: &mut RunState| &mut s.signing)
            .map_err(component_err("linker"))?;
        // The ticker holds only a weak handle, so it ends with the last Runtime.
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("tokenwarden-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|e| RunError::Component(format!("epoch thread: {e}")))?;
        Ok(Self {
            engine,
            linker,
            slots,
            transport: options
                .transport
                .clone()
                .unwrap_or_else(|| Arc::new(NetTransport::default())),
            options,
            builtin: [OnceLock::new(), OnceLock::new()],
            custom: Mutex::new(HashMap::new()),
        })
    }

    fn prepare(&self, bytes: &[u8], what: &str) -> Result<Pre, RunError> {
        let started = Instant::now();
        // A 0.3 component on an engine without 0.3 fails validation; say what to do.
        let p3_off = !self.options.wasi_0_3();
        let compile_err = |e: wasmtime::Error| {
            let text = format!("{e:#}");
            if p3_off && text.contains("component model async") {
                RunError::Component(format!(
                    "{what} is a WASI 0.3 component, and 0.3 is off: set `wasi = \"0.3\"` on its job ({text})"
                ))
            } else {
                RunError::Component(format!("{what}: {text}"))
            }
        };
        let (component, how) = match &self.options.compile_cache {
            Some(cache) => {
                let (c, outcome) = cache.load(&self.engine, bytes).map_err(compile_err)?;
                (c, format!("{outcome:?}").to_lowercase())
            }
            None => (
                Component::new(&self.engine, bytes).map_err(compile_err)?,
                "compiled".to_string(),
            ),
        };
        tracing::debug!(
            component = what,
            how,
            ms = started.elapsed().as_millis() as u64,
            "component ready"
        );
        let p3 = component
            .get_export_index(None, crate::bindings::p3::EXPORT)
            .is_some();
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(component_err(what))?;
        if p3 {
            RefresherP3Pre::new(pre)
                .map(Pre::P3)
                .map_err(component_err(what))
        } else {
            RefresherPre::new(pre)
                .map(Pre::P2)
                .map_err(component_err(what))
        }
    }

    fn pre_for(&self, job: &JobConfig) -> Result<Pre, RunError> {
        match job.plugin.as_deref() {
            None => {
                let wasi = job.wasi.unwrap_or(self.options.wasi);
                if wasi == WasiVersion::P3 && !self.options.wasi_0_3() {
                    return Err(RunError::Config(format!(
                        "job `{}` asks for WASI 0.3, which this runtime has off (allow_wasi_0_3)",
                        job.name
                    )));
                }
                let slot = &self.builtin[wasi as usize];
                if let Some(pre) = slot.get() {
                    return Ok(pre.clone());
                }
                let what = format!("built-in component (WASI {wasi})");
                let pre = self.prepare(builtin_component(wasi), &what)?;
                Ok(slot.get_or_init(|| pre).clone())
            }
            Some(path) => {
                let mut custom = self.custom.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(pre) = custom.get(path) {
                    return Ok(pre.clone());
                }
                let bytes = std::fs::read(path).map_err(|e| {
                    RunError::Component(format!("cannot read plugin {}: {e}", path.display()))
                })?;
                let pre = self.prepare(&bytes, &path.display().to_string())?;
                custom.insert(path.to_path_buf(), pre.clone());
                Ok(pre)
            }
        }
    }

    /// Compiles a job's component now rather than at its first run.
    pub fn preload(&self, job: &JobConfig) -> Result<(), RunError> {
        self.pre_for(job).map(drop)
    }

    /// Runs `job` once: the plugin fetches a token and stores it in `store`.
    pub async fn run(
        &self,
        job: &JobConfig,
        store: Arc<dyn SecretStore>,
    ) -> Result<RunReport, RunError> {
        self.run_with_lease(job, store, None).await
    }

    /// Runs `job` once under `lease`: the token write succeeds only while the lease is
    /// still the job's current grant (see [`crate::store::SecretStore::set_fenced`]).
    pub async fn run_with_lease(
        &self,
        job: &JobConfig,
        store: Arc<dyn SecretStore>,
        lease: Option<Lease>,
    ) -> Result<RunReport, RunError> {
        let started = Instant::now();
        tracing::debug!(job = %job.name, plugin = ?job.plugin, "run starting");
        let pre = self.pre_for(job)?;
        let allowed = job.effective_allow_list().map_err(RunError::Config)?;
        // The job's timeout covers waiting for a pool slot and the run itself.
        let deadline = tokio::time::Instant::now() + job.timeout;
        // Held until the store (and with it the pool slot) is dropped, at the end of `run`.
        let _slot = match &self.slots {
            Some(slots) => Some(
                tokio::time::timeout_at(deadline, slots.acquire())
                    .await
                    .map_err(|_| RunError::Timeout(job.timeout))?
                    .map_err(|_| RunError::Component("instance pool closed".into()))?,
            ),
            None => None,
        };
        let mut egress = EgressPolicy::new(allowed, job.limits.http, self.transport.clone());
        if job.client_auth == ClientAuth::TlsClientAuth {
            egress = with_client_identity(egress, job, store.as_ref()).await?;
        }
        let stdout = CappedPipe::new(job.limits.max_output_bytes);
        let stderr = CappedPipe::new(job.limits.max_output_bytes);
        let mut table = ResourceTable::new();
        table.set_max_capacity(job.limits.max_resources);
        let state = RunState {
            // Nothing but what the job grants: no files, environment, arguments or sockets.
            wasi: WasiCtx::builder()
                .allow_tcp(false)
                .allow_udp(false)
                .allow_ip_name_lookup(false)
                .stdout(stdout.clone())
                .stderr(stderr.clone())
                .build(),
            http: WasiHttpCtx::new(),
            table,
            egress,
            // A `tls_client_auth` job's key is for the host's handshake: the component may
            // not sign with it.
            signing: SigningCtx::new(&job.secrets, store.clone())
                .signs(job.client_auth == ClientAuth::PrivateKeyJwt),
            secrets: SecretsCtx::new(&job.secrets, store)
                .fenced_by(lease)
                .max_token_lifetime(job.limits.max_token_lifetime)
                .assertion_file(job.assertion_file.clone())
                .given_ids(job.given_ids.clone())
                .identity_header_from_env(
                    job.identity_source == Some(crate::job::IdentitySource::AppService),
                ),
            limits: StoreLimitsBuilder::new()
                .memory_size(job.limits.max_memory)
                .table_elements(job.limits.max_table_elements)
                .instances(16)
                .build(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        // WASI 0.3's streams, futures and tasks live in wasmtime's own handle table, outside
        // the ResourceTable capped above.
        store.set_max_component_handles(job.limits.max_resources);
        let ticks = (job.timeout.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64;
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();

        let request = action::Request {
            scope: job.scope.clone(),
            authority: job.authority.clone(),
            token_url: job.token_url.clone(),
            client_auth: match job.client_auth {
                ClientAuth::ClientSecretPost => action::ClientAuth::ClientSecretPost,
                ClientAuth::ClientSecretBasic => action::ClientAuth::ClientSecretBasic,
                ClientAuth::PrivateKeyJwt => action::ClientAuth::PrivateKeyJwt,
                ClientAuth::ClientAssertion => action::ClientAuth::ClientAssertion,
                ClientAuth::ManagedIdentity => action::ClientAuth::ManagedIdentity,
                ClientAuth::TlsClientAuth => action::ClientAuth::TlsClientAuth,
            },
            signing_alg: match job.signing_alg {
                SigningAlg::PS256 => action::SigningAlg::Ps256,
                SigningAlg::RS256 => action::SigningAlg::Rs256,
                SigningAlg::ES256 => action::SigningAlg::Es256,
            },
            key_id: job.key_id.clone(),
            extra_params: job
                .token_params
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        let trapped = |trap: wasmtime::Error| RunError::Trap(format!("{trap:#}"));
        let call = async {
            match &pre {
                Pre::P2(pre) => {
                    let refresher: Refresher = pre
                        .instantiate_async(&mut store)
                        .await
                        .map_err(component_err("instantiate"))?;
                    refresher
                        .tokenwarden_refresh_action()
                        .call_refresh(&mut store, &request)
                        .await
                        .map_err(trapped)
                }
                Pre::P3(pre) => {
                    let refresher = pre
                        .instantiate_async(&mut store)
                        .await
                        .map_err(component_err("instantiate"))?;
                    let request = async_action::Request::from(&request);
                    let result = store
                        .run_concurrent(async |a| {
                            refresher
                                .tokenwarden_refresh_async_action()
                                .call_refresh(a, request)
                                .await
                        })
                        .await
                        .and_then(|r| r)
                        .map_err(trapped)?;
                    Ok(result.map(Into::into).map_err(Into::into))
                }
            }
        };
        let result = tokio::time::timeout_at(deadline, call).await;
        let data = store.data();
        log_output(&job.name, "stdout", &stdout, data);
        log_output(&job.name, "stderr", &stderr, data);
        for origin in &data.egress.denied {
            // The URL came from the plugin: scrub it like its output.
            tracing::warn!(job = %job.name, origin = %data.redact(origin), "egress denied: origin not in the job's allow-list");
        }
        // Every text below came from the plugin (and often from the token endpoint before
        // it): none may carry a secret the run touched, a terminal escape, or megabytes.
        let scrub = |t: String| crate::text::clean(&data.redact(&t), crate::text::MAX_FOREIGN_TEXT);
        let result = match result {
            Ok(r) => r?,
            Err(_) => return Err(RunError::Timeout(job.timeout)),
        };
        match result {
            Ok(o) => Ok(RunReport {
                outcome: Outcome {
                    token_type: scrub(o.token_type),
                    // The same bound the token's stored expiry got (see `grants`).
                    expires_in: o
                        .expires_in
                        .map(|s| s.min(job.limits.max_token_lifetime.as_secs())),
                    expires_at: o.expires_at.map(|at| {
                        at.min(
                            crate::time::unix_now()
                                .saturating_add(job.limits.max_token_lifetime.as_secs())
                                .min(crate::time::MAX_UNIX_SECS),
                        )
                    }),
                    ext_expires_in: o.ext_expires_in,
                    refresh_in: o.refresh_in,
                    scope: o.scope.map(scrub),
                },
                token_secret: job.secrets.access_token.clone(),
                duration: started.elapsed(),
                token_revision: data.secrets.written(),
                wasi: match pre {
                    Pre::P2(_) => WasiVersion::P2,
                    Pre::P3(_) => WasiVersion::P3,
                },
            }),
            Err(e) => {
                let e = match (from_wit(e, data.secrets.grants()), &data.egress.failure) {
                    // The plugin saw only an error code; the host saw the cause.
                    (PluginError::Transport(t), Some(cause)) => {
                        PluginError::Transport(format!("{t}: {cause}"))
                    }
                    (e, _) => e,
                };
                Err(RunError::Plugin(e.map_text(scrub)))
            }
        }
    }
}

/// `egress` presenting the job's TLS client identity (`tls_client_auth`) to its token
/// endpoint, read from the store for this run. No request is made without it: a missing or
/// unusable key needs a person, a store outage a retry.
async fn with_client_identity(
    egress: EgressPolicy,
    job: &JobConfig,
    store: &dyn SecretStore,
) -> Result<EgressPolicy, RunError> {
    use crate::egress::{ClientIdentity, IdentityError, Origin};
    let url = job
        .token_url
        .as_deref()
        .ok_or_else(|| RunError::Config("`tls_client_auth` needs `token_url`".into()))?;
    let origin = Origin::of_url(url).map_err(RunError::Config)?;
    if origin.scheme != "https" {
        // `config check` says so too; this is for jobs built in code.
        return Err(RunError::Config(format!(
            "`tls_client_auth` needs an https `token_url`, not {origin}"
        )));
    }
    match ClientIdentity::load(&job.secrets, store).await {
        Ok(identity) => {
            tracing::debug!(job = %job.name, certificate = identity.subject(), "presenting a client certificate to the token endpoint");
            Ok(egress.with_client_identity(origin, identity))
        }
        Err(IdentityError::Store(e)) => Err(RunError::Store(e)),
        Err(e) => Err(RunError::Config(e.to_string())),
    }
}

/// The plugin's error as the host reports it; `grants` turns a role into the store name
/// the user knows. The one conversion from the WIT type (the component has the other).
fn from_wit(e: action::Error, grants: &Grants) -> PluginError {
    use action::Error as W;
    match e {
        W::MissingSecret(role) => PluginError::MissingSecret {
            name: grants.store_name(&role).map(str::to_string),
            role,
        },
        W::AccessDenied(s) => PluginError::AccessDenied(s),
        W::SecretStore(s) => PluginError::SecretStore(s),
        W::EgressDenied(s) => PluginError::EgressDenied(s),
        W::Transport(s) => PluginError::Transport(s),
        W::Throttled(s) => PluginError::Throttled(s),
        W::ServerError(s) => PluginError::ServerError(s),
        W::Rejected(o) => PluginError::Rejected(Box::new(OAuthError {
            status: o.status,
            error: o.error,
            description: o.description,
            error_codes: o.error_codes,
            trace_id: o.trace_id,
            correlation_id: o.correlation_id,
        })),
        W::InvalidResponse(s) => PluginError::InvalidResponse(s),
        W::BadRequest(s) => PluginError::BadRequest(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_component_keeps_its_size_budget() {
        // 150 KB: what an embedder downloads and compiles per world. The build's size
        // profile, a hand-written base64 and plain loops in `tokenwarden-contract` keep it
        // there (BENCHMARKS.md).
        assert!(
            BUILTIN_COMPONENT.len() <= 150_000,
            "the component is {} bytes",
            BUILTIN_COMPONENT.len()
        );
        // The WASI 0.3 build is over that budget: wit-bindgen's async runtime adds about
        // 46 KB (BENCHMARKS.md has where it goes and what would close it). This bound keeps
        // it from growing unnoticed.
        assert!(
            BUILTIN_COMPONENT_P3.len() <= 200_000,
            "the WASI 0.3 component is {} bytes",
            BUILTIN_COMPONENT_P3.len()
        );
    }

    #[test]
    fn pool_for_many_runs_is_capped_and_the_engine_still_builds() {
        let pool = Pooling::for_runs(1_000_000, &[]);
        assert_eq!(pool.instances, Pooling::MAX_INSTANCES);
        assert_eq!(Pooling::for_runs(0, &[]).instances, 1);
        assert_eq!(
            pool.max_memory,
            crate::limits::RunLimits::default().max_memory
        );
        // Every slot reserves address space: an uncapped pool this size would not fit.
        Runtime::new(RuntimeOptions {
            pooling: Some(pool),
            ..RuntimeOptions::default()
        })
        .expect("a capped pool fits the address space");
    }
}
