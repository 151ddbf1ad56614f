//! What the bearer-injecting proxy did with each job's token, for `/jobs` and the metrics:
//! requests by the upstream's status class, refusals, failures, and the requests sent
//! again with a newer token. Never the token.

use super::Inner;
use serde::Serialize;

/// How one proxied request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyResult {
    /// The upstream answered with this status.
    Upstream(u16),
    /// The caller is not a consumer of the route.
    Refused,
    /// No route takes the path (no job to count it for).
    NoRoute,
    /// The request could not be forwarded as it was.
    BadRequest,
    /// No unexpired token to add (or the store was down).
    NoToken,
    /// The upstream could not be reached or failed mid-exchange.
    UpstreamFailed,
}

impl ProxyResult {
    /// The `result` label of `tokenwarden_proxy_requests_total`; an upstream status by its
    /// class (hyper admits 100 to 999: anything from 600 up counts as a server error).
    fn label(self) -> &'static str {
        match self {
            Self::Upstream(s) => match s {
                ..=199 => "1xx",
                200..=299 => "2xx",
                300..=399 => "3xx",
                400..=499 => "4xx",
                _ => "5xx",
            },
            Self::Refused => "refused",
            Self::NoRoute => "no_route",
            Self::BadRequest => "bad_request",
            Self::NoToken => "no_token",
            Self::UpstreamFailed => "upstream_failed",
        }
    }
}

/// Every label of `tokenwarden_proxy_requests_total`.
pub(super) const PROXY_RESULTS: [&str; 10] = [
    "1xx",
    "2xx",
    "3xx",
    "4xx",
    "5xx",
    "refused",
    "no_route",
    "bad_request",
    "no_token",
    "upstream_failed",
];

/// Every label of `tokenwarden_proxy_refresh_retries_total`.
pub(super) const RETRY_RESULTS: [&str; 4] = ["refreshed", "newer_token", "throttled", "failed"];

/// A job's proxy traffic in this daemon; in `/jobs` once a request used its route.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ProxyStatus {
    /// Requests that reached the upstream, by its status class.
    pub upstream_2xx: u64,
    /// Redirects (never followed: the consumer gets them).
    pub upstream_3xx: u64,
    /// Client errors.
    pub upstream_4xx: u64,
    /// Server errors.
    pub upstream_5xx: u64,
    /// Callers refused (not a consumer, or no consumer secret).
    pub refused: u64,
    /// Requests not forwarded: malformed, no token, or the upstream unreachable.
    pub failed: u64,
    /// Unix seconds of the last request.
    pub last_request_at: Option<u64>,
}

impl super::Daemon {
    /// The store revision of `job`'s token as this daemon knows it; `None` when it has none
    /// (or no such job). Cheap: no store read.
    pub fn token_revision(&self, job: &str) -> Option<u64> {
        let &i = self.0.by_name.get(job)?;
        let st = self.0.job(i).state();
        st.token.is_some().then_some(st.token_revision)
    }

    /// Counts a proxied request of `job` (none when no route took it).
    pub(crate) fn count_proxy(&self, job: Option<&str>, result: ProxyResult) {
        self.0.metrics.proxy(result.label());
        if let Some(&i) = job.and_then(|j| self.0.by_name.get(j)) {
            self.0.count_proxy(i, result);
        }
    }

    /// Counts what a rejected token led to: `refreshed`, `newer_token`, `throttled` or
    /// `failed`.
    pub(crate) fn count_proxy_retry(&self, result: &'static str) {
        self.0.metrics.proxy_retry(result);
    }
}

impl Inner {
    fn count_proxy(&self, i: usize, result: ProxyResult) {
        let mut st = self.job(i).state();
        let status = st.proxy.get_or_insert_with(ProxyStatus::default);
        // The same classes as the metric's labels.
        match result.label() {
            "2xx" => status.upstream_2xx += 1,
            "3xx" => status.upstream_3xx += 1,
            "4xx" => status.upstream_4xx += 1,
            "5xx" => status.upstream_5xx += 1,
            "refused" => status.refused += 1,
            "1xx" | "no_route" => {}
            _ => status.failed += 1,
        }
        status.last_request_at = Some(crate::time::unix_now());
    }
}
