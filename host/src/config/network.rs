//! `[tls]`: what the host's HTTPS connections trust. Checked when the file loads (the CA
//! file read and parsed, the system store found), so a bad path fails `config check`, not
//! the first refresh.

use super::parse::{ConfigError, Ctx};
use super::raw::RawTls;
use crate::egress::{Roots, Trust};
use std::path::Path;

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
