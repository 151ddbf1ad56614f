//! `tokenwarden.toml`: parsing and validation.
//!
//! Errors name the file, the line and the key: an operator fixing a config at 3 a.m. should
//! not have to guess. Unknown keys are errors, not silently ignored typos. Every number is
//! checked against a documented range here, when the file loads, so that nothing the file
//! says can make a run panic or misbehave later (the ranges are listed in SECURITY.md).
//! Loading is linear in the file's size (BENCHMARKS.md has the figures).

use super::blocks::{head_of_blocks, job_block, job_blocks};
use super::raw::{RawAdmin, RawConfig, RawDaemon, RawJob, RawLimits, RawSize, RawStore};
use super::{Config, DEFAULT_PG_KEY_FILE, DEFAULT_STORE};
use crate::admin::{self, AdminConfig};
use crate::daemon::DaemonConfig;
use crate::egress::Origin;
use crate::job::{DEFAULT_RUN_TIMEOUT, JobConfig, WasiVersion};
use crate::limits::RunLimits;
use crate::schedule::Schedule;
use crate::store::KeySource;
use crate::store::{StoreBackend, StoreConfig};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokenwarden_contract::{RESERVED_PARAMS, entra};
use toml::Spanned;

/// The largest config file read: a config with 100,000 jobs is about 40 MiB.
pub const MAX_CONFIG_BYTES: u64 = 128 << 20;

/// A config error: what is wrong and where.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}{}", hint(.path, .source))]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
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

/// What to do about a config file that is not there.
fn hint(_path: &Path, e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::NotFound {
        format!(
            " (run `tokenwarden init` to write one, or point --config or ${} at yours)",
            super::CONFIG_ENV
        )
    } else {
        String::new()
    }
}

/// Reads (at most [`MAX_CONFIG_BYTES`]) and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let read = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(read(std::io::Error::other(format!(
            "larger than {} MiB",
            MAX_CONFIG_BYTES >> 20
        ))));
    }
    let text = String::from_utf8(bytes).map_err(|_| {
        read(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not UTF-8 text",
        ))
    })?;
    parse(&text, path)
}

/// Line numbers of byte offsets, computed once per file (so errors cost no rescans).
struct Lines(Vec<usize>);

impl Lines {
    fn new(text: &str) -> Self {
        Self(
            text.bytes()
                .enumerate()
                .filter(|(_, b)| *b == b'\n')
                .map(|(i, _)| i)
                .collect(),
        )
    }

    fn of(&self, offset: usize) -> usize {
        self.0.partition_point(|&nl| nl < offset) + 1
    }
}

#[derive(Clone, Copy)]
pub(super) struct Ctx<'a> {
    path: &'a Path,
    lines: &'a Lines,
    /// Where in the file the text the spans point into begins (a job parsed on its own).
    base: usize,
}

impl Ctx<'_> {
    pub(super) fn invalid(&self, span: Range<usize>, message: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line: self.lines.of(self.base + span.start),
            message,
        }
    }

    /// A duration within `range`, e.g. `"10s"` or `"1h 30m"`.
    pub(super) fn duration(
        &self,
        v: &Spanned<String>,
        key: &str,
        range: RangeInclusive<Duration>,
    ) -> Result<Duration, ConfigError> {
        let bad = |why: String| {
            self.invalid(
                v.span(),
                format!(
                    "`{key}` = `{}`: {why}; give a duration from {} to {}, such as \"30s\" or \"1h 30m\"",
                    v.get_ref(),
                    humantime::format_duration(*range.start()),
                    humantime::format_duration(*range.end())
                ),
            )
        };
        let d = humantime::parse_duration(v.get_ref()).map_err(|e| bad(e.to_string()))?;
        if !range.contains(&d) {
            return Err(bad("out of range".into()));
        }
        Ok(d)
    }

    /// A size within `range`, as bytes or text such as `"64 MiB"`.
    pub(super) fn size(
        &self,
        v: &Spanned<RawSize>,
        key: &str,
        range: RangeInclusive<u64>,
    ) -> Result<u64, ConfigError> {
        let bytes = match v.get_ref() {
            RawSize::Bytes(n) => u64::try_from(*n).ok(),
            RawSize::Text(t) => t.trim().parse::<bytesize::ByteSize>().ok().map(|b| b.0),
        };
        bytes.filter(|b| range.contains(b)).ok_or_else(|| {
            self.invalid(
                v.span(),
                format!(
                    "`{key}` must be a size from {} to {}, such as 1048576 or \"1 MiB\"",
                    bytesize::ByteSize(*range.start()).display().iec(),
                    bytesize::ByteSize(*range.end()).display().iec()
                ),
            )
        })
    }

    /// A whole number within `range`.
    pub(super) fn count(
        &self,
        v: &Spanned<i64>,
        key: &str,
        range: RangeInclusive<usize>,
    ) -> Result<usize, ConfigError> {
        usize::try_from(*v.get_ref())
            .ok()
            .filter(|n| range.contains(n))
            .ok_or_else(|| {
                self.invalid(
                    v.span(),
                    format!(
                        "`{key}` must be a whole number from {} to {}",
                        range.start(),
                        range.end()
                    ),
                )
            })
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

const MIN: u64 = 60;
const HOUR: u64 = 3600;
const DAY: u64 = 24 * HOUR;

/// Parses config text as if read from `path`.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    parse_with(text, path, true)
}

/// A job block that did not parse on its own: read the whole file instead.
struct NotBlockwise;

fn parse_with(text: &str, path: &Path, blockwise: bool) -> Result<Config, ConfigError> {
    let starts = if blockwise {
        job_blocks(text)
    } else {
        Vec::new()
    };
    let (raw, mut whole_jobs) = match head_of_blocks(text, &starts) {
        Some(head) => (head, None),
        None => {
            let mut raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
                path: path.to_path_buf(),
                message: e.to_string().trim_end().to_string(),
            })?;
            let jobs = std::mem::take(&mut raw.jobs);
            (raw, Some(jobs.into_iter()))
        }
    };
    let count = whole_jobs
        .as_ref()
        .map_or(starts.len(), ExactSizeIterator::len);
    // One job at a time, converted as it is read: no second copy of every job in memory.
    // Blocks before the first one that does not parse on its own mean what they mean in
    // the whole file, so when one fails the whole file is read again from the start.
    let mut next_job = |i: usize| -> Result<(usize, Spanned<RawJob>), NotBlockwise> {
        match &mut whole_jobs {
            Some(jobs) => jobs.next().map(|j| (0, j)).ok_or(NotBlockwise),
            None => job_block(text, &starts, i)
                .map(|j| (starts[i], j))
                .ok_or(NotBlockwise),
        }
    };
    let lines = Lines::new(text);
    let cx = Ctx {
        path,
        lines: &lines,
        base: 0,
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let store = store(&cx, raw.store, base)?;
    let admin = admin(&cx, raw.admin)?;
    let daemon = daemon(&cx, raw.daemon)?;
    let socket = raw
        .socket
        .as_ref()
        .map(|s| super::consumers::socket(&cx, s, base, "socket"))
        .transpose()?;
    let wasi = raw
        .wasi
        .as_ref()
        .map(|w| wasi_version(&cx, w, "wasi"))
        .transpose()?;
    let tls = match &raw.tls {
        Some(t) => super::network::tls(&cx, t, base)?,
        None => crate::egress::Trust::default(),
    };
    let egress = match &raw.egress {
        Some(e) => super::network::egress(&cx, e)?,
        None => None,
    };
    let default_limits = match &raw.limits {
        Some(l) => limits(&cx, l, RunLimits::default(), "limits")?,
        None => RunLimits::default(),
    };
    let mut jobs: Vec<JobConfig> = Vec::with_capacity(count);
    let mut names = HashSet::with_capacity(count);
    // Who reads and who writes each store name, to refuse a job whose token write would
    // overwrite another job's credentials (or the admin token).
    let mut writers: HashMap<String, (String, Range<usize>)> = HashMap::new();
    let mut readers: HashMap<String, String> = HashMap::new();
    // A private key is bound as `private_key` and nothing else: under any other role (a
    // client id, a certificate, a secret, a token) the component could read or send it.
    let mut keys: HashMap<String, String> = HashMap::new();
    let mut other_uses: HashMap<String, String> = HashMap::new();
    // Each sink file has one job: two writing it would overwrite each other's token. Paths
    // are compared as the file system resolves them (`a/../t` is `t`, a linked folder is
    // its target), and none may be in the store's folder (the store, its key, the compile
    // cache) or be the config file.
    let mut sink_paths: HashMap<PathBuf, String> = HashMap::new();
    let store_dir = super::consumers::resolved(&store.local_dir(base));
    let config_file = super::consumers::resolved(path);
    if let Some(t) = &admin.token_secret {
        readers.insert(t.clone(), "the admin API (`admin.token_secret`)".into());
    }
    if let Some(c) = egress.as_ref().and_then(|e| e.credentials.as_ref()) {
        readers.insert(
            c.clone(),
            "the egress proxy (`egress.proxy_credentials`)".into(),
        );
    }
    other_uses.extend(readers.clone());
    for i in 0..count {
        let Ok((offset, job)) = next_job(i) else {
            return parse_with(text, path, false);
        };
        let block = Ctx { base: offset, ..cx };
        let span = job.span();
        let config = job_config(
            &block,
            job.into_inner(),
            span.clone(),
            &default_limits,
            base,
        )?;
        // From here on, positions are in the whole file.
        let span = offset + span.start..offset + span.end;
        if !names.insert(config.name.clone()) {
            return Err(cx.invalid(span, format!("job name `{}` is used twice", config.name)));
        }
        for (role, n) in config.secrets.bindings() {
            let here = format!("job `{}`'s `secrets.{role}`", config.name);
            let clash = if role == "private_key" {
                keys.insert(n.to_string(), here.clone());
                other_uses.get(n).map(|other| (here, other.clone()))
            } else {
                other_uses.insert(n.to_string(), here.clone());
                keys.get(n).map(|key| (here, key.clone()))
            };
            if let Some((a, b)) = clash {
                return Err(cx.invalid(
                    span,
                    format!(
                        "`{n}` is both {a} and {b}; a private key is bound as `private_key` only, where nothing can read or send it"
                    ),
                ));
            }
        }
        for input in config.secrets.inputs() {
            readers
                .entry(input.to_string())
                .or_insert_with(|| format!("job `{}`", config.name));
        }
        let token = config.secrets.access_token.clone();
        if let Some((other, _)) = writers.get(&token) {
            return Err(cx.invalid(
                span,
                format!(
                    "job `{}`: `secrets.access_token` = `{token}` is also the token of job `{other}`; each job needs its own",
                    config.name
                ),
            ));
        }
        for sink in &config.sinks {
            let resolved = super::consumers::resolved(&sink.path);
            if resolved.starts_with(&store_dir) || resolved == config_file {
                return Err(cx.invalid(
                    span,
                    format!(
                        "job `{}`: sink {} would overwrite the store, its key or the config file; put sinks outside {}",
                        config.name,
                        sink.path.display(),
                        store_dir.display()
                    ),
                ));
            }
            if let Some(other) = sink_paths.insert(resolved, config.name.clone()) {
                return Err(cx.invalid(
                    span,
                    format!(
                        "job `{}`: sink {} is also a sink of job `{other}`; each file needs one writer",
                        config.name,
                        sink.path.display()
                    ),
                ));
            }
        }
        writers.insert(token, (config.name.clone(), span));
        jobs.push(config);
    }
    let proxy = match &raw.proxy {
        Some(p) => {
            let proxy = super::proxy::proxy(&cx, p.get_ref(), p.span(), base, &jobs)?;
            for (k, route) in proxy.routes.iter().enumerate() {
                if let Some(secret) = &route.consumer_secret {
                    readers
                        .entry(secret.clone())
                        .or_insert_with(|| format!("`proxy.routes[{k}].consumer_secret`"));
                }
            }
            if let (Some(a), Some(b)) = (&proxy.socket, &socket)
                && super::consumers::resolved(&a.path) == super::consumers::resolved(&b.path)
            {
                return Err(cx.invalid(
                    p.span(),
                    "`proxy.socket.path` is also `socket.path`: give each its own socket".into(),
                ));
            }
            Some(proxy)
        }
        None => None,
    };
    for (name, (job, span)) in &writers {
        if let Some(reader) = readers.get(name) {
            return Err(cx.invalid(
                span.clone(),
                format!(
                    "job `{job}`: `secrets.access_token` = `{name}` is read by {reader}; a token endpoint's reply must never overwrite a credential"
                ),
            ));
        }
    }
    Ok(Config {
        path: path.to_path_buf(),
        wasi,
        store,
        admin,
        daemon,
        socket,
        tls,
        egress,
        proxy,
        jobs,
    })
}

fn wasi_version(cx: &Ctx<'_>, v: &Spanned<String>, key: &str) -> Result<WasiVersion, ConfigError> {
    v.get_ref()
        .parse()
        .map_err(|e: String| cx.invalid(v.span(), format!("`{key}`: {e}")))
}

fn store(cx: &Ctx<'_>, raw: Option<RawStore>, base: &Path) -> Result<StoreConfig, ConfigError> {
    let Some(s) = raw else {
        return Ok(StoreConfig::sqlite(base.join(DEFAULT_STORE)));
    };
    let mut config = match (&s.path, &s.url) {
        (Some(p), Some(_)) => {
            return Err(cx.invalid(
                p.span(),
                "`store.path` and `store.url` both set: give the SQLite file or the PostgreSQL URL"
                    .into(),
            ));
        }
        (Some(p), None) if p.get_ref().as_os_str().is_empty() => {
            return Err(cx.invalid(p.span(), "`store.path` is empty".into()));
        }
        (Some(p), None) => StoreConfig::sqlite(base.join(p.get_ref())),
        (None, Some(u)) => {
            let url = u.get_ref();
            if !(url.starts_with("postgres://")
                || url.starts_with("postgresql://")
                || url.contains('='))
            {
                return Err(cx.invalid(
                    u.span(),
                    "`store.url` must be a PostgreSQL connection string, e.g. \"postgresql://tokenwarden@db.example:5432/tokenwarden\"".into(),
                ));
            }
            StoreConfig {
                backend: StoreBackend::Postgres(url.clone()),
                key: KeySource::env_or_file(base.join(DEFAULT_PG_KEY_FILE)),
                ..StoreConfig::sqlite(base.join(DEFAULT_STORE))
            }
        }
        (None, None) => StoreConfig::sqlite(base.join(DEFAULT_STORE)),
    };
    if let Some(k) = &s.key_file {
        config.key = KeySource::env_or_file(base.join(k.get_ref()));
    }
    if let Some(v) = &s.lease_ttl {
        config.lease_ttl = cx.duration(v, "store.lease_ttl", secs(1)..=secs(HOUR))?;
    }
    if let Some(v) = &s.poll_interval {
        config.poll_interval = cx.duration(v, "store.poll_interval", ms(100)..=secs(MIN))?;
    }
    if let Some(v) = &s.pool_size {
        config.pool_size = cx.count(v, "store.pool_size", 1..=256)?;
    }
    Ok(config)
}

fn admin(cx: &Ctx<'_>, raw: Option<RawAdmin>) -> Result<AdminConfig, ConfigError> {
    let mut limits = admin::AdminLimits::default();
    let (listen, token_secret) = match raw {
        Some(a) => {
            if let Some(n) = &a.max_connections {
                limits.max_connections = cx.count(n, "admin.max_connections", 1..=65_536)?;
            }
            if let Some(t) = &a.header_timeout {
                limits.header_timeout =
                    cx.duration(t, "admin.header_timeout", ms(100)..=secs(5 * MIN))?;
            }
            (a.listen, a.token_secret)
        }
        None => (None, None),
    };
    let listen = match listen {
        Some(l) => l.get_ref().parse().map_err(|_| {
            cx.invalid(
                l.span(),
                format!(
                    "`admin.listen` = `{}` is not an address like 127.0.0.1:8420",
                    l.get_ref()
                ),
            )
        })?,
        None => admin::DEFAULT_LISTEN.parse().expect("valid default"),
    };
    let token_secret = match token_secret {
        Some(t) => {
            crate::store::check_name(t.get_ref())
                .map_err(|e| cx.invalid(t.span(), format!("`admin.token_secret`: {e}")))?;
            Some(t.into_inner())
        }
        None => None,
    };
    Ok(AdminConfig {
        listen,
        token_secret,
        limits,
    })
}

fn daemon(cx: &Ctx<'_>, raw: Option<RawDaemon>) -> Result<DaemonConfig, ConfigError> {
    let mut d = DaemonConfig::default();
    let Some(r) = raw else {
        return Ok(d);
    };
    let set = |v: &Option<Spanned<String>>,
               key: &str,
               range: RangeInclusive<Duration>,
               into: &mut Duration| {
        if let Some(v) = v {
            *into = cx.duration(v, &format!("daemon.{key}"), range)?;
        }
        Ok::<_, ConfigError>(())
    };
    let p = &mut d.policy;
    set(
        &r.shutdown_grace,
        "shutdown_grace",
        secs(0)..=secs(HOUR),
        &mut d.shutdown_grace,
    )?;
    set(
        &r.refresh_lead,
        "refresh_lead",
        secs(0)..=secs(DAY),
        &mut p.refresh_lead,
    )?;
    set(
        &r.retry_initial,
        "retry_initial",
        ms(100)..=secs(HOUR),
        &mut p.retry_initial,
    )?;
    set(
        &r.retry_max,
        "retry_max",
        p.retry_initial..=secs(DAY),
        &mut p.retry_max,
    )?;
    set(
        &r.permanent_retry_initial,
        "permanent_retry_initial",
        secs(1)..=secs(DAY),
        &mut p.permanent_retry_initial,
    )?;
    set(
        &r.permanent_retry_max,
        "permanent_retry_max",
        p.permanent_retry_initial..=secs(7 * DAY),
        &mut p.permanent_retry_max,
    )?;
    set(
        &r.throttle_default,
        "throttle_default",
        secs(1)..=secs(HOUR),
        &mut p.throttle_default,
    )?;
    set(
        &r.max_retry_after,
        "max_retry_after",
        secs(1)..=secs(DAY),
        &mut p.max_retry_after,
    )?;
    set(
        &r.min_interval,
        "min_interval",
        secs(1)..=secs(HOUR),
        &mut p.min_interval,
    )?;
    if r.retry_max.is_none() && p.retry_max < p.retry_initial {
        p.retry_max = p.retry_initial;
    }
    if r.permanent_retry_max.is_none() && p.permanent_retry_max < p.permanent_retry_initial {
        p.permanent_retry_max = p.permanent_retry_initial;
    }
    if let Some(per_job) = r.per_job_metrics {
        d.per_job_metrics = per_job;
    }
    if let Some(n) = &r.max_concurrent_runs {
        d.max_concurrent_runs = cx.count(n, "daemon.max_concurrent_runs", 1..=4096)?;
    }
    Ok(d)
}

fn limits(
    cx: &Ctx<'_>,
    raw: &RawLimits,
    base: RunLimits,
    prefix: &str,
) -> Result<RunLimits, ConfigError> {
    let key = |k: &str| format!("{prefix}.{k}");
    let mut l = base;
    if let Some(v) = &raw.max_memory {
        l.max_memory = cx.size(v, &key("max_memory"), 1 << 20..=4 << 30)? as usize;
    }
    if let Some(v) = &raw.max_table_elements {
        l.max_table_elements = cx.count(v, &key("max_table_elements"), 1..=1_000_000)?;
    }
    let timeouts = ms(100)..=secs(10 * MIN);
    if let Some(v) = &raw.connect_timeout {
        l.http.connect_timeout = cx.duration(v, &key("connect_timeout"), timeouts.clone())?;
    }
    if let Some(v) = &raw.first_byte_timeout {
        l.http.first_byte_timeout = cx.duration(v, &key("first_byte_timeout"), timeouts.clone())?;
    }
    if let Some(v) = &raw.between_bytes_timeout {
        l.http.between_bytes_timeout = cx.duration(v, &key("between_bytes_timeout"), timeouts)?;
    }
    if let Some(v) = &raw.max_response_body {
        l.http.max_response_body = cx.size(v, &key("max_response_body"), 1 << 10..=64 << 20)?;
    }
    if let Some(v) = &raw.max_response_headers {
        l.http.max_response_headers = cx.count(v, &key("max_response_headers"), 1..=1000)?;
    }
    if let Some(v) = &raw.max_response_header_bytes {
        l.http.max_response_header_bytes =
            cx.size(v, &key("max_response_header_bytes"), 1 << 10..=1 << 20)? as usize;
    }
    if let Some(v) = &raw.max_resources {
        l.max_resources = cx.count(v, &key("max_resources"), 10..=1_000_000)?;
    }
    if let Some(v) = &raw.max_output_bytes {
        l.max_output_bytes = cx.size(v, &key("max_output_bytes"), 1..=16 << 20)? as usize;
    }
    if let Some(v) = &raw.max_token_lifetime {
        l.max_token_lifetime =
            cx.duration(v, &key("max_token_lifetime"), secs(MIN)..=secs(366 * DAY))?;
    }
    Ok(l)
}

fn valid_job_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// The host exactly as written in `url` (what the plugin will put on the wire): between
/// `://` (and any userinfo) and the port, path, query or fragment.
fn literal_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next();
    }
    Some(authority.rsplit_once(':').map_or(authority, |(h, _)| h))
}

/// Checks an endpoint URL as both sides will read it: the host must be written the way the
/// host's URL parser normalises it, or the allow-list (which sees the normalised form) and
/// the plugin (which sends the literal one) would disagree about where a request goes.
fn endpoint(
    cx: &Ctx<'_>,
    v: &Spanned<String>,
    key: &str,
    job: &str,
) -> Result<Origin, ConfigError> {
    let text = v.get_ref();
    let origin = Origin::of_url(text)
        .map_err(|e| cx.invalid(v.span(), format!("job `{job}`: `{key}` {e}")))?;
    let literal = literal_host(text).unwrap_or_default().to_ascii_lowercase();
    if literal.ends_with('.') {
        return Err(cx.invalid(
            v.span(),
            format!("job `{job}`: `{key}` = `{text}`: drop the trailing dot of the host"),
        ));
    }
    if literal != origin.host {
        return Err(cx.invalid(
            v.span(),
            format!(
                "job `{job}`: `{key}` = `{text}`: write the host as `{}` (the form every part of tokenwarden reads the same way)",
                origin.host
            ),
        ));
    }
    Ok(origin)
}

fn job_config(
    cx: &Ctx<'_>,
    mut j: RawJob,
    span: Range<usize>,
    default_limits: &RunLimits,
    base: &Path,
) -> Result<JobConfig, ConfigError> {
    let name = j.name.get_ref().clone();
    if !valid_job_name(&name) {
        return Err(cx.invalid(
            j.name.span(),
            format!(
                "job name {} must match [a-z0-9_-]+ (at most 128 characters)",
                crate::text::quoted(&name)
            ),
        ));
    }
    let ctx = |key: &str, why: String| format!("job `{name}`: `{key}` {why}");
    let roles = j.secrets.get_ref().clone();
    for (role, n) in roles.bindings() {
        crate::store::check_name(n).map_err(|e| {
            cx.invalid(
                j.secrets.span(),
                ctx(&format!("secrets.{role}"), e.to_string()),
            )
        })?;
    }
    if roles.inputs().any(|n| n == roles.access_token) {
        return Err(cx.invalid(
            j.secrets.span(),
            ctx(
                "secrets.access_token",
                "names one of the job's own credentials; the token needs a name of its own".into(),
            ),
        ));
    }
    if let Some(cloud) = j.cloud.take() {
        if j.authority.is_some() || j.token_url.is_some() {
            return Err(cx.invalid(
                cloud.span(),
                ctx(
                    "cloud",
                    "presets the authority: give one of `cloud`, `authority` or `token_url`".into(),
                ),
            ));
        }
        let Some(preset) = entra::CLOUDS.iter().find(|c| c.name == cloud.get_ref()) else {
            let names: Vec<&str> = entra::CLOUDS.iter().map(|c| c.name).collect();
            return Err(cx.invalid(
                cloud.span(),
                ctx(
                    "cloud",
                    format!(
                        "= {} is not one of {}",
                        crate::text::quoted(cloud.get_ref()),
                        names.join(", ")
                    ),
                ),
            ));
        };
        j.authority = Some(Spanned::new(cloud.span(), preset.authority.to_string()));
    }
    super::credentials::workload_authority(&mut j, &span);
    let identity_source = super::credentials::managed_identity_endpoint(cx, &mut j, &name, &span)?;
    let mut endpoint_origin = None;
    for (key, value) in [("authority", &j.authority), ("token_url", &j.token_url)] {
        if let Some(v) = value {
            endpoint_origin = Some((endpoint(cx, v, key, &name)?, v.span(), key));
        }
    }
    let is_entra = j.token_url.is_none()
        && endpoint_origin
            .as_ref()
            .is_none_or(|(o, _, _)| entra::is_login_host(&o.host));
    let credential = super::credentials::credential(cx, &j, &name, is_entra, base)?;
    if is_entra && !entra::accepts_scope(&j.scope) {
        return Err(cx.invalid(
            span,
            ctx("scope", format!("= `{}`: {}", j.scope, entra::SCOPE_RULE)),
        ));
    }
    let managed = identity_source.is_some();
    if let Some((origin, span, key)) = &endpoint_origin
        && origin.scheme == "http"
        && !super::network::is_loopback_host(&origin.host)
        && !(managed && super::network::is_link_local_host(&origin.host))
        && !j.allow_insecure_http
    {
        return Err(cx.invalid(
            span.clone(),
            ctx(
                key,
                format!(
                    "is plain http to `{}`: the client secret would cross the network unencrypted. Use https, or set `allow_insecure_http = true` for this job if the network is trusted",
                    origin.host
                ),
            ),
        ));
    }
    let mut allowed_hosts = Vec::new();
    for h in j.allowed_hosts.unwrap_or_default() {
        let origin = Origin::parse(h.get_ref())
            .map_err(|e| cx.invalid(h.span(), ctx("allowed_hosts", e)))?;
        allowed_hosts.push(origin);
    }
    // The metadata address hands out this machine's identity: only a job that says it is
    // one may reach it, never one pointed there by mistake (or by an attacker's config).
    if !managed {
        let endpoint = endpoint_origin.as_ref().map(|(o, s, k)| (o, s.clone(), *k));
        let listed = allowed_hosts
            .iter()
            .map(|o| (o, span.clone(), "allowed_hosts"));
        if let Some((o, s, k)) = endpoint
            .into_iter()
            .chain(listed)
            .find(|(o, _, _)| super::network::is_link_local_host(&o.host))
        {
            return Err(cx.invalid(
                s,
                ctx(
                    k,
                    format!(
                        "reaches the link-local address `{}`, where cloud metadata services hand out the machine's identity; only a `client_auth = \"managed_identity\"` job may",
                        o.host
                    ),
                ),
            ));
        }
    }
    if !allowed_hosts.is_empty() {
        let (origin, span, key) = match &endpoint_origin {
            Some((o, s, k)) => (o.clone(), s.clone(), *k),
            None => (
                Origin::of_url(entra::DEFAULT_AUTHORITY).expect("valid default"),
                span.clone(),
                "authority",
            ),
        };
        if !allowed_hosts
            .iter()
            .any(|a| a.matches(&origin.scheme, &origin.host, origin.port))
        {
            return Err(cx.invalid(
                span,
                ctx(
                    key,
                    format!(
                        "is at {origin}, which `allowed_hosts` does not list: every refresh would be refused"
                    ),
                ),
            ));
        }
    }
    let token_params = j
        .token_params
        .unwrap_or_else(|| Spanned::new(0..0, BTreeMap::new()));
    for key in token_params.get_ref().keys() {
        if RESERVED_PARAMS.contains(&key.as_str()) {
            return Err(cx.invalid(
                token_params.span(),
                ctx(
                    "token_params",
                    format!("sets `{key}`, which the plugin sets itself"),
                ),
            ));
        }
    }
    let schedule = match &j.schedule {
        Some(s) => {
            Schedule::parse(s.get_ref()).map_err(|e| cx.invalid(s.span(), ctx("schedule", e)))?
        }
        None => Schedule::Auto,
    };
    let timeout = match &j.timeout {
        Some(t) => cx.duration(t, &format!("jobs.{name}.timeout"), secs(1)..=secs(HOUR))?,
        None => DEFAULT_RUN_TIMEOUT,
    };
    let limits = match &j.limits {
        Some(l) => limits(cx, l, *default_limits, &format!("jobs.{name}.limits"))?,
        None => *default_limits,
    };
    let wasi = j
        .wasi
        .as_ref()
        .map(|w| wasi_version(cx, w, &format!("jobs.{name}.wasi")))
        .transpose()?;
    let sinks = j
        .sinks
        .iter()
        .enumerate()
        .map(|(k, s)| super::consumers::sink(cx, s, &format!("jobs.{name}.sinks[{k}]"), base))
        .collect::<Result<Vec<_>, _>>()?;
    let on_change = j
        .on_change
        .as_ref()
        .map(|a| super::consumers::on_change(cx, a, &format!("jobs.{name}.on_change"), base))
        .transpose()?;
    let upstreams = super::proxy::upstreams(
        cx,
        j.upstreams.as_ref(),
        &j.scope,
        j.allow_insecure_http,
        &name,
    )?;
    let consumers = j
        .consumers
        .as_ref()
        .map(|c| super::consumers::consumers(cx, c, &format!("jobs.{name}.consumers")))
        .transpose()?
        .unwrap_or_default();
    Ok(JobConfig {
        name,
        scope: j.scope,
        authority: j.authority.map(Spanned::into_inner),
        token_url: j.token_url.map(Spanned::into_inner),
        client_auth: j.client_auth,
        signing_alg: credential.signing_alg,
        key_id: credential.key_id,
        assertion_file: credential.assertion_file,
        given_ids: credential.given_ids,
        identity_source,
        allowed_hosts,
        upstreams,
        allow_insecure_http: j.allow_insecure_http,
        schedule,
        plugin: j.plugin.map(|p| base.join(p)),
        wasi,
        secrets: j.secrets.into_inner(),
        token_params: token_params.into_inner(),
        timeout,
        limits,
        sinks,
        on_change,
        consumers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::ClientAuth;

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
        super::parse(text, Path::new("/etc/tw/tokenwarden.toml"))
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn parses_the_documented_example() {
        let c = parse(GOOD).unwrap();
        assert_eq!(
            c.store.backend,
            StoreBackend::Sqlite(PathBuf::from("/etc/tw/data/tw.db"))
        );
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
    fn wasi_is_chosen_per_file_and_per_job_and_checked() {
        let c = parse(GOOD).unwrap();
        assert_eq!((c.wasi, c.jobs[0].wasi), (None, None));
        let text = format!(
            "wasi = \"0.3\"\n{}",
            GOOD.replace("schedule = ", "wasi = \"0.2\"\nschedule = ")
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.wasi, Some(WasiVersion::P3));
        assert_eq!(c.jobs[0].wasi, Some(WasiVersion::P2));
        for bad in ["0.4", "p3", "", "1"] {
            let e = err(&GOOD.replace("schedule = ", &format!("wasi = \"{bad}\"\nschedule = ")));
            assert!(e.contains("line 8") && e.contains("jobs.graph.wasi"), "{e}");
        }
        let e = err(&format!("wasi = 3\n{GOOD}"));
        assert!(e.contains("wasi"), "{e}");
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let e = err(&GOOD.replace("schedule = ", "schedul = "));
        assert!(e.contains("schedul") && e.contains("line 8"), "{e}");
        assert!(e.contains("/etc/tw/tokenwarden.toml"), "{e}");
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
            let e = err(&GOOD.replace(from, to));
            assert!(e.contains(line) && e.contains(needle), "{e}");
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
    fn duplicate_job_names_are_refused() {
        let mut text = GOOD.to_string();
        text.push_str(
            &GOOD[GOOD.find("[[jobs]]").unwrap()..].replace("Microsoft Access Token", "Other"),
        );
        assert!(err(&text).contains("used twice"));
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
        assert_eq!(l.http.connect_timeout, Duration::from_secs(2));
        assert_eq!(l.http.max_response_body, 64 * 1024);
        assert_eq!(l.max_resources, RunLimits::default().max_resources);
    }

    /// Every number is refused outside its documented range when the file loads: zero,
    /// one past the ends, the largest integers, wrong units.
    #[test]
    fn out_of_range_numbers_are_refused_at_load() {
        let limit_cases = [
            "max_memory = \"lots\"",
            "max_memory = 0",
            "max_memory = \"16 EiB\"",
            "max_memory = 9223372036854775807",
            "max_memory = -1",
            "connect_timeout = \"0s\"",
            "connect_timeout = \"18446744073709551615s\"",
            "first_byte_timeout = \"11m\"",
            "max_resources = -1",
            "max_resources = 9223372036854775807",
            "max_response_headers = 9223372036854775807",
            "max_response_headers = 0",
            "max_response_body = \"1 TiB\"",
            "max_output_bytes = 0",
            "max_token_lifetime = \"1s\"",
            "max_stack = 1",
        ];
        for bad in limit_cases {
            let e = err(&format!("{GOOD}[jobs.limits]\n{bad}\n"));
            let key = bad.split(' ').next().unwrap();
            assert!(e.contains(key) && e.contains("line 15"), "{bad}: {e}");
        }
        let daemon_cases = [
            "shutdown_grace = \"18446744073709551615s\"",
            "retry_initial = \"0s\"",
            "retry_initial = \"10ms\"",
            "retry_max = \"1ms\"",
            "throttle_default = \"9999999999h\"",
            "max_retry_after = \"0s\"",
            "min_interval = \"0s\"",
            "permanent_retry_max = \"30d\"",
            "max_concurrent_runs = 0",
            "max_concurrent_runs = 9223372036854775807",
            "refresh_lead = \"2d\"",
        ];
        for bad in daemon_cases {
            let e = err(&format!("[daemon]\n{bad}\n{GOOD}"));
            let key = bad.split(' ').next().unwrap();
            assert!(e.contains(key) && e.contains("line 2"), "{bad}: {e}");
        }
        for bad in [
            "timeout = \"0s\"",
            "timeout = \"18446744073709551615s\"",
            "schedule = \"every 18446744073709551615s\"",
            "schedule = \"every 0s\"",
            "schedule = \"every 400d\"",
        ] {
            let e = err(&GOOD.replace("schedule = \"every 45m\"", bad));
            assert!(e.contains("line 8"), "{bad}: {e}");
        }
        for bad in [
            "lease_ttl = \"0s\"",
            "poll_interval = \"1ms\"",
            "pool_size = 0",
        ] {
            let e = err(&GOOD.replace("path = \"data/tw.db\"", &format!("path = \"x.db\"\n{bad}")));
            assert!(e.contains(bad.split(' ').next().unwrap()), "{bad}: {e}");
        }
    }

    #[test]
    fn cloud_presets_set_the_authority_from_the_one_list() {
        let job = |extra: &str| {
            format!(
                "[[jobs]]\nname = \"j\"\nscope = \"https://microsoftgraph.chinacloudapi.cn/.default\"\n{extra}\n[jobs.secrets]\nclient_id = \"id\"\nclient_secret = \"secret\"\ntenant_id = \"t\"\naccess_token = \"token\"\n"
            )
        };
        for cloud in tokenwarden_contract::entra::CLOUDS {
            let c = parse(&job(&format!("cloud = \"{}\"", cloud.name))).unwrap();
            assert_eq!(c.jobs[0].authority.as_deref(), Some(cloud.authority));
        }
        let china = parse(&job("cloud = \"china\"")).unwrap();
        assert_eq!(
            china.jobs[0].upstreams,
            vec![Origin::of_url("https://microsoftgraph.chinacloudapi.cn").unwrap()]
        );
        let e = err(&job("cloud = \"mars\""));
        assert!(
            e.contains("public, usgov, china") && e.contains("line 4"),
            "{e}"
        );
        let e = err(&job(
            "cloud = \"usgov\"\nauthority = \"https://login.microsoftonline.us\"",
        ));
        assert!(
            e.contains("one of `cloud`, `authority` or `token_url`"),
            "{e}"
        );
    }

    #[test]
    fn endpoints_that_would_fail_at_run_time_are_refused_at_load() {
        let job = |extra: &str| {
            format!(
                "[[jobs]]\nname = \"j\"\nscope = \"s\"\n{extra}\n[jobs.secrets]\nclient_id = \"id\"\nclient_secret = \"secret\"\naccess_token = \"token\"\n"
            )
        };
        let cases = [
            (
                "token_url = \"https://idp.example/t\"\nallowed_hosts = [\"https://other.example\"]",
                "allowed_hosts",
            ),
            ("token_url = \"http://2130706433/t\"", "127.0.0.1"),
            ("token_url = \"http://0x7f.1/t\"", "127.0.0.1"),
            ("token_url = \"https://IDP.example./t\"", "trailing dot"),
            (
                "token_url = \"http://idp.example/t\"",
                "allow_insecure_http",
            ),
            (
                "token_url = \"https://idp.example/t\"\ntoken_params = { client_secret = \"x\" }",
                "client_secret",
            ),
            (
                "token_url = \"https://idp.example/t\"\ntoken_params = { grant_type = \"password\" }",
                "grant_type",
            ),
        ];
        for (extra, needle) in cases {
            let e = err(&job(extra));
            assert!(e.contains(needle) && e.contains("line"), "{extra}: {e}");
        }
        parse(&job(
            "token_url = \"http://idp.example/t\"\nallow_insecure_http = true",
        ))
        .unwrap();
        parse(&job("token_url = \"http://localhost:8421/t\"")).unwrap();
        parse(&job("token_url = \"http://[::1]:8421/t\"")).unwrap();
        parse(&job("token_url = \"https://idp.example/t\"\nallowed_hosts = [\"https://*.example\", \"https://idp.example\"]")).unwrap();
    }

    #[test]
    fn a_token_may_not_overwrite_a_credential() {
        let other = GOOD[GOOD.find("[[jobs]]").unwrap()..]
            .replace("\"graph\"", "\"other\"")
            .replace("Microsoft Client", "Other Client")
            .replace("Microsoft Tenant", "Other Tenant")
            .replace("Microsoft Access Token", "Microsoft Client Secret");
        let two = format!("[admin]\ntoken_secret = \"Admin Token\"\n{GOOD}{other}");
        let e = err(&two);
        assert!(
            e.contains("Microsoft Client Secret") && e.contains("job `graph`"),
            "{e}"
        );
        let admin = format!(
            "[admin]\ntoken_secret = \"Admin Token\"\n{}",
            GOOD.replace("Microsoft Access Token", "Admin Token")
        );
        assert!(err(&admin).contains("admin API"));
        let own = GOOD.replace("\"Microsoft Access Token\"", "\"Microsoft Client ID\"");
        assert!(err(&own).contains("own credentials"));
        let shared = format!(
            "{GOOD}{}",
            GOOD[GOOD.find("[[jobs]]").unwrap()..].replace("\"graph\"", "\"other\"")
        );
        assert!(err(&shared).contains("also the token of job"));
        // A private key under any other role, in its own job or another.
        let key_job = |name: &str, roles: &str| {
            format!(
                "[[jobs]]\nname = \"{name}\"\nscope = \"api\"\ntoken_url = \"https://idp.example/t\"\nclient_auth = \"tls_client_auth\"\n[jobs.secrets]\naccess_token = \"token {name}\"\n{roles}\n"
            )
        };
        let own = key_job(
            "a",
            "client_id = \"K\"\nprivate_key = \"K\"\ncertificate = \"C\"",
        );
        assert!(
            err(&own).contains("a private key is bound as `private_key` only"),
            "{}",
            err(&own)
        );
        let as_cert = key_job(
            "a",
            "client_id = \"I\"\nprivate_key = \"K\"\ncertificate = \"K\"",
        );
        assert!(err(&as_cert).contains("`K` is both"), "{}", err(&as_cert));
        let across = format!(
            "{}{}",
            key_job(
                "a",
                "client_id = \"I\"\nprivate_key = \"K\"\ncertificate = \"C\""
            ),
            key_job(
                "b",
                "client_id = \"K\"\nprivate_key = \"K2\"\ncertificate = \"C2\""
            )
        );
        assert!(
            err(&across).contains("job `a`'s `secrets.private_key`"),
            "{}",
            err(&across)
        );
    }

    #[test]
    fn store_backends() {
        let pg = GOOD.replace(
            "path = \"data/tw.db\"",
            "url = \"postgresql://tw@db.example:5432/tw?host=/run/postgresql\"\nlease_ttl = \"20s\"",
        );
        let c = parse(&pg).unwrap();
        assert!(
            matches!(c.store.backend, StoreBackend::Postgres(ref u) if u.contains("db.example"))
        );
        assert_eq!(c.store.lease_ttl, Duration::from_secs(20));
        let both = GOOD.replace(
            "path = \"data/tw.db\"",
            "path = \"a\"\nurl = \"postgresql://x\"",
        );
        assert!(err(&both).contains("both"));
        let bad = GOOD.replace("path = \"data/tw.db\"", "url = \"mysql://x\"");
        assert!(err(&bad).contains("PostgreSQL"));
    }

    #[test]
    fn jobs_parsed_block_by_block_agree_with_the_whole_file() {
        // Three jobs; the third has an error: the line is the file's, not the block's.
        let third = GOOD[GOOD.find("[[jobs]]").unwrap()..].to_string();
        let mut text = GOOD.to_string();
        for (i, name) in ["b", "c"].iter().enumerate() {
            let block = third
                .replace("\"graph\"", &format!("\"{name}\""))
                .replace("Microsoft", &format!("M{i}"));
            text.push_str(&block);
        }
        assert_eq!(parse(&text).unwrap().jobs.len(), 3);
        let bad =
            text.replacen("every 45m", "every never", 3)
                .replacen("every never", "every 45m", 2);
        let e = err(&bad);
        assert!(e.contains("line 26") && e.contains("job `c`"), "{e}");
        // A table after the jobs, and a `[[jobs]]` line inside a multi-line string: the whole
        // file is parsed at once, with the same meaning.
        let after = format!("{text}[daemon]\nmin_interval = \"5s\"\n");
        assert_eq!(
            parse(&after).unwrap().daemon.policy.min_interval,
            Duration::from_secs(5)
        );
        let tricky = text.replacen(
            "scope = \"https://graph.microsoft.com/.default\"",
            "scope = \"https://graph.microsoft.com/.default\"\ntoken_params = { note = \"\"\"\n[[jobs]]\n\"\"\" }",
            1,
        );
        let c = parse(&tricky).unwrap();
        assert_eq!(c.jobs.len(), 3);
        assert_eq!(c.jobs[0].token_params["note"], "[[jobs]]\n");
        assert!(super::super::blocks::is_jobs_header(
            "  [[ jobs ]]  # the first job\n"
        ));
        assert!(!super::super::blocks::is_jobs_header("[[jobs.limits]]\n"));
        assert!(!super::super::blocks::is_jobs_header("x = \"[[jobs]]\""));
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
