//! Per-run limits: what one run of a plugin may use, whatever the plugin asks.
//!
//! `[limits]` in the config sets the defaults for every job; `[jobs.limits]` overrides them
//! key by key for one job. Sizes are written like `"64 MiB"` (or a number of bytes),
//! durations like `"10s"`.

use crate::egress::HttpLimits;
use serde::Deserialize;
use std::time::Duration;
use toml::Spanned;

/// Limits applied to one run. `Default` gives the documented defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunLimits {
    /// Linear memory a plugin may grow to, in bytes (`max_memory`, 64 MiB).
    pub max_memory: usize,
    /// Table elements a plugin may have (`max_table_elements`, 20,000).
    pub max_table_elements: usize,
    /// HTTP timeouts and response size caps (`connect_timeout` 10s, `first_byte_timeout` 30s,
    /// `between_bytes_timeout` 30s, `max_response_body` 1 MiB, `max_response_headers` 100,
    /// `max_response_header_bytes` 64 KiB).
    pub http: HttpLimits,
    /// Host-side resources (requests, streams, header fields, ...) a plugin may hold at once
    /// (`max_resources`, 1,000).
    pub max_resources: usize,
    /// Bytes of each of stdout and stderr kept for the log per run; the rest is dropped
    /// (`max_output_bytes`, 16 KiB).
    pub max_output_bytes: usize,
}

impl Default for RunLimits {
    fn default() -> Self {
        Self {
            max_memory: 64 << 20,
            max_table_elements: 20_000,
            http: HttpLimits::default(),
            max_resources: 1_000,
            max_output_bytes: 16 * 1024,
        }
    }
}

/// A size: bytes as a number, or text such as `"64 MiB"`.
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum RawSize {
    Bytes(i64),
    Text(String),
}

/// `[limits]` or `[jobs.limits]` as written; every key optional.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    max_memory: Option<Spanned<RawSize>>,
    max_table_elements: Option<Spanned<i64>>,
    connect_timeout: Option<Spanned<String>>,
    first_byte_timeout: Option<Spanned<String>>,
    between_bytes_timeout: Option<Spanned<String>>,
    max_response_body: Option<Spanned<RawSize>>,
    max_response_headers: Option<Spanned<i64>>,
    max_response_header_bytes: Option<Spanned<RawSize>>,
    max_resources: Option<Spanned<i64>>,
    max_output_bytes: Option<Spanned<RawSize>>,
}

/// A rejected limit: the byte offset of the value and what is wrong with it.
pub(crate) type LimitError = (std::ops::Range<usize>, String);

fn size(v: &Spanned<RawSize>, key: &str) -> Result<usize, LimitError> {
    let bytes = match v.get_ref() {
        RawSize::Bytes(n) => u64::try_from(*n).ok(),
        RawSize::Text(t) => t.trim().parse::<bytesize::ByteSize>().ok().map(|b| b.0),
    };
    bytes
        .and_then(|b| usize::try_from(b).ok())
        .filter(|&b| b > 0)
        .ok_or_else(|| {
            (
                v.span(),
                format!("`{key}` must be a positive size such as 1048576 or \"1 MiB\""),
            )
        })
}

fn count(v: &Spanned<i64>, key: &str) -> Result<usize, LimitError> {
    usize::try_from(*v.get_ref())
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| (v.span(), format!("`{key}` must be at least 1")))
}

fn duration(v: &Spanned<String>, key: &str) -> Result<Duration, LimitError> {
    humantime::parse_duration(v.get_ref())
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            (
                v.span(),
                format!(
                    "`{key}` = `{}` must be a duration above zero, such as \"10s\"",
                    v.get_ref()
                ),
            )
        })
}

impl RawLimits {
    /// `base` with every key given here replacing its value.
    pub(crate) fn apply(&self, base: RunLimits) -> Result<RunLimits, LimitError> {
        let mut l = base;
        if let Some(v) = &self.max_memory {
            l.max_memory = size(v, "max_memory")?;
        }
        if let Some(v) = &self.max_table_elements {
            l.max_table_elements = count(v, "max_table_elements")?;
        }
        if let Some(v) = &self.connect_timeout {
            l.http.connect_timeout = duration(v, "connect_timeout")?;
        }
        if let Some(v) = &self.first_byte_timeout {
            l.http.first_byte_timeout = duration(v, "first_byte_timeout")?;
        }
        if let Some(v) = &self.between_bytes_timeout {
            l.http.between_bytes_timeout = duration(v, "between_bytes_timeout")?;
        }
        if let Some(v) = &self.max_response_body {
            l.http.max_response_body = size(v, "max_response_body")? as u64;
        }
        if let Some(v) = &self.max_response_headers {
            l.http.max_response_headers = count(v, "max_response_headers")?;
        }
        if let Some(v) = &self.max_response_header_bytes {
            l.http.max_response_header_bytes = size(v, "max_response_header_bytes")?;
        }
        if let Some(v) = &self.max_resources {
            l.max_resources = count(v, "max_resources")?;
        }
        if let Some(v) = &self.max_output_bytes {
            l.max_output_bytes = size(v, "max_output_bytes")?;
        }
        Ok(l)
    }
}
