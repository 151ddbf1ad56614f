//! The proxy's side of the file: `[proxy]`, its `[[proxy.routes]]`, and each job's
//! `upstreams` (the origins its token may be sent to). Everything a route needs is checked
//! when the file loads: its job exists, its upstream is one the job allows, a TCP listener
//! is on loopback and every route it serves has a consumer secret.

use super::parse::{ConfigError, Ctx};
use super::raw::RawProxy;
use crate::egress::Origin;
use crate::job::JobConfig;
use crate::proxy::{ProxyConfig, ProxyLimits, Route, Upstream};
use std::ops::Range;
use std::path::Path;
use std::time::Duration;
use toml::Spanned;

/// A job's `upstreams`: as written, else the origin of each `https://` resource in its
/// scope (`https://graph.microsoft.com/.default` allows `https://graph.microsoft.com`).
pub(super) fn upstreams(
    cx: &Ctx<'_>,
    raw: Option<&Vec<Spanned<String>>>,
    scope: &str,
    allow_insecure_http: bool,
    job: &str,
) -> Result<Vec<Origin>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(scope
            .split_whitespace()
            .filter(|s| s.starts_with("https://"))
            .filter_map(|s| Origin::of_url(s).ok())
            .fold(Vec::new(), |mut all, o| {
                if !all.contains(&o) {
                    all.push(o);
                }
                all
            }));
    };
    raw.iter()
        .map(|u| {
            let origin = Origin::parse(u.get_ref())
                .map_err(|e| cx.invalid(u.span(), format!("job `{job}`: `upstreams`: {e}")))?;
            if origin.scheme == "http" && !super::network::is_loopback_host(&origin.host) && !allow_insecure_http
            {
                return Err(cx.invalid(
                    u.span(),
                    format!(
                        "job `{job}`: `upstreams`: {origin} is plain http: the token would cross the network unencrypted. Use https, or set `allow_insecure_http = true` for this job if the network is trusted"
                    ),
                ));
            }
            Ok(origin)
        })
        .collect()
}

/// A route's prefix: starts with `/`, whole segments, no dot segments, no query; the
/// trailing `/` dropped (except for `/` itself).
fn prefix(cx: &Ctx<'_>, v: &Spanned<String>, key: &str) -> Result<String, ConfigError> {
    let text = v.get_ref();
    // One trailing `/` may be written; what is left must be a clean path of plain
    // characters (a request path is matched as sent, so `%`-escapes and non-ASCII would
    // never match) that does not end in `/` (`//` is not the root).
    let trimmed = text.strip_suffix('/').unwrap_or(text);
    let plain = |c: char| c.is_ascii_alphanumeric() || "-._~!$&'()+,=:@/".contains(c);
    let ok = text.starts_with('/')
        && text.len() <= 1024
        && trimmed.chars().all(plain)
        && !trimmed.ends_with('/')
        && crate::proxy::clean_path(trimmed);
    if !ok {
        return Err(cx.invalid(
            v.span(),
            format!(
                "`{key}` = {} must be a path such as \"/graph\": starting with `/`, of letters, digits and -._~!$&'()+,=:@, without `.`/`..` segments or `//`",
                crate::text::quoted(text)
            ),
        ));
    }
    Ok(if trimmed.is_empty() {
        "/".into()
    } else {
        trimmed.into()
    })
}

/// `[proxy]`, checked against the jobs; returns it with the store names its routes read.
pub(super) fn proxy(
    cx: &Ctx<'_>,
    raw: &RawProxy,
    span: Range<usize>,
    base: &Path,
    jobs: &[JobConfig],
) -> Result<ProxyConfig, ConfigError> {
    let listen = match &raw.listen {
        Some(l) => {
            let addr: std::net::SocketAddr = l.get_ref().parse().map_err(|_| {
                cx.invalid(
                    l.span(),
                    format!(
                        "`proxy.listen` = `{}` is not an address like 127.0.0.1:8422",
                        l.get_ref()
                    ),
                )
            })?;
            if !addr.ip().is_loopback() {
                return Err(cx.invalid(
                    l.span(),
                    format!(
                        "`proxy.listen` = `{addr}`: the proxy takes plain HTTP and adds a token; listen on loopback (127.0.0.1 or [::1]) only"
                    ),
                ));
            }
            Some(addr)
        }
        None => None,
    };
    let socket = raw
        .socket
        .as_ref()
        .map(|s| super::consumers::socket(cx, s, base, "proxy.socket"))
        .transpose()?;
    if listen.is_none() && socket.is_none() {
        return Err(cx.invalid(
            span.clone(),
            "`[proxy]` needs `listen` (loopback TCP) or `[proxy.socket]` (a Unix socket)".into(),
        ));
    }
    let mut limits = ProxyLimits::default();
    if let Some(v) = &raw.max_request_body {
        limits.max_request_body = cx.size(v, "proxy.max_request_body", 0..=1 << 40)?;
    }
    if let Some(v) = &raw.max_response_body {
        limits.max_response_body = cx.size(v, "proxy.max_response_body", 1024..=1 << 40)?;
    }
    if let Some(v) = &raw.timeout {
        limits.timeout = cx.duration(
            v,
            "proxy.timeout",
            Duration::from_secs(1)..=Duration::from_secs(600),
        )?;
    }
    if let Some(v) = &raw.max_connections {
        limits.max_connections = cx.count(v, "proxy.max_connections", 1..=65_536)?;
    }
    if raw.routes.is_empty() {
        return Err(cx.invalid(
            span,
            "`[proxy]` has no `[[proxy.routes]]`: give each a `prefix`, an `upstream` and a `job`"
                .into(),
        ));
    }
    let mut routes: Vec<Route> = Vec::with_capacity(raw.routes.len());
    for (k, r) in raw.routes.iter().enumerate() {
        let key = format!("proxy.routes[{k}]");
        let r = r.get_ref();
        let prefix = prefix(cx, &r.prefix, &format!("{key}.prefix"))?;
        if let Some(other) = routes.iter().position(|o| o.prefix == prefix) {
            return Err(cx.invalid(
                r.prefix.span(),
                format!("`{key}.prefix` = `{prefix}` is also the prefix of proxy.routes[{other}]"),
            ));
        }
        let job_name = r.job.get_ref();
        let Some(job) = jobs.iter().find(|j| &j.name == job_name) else {
            return Err(cx.invalid(
                r.job.span(),
                format!("`{key}.job` = `{job_name}`: no job has that name"),
            ));
        };
        let upstream = Upstream::parse(r.upstream.get_ref())
            .map_err(|e| cx.invalid(r.upstream.span(), format!("`{key}.upstream`: {e}")))?;
        let o = &upstream.origin;
        if !job
            .upstreams
            .iter()
            .any(|a| a.matches(&o.scheme, &o.host, o.port))
        {
            let allowed: Vec<String> = job.upstreams.iter().map(ToString::to_string).collect();
            return Err(cx.invalid(
                r.upstream.span(),
                format!(
                    "`{key}.upstream`: job `{job_name}` may not send its token to {o}; its `upstreams` allow [{}] (by default, the https origins in its scope)",
                    allowed.join(", ")
                ),
            ));
        }
        let consumer_secret = match &r.consumer_secret {
            Some(n) => {
                crate::store::check_name(n.get_ref())
                    .map_err(|e| cx.invalid(n.span(), format!("`{key}.consumer_secret`: {e}")))?;
                Some(n.get_ref().clone())
            }
            None if listen.is_some() => {
                return Err(cx.invalid(
                    r.prefix.span(),
                    format!(
                        "`{key}` needs a `consumer_secret` (a store secret name): on TCP every local user can reach the proxy, so loopback alone does not say who calls"
                    ),
                ));
            }
            None => None,
        };
        routes.push(Route {
            prefix,
            upstream,
            job: job_name.clone(),
            consumer_secret,
        });
    }
    Ok(ProxyConfig {
        listen,
        socket,
        routes,
        limits,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::path::Path;

    fn load(extra: &str) -> Result<Config, String> {
        let text = format!(
            r#"
[store]
path = "data/tw.db"

[[jobs]]
name = "graph"
scope = "https://graph.microsoft.com/.default"
[jobs.secrets]
client_id = "Client Id"
client_secret = "Client Secret"
tenant_id = "Tenant Id"
access_token = "Graph Token"

[[jobs]]
name = "local"
scope = "api://local/.default"
upstreams = ["http://127.0.0.1:9000"]
[jobs.secrets]
client_id = "Client Id"
client_secret = "Client Secret"
tenant_id = "Tenant Id"
access_token = "Local Token"
{extra}"#
        );
        Config::parse(&text, Path::new("/etc/tw/tokenwarden.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn routes_parse_with_their_defaults() {
        let c = load(
            r#"
[proxy]
listen = "127.0.0.1:8422"
[[proxy.routes]]
prefix = "/graph/"
upstream = "https://graph.microsoft.com/v1.0/"
job = "graph"
consumer_secret = "Graph Proxy Key"
[[proxy.routes]]
prefix = "/"
upstream = "http://127.0.0.1:9000"
job = "local"
consumer_secret = "Local Proxy Key"
"#,
        )
        .unwrap();
        let p = c.proxy.unwrap();
        assert_eq!(p.routes[0].prefix, "/graph");
        assert_eq!(p.routes[0].upstream.path, "/v1.0");
        assert_eq!(p.routes[1].prefix, "/");
        assert_eq!(p.routes[1].upstream.path, "");
        assert_eq!(p.limits, crate::proxy::ProxyLimits::default());
        assert_eq!(
            c.jobs[0].upstreams,
            vec![crate::egress::Origin::of_url("https://graph.microsoft.com").unwrap()]
        );
    }

    #[test]
    fn bad_proxies_are_refused_with_the_reason() {
        let route = |prefix: &str, upstream: &str, job: &str, secret: &str| {
            format!(
                "[[proxy.routes]]\nprefix = \"{prefix}\"\nupstream = \"{upstream}\"\njob = \"{job}\"\n{secret}\n"
            )
        };
        let tcp = |routes: &str| format!("[proxy]\nlisten = \"127.0.0.1:8422\"\n{routes}");
        let ok = route(
            "/g",
            "https://graph.microsoft.com",
            "graph",
            "consumer_secret = \"K\"",
        );
        for (proxy, why) in [
            (format!("[proxy]\n{ok}"), "needs `listen`"),
            (
                format!("[proxy]\nlisten = \"0.0.0.0:8422\"\n{ok}"),
                "loopback",
            ),
            (
                "[proxy]\nlisten = \"127.0.0.1:8422\"\n".to_string(),
                "no `[[proxy.routes]]`",
            ),
            (
                tcp(&route("/g", "https://graph.microsoft.com", "graph", "")),
                "needs a `consumer_secret`",
            ),
            (
                tcp(&route(
                    "/g",
                    "https://evil.example",
                    "graph",
                    "consumer_secret = \"K\"",
                )),
                "may not send its token to https://evil.example:443",
            ),
            (
                tcp(&route(
                    "/g",
                    "http://127.0.0.1:9001",
                    "local",
                    "consumer_secret = \"K\"",
                )),
                "may not send its token",
            ),
            (
                tcp(&route(
                    "/g",
                    "https://graph.microsoft.com",
                    "nope",
                    "consumer_secret = \"K\"",
                )),
                "no job has that name",
            ),
            (
                tcp(&route(
                    "/a/../g",
                    "https://graph.microsoft.com",
                    "graph",
                    "consumer_secret = \"K\"",
                )),
                "must be a path",
            ),
            (
                tcp(&route(
                    "/g",
                    "https://graph.microsoft.com/a/../b",
                    "graph",
                    "consumer_secret = \"K\"",
                )),
                "`..` segments",
            ),
            (
                tcp(&route(
                    "/g",
                    "http://127.0.0.1:9000\\\\..\\\\x",
                    "local",
                    "consumer_secret = \"K\"",
                )),
                "backslashes",
            ),
            (
                tcp(&route(
                    "/g",
                    "http://127.0.0.1:9000/a/..;/x",
                    "local",
                    "consumer_secret = \"K\"",
                )),
                "`..` segments",
            ),
            (
                tcp(&route(
                    "/g",
                    "https://graph.microsoft.com/?q=1",
                    "graph",
                    "consumer_secret = \"K\"",
                )),
                "without a query",
            ),
            (
                format!("[proxy]\nlisten = \"127.0.0.1:8422\"\n{ok}{ok}"),
                "also the prefix",
            ),
            (
                tcp(&route(
                    "/g",
                    "http://localhost:9000",
                    "local",
                    "consumer_secret = \"K\"",
                )),
                "name the loopback address itself",
            ),
            (
                tcp(&route(
                    "//",
                    "https://graph.microsoft.com",
                    "graph",
                    "consumer_secret = \"K\"",
                )),
                "must be a path",
            ),
            (
                tcp(&route(
                    "/g//",
                    "https://graph.microsoft.com",
                    "graph",
                    "consumer_secret = \"K\"",
                )),
                "must be a path",
            ),
            (
                tcp(&route(
                    "/a%41",
                    "https://graph.microsoft.com",
                    "graph",
                    "consumer_secret = \"K\"",
                )),
                "must be a path",
            ),
            (
                tcp(&route(
                    "/\u{e9}",
                    "https://graph.microsoft.com",
                    "graph",
                    "consumer_secret = \"K\"",
                )),
                "must be a path",
            ),
            (
                format!("[proxy]\nlisten = \"127.0.0.1:8422\"\ntimeout = \"0s\"\n{ok}"),
                "proxy.timeout",
            ),
            (
                format!("[proxy]\nlisten = \"127.0.0.1:8422\"\nmax_connections = 0\n{ok}"),
                "proxy.max_connections",
            ),
            (
                format!("[proxy]\nlisten = \"127.0.0.1:8422\"\nmax_response_body = \"1 B\"\n{ok}"),
                "proxy.max_response_body",
            ),
            (
                format!("[proxy]\nlisten = \"127.0.0.1:8422\"\nmax_request_body = -1\n{ok}"),
                "proxy.max_request_body",
            ),
            (
                format!(
                    "[proxy]\nlisten = \"127.0.0.1:8422\"\ntimeout = \"18446744073709551615s\"\n{ok}"
                ),
                "proxy.timeout",
            ),
            (
                format!("[proxy]\nlisten = \"127.0.0.1:8422\"\ntimeout = \"601s\"\n{ok}"),
                "proxy.timeout",
            ),
            (
                format!("[proxy]\nlisten = \"127.0.0.1:8422\"\ntimeout = \"60 parsecs\"\n{ok}"),
                "proxy.timeout",
            ),
            (
                format!(
                    "[proxy]\nlisten = \"127.0.0.1:8422\"\nmax_request_body = \"64 parsecs\"\n{ok}"
                ),
                "proxy.max_request_body",
            ),
            (
                format!(
                    "[proxy]\nlisten = \"127.0.0.1:8422\"\nmax_request_body = 1099511627777\n{ok}"
                ),
                "proxy.max_request_body",
            ),
            (
                format!(
                    "[proxy]\nlisten = \"127.0.0.1:8422\"\nmax_response_body = 18446744073709551615\n{ok}"
                ),
                "a size: a whole number of bytes below 2^63",
            ),
            (
                format!("[proxy]\nlisten = \"127.0.0.1:8422\"\nmax_connections = 65537\n{ok}"),
                "proxy.max_connections",
            ),
            (
                format!("[proxy]\nlisten = \"127.0.0.1:8422\"\nmax_connections = -1\n{ok}"),
                "proxy.max_connections",
            ),
            (
                tcp(&route(
                    "/g",
                    "https://graph.microsoft.com",
                    "graph",
                    "consumer_secret = \"Graph Token\"",
                )),
                "a token endpoint's reply must never overwrite a credential",
            ),
        ] {
            let err = load(&proxy).unwrap_err();
            assert!(err.contains(why), "{proxy}\n=> {err}");
        }
    }

    #[test]
    fn the_proxy_limits_take_their_extremes() {
        let routes = "[[proxy.routes]]\nprefix = \"/g\"\nupstream = \"https://graph.microsoft.com\"\njob = \"graph\"\nconsumer_secret = \"K\"\n";
        for (limits, want) in [
            (
                "max_request_body = 0\nmax_response_body = 1024\ntimeout = \"1s\"\nmax_connections = 1",
                crate::proxy::ProxyLimits {
                    max_request_body: 0,
                    max_response_body: 1024,
                    timeout: std::time::Duration::from_secs(1),
                    max_connections: 1,
                },
            ),
            (
                "max_request_body = \"1 TiB\"\nmax_response_body = 1099511627776\ntimeout = \"10m\"\nmax_connections = 65536",
                crate::proxy::ProxyLimits {
                    max_request_body: 1 << 40,
                    max_response_body: 1 << 40,
                    timeout: std::time::Duration::from_secs(600),
                    max_connections: 65_536,
                },
            ),
        ] {
            let c = load(&format!(
                "[proxy]\nlisten = \"127.0.0.1:8422\"\n{limits}\n{routes}"
            ))
            .unwrap();
            assert_eq!(c.proxy.unwrap().limits, want, "{limits}");
        }
    }

    #[test]
    fn plain_http_upstreams_need_loopback_or_consent() {
        let job = |upstreams: &str, insecure: bool| {
            format!(
                "[store]\npath = \"d/tw.db\"\n[[jobs]]\nname = \"x\"\nscope = \"s\"\ntoken_url = \"https://idp.example/t\"\nupstreams = [{upstreams}]\nallow_insecure_http = {insecure}\n[jobs.secrets]\nclient_id = \"I\"\nclient_secret = \"S\"\naccess_token = \"T\"\n"
            )
        };
        let parse = |t: String| Config::parse(&t, Path::new("/tmp/x.toml"));
        let err = parse(job("\"http://api.example\"", false)).unwrap_err();
        assert!(err.to_string().contains("unencrypted"), "{err}");
        assert!(parse(job("\"http://api.example\"", true)).is_ok());
        assert!(parse(job("\"http://localhost:8080\"", false)).is_ok());
        assert!(parse(job("\"https://api.example/path\"", false)).is_err());
    }
}
