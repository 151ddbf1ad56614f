//! Getting started and packaging: `init`, `component export`, `completions`, `man`.

use super::{Cli, Usage, exit};
use crate::emulator;
use crate::job::WasiVersion;
use crate::runtime::builtin_component;
use anyhow::Context;
use clap::CommandFactory;
use std::io::Write;
use std::path::Path;

const HEADER: &str = r#"# tokenwarden.toml: written by `tokenwarden init`. Every key is documented in
# docs/configuration.md; unknown keys are errors. Relative paths are relative to this file.

[store]
path = "data/tokenwarden.db"         # SQLite, created on first use (folder 0700, file 0600)
# url = "postgresql://tokenwarden@db.example:5432/tokenwarden"   # instead of path: several hosts

[admin]                              # the daemon's HTTP API (`tokenwarden run`)
listen = "127.0.0.1:8420"
# token_secret = "Admin Token"       # required off loopback: store name of the bearer token
"#;

const ENTRA_JOB: &str = r#"
[[jobs]]
name = "graph"
scope = "https://graph.microsoft.com/.default"
# authority = "https://login.microsoftonline.com"   # the default (Entra public cloud)
schedule = "auto"                    # refresh at half the token's life, at least 10 min before expiry
[jobs.secrets]                       # role = store name: the job's whole grant
client_id = "Microsoft Client ID"
client_secret = "Microsoft Client Secret"
tenant_id = "Microsoft Tenant ID"
access_token = "Microsoft Access Token"   # where the token goes
"#;

/// A `[[jobs]]` entry for an emulator at `authority`.
pub(super) fn emulator_job(authority: &str) -> String {
    format!(
        r#"
[[jobs]]
name = "graph"
scope = "https://graph.microsoft.com/.default"
authority = "{authority}"   # tokenwarden emulator (plain http is fine on loopback)
schedule = "auto"
[jobs.secrets]
client_id = "Microsoft Client ID"
client_secret = "Microsoft Client Secret"
tenant_id = "Microsoft Tenant ID"
access_token = "Microsoft Access Token"
"#
    )
}

/// The commands that store the emulator's credentials under the names of [`emulator_job`].
fn emulator_secrets(tenant: &str, client_id: &str) -> String {
    format!(
        "printf %s '{client_id}' | tokenwarden secrets set 'Microsoft Client ID'\n\
         printf %s '{secret}' | tokenwarden secrets set 'Microsoft Client Secret'\n\
         printf %s '{tenant}' | tokenwarden secrets set 'Microsoft Tenant ID'",
        secret = emulator::DEMO_CLIENT_SECRET
    )
}

/// What the emulator prints at start: a job for it and the commands to set its secrets.
pub(crate) fn emulator_snippet(authority: &str, tenant: &str, client_id: &str) -> String {
    format!(
        "A job for this emulator (tokenwarden.toml):\n{}\nIts credentials (with the demo secret):\n{}",
        emulator_job(authority),
        emulator_secrets(tenant, client_id)
    )
}

/// Writes a commented config to `path`, never over an existing file.
pub(super) fn init(path: &Path, for_emulator: bool) -> anyhow::Result<u8> {
    let job = if for_emulator {
        emulator_job(&format!("http://{}", emulator::DEFAULT_LISTEN))
    } else {
        ENTRA_JOB.to_string()
    };
    let text = format!("{HEADER}{job}");
    // The text must load: a template that does not would be a bug here.
    crate::config::Config::parse(&text, path).context("the generated config does not load")?;
    if let Some(dir) = path.parent() {
        crate::files::create_dir(dir, 0o755)?;
    }
    let mut file = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(Usage(format!(
                "{} already exists; init never overwrites a config (move it away, or edit it)",
                path.display()
            ))
            .into());
        }
        Err(e) => return Err(e).with_context(|| format!("cannot write {}", path.display())),
    };
    file.write_all(text.as_bytes())?;
    let flag = if path == Path::new(crate::config::DEFAULT_CONFIG) {
        String::new()
    } else {
        format!(" --config {}", path.display())
    };
    eprintln!("wrote {}. Next:", path.display());
    if for_emulator {
        eprintln!(
            "  tokenwarden emulator &            # an Entra-compatible endpoint on {}\n{}\n  tokenwarden config check{flag}\n  tokenwarden refresh graph{flag}\n  tokenwarden run{flag}",
            emulator::DEFAULT_LISTEN,
            emulator_secrets(emulator::DEMO_TENANT, emulator::DEMO_CLIENT_ID)
                .lines()
                .map(|l| format!("  {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    } else {
        eprintln!(
            "  printf %s \"$CLIENT_ID\"     | tokenwarden secrets set 'Microsoft Client ID'\n  printf %s \"$CLIENT_SECRET\" | tokenwarden secrets set 'Microsoft Client Secret'\n  printf %s \"$TENANT_ID\"     | tokenwarden secrets set 'Microsoft Tenant ID'\n  tokenwarden config check{flag}\n  tokenwarden refresh graph{flag}\n  tokenwarden run{flag}"
        );
    }
    Ok(exit::OK)
}

pub(super) fn export(file: &Path, wasi: WasiVersion) -> anyhow::Result<u8> {
    let component = builtin_component(wasi);
    std::fs::write(file, component).with_context(|| format!("cannot write {}", file.display()))?;
    println!(
        "wrote the built-in component for WASI {wasi} ({} bytes) to {}",
        component.len(),
        file.display()
    );
    Ok(exit::OK)
}

pub(super) fn completions(shell: clap_complete::Shell) -> anyhow::Result<u8> {
    clap_complete::generate(
        shell,
        &mut Cli::command(),
        "tokenwarden",
        &mut std::io::stdout(),
    );
    Ok(exit::OK)
}

pub(super) fn man() -> anyhow::Result<u8> {
    clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_templates_load() {
        let p = Path::new("/tmp/x/tokenwarden.toml");
        crate::config::Config::parse(&format!("{HEADER}{ENTRA_JOB}"), p).unwrap();
        let c = crate::config::Config::parse(
            &format!("{HEADER}{}", emulator_job("http://127.0.0.1:8421")),
            p,
        )
        .unwrap();
        assert_eq!(
            c.jobs[0].authority.as_deref(),
            Some("http://127.0.0.1:8421")
        );
    }
}
