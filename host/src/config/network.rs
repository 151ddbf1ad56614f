//! How the host reaches the network: `[tls]` (what HTTPS connections trust) and `[egress]`
//! (the outbound proxy). Checked when the file loads (the CA file read and parsed, the
//! system store found, the proxy URL parsed), so a mistake fails `config check`, not the
//! first refresh.

use super::parse::{ConfigError, Ctx};
use super::raw::{RawEgress, RawTls};
use crate::egress::{EgressProxy, NoProxy, Roots, Trust};
use std::path::Path;

/// Whether `host` is a loopback name or address: plain http to it never leaves the machine
/// (token endpoints and proxy upstreams alike).
pub(super) fn is_loopback_host(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether `host` is a link-local address (169.254.0.0/16, fe80::/10, IPv6 brackets
/// allowed): where cloud metadata services listen.
pub(super) fn is_link_local_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(v4)) => v4.is_link_local(),
        Ok(std::net::IpAddr::V6(v6)) => {
            v6.is_unicast_link_local() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_link_local())
        }
        Err(_) => false,
    }
}

/// `[egress]`: `None` when no proxy applies (no table, or `proxy = "env"` with no
/// `HTTPS_PROXY` set).
pub(super) fn egress(cx: &Ctx<'_>, raw: &RawEgress) -> Result<Option<EgressProxy>, ConfigError> {
    let Some(proxy) = &raw.proxy else {
        let span = raw
            .no_proxy
            .as_ref()
            .map(|n| n.span())
            .or_else(|| raw.proxy_credentials.as_ref().map(|c| c.span()))
            .unwrap_or(0..0);
        return Err(cx.invalid(
            span,
            "`[egress]` needs `proxy`: \"http://host:port\", or \"env\" for $HTTPS_PROXY and $NO_PROXY".into(),
        ));
    };
    let bad = |why: String| cx.invalid(proxy.span(), format!("`egress.proxy`: {why}"));
    let mut config = if proxy.get_ref() == "env" {
        match EgressProxy::from_env().map_err(bad)? {
            Some(p) => p,
            None => return Ok(None),
        }
    } else {
        EgressProxy {
            proxy: EgressProxy::parse_url(proxy.get_ref()).map_err(bad)?,
            no_proxy: NoProxy::default(),
            credentials: None,
        }
    };
    if let Some(list) = &raw.no_proxy {
        config.no_proxy = NoProxy::new(list.get_ref().iter().map(String::as_str));
    }
    if let Some(name) = &raw.proxy_credentials {
        crate::store::check_name(name.get_ref())
            .map_err(|e| cx.invalid(name.span(), format!("`egress.proxy_credentials`: {e}")))?;
        config.credentials = Some(name.get_ref().clone());
    }
    Ok(Some(config))
}

/// `[tls]`.
pub(super) fn tls(cx: &Ctx<'_>, raw: &RawTls, base: &Path) -> Result<Trust, ConfigError> {
    let roots = match &raw.roots {
        Some(r) => Roots::parse(r.get_ref()).ok_or_else(|| {
            cx.invalid(
                r.span(),
                format!(
                    "`tls.roots` = {} is not one of {}",
                    crate::text::quoted(r.get_ref()),
                    Roots::NAMES.join(", ")
                ),
            )
        })?,
        None => Roots::default(),
    };
    let trust = Trust {
        roots,
        ca_file: raw.ca_file.as_ref().map(|f| base.join(f.get_ref())),
    };
    let span = raw
        .ca_file
        .as_ref()
        .map(|f| f.span())
        .or_else(|| raw.roots.as_ref().map(|r| r.span()))
        .unwrap_or(0..0);
    trust
        .client_config()
        .map_err(|e| cx.invalid(span, format!("`[tls]`: {e}")))?;
    Ok(trust)
}
