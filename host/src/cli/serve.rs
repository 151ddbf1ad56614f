//! The long-running commands: `tokenwarden run` (the daemon and its admin API) and
//! `tokenwarden emulator`.

use super::{EMULATOR_SECRET_ENV, EmulatorArgs, Usage, exit, open_store, runtime_options};
use crate::admin;
use crate::config::Config;
use crate::daemon::{Coordination, Daemon};
use crate::emulator::{self, Emulator, EmulatorConfig};
use crate::runtime::Runtime;
use crate::store::Access;
use anyhow::{Context, anyhow};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

pub(super) async fn daemon(config_path: &Path) -> anyhow::Result<u8> {
    let mut config = Config::load(config_path)?;
    if config.jobs.is_empty() {
        return Err(Usage(format!(
            "{} has no [[jobs]]; nothing to run",
            config.path.display()
        ))
        .into());
    }
    let admin_cfg = config.admin.clone();
    admin::check_exposure(admin_cfg.listen, admin_cfg.token_secret.as_deref())
        .map_err(|e| Usage(e.to_string()))?;
    let descriptors = crate::limits::raise_descriptor_limit();
    tracing::debug!(?descriptors, "open-file limit");
    let store = open_store(&config, Access::ReadWrite).await?;
    let options = runtime_options(&config, &store)?;
    if let Some(egress) = &config.egress {
        tracing::info!(proxy = %egress.proxy, credentials = egress.credentials.is_some(), "outbound connections go through the egress proxy");
    }
    let transport = options.transport.clone();
    let runtime = Arc::new(Runtime::new(options)?);
    let started = std::time::Instant::now();
    for job in &config.jobs {
        runtime
            .preload(job)
            .map_err(|e| Usage(format!("job `{}`: {e}", job.name)))?;
    }
    tracing::info!(
        jobs = config.jobs.len(),
        compile_ms = started.elapsed().as_millis() as u64,
        "components ready"
    );
    if let Some(name) = &admin_cfg.token_secret
        && store.get(name).await?.is_none()
    {
        tracing::warn!(secret = %name, "the admin token secret is not set: protected admin routes answer 401 until it is (`tokenwarden secrets set '{name}'`)");
    }
    let listener = tokio::net::TcpListener::bind(admin_cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", admin_cfg.listen))?;
    let admin_addr = listener.local_addr()?;
    // Bound before the daemon starts, so a socket in use stops this process before it runs
    // anything.
    let token_socket = match &config.socket {
        Some(s) => Some((
            crate::socket::bind(s).map_err(|e| Usage(e.to_string()))?,
            s.path.clone(),
        )),
        None => None,
    };
    let proxy_listeners = match &config.proxy {
        Some(p) => Some(bind_proxy(p).await?),
        None => None,
    };
    let coord = Coordination::of(&config.store);
    let jobs = std::mem::take(&mut config.jobs);
    let daemon = Daemon::start(jobs, &config.daemon, coord, runtime, store.clone()).await?;
    let app = admin::router(
        daemon.clone(),
        store.clone(),
        admin_cfg.token_secret.as_deref(),
    );
    // One signal stops every listener: the admin API, the token socket and the proxy's.
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let server = tokio::spawn(admin::serve(
        listener,
        app,
        admin_cfg.limits,
        stopped(stopping.clone()),
    ));
    let socket_server = token_socket.map(|(listener, path)| {
        tracing::info!(socket = %path.display(), "token socket serving GET /tokens/{{job}}");
        tokio::spawn(crate::socket::serve(
            listener,
            daemon.clone(),
            stopped(stopping.clone()),
        ))
    });
    let mut proxy_servers = Vec::new();
    if let (Some(config), Some((tcp, unix))) = (&config.proxy, proxy_listeners) {
        let transport =
            transport.unwrap_or_else(|| Arc::new(crate::egress::NetTransport::default()));
        let app = crate::proxy::router(config, daemon.clone(), store.clone(), transport);
        if let Some(l) = tcp {
            tracing::info!(listen = %l.local_addr()?, routes = config.routes.len(), "proxy serving");
            proxy_servers.push(tokio::spawn(crate::proxy::serve_tcp(
                l,
                app.clone(),
                config.limits,
                stopped(stopping.clone()),
            )));
        }
        if let Some(l) = unix {
            tracing::info!(socket = ?l.local_addr()?.as_pathname(), routes = config.routes.len(), "proxy serving");
            proxy_servers.push(tokio::spawn(crate::proxy::serve_unix(
                l,
                app,
                config.limits,
                stopped(stopping.clone()),
            )));
        }
    }
    tracing::info!(admin = %admin_addr, store = %store.describe(), owner = %daemon.owner(), "tokenwarden running");
    shutdown_signal().await;
    let grace = config.daemon.shutdown_grace;
    tracing::info!(
        grace_s = grace.as_secs_f32(),
        "stopping: no new runs; waiting for runs in flight"
    );
    let _ = stop.send(true);
    let finished = daemon.shutdown(grace).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), server).await;
    if let Some(s) = socket_server {
        let _ = tokio::time::timeout(Duration::from_secs(1), s).await;
    }
    for s in proxy_servers {
        let _ = tokio::time::timeout(Duration::from_secs(1), s).await;
    }
    tracing::info!(all_runs_finished = finished, "stopped");
    Ok(exit::OK)
}

/// The proxy's listeners, bound before the daemon starts so an address in use stops this
/// process before it runs anything.
async fn bind_proxy(
    config: &crate::proxy::ProxyConfig,
) -> anyhow::Result<(
    Option<tokio::net::TcpListener>,
    Option<tokio::net::UnixListener>,
)> {
    let tcp = match config.listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (proxy.listen)"))?,
        ),
        None => None,
    };
    let unix = match &config.socket {
        Some(s) => Some(crate::socket::bind(s).map_err(|e| Usage(e.to_string()))?),
        None => None,
    };
    Ok((tcp, unix))
}

pub(super) async fn emulator(args: EmulatorArgs) -> anyhow::Result<u8> {
    let (secret, secret_from) = match std::env::var(EMULATOR_SECRET_ENV) {
        Ok(s) => (s, format!("${EMULATOR_SECRET_ENV}")),
        Err(_) => (
            emulator::DEMO_CLIENT_SECRET.to_string(),
            format!("the built-in demo secret (set ${EMULATOR_SECRET_ENV} to choose one)"),
        ),
    };
    let mut certificates = Vec::new();
    for file in &args.certificates {
        let pem = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the certificate {}", file.display()))?;
        let cert = crate::signing::keys::Certificate::from_pem(&pem)
            .with_context(|| format!("{}", file.display()))?;
        certificates.push((args.client_id.clone(), cert.der().to_vec()));
    }
    let config = EmulatorConfig {
        tenants: args.tenants,
        clients: vec![(args.client_id.clone(), secret.clone())],
        certificates,
        token_lifetime: args.lifetime,
        latency: args.latency,
        faults: args.faults,
        ..EmulatorConfig::default()
    };
    let tenant = config.tenants.first().cloned().unwrap_or_default();
    let server = Emulator::start(args.listen, config)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(
        addr = %server.addr,
        "emulator listening: POST /{{tenant}}{}, GET /v1.0/me",
        tokenwarden_contract::entra::TOKEN_PATH
    );
    // Printed for scripts that bind port 0 and need the address, then what a user needs
    // to point a job at it. The demo secret is public (it is in this binary); a secret
    // given through the environment is not printed.
    println!("listening on {}", server.addr);
    let shown = if secret == emulator::DEMO_CLIENT_SECRET {
        secret.clone()
    } else {
        "(from the environment; not printed)".into()
    };
    println!(
        "tenant {tenant}\nclient id {}\nclient secret {shown} ({secret_from})\n\n{}",
        args.client_id,
        crate::cli::setup::emulator_snippet(&server.authority(), &tenant, &args.client_id)
    );
    tokio::select! {
        _ = server.wait() => Err(anyhow!("the emulator stopped unexpectedly")),
        _ = shutdown_signal() => Ok(exit::OK),
    }
}
