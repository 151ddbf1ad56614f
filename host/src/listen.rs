//! Serving a local HTTP port that anyone who can reach it may call (the admin API on TCP,
//! the token socket on a Unix socket) without letting it starve the refreshes.
//!
//! [`serve`] accepts at most `max_connections` at once (one over the cap is closed at once
//! rather than left to queue), gives each request head `header_timeout` to arrive (which
//! also bounds an idle keep-alive connection), caps a connection's life, and backs off
//! instead of spinning when the process runs out of file descriptors. The cap is also kept
//! to a quarter of the process's descriptor limit, so runs always have descriptors. On a
//! Unix socket every request carries the caller's [`Peer`] credentials, as the kernel
//! reported them when the connection was made, and one user may hold at most
//! [`PER_USER`] of the connections, so a local user cannot shut the others out.

use crate::admin::AdminLimits;
use axum::Router;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Connections one user (by peer uid) may hold at once on a Unix socket; the daemon's own
/// user (which can read the store anyway) is not counted.
pub const PER_USER: usize = 128;

/// A connection counted against its user's share; released when dropped.
struct Share {
    users: Arc<Mutex<HashMap<u32, usize>>>,
    uid: u32,
}

impl Share {
    /// A share for `uid`, unless it holds [`PER_USER`] already; `Some(None)` for the
    /// daemon's own user.
    fn take(users: &Arc<Mutex<HashMap<u32, usize>>>, uid: u32) -> Option<Option<Self>> {
        if uid == rustix::process::geteuid().as_raw() {
            return Some(None);
        }
        let mut held = users.lock().unwrap_or_else(|p| p.into_inner());
        let n = held.entry(uid).or_default();
        if *n >= PER_USER {
            return None;
        }
        *n += 1;
        Some(Some(Self {
            users: users.clone(),
            uid,
        }))
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut held = self.users.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.uid);
            }
        }
    }
}
use tokio::io::{AsyncRead, AsyncWrite};

/// The caller on the other end of a Unix socket, as the kernel vouches for it
/// (`SO_PEERCRED`): an axum extension of every request on such a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Effective user id.
    pub uid: u32,
    /// Effective (primary) group id.
    pub gid: u32,
    /// Process id, when the kernel gave one.
    pub pid: Option<i32>,
}

/// A listener [`serve`] can take.
pub(crate) trait Listen: Send + 'static {
    /// A connection.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The next connection, with its caller's credentials where the transport has them.
    fn next(
        &self,
    ) -> impl std::future::Future<Output = std::io::Result<(Self::Stream, Option<Peer>)>> + Send;
}

impl Listen for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn next(&self) -> std::io::Result<(Self::Stream, Option<Peer>)> {
        let (s, _) = self.accept().await?;
        Ok((s, None))
    }
}

impl Listen for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn next(&self) -> std::io::Result<(Self::Stream, Option<Peer>)> {
        let (s, _) = self.accept().await?;
        let cred = s.peer_cred()?;
        let peer = Peer {
            uid: cred.uid(),
            gid: cred.gid(),
            pid: cred.pid(),
        };
        Ok((s, Some(peer)))
    }
}

/// Serves `app` on `listener` within `limits` until `shutdown` resolves; `what` names the
/// port in the log.
pub(crate) async fn serve<L: Listen>(
    listener: L,
    app: Router,
    limits: AdminLimits,
    what: &'static str,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let cap = limits
        .max_connections
        .min(crate::limits::descriptor_share(4))
        .max(1);
    if cap < limits.max_connections {
        tracing::warn!(
            configured = limits.max_connections,
            serving = cap,
            "{what}: max_connections lowered to a quarter of the process's file descriptor limit"
        );
    }
    let slots = Arc::new(tokio::sync::Semaphore::new(cap));
    let users = Arc::new(Mutex::new(HashMap::new()));
    let mut shutdown = std::pin::pin!(shutdown);
    let mut starved_since: Option<std::time::Instant> = None;
    loop {
        let accepted = tokio::select! {
            a = listener.next() => a,
            () = &mut shutdown => return,
        };
        let (stream, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors (or a connection aborted while queued): wait a moment
                // rather than spin on an accept that fails at once.
                if starved_since.is_none() {
                    tracing::warn!(error = %e, "{what}: cannot accept connections; backing off");
                    starved_since = Some(std::time::Instant::now());
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        starved_since = None;
        let share = match &peer {
            Some(p) => match Share::take(&users, p.uid) {
                Some(s) => s,
                None => {
                    // This user holds its share already: closed now.
                    drop(stream);
                    continue;
                }
            },
            None => None,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Over the cap: closed now, so it neither queues nor holds a descriptor.
            drop(stream);
            continue;
        };
        let app = match peer {
            Some(peer) => app.clone().layer(axum::Extension(peer)),
            None => app.clone(),
        };
        let service = hyper_util::service::TowerToHyperService::new(app);
        tokio::spawn(async move {
            let _slot = (slot, share);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(16 * 1024)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(limits.max_connection_age, conn).await;
        });
    }
}

/// [`serve`] on a Unix socket, removing its file once serving stops (a socket left behind
/// would only be replaced at the next start).
pub(crate) async fn serve_unix(
    listener: tokio::net::UnixListener,
    app: Router,
    limits: AdminLimits,
    what: &'static str,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let path = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(std::path::PathBuf::from));
    serve(listener, app, limits, what, shutdown).await;
    if let Some(p) = path {
        let _ = std::fs::remove_file(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_user_holds_at_most_its_share() {
        let users = Arc::new(Mutex::new(HashMap::new()));
        let stranger = rustix::process::geteuid().as_raw().wrapping_add(4242);
        let held: Vec<_> = (0..PER_USER)
            .map(|_| Share::take(&users, stranger).expect("within the share"))
            .collect();
        assert!(Share::take(&users, stranger).is_none());
        // Another user, and the daemon's own, still get in.
        assert!(Share::take(&users, stranger.wrapping_add(1)).is_some());
        assert!(matches!(
            Share::take(&users, rustix::process::geteuid().as_raw()),
            Some(None)
        ));
        drop(held);
        assert!(Share::take(&users, stranger).is_some());
        assert!(users.lock().unwrap().get(&stranger).is_none_or(|n| *n <= 1));
    }
}
