//! The daemon's admin API.
//!
//! `GET /healthz` (alive) and `GET /readyz` (every job holds an unexpired token) are open.
//! Everything else demands `Authorization: Bearer <token>` (the scheme in any case, RFC 9110),
//! the token being the value of the store secret named by `[admin] token_secret`, read on
//! every request so that rotating it needs no restart. Without `token_secret` the API is open,
//! and is then refused anywhere but loopback. Responses never contain a token or secret.
//!
//! The port is open to anyone who can reach it, so it must not be able to starve the
//! refreshes: [`serve`] keeps it within [`AdminLimits`] ([`crate::listen`]).

use crate::daemon::{Daemon, TriggerError};
use crate::store::SecretStore;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;

/// Why the admin API will not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Off loopback without a token.
    #[error(
        "refusing to serve the admin API on {0} without authentication: set [admin] token_secret, or listen on 127.0.0.1"
    )]
    Unauthenticated(SocketAddr),
}

/// Default admin API address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8420";

/// The admin API's settings (`[admin]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminConfig {
    /// Address of the admin API.
    pub listen: SocketAddr,
    /// Store name of the bearer token the API demands.
    pub token_secret: Option<String>,
    /// What the port may take of the process.
    pub limits: AdminLimits,
}

/// How much of the process the admin port may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdminLimits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Time for a request head to arrive, from the start of the wait (also the idle
    /// keep-alive timeout).
    pub header_timeout: std::time::Duration,
    /// The longest a connection lives, however busy.
    pub max_connection_age: std::time::Duration,
}

impl Default for AdminLimits {
    fn default() -> Self {
        Self {
            max_connections: 64,
            header_timeout: std::time::Duration::from_secs(10),
            max_connection_age: std::time::Duration::from_secs(300),
        }
    }
}

/// Serves `app` on `listener` within `limits` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: AdminLimits,
    shutdown: impl std::future::Future<Output = ()>,
) {
    crate::listen::serve(listener, app, limits, "admin API", shutdown).await
}

#[derive(Clone)]
struct AdminState {
    daemon: Daemon,
    store: Arc<dyn SecretStore>,
    token_secret: Option<Arc<str>>,
}

/// Checks the listen address against the auth setting.
pub fn check_exposure(listen: SocketAddr, token_secret: Option<&str>) -> Result<(), AdminError> {
    if token_secret.is_none() && !listen.ip().is_loopback() {
        return Err(AdminError::Unauthenticated(listen));
    }
    Ok(())
}

/// The admin routes.
pub fn router(daemon: Daemon, store: Arc<dyn SecretStore>, token_secret: Option<&str>) -> Router {
    let state = AdminState {
        daemon,
        store,
        token_secret: token_secret.map(Arc::from),
    };
    let protected = Router::new()
        .route("/jobs", get(jobs))
        .route("/jobs/{name}", get(job))
        .route("/jobs/{name}/refresh", post(refresh))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(protected)
        .with_state(state)
}

async fn authorize(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    let Some(name) = state.token_secret.as_deref() else {
        return next.run(request).await;
    };
    match crate::bearer::matches(
        state.store.as_ref(),
        name,
        request.headers().get(header::AUTHORIZATION),
    )
    .await
    {
        Ok(true) => next.run(request).await,
        Ok(false) => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(json!({"error": "unauthorized", "message": "a valid bearer token is required"})),
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "admin API: cannot read the admin token");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "secret store unavailable\n",
            )
                .into_response()
        }
    }
}

async fn readyz(State(state): State<AdminState>) -> Response {
    let waiting = state.daemon.not_ready();
    if waiting.is_empty() {
        (StatusCode::OK, Json(json!({"ready": true}))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "jobs_without_valid_token": waiting})),
        )
            .into_response()
    }
}

async fn jobs(State(state): State<AdminState>) -> Response {
    Json(state.daemon.statuses()).into_response()
}

fn unknown(name: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": "not_found", "message": format!("no job named `{name}`")})),
    )
        .into_response()
}

async fn job(State(state): State<AdminState>, Path(name): Path<String>) -> Response {
    match state.daemon.status(&name) {
        Some(s) => Json(s).into_response(),
        None => unknown(&name),
    }
}

async fn refresh(State(state): State<AdminState>, Path(name): Path<String>) -> Response {
    match state.daemon.trigger(&name).await {
        // 502: the run happened, the identity provider (or the plugin) failed.
        Ok(record) if !record.ok => (StatusCode::BAD_GATEWAY, Json(record)).into_response(),
        Ok(record) => Json(record).into_response(),
        Err(TriggerError::UnknownJob(_)) => unknown(&name),
        Err(e @ TriggerError::ShuttingDown) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "shutting_down", "message": e.to_string()})),
        )
            .into_response(),
        Err(e @ TriggerError::Busy { .. }) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "5")],
            Json(json!({"error": "busy", "message": e.to_string()})),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.daemon.metrics(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_loopback_needs_a_token() {
        let lan: SocketAddr = "0.0.0.0:8420".parse().unwrap();
        let lo: SocketAddr = "127.0.0.1:8420".parse().unwrap();
        let lo6: SocketAddr = "[::1]:8420".parse().unwrap();
        assert!(check_exposure(lan, None).is_err());
        assert!(check_exposure(lan, Some("Admin Token")).is_ok());
        assert!(check_exposure(lo, None).is_ok());
        assert!(check_exposure(lo6, None).is_ok());
    }
}
