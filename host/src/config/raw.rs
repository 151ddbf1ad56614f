//! The file format as written: the structs serde reads `tokenwarden.toml` into, every key
//! optional and spanned so that an error can name its line. [`super::parse`] checks them
//! and builds the capability types.

use crate::job::ClientAuth;
use crate::secrets::SecretRoles;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) wasi: Option<Spanned<String>>,
    pub(super) store: Option<RawStore>,
    pub(super) admin: Option<RawAdmin>,
    pub(super) daemon: Option<RawDaemon>,
    pub(super) limits: Option<RawLimits>,
    pub(super) socket: Option<RawSocket>,
    pub(super) proxy: Option<Spanned<RawProxy>>,
    pub(super) tls: Option<RawTls>,
    pub(super) egress: Option<RawEgress>,
    #[serde(default)]
    pub(super) jobs: Vec<Spanned<RawJob>>,
}

/// `[egress]`: the outbound proxy.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEgress {
    pub(super) proxy: Option<Spanned<String>>,
    pub(super) no_proxy: Option<Spanned<Vec<String>>>,
    pub(super) proxy_credentials: Option<Spanned<String>>,
}

/// `[tls]`: what HTTPS connections trust.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) roots: Option<Spanned<String>>,
    pub(super) ca_file: Option<Spanned<PathBuf>>,
}

/// `[proxy]`: the bearer-injecting proxy.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProxy {
    pub(super) listen: Option<Spanned<String>>,
    pub(super) socket: Option<RawSocket>,
    pub(super) max_request_body: Option<Spanned<RawSize>>,
    pub(super) max_response_body: Option<Spanned<RawSize>>,
    pub(super) timeout: Option<Spanned<String>>,
    pub(super) max_connections: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) routes: Vec<Spanned<RawRoute>>,
}

/// `[[proxy.routes]]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) prefix: Spanned<String>,
    pub(super) upstream: Spanned<String>,
    pub(super) job: Spanned<String>,
    pub(super) consumer_secret: Option<Spanned<String>>,
}

/// `[socket]`: the token socket.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSocket {
    pub(super) path: Spanned<PathBuf>,
    pub(super) mode: Option<Spanned<RawMode>>,
    pub(super) group: Option<Spanned<RawId>>,
}

/// File permission bits: an integer (`0o640`) or octal text (`"0640"`).
#[derive(Deserialize)]
#[serde(untagged, expecting = "permission bits, such as 0o640 or \"0640\"")]
pub(super) enum RawMode {
    Bits(i64),
    Octal(String),
}

/// A user or group: a numeric id or a name.
#[derive(Deserialize)]
#[serde(untagged, expecting = "a user or group name, or a numeric id")]
pub(super) enum RawId {
    Id(i64),
    Name(String),
}

/// `[[jobs.sinks]]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSink {
    pub(super) path: Spanned<PathBuf>,
    pub(super) format: Option<Spanned<String>>,
    pub(super) env_name: Option<Spanned<String>>,
    pub(super) template: Option<Spanned<String>>,
    pub(super) template_file: Option<Spanned<PathBuf>>,
    pub(super) mode: Option<Spanned<RawMode>>,
    pub(super) owner: Option<Spanned<RawId>>,
    pub(super) group: Option<Spanned<RawId>>,
    pub(super) on_change: Option<Spanned<RawAction>>,
}

/// `on_change` of a sink or a job.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAction {
    pub(super) signal: Option<String>,
    pub(super) pid_file: Option<PathBuf>,
    pub(super) command: Option<Vec<String>>,
    pub(super) timeout: Option<Spanned<String>>,
}

/// `[jobs.consumers]`: who may have the token from the socket.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConsumers {
    #[serde(default)]
    pub(super) users: Vec<Spanned<RawId>>,
    #[serde(default)]
    pub(super) groups: Vec<Spanned<RawId>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    pub(super) path: Option<Spanned<PathBuf>>,
    pub(super) url: Option<Spanned<String>>,
    pub(super) key_file: Option<Spanned<PathBuf>>,
    pub(super) lease_ttl: Option<Spanned<String>>,
    pub(super) poll_interval: Option<Spanned<String>>,
    pub(super) pool_size: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) listen: Option<Spanned<String>>,
    pub(super) token_secret: Option<Spanned<String>>,
    pub(super) max_connections: Option<Spanned<i64>>,
    pub(super) header_timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDaemon {
    pub(super) max_concurrent_runs: Option<Spanned<i64>>,
    pub(super) shutdown_grace: Option<Spanned<String>>,
    pub(super) refresh_lead: Option<Spanned<String>>,
    pub(super) retry_initial: Option<Spanned<String>>,
    pub(super) retry_max: Option<Spanned<String>>,
    pub(super) permanent_retry_initial: Option<Spanned<String>>,
    pub(super) permanent_retry_max: Option<Spanned<String>>,
    pub(super) throttle_default: Option<Spanned<String>>,
    pub(super) max_retry_after: Option<Spanned<String>>,
    pub(super) min_interval: Option<Spanned<String>>,
    pub(super) per_job_metrics: Option<bool>,
}

/// A size: bytes as a number, or text such as `"64 MiB"`.
#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "a size: a whole number of bytes below 2^63, or text such as \"64 MiB\""
)]
pub(super) enum RawSize {
    Bytes(i64),
    Text(String),
}

/// `[limits]` or `[jobs.limits]` as written; every key optional.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) max_memory: Option<Spanned<RawSize>>,
    pub(super) max_table_elements: Option<Spanned<i64>>,
    pub(super) connect_timeout: Option<Spanned<String>>,
    pub(super) first_byte_timeout: Option<Spanned<String>>,
    pub(super) between_bytes_timeout: Option<Spanned<String>>,
    pub(super) max_response_body: Option<Spanned<RawSize>>,
    pub(super) max_response_headers: Option<Spanned<i64>>,
    pub(super) max_response_header_bytes: Option<Spanned<RawSize>>,
    pub(super) max_resources: Option<Spanned<i64>>,
    pub(super) max_output_bytes: Option<Spanned<RawSize>>,
    pub(super) max_token_lifetime: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJob {
    pub(super) name: Spanned<String>,
    #[serde(default)]
    pub(super) scope: String,
    pub(super) cloud: Option<Spanned<String>>,
    pub(super) authority: Option<Spanned<String>>,
    pub(super) token_url: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) client_auth: ClientAuth,
    pub(super) signing_alg: Option<Spanned<String>>,
    pub(super) key_id: Option<Spanned<String>>,
    pub(super) assertion_file: Option<Spanned<String>>,
    pub(super) managed_identity: Option<Spanned<String>>,
    pub(super) allowed_hosts: Option<Vec<Spanned<String>>>,
    pub(super) upstreams: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(super) allow_insecure_http: bool,
    pub(super) schedule: Option<Spanned<String>>,
    pub(super) plugin: Option<PathBuf>,
    pub(super) secrets: Spanned<SecretRoles>,
    pub(super) token_params: Option<Spanned<BTreeMap<String, String>>>,
    pub(super) timeout: Option<Spanned<String>>,
    pub(super) wasi: Option<Spanned<String>>,
    pub(super) limits: Option<RawLimits>,
    #[serde(default)]
    pub(super) sinks: Vec<Spanned<RawSink>>,
    pub(super) on_change: Option<Spanned<RawAction>>,
    pub(super) consumers: Option<RawConsumers>,
}

/// A job block parsed on its own.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJobBlock {
    pub(super) jobs: Vec<Spanned<RawJob>>,
}
