//! Per-run limits: what one run of a plugin may use, whatever the plugin asks.
//!
//! `[limits]` in the config sets the defaults for every job; `[jobs.limits]` overrides them
//! key by key for one job (the config loader checks each against its range).

use crate::egress::HttpLimits;
use std::time::Duration;

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
    /// The longest lifetime a token is believed to have, whatever its reply says
    /// (`max_token_lifetime`, 1 day): a server that sends milliseconds where seconds
    /// belong must not get a token thought to last for millennia and never refreshed.
    pub max_token_lifetime: Duration,
}

impl Default for RunLimits {
    fn default() -> Self {
        Self {
            max_memory: 64 << 20,
            max_table_elements: 20_000,
            http: HttpLimits::default(),
            max_resources: 1_000,
            max_output_bytes: 16 * 1024,
            max_token_lifetime: Duration::from_secs(24 * 3600),
        }
    }
}

/// `1/part` of the process's open-file limit (the soft limit, after
/// [`raise_descriptor_limit`]), for a consumer that must leave the rest to others.
pub fn descriptor_share(part: usize) -> usize {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .map_or(usize::MAX, |n| {
            usize::try_from(n).unwrap_or(usize::MAX) / part.max(1)
        })
}

/// Raises the soft open-file limit to the hard one: a daemon with many jobs and an admin
/// port under load needs descriptors, and the soft limit (often 1024) is a default, not a
/// decision. Returns the limit now in force.
pub fn raise_descriptor_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::debug!(error = %e, "could not raise the open-file limit");
        }
    }
    getrlimit(Resource::Nofile).current
}
