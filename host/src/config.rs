//! `tokenwarden.toml` (DESIGN §3): parsing, validation and path resolution.
//!
//! Errors name the file, the line and the key: an operator fixing a config at 3 a.m. should
//! not have to guess. Unknown keys are errors, not silently ignored typos.

use crate::egress::Origin;
use crate::limits::{RawLimits, RunLimits};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use toml::Spanned;

/// Environment variable naming the config file when `--config` is not given.
pub const CONFIG_ENV: &str = "TOKENWARDEN_CONFIG";
/// Config file used when neither `--config` nor the environment names one.
pub const DEFAULT_CONFIG: &str = "tokenwarden.toml";
/// Default store path, relative to the config file.
pub const DEFAULT_STORE: &str = "data/tokenwarden.db";
/// Default admin API address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8420";
/// Default wall-clock limit for one run.
pub const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// A config error: what is wrong and where.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// TOML syntax, a wrong type or an unknown key; toml's message names line and key.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message, with line, column and key.
        message: String,
    },
    /// A setting that parses but cannot work.
    #[error("config file {path}, line {line}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line of the offending setting.
        line: usize,
        /// What is wrong, naming the key.
        message: String,
    },
}

/// The whole, validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it came from (relative paths are resolved against its folder).
    pub path: PathBuf,
    /// The secret store.
    pub store: StoreConfig,
    /// The daemon's admin API.
    pub admin: AdminConfig,
    /// The daemon's scheduling and limits.
    pub daemon: DaemonConfig,
    /// The jobs, in file order.
    pub jobs: Vec<JobConfig>,
}

/// `[store]`.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// The SQLite file.
    pub path: PathBuf,
}

/// `[admin]`.
#[derive(Clone, Debug)]
pub struct AdminConfig {
    /// Address of the admin API.
    pub listen: SocketAddr,
    /// Store name of the bearer token the API demands.
    pub token_secret: Option<String>,
}

/// `[daemon]`: scheduling policy and limits of `tokenwarden run`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonConfig {
    /// Runs in flight at once across all jobs.
    pub max_concurrent_runs: usize,
    /// How long a stopping daemon lets runs in flight finish.
    pub shutdown_grace: Duration,
    /// Refresh timing and retry backoff.
    pub policy: crate::schedule::Policy,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            max_concurrent_runs: 16,
            shutdown_grace: Duration::from_secs(30),
            policy: crate::schedule::Policy::default(),
        }
    }
}

/// How the client authenticates at the token endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// Credentials in the form body (Entra's default).
    #[default]
    ClientSecretPost,
    /// HTTP Basic (RFC 6749 §2.3.1).
    ClientSecretBasic,
}

/// When a job runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// From the token's lifetime (DESIGN §6).
    Auto,
    /// A fixed interval, `every 45m`.
    Every(Duration),
    /// A cron expression, evaluated in UTC.
    Cron(Box<CronSchedule>),
}

/// A parsed cron expression: five fields (minute hour day-of-month month day-of-week) or
/// six with a leading seconds field; evaluated in UTC.
#[derive(Clone)]
pub struct CronSchedule {
    expr: String,
    cron: croner::Cron,
}

impl CronSchedule {
    /// Parses a cron expression.
    pub fn parse(expr: &str) -> Result<Self, String> {
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .build()
            .parse(expr)
            .map_err(|e| format!("`{expr}` is not a valid cron expression: {e}"))?;
        Ok(Self {
            expr: expr.to_string(),
            cron,
        })
    }

    /// The first slot strictly after `t`.
    pub fn next_after(&self, t: SystemTime) -> SystemTime {
        let at = chrono::DateTime::<chrono::Utc>::from(t);
        match self.cron.find_next_occurrence(&at, false) {
            Ok(next) => next.into(),
            // A pattern that never fires again (e.g. a past date): effectively never.
            Err(_) => t + Duration::from_secs(100 * 365 * 24 * 3600),
        }
    }
}

impl std::fmt::Debug for CronSchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cron({:?})", self.expr)
    }
}

impl PartialEq for CronSchedule {
    fn eq(&self, other: &Self) -> bool {
        self.expr == other.expr
    }
}

impl Eq for CronSchedule {}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Schedule::Auto => f.write_str("auto"),
            Schedule::Every(d) => write!(f, "every {}", humantime::format_duration(*d)),
            Schedule::Cron(c) => write!(f, "cron {}", c.expr),
        }
    }
}

impl Schedule {
    /// Parses `auto`, `every <duration>` (humantime: `45m`, `1h 30m`) or a cron expression.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text == "auto" {
            return Ok(Schedule::Auto);
        }
        if let Some(rest) = text.strip_prefix("every ") {
            let d = humantime::parse_duration(rest.trim())
                .map_err(|e| format!("`{text}`: {e} (try `every 45m`)"))?;
            if d < Duration::from_secs(1) {
                return Err(format!("`{text}`: the interval must be at least 1s"));
            }
            return Ok(Schedule::Every(d));
        }
        let fields = text.split_whitespace().count();
        if (5..=6).contains(&fields) {
            return CronSchedule::parse(text).map(|c| Schedule::Cron(Box::new(c)));
        }
        Err(format!(
            "`{text}` is not `auto`, `every <duration>` or a cron expression of 5 or 6 fields"
        ))
    }
}

/// Store names bound to the plugin's roles (`[jobs.secrets]`): the whole grant of a job.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRoles {
    /// Read role `client-id`.
    pub client_id: String,
    /// Read role `client-secret`.
    pub client_secret: String,
    /// Read role `tenant-id`; optional when `token_url` is set.
    pub tenant_id: Option<String>,
    /// Write role `access-token`.
    pub access_token: String,
}

/// One `[[jobs]]` entry, validated and with paths resolved.
#[derive(Clone, Debug)]
pub struct JobConfig {
    /// `[a-z0-9_-]+`.
    pub name: String,
    /// The scope to request.
    pub scope: String,
    /// Entra-style authority; `None` means Entra's public cloud.
    pub authority: Option<String>,
    /// Full token endpoint of any OAuth 2.0 server.
    pub token_url: Option<String>,
    /// Client authentication method.
    pub client_auth: ClientAuth,
    /// Origins the plugin may reach; defaults to the token endpoint's origin.
    pub allowed_hosts: Vec<Origin>,
    /// When it runs.
    pub schedule: Schedule,
    /// A component to run instead of the built-in one.
    pub plugin: Option<PathBuf>,
    /// Role grants.
    pub secrets: SecretRoles,
    /// Extra form parameters for the token request.
    pub token_params: BTreeMap<String, String>,
    /// Wall-clock limit for one run.
    pub timeout: Duration,
    /// Memory, HTTP and output limits for one run.
    pub limits: RunLimits,
}

impl JobConfig {
    /// A job with defaults, for embedders and the demo.
    pub fn new(name: &str, scope: &str, secrets: SecretRoles) -> Self {
        Self {
            name: name.to_string(),
            scope: scope.to_string(),
            authority: None,
            token_url: None,
            client_auth: ClientAuth::default(),
            allowed_hosts: Vec::new(),
            schedule: Schedule::Auto,
            plugin: None,
            secrets,
            token_params: BTreeMap::new(),
            timeout: DEFAULT_RUN_TIMEOUT,
            limits: RunLimits::default(),
        }
    }

    /// The URL whose origin is reachable by default.
    pub fn endpoint_base(&self) -> &str {
        self.token_url
            .as_deref()
            .or(self.authority.as_deref())
            .unwrap_or("https://login.microsoftonline.com")
    }

    /// The origins the plugin may reach: `allowed_hosts`, else the endpoint's own origin.
    pub fn effective_allow_list(&self) -> Result<Vec<Origin>, String> {
        if !self.allowed_hosts.is_empty() {
            return Ok(self.allowed_hosts.clone());
        }
        Origin::of_url(self.endpoint_base()).map(|o| vec![o])
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    store: Option<RawStore>,
    admin: Option<RawAdmin>,
    daemon: Option<RawDaemon>,
    limits: Option<RawLimits>,
    #[serde(default)]
    jobs: Vec<Spanned<RawJob>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    path: Option<Spanned<PathBuf>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<Spanned<String>>,
    token_secret: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    max_concurrent_runs: Option<Spanned<i64>>,
    shutdown_grace: Option<Spanned<String>>,
    refresh_lead: Option<Spanned<String>>,
    retry_initial: Option<Spanned<String>>,
    retry_max: Option<Spanned<String>>,
    permanent_retry_initial: Option<Spanned<String>>,
    permanent_retry_max: Option<Spanned<String>>,
    throttle_default: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    name: Spanned<String>,
    #[serde(default)]
    scope: String,
    authority: Option<Spanned<String>>,
    token_url: Option<Spanned<String>>,
    #[serde(default)]
    client_auth: ClientAuth,
    allowed_hosts: Option<Vec<Spanned<String>>>,
    schedule: Option<Spanned<String>>,
    plugin: Option<PathBuf>,
    secrets: Spanned<SecretRoles>,
    #[serde(default)]
    token_params: BTreeMap<String, String>,
    timeout: Option<Spanned<String>>,
    limits: Option<RawLimits>,
}

/// Where the config file is: `--config`, else `$TOKENWARDEN_CONFIG`, else `./tokenwarden.toml`.
pub fn locate(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or_else(|| std::env::var_os(CONFIG_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG))
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses config text as if read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let invalid = |span: std::ops::Range<usize>, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            line: line_of(text, span.start),
            message,
        };

        let store_path = match raw.store.and_then(|s| s.path) {
            Some(p) if p.get_ref().as_os_str().is_empty() => {
                return Err(invalid(p.span(), "`store.path` is empty".into()));
            }
            Some(p) => base.join(p.into_inner()),
            None => base.join(DEFAULT_STORE),
        };

        let (listen, token_secret) = match raw.admin {
            Some(a) => (a.listen, a.token_secret),
            None => (None, None),
        };
        let listen = match listen {
            Some(l) => l.get_ref().parse().map_err(|_| {
                invalid(
                    l.span(),
                    format!(
                        "`admin.listen` = `{}` is not an address like 127.0.0.1:8420",
                        l.get_ref()
                    ),
                )
            })?,
            None => DEFAULT_ADMIN_LISTEN.parse().expect("valid default"),
        };

        let mut daemon = DaemonConfig::default();
        if let Some(d) = raw.daemon {
            let duration = |value: Option<Spanned<String>>, key: &str, into: &mut Duration| {
                if let Some(v) = value {
                    *into = humantime::parse_duration(v.get_ref()).map_err(|e| {
                        invalid(v.span(), format!("`daemon.{key}` = `{}`: {e}", v.get_ref()))
                    })?;
                }
                Ok::<_, ConfigError>(())
            };
            let p = &mut daemon.policy;
            duration(
                d.shutdown_grace,
                "shutdown_grace",
                &mut daemon.shutdown_grace,
            )?;
            duration(d.refresh_lead, "refresh_lead", &mut p.refresh_lead)?;
            duration(d.retry_initial, "retry_initial", &mut p.retry_initial)?;
            duration(d.retry_max, "retry_max", &mut p.retry_max)?;
            duration(
                d.permanent_retry_initial,
                "permanent_retry_initial",
                &mut p.permanent_retry_initial,
            )?;
            duration(
                d.permanent_retry_max,
                "permanent_retry_max",
                &mut p.permanent_retry_max,
            )?;
            duration(
                d.throttle_default,
                "throttle_default",
                &mut p.throttle_default,
            )?;
            if p.retry_initial.is_zero() || p.permanent_retry_initial.is_zero() {
                return Err(ConfigError::Invalid {
                    path: path.to_path_buf(),
                    line: 1,
                    message: "`daemon.retry_initial` and `daemon.permanent_retry_initial` must be above zero".into(),
                });
            }
            if let Some(n) = d.max_concurrent_runs {
                daemon.max_concurrent_runs = usize::try_from(*n.get_ref())
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| {
                        invalid(
                            n.span(),
                            "`daemon.max_concurrent_runs` must be at least 1".into(),
                        )
                    })?;
            }
        }

        let default_limits = raw
            .limits
            .unwrap_or_default()
            .apply(RunLimits::default())
            .map_err(|(span, e)| invalid(span, format!("limits: {e}")))?;
        let mut jobs: Vec<JobConfig> = Vec::new();
        for job in raw.jobs {
            let job_span = job.span();
            let j = job.into_inner();
            let name = j.name.get_ref().clone();
            if !valid_job_name(&name) {
                return Err(invalid(
                    j.name.span(),
                    format!("job name `{name}` must match [a-z0-9_-]+"),
                ));
            }
            if jobs.iter().any(|other| other.name == name) {
                return Err(invalid(
                    j.name.span(),
                    format!("job name `{name}` is used twice"),
                ));
            }
            let ctx = |key: &str, why: String| format!("job `{name}`: `{key}` {why}");
            for (key, value) in [("authority", &j.authority), ("token_url", &j.token_url)] {
                if let Some(v) = value {
                    Origin::of_url(v.get_ref()).map_err(|e| invalid(v.span(), ctx(key, e)))?;
                }
            }
            if j.token_url.is_none() && j.secrets.get_ref().tenant_id.is_none() {
                return Err(invalid(
                    j.secrets.span(),
                    ctx(
                        "secrets.tenant_id",
                        "is required unless `token_url` is set".into(),
                    ),
                ));
            }
            let is_entra = j.token_url.is_none()
                && j.authority.as_ref().is_none_or(|a| {
                    Origin::of_url(a.get_ref())
                        .is_ok_and(|o| o.host.starts_with("login.microsoftonline."))
                });
            if is_entra && !j.scope.ends_with("/.default") {
                return Err(invalid(
                    job_span.clone(),
                    ctx(
                        "scope",
                        format!(
                            "= `{}`: Microsoft Entra ID's client-credentials flow needs `{{resource}}/.default`",
                            j.scope
                        ),
                    ),
                ));
            }
            let mut allowed_hosts = Vec::new();
            for h in j.allowed_hosts.unwrap_or_default() {
                let origin = Origin::parse(h.get_ref())
                    .map_err(|e| invalid(h.span(), ctx("allowed_hosts", e)))?;
                allowed_hosts.push(origin);
            }
            let schedule = match j.schedule {
                Some(s) => Schedule::parse(s.get_ref())
                    .map_err(|e| invalid(s.span(), ctx("schedule", e)))?,
                None => Schedule::Auto,
            };
            let timeout = match j.timeout {
                Some(t) => humantime::parse_duration(t.get_ref())
                    .map_err(|e| invalid(t.span(), ctx("timeout", e.to_string())))?,
                None => DEFAULT_RUN_TIMEOUT,
            };
            let limits = match &j.limits {
                Some(l) => l
                    .apply(default_limits)
                    .map_err(|(span, e)| invalid(span, format!("job `{name}`: limits: {e}")))?,
                None => default_limits,
            };
            jobs.push(JobConfig {
                name,
                scope: j.scope,
                authority: j.authority.map(Spanned::into_inner),
                token_url: j.token_url.map(Spanned::into_inner),
                client_auth: j.client_auth,
                allowed_hosts,
                schedule,
                plugin: j.plugin.map(|p| base.join(p)),
                secrets: j.secrets.into_inner(),
                token_params: j.token_params,
                timeout,
                limits,
            });
        }

        Ok(Config {
            path: path.to_path_buf(),
            store: StoreConfig { path: store_path },
            admin: AdminConfig {
                listen,
                token_secret,
            },
            daemon,
            jobs,
        })
    }

    /// The job called `name`.
    pub fn job(&self, name: &str) -> Option<&JobConfig> {
        self.jobs.iter().find(|j| j.name == name)
    }
}

fn valid_job_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[store]
path = "data/tw.db"

[[jobs]]
name = "graph"
scope = "https://graph.microsoft.com/.default"
schedule = "every 45m"
[jobs.secrets]
client_id = "Microsoft Client ID"
client_secret = "Microsoft Client Secret"
tenant_id = "Microsoft Tenant ID"
access_token = "Microsoft Access Token"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/tw/tokenwarden.toml"))
    }

    #[test]
    fn parses_the_documented_example() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.store.path, Path::new("/etc/tw/data/tw.db"));
        assert_eq!(c.admin.listen.to_string(), "127.0.0.1:8420");
        let j = &c.jobs[0];
        assert_eq!(j.schedule, Schedule::Every(Duration::from_secs(45 * 60)));
        assert_eq!(j.secrets.tenant_id.as_deref(), Some("Microsoft Tenant ID"));
        assert_eq!(
            j.effective_allow_list().unwrap(),
            vec![Origin::parse("https://login.microsoftonline.com").unwrap()]
        );
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let text = GOOD.replace("schedule = ", "schedul = ");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("schedul"), "{err}");
        assert!(err.contains("line 8"), "{err}");
        assert!(err.contains("/etc/tw/tokenwarden.toml"), "{err}");
    }

    #[test]
    fn bad_values_name_line_and_key() {
        let cases = [
            (
                "name = \"graph\"",
                "name = \"Graph!\"",
                "line 6",
                "must match",
            ),
            ("\"every 45m\"", "\"every soon\"", "line 8", "schedule"),
            (
                "scope = \"https://graph.microsoft.com/.default\"",
                "scope = \"User.Read\"",
                "",
                "/.default",
            ),
            ("tenant_id = \"Microsoft Tenant ID\"\n", "", "", "tenant_id"),
        ];
        for (from, to, line, needle) in cases {
            let err = parse(&GOOD.replace(from, to)).unwrap_err().to_string();
            assert!(err.contains(line) && err.contains(needle), "{err}");
        }
    }

    #[test]
    fn token_url_jobs_need_no_tenant_and_any_scope() {
        let text = r#"
[[jobs]]
name = "okta"
token_url = "http://127.0.0.1:9000/oauth2/token"
client_auth = "client_secret_basic"
scope = "api.read"
allowed_hosts = ["http://127.0.0.1:9000"]
[jobs.secrets]
client_id = "id"
client_secret = "secret"
access_token = "token"
"#;
        let c = parse(text).unwrap();
        assert_eq!(c.jobs[0].client_auth, ClientAuth::ClientSecretBasic);
        assert!(c.jobs[0].secrets.tenant_id.is_none());
    }

    #[test]
    fn schedules() {
        assert_eq!(Schedule::parse("auto"), Ok(Schedule::Auto));
        assert_eq!(
            Schedule::parse("every 1h 30m"),
            Ok(Schedule::Every(Duration::from_secs(5400)))
        );
        assert!(matches!(
            Schedule::parse("0 */5 * * * *"),
            Ok(Schedule::Cron(_))
        ));
        assert!(Schedule::parse("every 0s").is_err());
        assert!(Schedule::parse("sometimes").is_err());
    }

    #[test]
    fn duplicate_job_names_are_refused() {
        let text = format!("{GOOD}\n{}", &GOOD[GOOD.find("[[jobs]]").unwrap()..]);
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("used twice"), "{err}");
    }

    #[test]
    fn limits_have_defaults_global_overrides_and_job_overrides() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.jobs[0].limits, RunLimits::default());

        let text = GOOD.replace(
            "[[jobs]]",
            "[limits]\nmax_memory = \"16 MiB\"\nconnect_timeout = \"2s\"\n\n[[jobs]]",
        ) + "[jobs.limits]\nmax_memory = 8388608\nmax_response_body = \"64 KiB\"\n";
        let l = parse(&text).unwrap().jobs[0].limits;
        assert_eq!(l.max_memory, 8 << 20, "the job's value wins");
        assert_eq!(
            l.http.connect_timeout,
            Duration::from_secs(2),
            "global default"
        );
        assert_eq!(l.http.max_response_body, 64 * 1024);
        assert_eq!(l.max_resources, RunLimits::default().max_resources);

        for (bad, needle) in [
            ("max_memory = \"lots\"", "max_memory"),
            ("max_memory = 0", "max_memory"),
            ("connect_timeout = \"0s\"", "connect_timeout"),
            ("max_resources = -1", "max_resources"),
            ("max_stack = 1", "max_stack"),
        ] {
            let text = format!("{GOOD}[jobs.limits]\n{bad}\n");
            let err = parse(&text).unwrap_err().to_string();
            assert!(
                err.contains(needle) && err.contains("line 15"),
                "{bad}: {err}"
            );
        }
    }

    proptest::proptest! {
        /// Whatever the text, parsing returns a value or a typed error; it never panics.
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
            let _ = parse(&text);
        }

        /// Mutations of a valid file: still never a panic, and an error names the file.
        #[test]
        fn mutated_config_errors_name_the_file(at in 0usize..GOOD.len(), insert in "[\\[\\]=\"a-z0-9 \\n.#*]{0,8}") {
            let mut text = GOOD.to_string();
            let at = (0..=at).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
            text.insert_str(at, &insert);
            if let Err(e) = parse(&text) {
                proptest::prop_assert!(e.to_string().contains("/etc/tw/tokenwarden.toml"), "{e}");
            }
        }

        /// Origins: parsing and printing round-trip, and an origin matches itself.
        #[test]
        fn origins_round_trip(scheme in "https?", host in "[a-z][a-z0-9-]{0,20}(\\.[a-z]{2,6}){0,2}", port in 1u16..) {
            let text = format!("{scheme}://{host}:{port}");
            let o = Origin::parse(&text).unwrap();
            proptest::prop_assert_eq!(Origin::parse(&o.to_string()).unwrap(), o);
        }
    }
}
