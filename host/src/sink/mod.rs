//! Token sink files: a job's token written where a consumer reads it, so the consumer needs
//! neither the store nor its key (`[[jobs.sinks]]`).
//!
//! A sink is rendered in one of four formats and replaced atomically ([`crate::files`]:
//! temporary file in the same folder with the final mode and owner, fsync, rename, folder
//! fsync), so a reader sees the old file or the new one, never a partial or empty one. Only
//! an unexpired, non-empty token is ever written: when refreshes fail, the last good file
//! stays. A sink whose file already holds exactly the rendered bytes (and mode and owner) is
//! left alone, so its on-change action runs only when the content changed (and two daemons
//! on one host writing the same sink do not signal twice).

pub mod action;

pub use action::{Action, ActionError};

use crate::redact::Redactor;
use secrecy::{ExposeSecret, SecretString};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use zeroize::Zeroizing;

/// Default mode of a sink file: the owner reads and writes, nobody else.
pub const DEFAULT_MODE: u32 = 0o600;
/// Default variable name of the `env` format.
pub const DEFAULT_ENV_NAME: &str = "ACCESS_TOKEN";
/// The largest file a template may render (a token is a few kilobytes).
pub const MAX_RENDERED: usize = 1024 * 1024;

/// One sink of a job.
#[derive(Clone, Debug)]
pub struct Sink {
    /// The file (its folder must exist).
    pub path: PathBuf,
    /// What the file holds.
    pub format: Format,
    /// Its permission bits; never writable by others.
    pub mode: u32,
    /// Its owner (uid), when it is to be set (needs the privilege to `chown`).
    pub owner: Option<u32>,
    /// Its group (gid), when it is to be set.
    pub group: Option<u32>,
    /// What to run when the file's content changed.
    pub on_change: Option<Action>,
}

impl Sink {
    /// A sink at `path` in `format` with the default mode and no owner, group or action.
    pub fn new(path: impl Into<PathBuf>, format: Format) -> Self {
        Self {
            path: path.into(),
            format,
            mode: DEFAULT_MODE,
            owner: None,
            group: None,
            on_change: None,
        }
    }
}

/// What a sink file holds.
#[derive(Clone, Debug)]
pub enum Format {
    /// The token alone, without a newline.
    Raw,
    /// `{"access_token", "token_type", "expires_at", "expires_in"}` (`expires_at` in Unix
    /// seconds; `expires_in` the token's lifetime in seconds from when it was stored, as in
    /// the token reply, so the file's bytes depend on the token alone).
    Json,
    /// An environment file (systemd `EnvironmentFile=`, `source` in a shell):
    /// `NAME='token'` and `NAME_EXPIRES_AT=seconds`.
    Env {
        /// The variable name.
        name: String,
    },
    /// A template rendered with minijinja.
    Template(Template),
}

impl Format {
    /// The name a config file gives the format.
    pub fn as_str(&self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Json => "json",
            Format::Env { .. } => "env",
            Format::Template(_) => "template",
        }
    }
}

/// A compiled minijinja template. Its variables: `access_token` (also `token`),
/// `token_type`, `expires_at` (Unix seconds, or none), `expires_at_rfc3339`, `expires_in`
/// (its lifetime from when it was stored) and `job`. An unknown variable is an error, not an empty
/// string.
#[derive(Clone)]
pub struct Template(Arc<minijinja::Environment<'static>>);

impl std::fmt::Debug for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Template")
    }
}

const TEMPLATE: &str = "sink";

impl Template {
    /// Compiles `source` and renders it once with sample values, so a template that could
    /// only fail at the first refresh fails when the config is read.
    pub fn new(source: &str) -> Result<Self, String> {
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.set_recursion_limit(32);
        // A file's last newline is part of the file (minijinja drops it by default).
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .keep_trailing_newline(true)
                .build()
                .map_err(|e| e.to_string())?,
        );
        env.add_template_owned(TEMPLATE, source.to_string())
            .map_err(|e| e.to_string())?;
        let t = Self(Arc::new(env));
        let sample = SecretString::from("sample-token");
        t.render(&Token {
            job: "job",
            access_token: &sample,
            token_type: "Bearer",
            expires_at: Some(2_000_000_000),
            stored_at: 1_999_996_400,
            now: 1_999_996_400,
        })
        .map_err(|e| e.to_string())?;
        Ok(t)
    }

    fn render(&self, token: &Token<'_>) -> Result<Zeroizing<Vec<u8>>, SinkError> {
        use minijinja::Value;
        let secret = token.access_token.expose_secret();
        let mut vars = std::collections::BTreeMap::<String, Value>::new();
        vars.insert("access_token".into(), secret.into());
        vars.insert("token".into(), secret.into());
        vars.insert("token_type".into(), token.token_type.into());
        vars.insert("job".into(), token.job.into());
        vars.insert("expires_at".into(), token.expires_at.into());
        vars.insert(
            "expires_at_rfc3339".into(),
            token.expires_at.map(crate::time::rfc3339).into(),
        );
        vars.insert("expires_in".into(), token.expires_in().into());
        let rendered = self
            .0
            .get_template(TEMPLATE)
            .and_then(|t| t.render(Value::from(vars)))
            .map_err(|e| {
                // minijinja's messages name the template's line and the failing operation;
                // scrubbed in case one ever quotes a value.
                let mut r = Redactor::default();
                r.add(secret);
                SinkError::Template(r.redact(&e.to_string()))
            })?;
        if rendered.len() > MAX_RENDERED {
            return Err(SinkError::Template(format!(
                "the template rendered {} bytes; at most {MAX_RENDERED} are written",
                rendered.len()
            )));
        }
        Ok(Zeroizing::new(rendered.into_bytes()))
    }
}

/// A token to write, as the store holds it.
pub struct Token<'a> {
    /// The job.
    pub job: &'a str,
    /// The token.
    pub access_token: &'a SecretString,
    /// Its type (`Bearer`).
    pub token_type: &'a str,
    /// Unix seconds at which it expires, when known.
    pub expires_at: Option<u64>,
    /// Unix seconds at which it was stored.
    pub stored_at: u64,
    /// Unix seconds now.
    pub now: u64,
}

impl std::fmt::Debug for Token<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("job", &self.job)
            .field("access_token", &"[REDACTED]")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl Token<'_> {
    fn expires_in(&self) -> Option<u64> {
        self.expires_at.map(|e| e.saturating_sub(self.stored_at))
    }

    /// Why this token must not be written anywhere, if it must not.
    pub fn unusable(&self) -> Option<SinkError> {
        if self.access_token.expose_secret().trim().is_empty() {
            return Some(SinkError::Empty);
        }
        match self.expires_at {
            Some(e) if e <= self.now => Some(SinkError::Expired { expires_at: e }),
            _ => None,
        }
    }
}

/// Why a sink was not written. Never holds the token.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The stored token is empty.
    #[error("the stored token is empty; the sink keeps its last good file")]
    Empty,
    /// The stored token has expired.
    #[error(
        "the stored token expired at {expires_at} (Unix seconds); the sink keeps its last good file"
    )]
    Expired {
        /// When it expired.
        expires_at: u64,
    },
    /// The token holds a character an environment file cannot carry in single quotes.
    #[error(
        "the token holds a quote, backslash or control character, which an env file cannot carry; use the raw or json format"
    )]
    NotEnvSafe,
    /// The template failed.
    #[error("template: {0}")]
    Template(String),
    /// The file could not be written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The sink's path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The bytes `format` gives `token`; they hold the token, so they are wiped when dropped.
pub fn render(format: &Format, token: &Token<'_>) -> Result<Zeroizing<Vec<u8>>, SinkError> {
    let secret = token.access_token.expose_secret();
    match format {
        Format::Raw => Ok(Zeroizing::new(secret.as_bytes().to_vec())),
        Format::Json => {
            let value = serde_json::json!({
                "access_token": secret,
                "token_type": token.token_type,
                "expires_at": token.expires_at,
                "expires_in": token.expires_in(),
            });
            let mut text = Zeroizing::new(value.to_string());
            text.push('\n');
            Ok(Zeroizing::new(std::mem::take(&mut *text).into_bytes()))
        }
        Format::Env { name } => {
            // Single quotes take everything literally in a shell and in systemd, except the
            // quote itself; control characters would end or split the line.
            if secret
                .chars()
                .any(|c| c == '\'' || c == '\\' || c.is_control())
            {
                return Err(SinkError::NotEnvSafe);
            }
            let mut text = Zeroizing::new(format!("{name}='{secret}'\n"));
            if let Some(e) = token.expires_at {
                text.push_str(&format!("{name}_EXPIRES_AT={e}\n"));
            }
            Ok(Zeroizing::new(std::mem::take(&mut *text).into_bytes()))
        }
        Format::Template(t) => {
            let bytes = t.render(token)?;
            if bytes.iter().all(u8::is_ascii_whitespace) {
                return Err(SinkError::Template(
                    "the template rendered nothing; the sink keeps its last file".into(),
                ));
            }
            Ok(bytes)
        }
    }
}

/// What [`write`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// The file was replaced with new content.
    Changed,
    /// The file already held this content, mode and owner.
    Unchanged,
}

/// Renders `token` into `sink`'s file, atomically, unless it already holds it. Blocking.
pub fn write(sink: &Sink, token: &Token<'_>) -> Result<Written, SinkError> {
    if let Some(why) = token.unusable() {
        return Err(why);
    }
    let bytes = render(&sink.format, token)?;
    let io = |source| SinkError::Io {
        path: sink.path.clone(),
        source,
    };
    if holds(&sink.path, &bytes, sink).map_err(io)? {
        return Ok(Written::Unchanged);
    }
    crate::files::write_atomic_owned(&sink.path, &bytes, sink.mode, sink.owner, sink.group)
        .map_err(io)?;
    Ok(Written::Changed)
}

/// Whether `path` is a regular file holding exactly `bytes` with the sink's mode and owner.
fn holds(path: &Path, bytes: &[u8], sink: &Sink) -> std::io::Result<bool> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if !meta.is_file()
        || meta.len() != bytes.len() as u64
        || meta.mode() & 0o7777 != sink.mode
        || sink.owner.is_some_and(|u| u != meta.uid())
        || sink.group.is_some_and(|g| g != meta.gid())
    {
        return Ok(false);
    }
    // A file its owner may not read (mode 0200) is simply rewritten.
    match std::fs::read(path) {
        Ok(current) => Ok(Zeroizing::new(current).as_slice() == bytes),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token<'a>(secret: &'a SecretString, expires_at: Option<u64>) -> Token<'a> {
        Token {
            job: "graph",
            access_token: secret,
            token_type: "Bearer",
            expires_at,
            stored_at: 1_000,
            now: 1_000,
        }
    }

    #[test]
    fn formats() {
        let s = SecretString::from("eyJ0.abc-_~+/=");
        let t = token(&s, Some(4_600));
        assert_eq!(&*render(&Format::Raw, &t).unwrap(), b"eyJ0.abc-_~+/=");
        let json: serde_json::Value =
            serde_json::from_slice(&render(&Format::Json, &t).unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"access_token": "eyJ0.abc-_~+/=", "token_type": "Bearer", "expires_at": 4600, "expires_in": 3600})
        );
        let env = Format::Env {
            name: "GRAPH_TOKEN".into(),
        };
        assert_eq!(
            String::from_utf8(render(&env, &t).unwrap().to_vec()).unwrap(),
            "GRAPH_TOKEN='eyJ0.abc-_~+/='\nGRAPH_TOKEN_EXPIRES_AT=4600\n"
        );
        let tpl = Template::new("Authorization: {{ token_type }} {{ access_token }} ({{ job }}, {{ expires_in }}s, {{ expires_at_rfc3339 }})").unwrap();
        assert_eq!(
            String::from_utf8(render(&Format::Template(tpl), &t).unwrap().to_vec()).unwrap(),
            "Authorization: Bearer eyJ0.abc-_~+/= (graph, 3600s, 1970-01-01T01:16:40Z)"
        );
    }

    #[test]
    fn bad_templates_fail_at_load_and_never_quote_the_token() {
        assert!(
            Template::new("{{ acces_token }}")
                .unwrap_err()
                .contains("undefined")
        );
        assert!(Template::new("{% if %}").is_err());
        let tpl = Template::new(
            "{{ access_token }}{% if job == \"graph\" %}{{ access_token.nope }}{% endif %}",
        )
        .unwrap();
        let s = SecretString::from("secret-token-value-123");
        let e = render(&Format::Template(tpl), &token(&s, Some(9_999))).unwrap_err();
        assert!(!e.to_string().contains("secret-token-value-123"), "{e}");
        // Too big already with the sample values: refused at load.
        assert!(
            Template::new("{% for i in range(100000) %}{{ access_token }}{% endfor %}").is_err()
        );
        let big = Template::new(
            "{% if job == \"graph\" %}{% for i in range(100000) %}{{ access_token }}{% endfor %}{% endif %}",
        )
        .unwrap();
        assert!(matches!(
            render(&Format::Template(big), &token(&s, None)),
            Err(SinkError::Template(_))
        ));
    }

    #[test]
    fn env_refuses_tokens_it_cannot_quote() {
        for bad in ["a'b", "a\nb", "a\\b", "a\rb"] {
            let s = SecretString::from(bad);
            let env = Format::Env { name: "T".into() };
            assert!(matches!(
                render(&env, &token(&s, None)),
                Err(SinkError::NotEnvSafe)
            ));
        }
    }

    #[test]
    fn only_unexpired_non_empty_tokens_are_written_and_unchanged_files_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Sink::new(dir.path().join("t"), Format::Raw);
        let empty = SecretString::from("  ");
        assert!(matches!(
            write(&sink, &token(&empty, None)),
            Err(SinkError::Empty)
        ));
        let s = SecretString::from("tok");
        assert!(matches!(
            write(&sink, &token(&s, Some(1_000))),
            Err(SinkError::Expired { .. })
        ));
        assert!(!sink.path.exists());
        assert_eq!(
            write(&sink, &token(&s, Some(1_001))).unwrap(),
            Written::Changed
        );
        assert_eq!(
            write(&sink, &token(&s, Some(1_001))).unwrap(),
            Written::Unchanged
        );
        let mode = std::fs::metadata(&sink.path).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        let mut wider = sink.clone();
        wider.mode = 0o640;
        assert_eq!(
            write(&wider, &token(&s, Some(1_001))).unwrap(),
            Written::Changed
        );
        assert_eq!(
            std::fs::metadata(&sink.path).unwrap().mode() & 0o7777,
            0o640
        );
        // An expired token later leaves the last good file.
        let newer = SecretString::from("newer");
        assert!(write(&wider, &token(&newer, Some(999))).is_err());
        assert_eq!(std::fs::read(&sink.path).unwrap(), b"tok");
    }
}
