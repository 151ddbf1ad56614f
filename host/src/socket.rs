//! The token socket: a Unix socket served by the daemon where a local consumer gets a job's
//! token without the store or its key, as a cloud metadata endpoint hands out credentials.
//!
//! `GET /tokens/{job}` answers the token, its type, expiry and store revision, as JSON, to a
//! caller the kernel vouches for: the peer credentials of the connection (`SO_PEERCRED`)
//! must match the job's `consumers` (uids and primary gids; the daemon's own user is always
//! admitted, since it can read the store anyway). Any other caller, and any caller asking
//! for a job that does not exist, gets the same `403`, so the socket does not tell strangers
//! which jobs exist. `?after=REVISION` waits (up to `wait` seconds, default 60, at most 300)
//! for a token newer than the one the caller has: `tokenwarden exec` watches a token so.
//! There is no stored token to give, or only an expired one: `503`.

use crate::admin::AdminLimits;
use crate::daemon::Daemon;
use crate::listen::Peer;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use secrecy::ExposeSecret;
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;

/// Default mode of the socket file: anyone may connect; the peer credentials decide.
pub const DEFAULT_MODE: u32 = 0o666;
/// Default long-poll wait of `?after=`.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(60);
/// The longest a caller may wait.
pub const MAX_WAIT: Duration = Duration::from_secs(300);

/// The socket's limits: long polls hold a connection each (one per `tokenwarden exec`), so it
/// serves more at once than the admin port (still at most a quarter of the process's
/// descriptors), and a connection may outlive the longest wait.
pub const LIMITS: AdminLimits = AdminLimits {
    max_connections: 1024,
    header_timeout: Duration::from_secs(10),
    max_connection_age: Duration::from_secs(600),
};

/// `[socket]`: where the daemon serves tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketConfig {
    /// The socket file.
    pub path: PathBuf,
    /// Its permission bits.
    pub mode: u32,
    /// Its group, when set (to let only one group connect at all, with mode `0660`).
    pub group: Option<u32>,
}

/// Who may have a job's token from the socket (`[jobs.consumers]`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Consumers {
    /// User ids admitted.
    pub uids: Vec<u32>,
    /// Primary group ids admitted.
    pub gids: Vec<u32>,
}

impl Consumers {
    /// Whether `peer` may have the token: the daemon's own user, or a listed uid or gid.
    pub fn admits(&self, peer: &Peer) -> bool {
        peer.uid == rustix::process::geteuid().as_raw()
            || self.uids.contains(&peer.uid)
            || self.gids.contains(&peer.gid)
    }
}

/// Why the socket will not open.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Another process serves the socket.
    #[error("{0} is in use by a running process (another daemon?)")]
    InUse(PathBuf),
    /// The path holds something that is not a socket.
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    /// Binding failed.
    #[error("cannot serve a socket at {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Binds the socket: a stale socket file (nobody listening) is replaced; a live one is not.
pub fn bind(config: &SocketConfig) -> Result<tokio::net::UnixListener, SocketError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let path = &config.path;
    let io = |source| SocketError::Io {
        path: path.clone(),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(SocketError::NotASocket(path.clone()));
        }
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(SocketError::InUse(path.clone())),
            Err(_) => std::fs::remove_file(path).map_err(io)?,
        }
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(io)?;
    if config.group.is_some() {
        std::os::unix::fs::chown(path, None, config.group).map_err(io)?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(config.mode)).map_err(io)?;
    Ok(listener)
}

/// Serves the token socket within [`LIMITS`] until `shutdown` resolves, then removes the
/// file.
pub async fn serve(
    listener: tokio::net::UnixListener,
    daemon: Daemon,
    shutdown: impl std::future::Future<Output = ()>,
) {
    crate::listen::serve_unix(listener, router(daemon), LIMITS, "token socket", shutdown).await;
}

/// The socket's routes.
pub fn router(daemon: Daemon) -> Router {
    Router::new()
        .route("/tokens/{job}", get(token))
        .with_state(daemon)
}

#[derive(serde::Deserialize)]
struct Wait {
    after: Option<u64>,
    wait: Option<u64>,
}

fn answer(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(body),
    )
        .into_response()
}

async fn token(
    State(daemon): State<Daemon>,
    peer: Option<axum::Extension<Peer>>,
    Path(job): Path<String>,
    query: Result<Query<Wait>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let admitted = peer.is_some_and(|axum::Extension(p)| {
        daemon
            .job_config(&job)
            .is_some_and(|c| c.consumers.admits(&p))
    });
    if !admitted {
        daemon.count_socket("refused");
        if let Some(axum::Extension(p)) = peer {
            tracing::warn!(uid = p.uid, gid = p.gid, pid = ?p.pid, job = %crate::text::clean(&job, 128), "token socket: refused a caller");
        }
        // The connection is closed after the refusal: a stranger does not keep it.
        let mut refusal = answer(
            StatusCode::FORBIDDEN,
            json!({"error": "forbidden", "message": "this caller may not have this job's token"}),
        );
        refusal.headers_mut().insert(
            header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
        return refusal;
    }
    let Ok(Query(wait)) = query else {
        daemon.count_socket("bad");
        return answer(
            StatusCode::BAD_REQUEST,
            json!({"error": "bad_request", "message": "query: after=<revision>, wait=<seconds>"}),
        );
    };
    let current = match wait.after {
        Some(after) => {
            let wait = wait
                .wait
                .map_or(DEFAULT_WAIT, Duration::from_secs)
                .min(MAX_WAIT);
            daemon.token_after(&job, after, wait).await
        }
        None => daemon.token(&job).await,
    };
    let now = crate::time::unix_now();
    match current {
        Ok(Some(t)) if t.unexpired_at(now) => {
            daemon.count_socket("served");
            answer(
                StatusCode::OK,
                json!({
                    "job": job,
                    "access_token": t.value.expose_secret(),
                    "token_type": t.token_type,
                    "expires_at": t.expires_at,
                    "expires_in": t.expires_at.map(|e| e.saturating_sub(now)),
                    "revision": t.revision,
                }),
            )
        }
        Ok(_) => {
            daemon.count_socket("unavailable");
            answer(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "no_token", "message": "the job has no unexpired token yet; see the daemon's log"}),
            )
        }
        Err(e) => {
            daemon.count_socket("unavailable");
            tracing::warn!(error = %e, "token socket: cannot read the store");
            answer(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "store_unavailable", "message": "the secret store is unavailable"}),
            )
        }
    }
}
