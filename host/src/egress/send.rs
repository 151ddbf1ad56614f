//! The host's HTTP sender for plugins: the part of the egress policy that runs at connect
//! time.
//!
//! The host name is resolved here and every address is vetted before a connection is made:
//! a name that resolves to a loopback, private, link-local or otherwise non-public address is
//! refused unless that address's own origin is on the allow-list. The connection goes to the
//! vetted address itself, so DNS cannot change between check and connect (through an
//! outbound proxy the proxy resolves the name; see `tunnel.rs`). Timeouts, the
//! response header count and size, and the response body size are bounded by the host,
//! whatever the guest asks. Redirects are never followed: the reply goes back as it came.
//!
//! Connections are kept alive and reused for the next request to the same origin under the
//! same policy (allow-list and header limits), so a daemon refreshing many jobs against one
//! identity provider pays for TCP and TLS set-up once, not once per run. A connection goes
//! back to the pool only after its response body was read to the end.

use super::tunnel::{EgressProxy, Tunnels};
use super::{ClientIdentity, HttpLimits, Origin, SendFuture, Sent, Transport};
use crate::store::SecretStore;
use bytes::Bytes;
use http_body::{Body, Frame};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

/// Whether `ip` is an ordinary public unicast address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
                || (a == 192 && b == 0 && v4.octets()[2] == 0) // IETF protocol assignments
                || (a == 198 && (b == 18 || b == 19)) // benchmarking
                || a >= 240) // reserved
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let embedded = |hi: u16, lo: u16| {
                let [a, b] = hi.to_be_bytes();
                let [c, d] = lo.to_be_bytes();
                IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d))
            };
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            // Addresses that carry an IPv4 address reach it (through a translator or a
            // tunnel): the embedded address decides, as if it had been given directly.
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4] {
                return is_public(embedded(s[6], s[7])); // NAT64, 64:ff9b::/96
            }
            if s[0] == 0x2002 {
                return is_public(embedded(s[1], s[2])); // 6to4, 2002::/16
            }
            !(s[..6] == [0; 6] // ::/96: unspecified, loopback, IPv4-compatible ::a.b.c.d
                || v6.is_multicast()
                || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1) // local-use NAT64, 64:ff9b:1::/48
                || (s[0] == 0x2001 && s[1] == 0) // Teredo, 2001::/32
                || (s[0] == 0x0100 && s[1..4] == [0; 3]) // discard-only, 100::/64
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
                || (s[0] == 0x2001 && s[1] == 0x0db8)) // documentation
        }
    }
}

/// Resolves `host` and keeps the addresses the policy lets this request reach.
async fn vetted_addresses(
    scheme: &str,
    host: &str,
    port: u16,
    allowed: &[Origin],
    timeout: Duration,
) -> Result<Vec<SocketAddr>, Error> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        // An IP literal only gets here when its own origin is allowed.
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let resolved: Vec<SocketAddr> =
        match tokio::time::timeout(timeout, tokio::net::lookup_host((host, port))).await {
            Err(_) => return Err(Error::DnsTimeout),
            Ok(Err(e)) => {
                return Err(Error::DnsError {
                    rcode: Some(e.to_string()),
                    info_code: None,
                });
            }
            Ok(Ok(addrs)) => addrs.collect(),
        };
    if resolved.is_empty() {
        return Err(Error::DestinationNotFound);
    }
    let allowed_literal = |ip: IpAddr| {
        allowed
            .iter()
            .any(|o| !o.wildcard && o.matches(scheme, &ip.to_string(), port))
    };
    let kept: Vec<SocketAddr> = resolved
        .iter()
        .copied()
        .filter(|a| is_public(a.ip()) || allowed_literal(a.ip()))
        .collect();
    if kept.is_empty() {
        tracing::warn!(
            %host,
            addresses = ?resolved,
            "egress denied: the name resolves only to non-public addresses whose origins are not allowed"
        );
        return Err(Error::DestinationIpProhibited);
    }
    Ok(kept)
}

pub(crate) fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.into(),
            };
            Arc::new(
                rustls::ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            )
        })
        .clone()
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// A TCP connection to the first of `addrs` that answers.
async fn tcp_connect(addrs: &[SocketAddr], timeout: Duration) -> Result<TcpStream, Error> {
    let mut last = Error::ConnectionRefused;
    for addr in addrs {
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Err(_) => last = Error::ConnectionTimeout,
            Ok(Err(e)) => last = Error::Connect(e),
            Ok(Ok(tcp)) => {
                let _ = tcp.set_nodelay(true);
                return Ok(tcp);
            }
        }
    }
    Err(last)
}

/// A name about to be reached through the proxy: refused when it resolves here only to
/// non-public addresses its origin does not name; left to the proxy when it does not
/// resolve here at all.
async fn vet_for_tunnel(
    scheme: &str,
    host: &str,
    port: u16,
    allowed: &[Origin],
    timeout: Duration,
) -> Result<(), Error> {
    match vetted_addresses(
        scheme,
        host,
        port,
        allowed,
        timeout.min(Duration::from_secs(2)),
    )
    .await
    {
        Err(e @ Error::DestinationIpProhibited) => Err(e),
        _ => Ok(()),
    }
}

/// A connection to `host:port` (through the proxy unless `NO_PROXY` says otherwise), with
/// TLS for https, presenting `identity` when the job authenticates with a certificate.
async fn connect(
    link: &Link,
    scheme: &str,
    host: &str,
    port: u16,
    allowed: &[Origin],
    timeout: Duration,
    identity: Option<&ClientIdentity>,
) -> Result<Box<dyn Stream>, Error> {
    let tcp = match link.tunnels.as_ref().filter(|t| t.config.applies(host)) {
        Some(tunnels) => {
            vet_for_tunnel(scheme, host, port, allowed, timeout).await?;
            tunnels.open(host, port, timeout).await?
        }
        None => {
            let addrs = vetted_addresses(scheme, host, port, allowed, timeout).await?;
            tcp_connect(&addrs, timeout).await?
        }
    };
    if scheme != "https" {
        return Ok(Box::new(tcp));
    }
    let name = rustls::pki_types::ServerName::try_from(host.to_string())?;
    let config = match identity {
        Some(id) => id.tls_config(&link.tls),
        None => link.tls.clone(),
    };
    let tls = tokio_rustls::TlsConnector::from(config);
    match tokio::time::timeout(timeout, tls.connect(name, tcp)).await {
        Err(_) => Err(Error::ConnectionTimeout),
        Ok(Err(e)) => Err(Error::Tls(e)),
        Ok(Ok(stream)) => Ok(Box::new(stream)),
    }
}

/// The response body, bounded in size and in time between frames. Read to its end, it gives
/// its connection back to the pool.
struct GuardedBody {
    incoming: hyper::body::Incoming,
    idle: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    remaining: u64,
    limit: u64,
    release: Option<Release>,
}

/// A connection waiting for its response body to end before it can be reused.
struct Release {
    pool: Arc<Pool>,
    key: PoolKey,
    sender: Sender,
}

impl GuardedBody {
    fn release_if_done(&mut self) {
        if self.incoming.is_end_stream()
            && let Some(r) = self.release.take()
        {
            r.pool.put(r.key, r.sender);
        }
    }
}

impl Drop for GuardedBody {
    fn drop(&mut self) {
        // A body dropped half-read leaves its connection unusable: it is closed with `sender`.
        self.release_if_done();
    }
}

impl Body for GuardedBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.incoming).poll_frame(cx) {
            Poll::Ready(None) => {
                this.release_if_done();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Error::from(e)))),
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > this.remaining {
                        return Poll::Ready(Some(Err(Error::HttpResponseBodySize(Some(
                            this.limit,
                        )))));
                    }
                    this.remaining -= len;
                }
                let deadline = tokio::time::Instant::now() + this.idle;
                this.timer.as_mut().reset(deadline);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                ready!(this.timer.as_mut().poll(cx));
                Poll::Ready(Some(Err(Error::ConnectionReadTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }
}

type Sender = hyper::client::conn::http1::SendRequest<WasiBody>;

/// Connections are shared only between requests to the same origin under the same policy
/// and client identity: a connection vetted under one allow-list must not serve a job with
/// a stricter one, and one authenticated by a job's certificate must serve that identity
/// alone.
#[derive(Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    https: bool,
    host: String,
    port: u16,
    policy: u64,
    identity: Option<[u8; 32]>,
}

impl PoolKey {
    fn new(
        https: bool,
        host: &str,
        port: u16,
        allowed: &[Origin],
        limits: &HttpLimits,
        identity: Option<&ClientIdentity>,
    ) -> Self {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        allowed.hash(&mut h);
        limits.max_response_headers.hash(&mut h);
        limits.max_response_header_bytes.hash(&mut h);
        Self {
            https,
            host: host.to_string(),
            port,
            policy: h.finish(),
            identity: identity.map(ClientIdentity::fingerprint),
        }
    }
}

/// Idle keep-alive connections.
struct Pool {
    idle: Mutex<HashMap<PoolKey, Vec<(Sender, Instant)>>>,
    max_idle_per_key: usize,
    idle_timeout: Duration,
}

impl Pool {
    fn pop(&self, key: &PoolKey) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(key)?;
        while let Some((sender, since)) = list.pop() {
            if since.elapsed() < self.idle_timeout && !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    /// An idle connection ready for a request, if there is one.
    async fn take(&self, key: &PoolKey) -> Option<Sender> {
        while let Some(mut sender) = self.pop(key) {
            // Just released, its connection task may not have caught up yet.
            let ready = sender.is_ready()
                || tokio::time::timeout(Duration::from_millis(20), sender.ready())
                    .await
                    .is_ok_and(|r| r.is_ok());
            if ready {
                return Some(sender);
            }
        }
        None
    }

    fn put(&self, key: PoolKey, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(key).or_default();
        list.retain(|(s, since)| !s.is_closed() && since.elapsed() < self.idle_timeout);
        if list.len() < self.max_idle_per_key {
            list.push((sender, Instant::now()));
        }
    }
}

/// The default [`Transport`]: vetted connections, host limits, keep-alive.
pub struct NetTransport {
    link: Link,
}

/// How connections are made: the pool they return to, the roots TLS trusts, the proxy they
/// go through.
#[derive(Clone)]
struct Link {
    pool: Arc<Pool>,
    tls: Arc<rustls::ClientConfig>,
    tunnels: Option<Arc<Tunnels>>,
}

impl Default for NetTransport {
    fn default() -> Self {
        Self::new(8, Duration::from_secs(30))
    }
}

impl NetTransport {
    /// Keeps up to `max_idle_per_origin` idle connections per origin and policy, each for at
    /// most `idle_timeout` (below the usual server-side keep-alive timeouts).
    pub fn new(max_idle_per_origin: usize, idle_timeout: Duration) -> Self {
        Self {
            link: Link {
                pool: Arc::new(Pool {
                    idle: Mutex::default(),
                    max_idle_per_key: max_idle_per_origin,
                    idle_timeout,
                }),
                tls: tls_config(),
                tunnels: None,
            },
        }
    }

    /// This transport trusting what `tls` trusts (see [`super::Trust::client_config`])
    /// instead of the built-in web PKI roots.
    pub fn with_tls(mut self, tls: Arc<rustls::ClientConfig>) -> Self {
        self.link.tls = tls;
        self
    }

    /// This transport reaching origins through `proxy` (those its `no_proxy` does not
    /// name), with its credentials read from `store`.
    pub fn with_proxy(mut self, proxy: EgressProxy, store: Option<Arc<dyn SecretStore>>) -> Self {
        self.link.tunnels = Some(Arc::new(Tunnels {
            config: proxy,
            store,
        }));
        self
    }
}

impl Transport for NetTransport {
    fn send(
        &self,
        request: http::Request<WasiBody>,
        options: RequestOptions,
        allowed: Arc<Vec<Origin>>,
        limits: HttpLimits,
    ) -> SendFuture {
        Box::pin(send(request, options, allowed, limits, self.link.clone()))
    }
}

/// Sends an allowed request under the host's limits.
async fn send(
    mut request: http::Request<WasiBody>,
    options: RequestOptions,
    allowed: Arc<Vec<Origin>>,
    limits: HttpLimits,
    link: Link,
) -> Result<Sent, Error> {
    let uri = request.uri().clone();
    let https = uri.scheme_str() == Some("https");
    let scheme = if https { "https" } else { "http" };
    let host = uri
        .host()
        .ok_or(Error::HttpRequestUriInvalid)?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let connect_timeout = options.connect_timeout.unwrap_or(limits.connect_timeout);
    let first_byte = options
        .first_byte_timeout
        .unwrap_or(limits.first_byte_timeout);
    let idle = options
        .between_bytes_timeout
        .unwrap_or(limits.between_bytes_timeout);

    let identity = request.extensions_mut().remove::<ClientIdentity>();
    let key = PoolKey::new(https, &host, port, &allowed, &limits, identity.as_ref());
    let pool = link.pool.clone();
    let mut sender = match pool.take(&key).await {
        Some(sender) => sender,
        None => {
            let stream = connect(
                &link,
                scheme,
                &host,
                port,
                &allowed,
                connect_timeout,
                identity.as_ref(),
            )
            .await?;
            let (sender, conn) = hyper::client::conn::http1::Builder::new()
                .max_headers(limits.max_response_headers)
                .max_buf_size(limits.max_response_header_bytes.max(8192))
                .handshake::<_, WasiBody>(TokioIo::new(stream))
                .await?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "token endpoint connection ended with an error");
                }
            });
            sender
        }
    };

    // Origin-form on the wire; the Host header carries the authority.
    *request.uri_mut() = http::Uri::builder()
        .path_and_query(uri.path_and_query().map_or("/", |p| p.as_str()))
        .build()
        .map_err(|_| Error::HttpRequestUriInvalid)?;

    let response = tokio::time::timeout(first_byte, sender.send_request(request))
        .await
        .map_err(|_| Error::ConnectionReadTimeout)??;
    let release = Some(Release { pool, key, sender });
    let declared = response
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_response_body) {
        return Err(Error::HttpResponseBodySize(declared));
    }
    let header_bytes: usize = response
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if header_bytes > limits.max_response_header_bytes {
        return Err(Error::HttpResponseHeaderSectionSize(
            u32::try_from(header_bytes).ok(),
        ));
    }
    let response = response.map(|incoming| {
        use http_body_util::BodyExt;
        GuardedBody {
            incoming,
            idle: idle.max(Duration::from_millis(1)),
            timer: Box::pin(tokio::time::sleep(idle)),
            remaining: limits.max_response_body,
            limit: limits.max_response_body,
            release,
        }
        .boxed_unsync()
    });
    Ok((response, Box::new(async { Ok(()) })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_and_non_public_addresses() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "2001:db8::1",
            "64:ff9b::7f00:1",
            "64:ff9b::a00:1",
            "64:ff9b:1::1",
            "2002:7f00:1::1",
            "2002:c0a8:101::1",
            "::127.0.0.1",
            "::8.8.8.8",
            "fec0::1",
            "2001::1",
            "100::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "20.190.160.1",
            "8.8.8.8",
            "2603:1006::1",
            "::ffff:20.190.160.1",
            "64:ff9b::1414:a001",
            "2002:1414:a001::1",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn names_resolving_to_loopback_need_the_literal_origin() {
        let allowed = vec![Origin::parse("http://localhost:8080").unwrap()];
        let err = vetted_addresses("http", "localhost", 8080, &allowed, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::DestinationIpProhibited), "{err:?}");
        let allowed = vec![
            Origin::parse("http://localhost:8080").unwrap(),
            Origin::parse("http://127.0.0.1:8080").unwrap(),
        ];
        let ok = vetted_addresses("http", "localhost", 8080, &allowed, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(ok.iter().all(|a| a.ip().is_loopback()), "{ok:?}");
    }
}
