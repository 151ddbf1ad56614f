//! `tokenwarden secrets ...`: values in, values out (only `get` prints one), names and
//! dates, deletion and key rotation.

use super::{SecretsCommand, Usage, exit, load};
use crate::config::Config;
use crate::store::{Access, SecretStore, StoreError};
use crate::time::{rfc3339, unix_now};
use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};
use std::io::{IsTerminal, Read, Write};
use std::path::Path;

pub(super) async fn run(command: SecretsCommand, config_path: &Path) -> anyhow::Result<u8> {
    match command {
        SecretsCommand::Set { name } => set(config_path, &name).await,
        SecretsCommand::Get { name } => {
            let (_, store) = load(config_path, Access::ReadOnly).await?;
            get(&*store, &name).await
        }
        SecretsCommand::List { json } => {
            let (_, store) = load(config_path, Access::ReadOnly).await?;
            let list = store.list().await?;
            let mut out = std::io::stdout().lock();
            if json {
                serde_json::to_writer_pretty(&mut out, &list)?;
                writeln!(out)?;
            } else {
                write!(out, "{}", super::report::secrets_table(&list, unix_now()))?;
            }
            Ok(exit::OK)
        }
        SecretsCommand::Delete { name, force } => delete(config_path, &name, force).await,
        SecretsCommand::ImportKey {
            name,
            certificate,
            password_file,
        } => {
            super::keys::import(
                config_path,
                &name,
                certificate.as_deref(),
                password_file.as_deref(),
            )
            .await
        }
        SecretsCommand::RotateKey { master } => {
            let (_, store) = load(config_path, Access::ReadWrite).await?;
            let r = store.rotate_key(master).await?;
            eprintln!(
                "re-encrypted {} secrets under data key version {} of {}",
                r.secrets,
                r.data_key_version,
                store.describe()
            );
            if let Some(id) = r.master_key_id {
                eprintln!("the master key is now {id}");
                if std::env::var_os(crate::store::KEY_ENV).is_some() {
                    eprintln!(
                        "give every process the new key: set {} to the value of {}",
                        crate::store::KEY_ENV,
                        crate::store::NEW_KEY_ENV
                    );
                }
            }
            Ok(exit::OK)
        }
    }
}

/// Reads a value from stdin: UTF-8, one trailing newline dropped, not empty.
fn read_value(name: &str) -> anyhow::Result<SecretString> {
    if std::io::stdin().is_terminal() {
        eprintln!("Enter the value of `{name}`, then press Ctrl-D:");
    }
    let mut bytes = zeroize::Zeroizing::new(Vec::new());
    std::io::stdin()
        .read_to_end(&mut bytes)
        .context("cannot read the value from stdin")?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| Usage("the value on stdin is not UTF-8 text; nothing stored".into()))?;
    let trimmed = strip_one_newline(text);
    if trimmed.is_empty() {
        return Err(Usage("empty value on stdin; nothing stored".into()).into());
    }
    Ok(SecretString::from(trimmed.to_string()))
}

async fn set(config_path: &Path, name: &str) -> anyhow::Result<u8> {
    crate::store::check_name(name).map_err(|e| Usage(e.to_string()))?;
    let value = read_value(name)?;
    let (_, store) = load(config_path, Access::ReadWrite).await?;
    match store.set(name, &value, None).await {
        Ok(_) => {
            eprintln!("stored `{name}`");
            Ok(exit::OK)
        }
        Err(StoreError::Invalid(m)) => Err(Usage(m).into()),
        Err(e) => Err(e.into()),
    }
}

async fn get(store: &dyn SecretStore, name: &str) -> anyhow::Result<u8> {
    let Some(secret) = store.get(name).await? else {
        eprintln!("error: no secret named {}", crate::text::quoted(name));
        return Ok(exit::NOT_FOUND);
    };
    if let Some(at) = secret.meta.expires_at.filter(|&at| at <= unix_now()) {
        eprintln!("warning: `{name}` expired at {}", rfc3339(at));
    }
    let mut out = std::io::stdout().lock();
    out.write_all(secret.value.expose_secret().as_bytes())?;
    // A newline for people; none for pipes, so files get the exact value.
    if out.is_terminal() {
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(exit::OK)
}

/// The jobs that bind `name`, and how.
fn bound_by(config: &Config, name: &str) -> Vec<String> {
    let mut uses = Vec::new();
    for job in &config.jobs {
        if job.secrets.access_token == name {
            uses.push(format!("job `{}` writes its token there", job.name));
        }
        if job.secrets.inputs().any(|n| n == name) {
            uses.push(format!("job `{}` reads it", job.name));
        }
    }
    if config.admin.token_secret.as_deref() == Some(name) {
        uses.push("the admin API reads it as its bearer token".into());
    }
    uses
}

async fn delete(config_path: &Path, name: &str, force: bool) -> anyhow::Result<u8> {
    let (config, store) = load(config_path, Access::ReadWrite).await?;
    let uses = bound_by(&config, name);
    if !uses.is_empty() && !force {
        return Err(Usage(format!(
            "`{name}` is in use: {}; pass --force to delete it anyway",
            uses.join("; ")
        ))
        .into());
    }
    if store.delete(name).await? {
        eprintln!("deleted `{name}`");
        Ok(exit::OK)
    } else {
        eprintln!("error: no secret named {}", crate::text::quoted(name));
        Ok(exit::NOT_FOUND)
    }
}

fn strip_one_newline(s: &str) -> &str {
    s.strip_suffix("\r\n")
        .or_else(|| s.strip_suffix('\n'))
        .unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_trailing_newline_is_dropped() {
        assert_eq!(strip_one_newline("abc\n"), "abc");
        assert_eq!(strip_one_newline("abc\r\n"), "abc");
        assert_eq!(strip_one_newline("abc\n\n"), "abc\n");
        assert_eq!(strip_one_newline("abc"), "abc");
    }
}
