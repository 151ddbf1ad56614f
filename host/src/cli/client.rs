//! A minimal HTTP/1.1 client (hyper) for the admin API, the emulator, the token socket and
//! the proxy: the demo, `tokenwarden token`/`exec` and the tests use it; scripts would use
//! curl.

use http_body_util::BodyExt;
use std::net::SocketAddr;

/// A reply: status and body text.
#[derive(Clone, Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Body as text.
    pub body: String,
}

impl Reply {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Sends `method path` to `addr`, with a bearer token when given.
pub async fn request(
    addr: SocketAddr,
    method: http::Method,
    path: &str,
    bearer: Option<&str>,
) -> anyhow::Result<Reply> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let auth = bearer.map(|b| (http::header::AUTHORIZATION, b));
    send(stream, &addr.to_string(), method, path, auth).await
}

/// `GET path` through the proxy at `addr`, presenting a route's consumer secret.
pub async fn proxy_get(
    addr: SocketAddr,
    path: &str,
    consumer_secret: &str,
) -> anyhow::Result<Reply> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let auth = Some((http::header::PROXY_AUTHORIZATION, consumer_secret));
    send(stream, &addr.to_string(), http::Method::GET, path, auth).await
}

/// `GET path` on the Unix socket at `socket` (the token socket).
pub async fn unix_get(socket: &std::path::Path, path: &str) -> anyhow::Result<Reply> {
    let stream = tokio::net::UnixStream::connect(socket).await?;
    send(stream, "localhost", http::Method::GET, path, None).await
}

async fn send(
    stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    host: &str,
    method: http::Method,
    path: &str,
    bearer: Option<(http::HeaderName, &str)>,
) -> anyhow::Result<Reply> {
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(wasmtime_wasi_http::io::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, host);
    if let Some((header, b)) = bearer {
        req = req.header(header, format!("Bearer {b}"));
    }
    let resp = sender
        .send_request(req.body(http_body_util::Empty::<bytes::Bytes>::new())?)
        .await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(Reply {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// `GET path`.
pub async fn get(addr: SocketAddr, path: &str, bearer: Option<&str>) -> anyhow::Result<Reply> {
    request(addr, http::Method::GET, path, bearer).await
}

/// `POST path` with an empty body.
pub async fn post(addr: SocketAddr, path: &str, bearer: Option<&str>) -> anyhow::Result<Reply> {
    request(addr, http::Method::POST, path, bearer).await
}
