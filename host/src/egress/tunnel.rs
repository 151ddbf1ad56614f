//! Reaching origins through an outbound HTTP proxy, as corporate networks require: the
//! connection to `host:port` is a `CONNECT` tunnel (RFC 9110 §9.3.6) through the proxy,
//! and TLS to the origin runs inside it, so the proxy sees the origin's name and nothing
//! else (not the client secret, not the token).
//!
//! The allow-list has already admitted the origin. The proxy resolves the name; the host
//! still resolves it too where it can, and refuses a name that resolves only to
//! non-public addresses its origin does not name (as without a proxy). A name the host
//! cannot resolve (corporate DNS often resolves only internal names) is left to the proxy.
//! Proxy credentials are a store secret (`user:password`, sent as `Basic`), read when a
//! tunnel opens, so rotating them needs no restart and they are never in the config, the
//! environment or a log.

use crate::egress::Origin;
use crate::store::SecretStore;
use base64::Engine as _;
use secrecy::ExposeSecret;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wasmtime_wasi_http::Error;

/// The longest proxy reply head to a `CONNECT` read before giving up on it.
const MAX_REPLY_HEAD: usize = 8 * 1024;

/// Hosts reached directly, not through the proxy (curl's `NO_PROXY` rules): `*` is every
/// host; `example.com` is that host and its subdomains (so is `.example.com`); an IP
/// address is that address. A `:port` suffix is ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NoProxy(Vec<String>);

impl NoProxy {
    /// From entries as written (a list, or the comma-separated `NO_PROXY`).
    pub fn new<'a>(entries: impl IntoIterator<Item = &'a str>) -> Self {
        Self(
            entries
                .into_iter()
                .map(|e| {
                    let e = e.trim().to_ascii_lowercase();
                    let e = match e.strip_prefix('[') {
                        // `[::1]:443` or `[::1]`
                        Some(rest) => rest.split(']').next().unwrap_or("").to_string(),
                        None if e.matches(':').count() == 1 => {
                            e.split(':').next().unwrap_or("").to_string()
                        }
                        None => e,
                    };
                    e.trim_start_matches('.').to_string()
                })
                .filter(|e| !e.is_empty())
                .collect(),
        )
    }

    /// Whether `host` (lower case, no brackets) is reached directly.
    pub fn bypasses(&self, host: &str) -> bool {
        self.0.iter().any(|e| {
            e == "*"
                || host == e
                || (host.len() > e.len()
                    && host.ends_with(e.as_str())
                    && host.as_bytes()[host.len() - e.len() - 1] == b'.')
        })
    }
}

/// `[egress]`: the outbound proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressProxy {
    /// The proxy: `http://host:port` (the tunnel itself is plain TCP to it).
    pub proxy: Origin,
    /// Hosts reached without it.
    pub no_proxy: NoProxy,
    /// Store name of `user:password` for `Proxy-Authorization: Basic`.
    pub credentials: Option<String>,
}

impl EgressProxy {
    /// The proxy from `HTTPS_PROXY` (or `https_proxy`) and `NO_PROXY` (or `no_proxy`);
    /// `Ok(None)` when none is set.
    pub fn from_env() -> Result<Option<Self>, String> {
        let var = |upper: &str| {
            std::env::var(upper)
                .or_else(|_| std::env::var(upper.to_ascii_lowercase()))
                .ok()
                .filter(|v| !v.trim().is_empty())
        };
        let Some(url) = var("HTTPS_PROXY") else {
            return Ok(None);
        };
        let no_proxy = var("NO_PROXY").unwrap_or_default();
        Ok(Some(Self {
            proxy: Self::parse_url(&url).map_err(|e| format!("$HTTPS_PROXY: {e}"))?,
            no_proxy: NoProxy::new(no_proxy.split(',')),
            credentials: None,
        }))
    }

    /// A proxy URL: `http://host:port` (a bare `host:port` is taken as http), without
    /// credentials (those belong in the store).
    pub fn parse_url(text: &str) -> Result<Origin, String> {
        let text = text.trim();
        let full = if text.contains("://") {
            text.to_string()
        } else {
            format!("http://{text}")
        };
        let url = url::Url::parse(&full).map_err(|e| format!("`{text}` is not a URL: {e}"))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(
                "holds credentials; store them as a secret (`user:password`) and name it in `[egress] proxy_credentials`"
                    .into(),
            );
        }
        if url.scheme() != "http" {
            return Err(format!(
                "`{text}`: only an http:// proxy is supported (TLS runs inside the tunnel)"
            ));
        }
        if url.path() != "/" || url.query().is_some() {
            return Err(format!("`{text}`: give http://host:port without a path"));
        }
        Origin::of_url(&full)
    }

    /// Whether a request to `host` goes through the proxy. A link-local address never
    /// does: through a proxy, the metadata address would hand out the proxy machine's
    /// managed identity, not ours. (Loopback is proxied unless `no_proxy` lists it, as curl
    /// does.)
    pub fn applies(&self, host: &str) -> bool {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let link_local = match bare.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(v4)) => v4.is_link_local(),
            Ok(std::net::IpAddr::V6(v6)) => v6.is_unicast_link_local(),
            Err(_) => false,
        };
        !link_local && !self.no_proxy.bypasses(host)
    }
}

/// An [`EgressProxy`] with the store its credentials are read from.
pub(crate) struct Tunnels {
    pub(crate) config: EgressProxy,
    pub(crate) store: Option<Arc<dyn SecretStore>>,
}

impl std::fmt::Debug for Tunnels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnels")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A failure at the proxy, as a connect error whose words say so (the run's error and the
/// proxy's `502` show them).
fn failed(words: String) -> Error {
    Error::Connect(std::io::Error::other(words))
}

impl Tunnels {
    /// `Proxy-Authorization` for the tunnel, when credentials are configured.
    async fn authorization(&self) -> Result<Option<String>, Error> {
        let (Some(name), Some(store)) = (&self.config.credentials, &self.store) else {
            return Ok(None);
        };
        let secret = store
            .get(name)
            .await
            .map_err(|e| failed(format!("egress proxy credentials: {e}")))?
            .ok_or_else(|| {
                failed(format!(
                    "egress proxy credentials: the secret `{name}` is not set"
                ))
            })?;
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(secret.value.expose_secret());
        Ok(Some(format!("Basic {encoded}")))
    }

    /// A TCP stream to `host:port` through the proxy, the tunnel open.
    pub(crate) async fn open(
        &self,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<TcpStream, Error> {
        let proxy = &self.config.proxy;
        let at = format!("egress proxy {}:{}", proxy.host, proxy.port);
        let auth = self.authorization().await?;
        let mut tcp = match tokio::time::timeout(
            timeout,
            TcpStream::connect((proxy.host.as_str(), proxy.port)),
        )
        .await
        {
            Err(_) => return Err(failed(format!("{at} did not answer in time"))),
            Ok(Err(e)) => return Err(failed(format!("{at}: {e}"))),
            Ok(Ok(tcp)) => tcp,
        };
        let _ = tcp.set_nodelay(true);
        let target = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let mut head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some(a) = auth {
            head.push_str(&format!("Proxy-Authorization: {a}\r\n"));
        }
        head.push_str("\r\n");
        let exchange = async {
            tcp.write_all(head.as_bytes()).await?;
            read_head(&mut tcp).await
        };
        let reply = match tokio::time::timeout(timeout, exchange).await {
            Err(_) => return Err(failed(format!("{at} did not open the tunnel in time"))),
            Ok(Err(e)) => return Err(failed(format!("{at}: {e}"))),
            Ok(Ok(reply)) => reply,
        };
        // "HTTP/1.1 200 Connection established"
        let status_line = reply.lines().next().unwrap_or("");
        let status = status_line.split_whitespace().nth(1).unwrap_or("");
        if !status.starts_with('2') || status.len() != 3 {
            let words = match status {
                // 407 asks for credentials; some proxies (tinyproxy) answer wrong ones with 401.
                "407" | "401" => format!(
                    "asks for credentials or refused them (HTTP {status}); check `[egress] proxy_credentials`"
                ),
                "" => "did not answer the CONNECT as HTTP".to_string(),
                s => format!(
                    "refused the tunnel to {target}: HTTP {s} {}",
                    crate::text::clean(status_line.splitn(3, ' ').nth(2).unwrap_or(""), 80)
                ),
            };
            return Err(failed(format!("{at} {words}")));
        }
        Ok(tcp)
    }
}

/// Reads a reply head (to the blank line), byte by byte so nothing of the tunnel's own
/// traffic is consumed.
async fn read_head(tcp: &mut TcpStream) -> std::io::Result<String> {
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_REPLY_HEAD {
            return Err(std::io::Error::other("its reply head is over 8 KiB"));
        }
        if tcp.read(&mut byte).await? == 0 {
            return Err(std::io::Error::other("it closed the connection"));
        }
        head.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_proxy_follows_curl() {
        let n = NoProxy::new([
            "example.com",
            ".corp.example",
            "10.1.2.3",
            "[::1]:443",
            "localhost:8080",
            " ",
        ]);
        for direct in [
            "example.com",
            "a.example.com",
            "x.corp.example",
            "corp.example",
            "10.1.2.3",
            "::1",
            "localhost",
        ] {
            assert!(n.bypasses(direct), "{direct}");
        }
        for proxied in [
            "badexample.com",
            "example.com.evil",
            "10.1.2.30",
            "login.microsoftonline.com",
        ] {
            assert!(!n.bypasses(proxied), "{proxied}");
        }
        assert!(NoProxy::new(["*"]).bypasses("anything.example"));
        assert!(!NoProxy::default().bypasses("localhost"));
    }

    #[test]
    fn the_metadata_address_is_never_proxied() {
        let p = EgressProxy {
            proxy: EgressProxy::parse_url("proxy.corp:3128").unwrap(),
            no_proxy: NoProxy::default(),
            credentials: None,
        };
        for direct in ["169.254.169.254", "169.254.0.1", "fe80::1", "[fe80::a:b]"] {
            assert!(!p.applies(direct), "{direct}");
        }
        for proxied in [
            "login.microsoftonline.com",
            "10.0.0.1",
            "169.255.0.1",
            "fec0::1",
            "127.0.0.1",
        ] {
            assert!(p.applies(proxied), "{proxied}");
        }
    }

    #[test]
    fn proxy_urls_are_plain_http_without_credentials() {
        assert_eq!(
            EgressProxy::parse_url("proxy.corp:3128")
                .unwrap()
                .to_string(),
            "http://proxy.corp:3128"
        );
        assert_eq!(
            EgressProxy::parse_url("http://10.0.0.1:8080/")
                .unwrap()
                .port,
            8080
        );
        for bad in [
            "http://u:p@proxy:3128",
            "https://proxy:3128",
            "socks5://proxy:1080",
            "http://proxy:3128/path",
            "http://",
        ] {
            assert!(EgressProxy::parse_url(bad).is_err(), "{bad}");
        }
    }
}
