//! `tokenwarden refresh`, `status` and `config check`: one job now, every job's state, and
//! what the config resolves to.

use super::{Usage, exit, load, runtime_options};
use crate::config::Config;
use crate::daemon::{Attempt, Leasing, RunRecord, Trigger, owner_name};
use crate::job::JobConfig;
use crate::outcome::Retry;
use crate::runtime::Runtime;
use crate::store::{Access, LeaseMode, SecretMeta, SecretStore};
use crate::time::{unix_now, unix_now_ms};
use serde_json::json;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

fn find<'a>(config: &'a Config, name: &str) -> Result<&'a JobConfig, Usage> {
    config.job(name).ok_or_else(|| {
        let names: Vec<_> = config.jobs.iter().map(|j| j.name.as_str()).collect();
        Usage(format!(
            "no job named `{name}` in {} (jobs: {})",
            config.path.display(),
            if names.is_empty() {
                "none".into()
            } else {
                names.join(", ")
            }
        ))
    })
}

/// Runs a job once under its lease, or, when another process is running it right now,
/// waits for that run and reports it.
pub(super) async fn refresh(
    config_path: &Path,
    job_name: &str,
    as_json: bool,
) -> anyhow::Result<u8> {
    let (config, store) = load(config_path, Access::ReadWrite).await?;
    let job = find(&config, job_name)?;
    let leasing = Leasing {
        store: store.clone(),
        runtime: Arc::new(Runtime::new(runtime_options(&config, &store)?)?),
        owner: owner_name(),
        ttl: config.store.lease_ttl,
        policy: config.daemon.policy.clone(),
    };
    let deadline =
        tokio::time::Instant::now() + job.timeout + config.store.lease_ttl + Duration::from_secs(5);
    loop {
        match leasing
            .attempt(job, Trigger::Manual, LeaseMode::Any, None, None)
            .await
        {
            Attempt::Ran(ran) => return print_record(job, &ran.record, as_json),
            Attempt::Held(row) => {
                let holder = row.lease_owner.clone().unwrap_or_default();
                eprintln!(
                    "`{job_name}` is being refreshed by {} right now; waiting for that run",
                    crate::text::clean(&holder, 100)
                );
                if let Some(record) = joined(&*store, job_name, row.revision, deadline).await? {
                    return print_record(job, &record, as_json);
                }
                if tokio::time::Instant::now() >= deadline {
                    eprintln!("error: `{job_name}` is still held by {holder}; try again later");
                    return Ok(exit::RETRYABLE);
                }
            }
            Attempt::Moved(_) => {}
            Attempt::Unavailable(e) => {
                eprintln!("error: refresh of `{job_name}` not attempted: {e}; try again later");
                return Ok(exit::RETRYABLE);
            }
        }
    }
}

/// Waits for the run that holds the lease to release it and returns its record; `None`
/// when the lease lapsed without one, or at `deadline`.
async fn joined(
    store: &dyn SecretStore,
    job: &str,
    seen: u64,
    deadline: tokio::time::Instant,
) -> anyhow::Result<Option<RunRecord>> {
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Some(row) = store.job(job).await? else {
            return Ok(None);
        };
        if row.holder(unix_now_ms()).is_none() {
            if row.revision == seen {
                return Ok(None);
            }
            return Ok(row.last_run.as_deref().and_then(RunRecord::from_json));
        }
    }
    Ok(None)
}

fn print_record(job: &JobConfig, record: &RunRecord, as_json: bool) -> anyhow::Result<u8> {
    let mut out = std::io::stdout().lock();
    if as_json {
        let mut value = serde_json::to_value(record)?;
        value["job"] = json!(job.name);
        value["token_secret"] = json!(job.secrets.access_token);
        serde_json::to_writer(&mut out, &value)?;
        writeln!(out)?;
    }
    let line = super::report::run_line(&job.name, &job.secrets.access_token, record, unix_now());
    match &record.error {
        None => {
            if !as_json {
                writeln!(out, "{line}")?;
            }
            Ok(exit::OK)
        }
        Some(e) => {
            eprintln!("error: {line}; the stored token was not replaced");
            Ok(match e.retry {
                Retry::Retryable => exit::RETRYABLE,
                Retry::Permanent => exit::PERMANENT,
            })
        }
    }
}

/// Every job's token, last run and plan, read from the store.
pub(super) async fn status(config_path: &Path, as_json: bool) -> anyhow::Result<u8> {
    let (config, store) = load(config_path, Access::ReadOnly).await?;
    let metas: HashMap<String, SecretMeta> = store
        .list()
        .await?
        .into_iter()
        .map(|m| (m.name.clone(), m))
        .collect();
    let rows: HashMap<String, crate::store::JobRow> = store
        .jobs()
        .await?
        .into_iter()
        .map(|r| (r.job.clone(), r))
        .collect();
    let now_ms = unix_now_ms();
    let mut out = std::io::stdout().lock();
    if as_json {
        let jobs: Vec<_> = config
            .jobs
            .iter()
            .map(|job| {
                let token = metas.get(&job.secrets.access_token);
                let row = rows.get(&job.name);
                json!({
                    "name": job.name,
                    "schedule": job.schedule.to_string(),
                    "token_secret": job.secrets.access_token,
                    "token_expires_at": token.and_then(|m| m.expires_at),
                    "token_expires_in_seconds": token.and_then(|m| m.expires_at).map(|e| crate::time::secs_until(e, now_ms / 1000)),
                    "token_updated_at": token.map(|m| m.updated_at),
                    "last_run": row.and_then(|r| r.last_run.as_deref().and_then(RunRecord::from_json)),
                    "consecutive_failures": row.map_or(0, |r| r.failures),
                    "next_run_at": row.and_then(|r| r.next_due_ms).map(|ms| ms / 1000),
                    "lease_holder": row.and_then(|r| r.holder(now_ms)),
                })
            })
            .collect();
        serde_json::to_writer_pretty(&mut out, &jobs)?;
        writeln!(out)?;
    } else {
        for (i, job) in config.jobs.iter().enumerate() {
            if i > 0 {
                writeln!(out)?;
            }
            write!(
                out,
                "{}",
                super::report::status_block(
                    job,
                    metas.get(&job.secrets.access_token),
                    rows.get(&job.name),
                    now_ms
                )
            )?;
        }
    }
    Ok(exit::OK)
}

/// Validates the config and shows what each job resolves to.
pub(super) async fn check(config_path: &Path, as_json: bool) -> anyhow::Result<u8> {
    let config = Config::load(config_path)?;
    let default_wasi = super::default_wasi(config.wasi)?;
    // Which bound secrets are set: read-only; a store not created yet holds none.
    let not_created =
        matches!(&config.store.backend, crate::store::StoreBackend::Sqlite(p) if !p.exists());
    let set: Option<HashMap<String, SecretMeta>> = if not_created {
        Some(HashMap::new())
    } else {
        match crate::store::open(&config.store, &config.tls, Access::ReadOnly).await {
            Ok(store) => Some(
                store
                    .list()
                    .await?
                    .into_iter()
                    .map(|m| (m.name.clone(), m))
                    .collect(),
            ),
            Err(e) => {
                eprintln!(
                    "note: cannot read the store ({e}); secrets are shown without their state"
                );
                None
            }
        }
    };
    let is_set = |name: &str| set.as_ref().map(|s| s.contains_key(name));
    let mut out = std::io::stdout().lock();
    let jobs: Vec<_> = config
        .jobs
        .iter()
        .map(|job| {
            let allowed: Vec<String> = job
                .effective_allow_list()
                .unwrap_or_default()
                .iter()
                .map(ToString::to_string)
                .collect();
            let secrets = job.secrets.bindings();
            json!({
                "name": job.name,
                "token_endpoint": job.endpoint(),
                "client_auth": job.client_auth,
                "signing_alg": (job.client_auth == crate::ClientAuth::PrivateKeyJwt)
                    .then(|| job.signing_alg.as_str()),
                "key_id": job.key_id,
                "assertion_file": job.assertion_file,
                "given_ids": job.given_ids.iter().map(|(role, value)| json!({
                    "role": role, "value": value,
                })).collect::<Vec<_>>(),
                "allowed_hosts": allowed,
                "schedule": job.schedule.to_string(),
                "wasi": job.wasi.unwrap_or(default_wasi).as_str(),
                "timeout": crate::time::human(job.timeout),
                "limits": {
                    "max_memory": job.limits.max_memory,
                    "connect_timeout": crate::time::human(job.limits.http.connect_timeout),
                    "first_byte_timeout": crate::time::human(job.limits.http.first_byte_timeout),
                    "max_response_body": job.limits.http.max_response_body,
                    "max_token_lifetime": crate::time::human(job.limits.max_token_lifetime),
                },
                "secrets": secrets.iter().map(|(role, name)| json!({
                    "role": role, "name": name, "set": is_set(name),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    if as_json {
        serde_json::to_writer_pretty(
            &mut out,
            &json!({"config": config.path, "store": config.store.describe(), "jobs": jobs}),
        )?;
        writeln!(out)?;
        return Ok(exit::OK);
    }
    writeln!(out, "{}: valid", config.path.display())?;
    writeln!(out, "store: {}", config.store.describe())?;
    for j in &jobs {
        writeln!(out, "\njob {}", j["name"].as_str().unwrap_or_default())?;
        writeln!(
            out,
            "  token endpoint  {}",
            j["token_endpoint"].as_str().unwrap_or_default()
        )?;
        writeln!(
            out,
            "  client auth     {}",
            j["client_auth"].as_str().unwrap_or_default()
        )?;
        let hosts: Vec<&str> = j["allowed_hosts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|h| h.as_str())
            .collect();
        writeln!(out, "  allowed hosts   {}", hosts.join(", "))?;
        writeln!(
            out,
            "  schedule        {}, timeout {}, WASI {}",
            j["schedule"].as_str().unwrap_or_default(),
            j["timeout"].as_str().unwrap_or_default(),
            j["wasi"].as_str().unwrap_or_default()
        )?;
        let l = &j["limits"];
        writeln!(
            out,
            "  limits          memory {} B, connect {}, first byte {}, reply {} B, token lifetime at most {}",
            l["max_memory"],
            l["connect_timeout"].as_str().unwrap_or_default(),
            l["first_byte_timeout"].as_str().unwrap_or_default(),
            l["max_response_body"],
            l["max_token_lifetime"].as_str().unwrap_or_default()
        )?;
        for s in j["secrets"].as_array().into_iter().flatten() {
            let state = match s["set"].as_bool() {
                Some(true) => "set",
                Some(false) if s["role"] == "access_token" => {
                    "not yet (the first refresh writes it)"
                }
                Some(false) => "NOT SET",
                None => "unknown",
            };
            let name = s["name"].as_str().unwrap_or_default();
            write!(
                out,
                "  {:<15} {:<36} {state}",
                s["role"].as_str().unwrap_or_default(),
                format!("\"{name}\"")
            )?;
            if s["set"] == json!(false) && s["role"] != "access_token" {
                write!(out, "  (`tokenwarden secrets set '{name}'`)")?;
            }
            writeln!(out)?;
        }
    }
    Ok(exit::OK)
}
