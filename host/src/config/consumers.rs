//! The consumer side of the file: `[[jobs.sinks]]`, `on_change`, `[jobs.consumers]` and
//! `[socket]`. Users and groups given by name are looked up when the file loads, so a typo
//! fails there and not at the first refresh.

use super::parse::{ConfigError, Ctx};
use super::raw::{RawAction, RawConsumers, RawId, RawMode, RawSink, RawSocket};
use crate::sink::{self, Action, Format, Sink, Template, action};
use crate::socket::{self, Consumers, SocketConfig};
use std::path::Path;
use std::time::Duration;
use toml::Spanned;

/// `path` as the file system resolves it: its folder canonicalized when it exists (links and
/// `..` followed), else cleaned of `.` and `..` by hand; the file name as written.
pub(super) fn resolved(path: &Path) -> std::path::PathBuf {
    use std::path::Component;
    let clean = |p: &Path| {
        let mut out = std::path::PathBuf::new();
        for c in p.components() {
            match c {
                Component::ParentDir => {
                    out.pop();
                }
                Component::CurDir => {}
                other => out.push(other),
            }
        }
        out
    };
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return clean(path);
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    match parent.canonicalize() {
        Ok(p) => p.join(name),
        Err(_) => clean(&parent.join(name)),
    }
}

/// Permission bits from `0o640` or `"0640"`: at most `0o777`; a file is never writable by
/// others (a socket must be, for them to connect), and its owner can read it (the daemon
/// reads a sink back to see whether it changed).
fn mode(cx: &Ctx<'_>, v: &Spanned<RawMode>, key: &str, socket: bool) -> Result<u32, ConfigError> {
    let bits = match v.get_ref() {
        RawMode::Bits(n) => u32::try_from(*n).ok(),
        RawMode::Octal(t) => {
            let t = t.trim();
            let digits = t.strip_prefix("0o").unwrap_or(t);
            (!digits.is_empty()
                && digits.len() <= 4
                && digits.bytes().all(|b| (b'0'..=b'7').contains(&b)))
            .then(|| u32::from_str_radix(digits, 8).ok())
            .flatten()
        }
    };
    match bits {
        Some(b) if b <= 0o777 && (socket || (b & 0o002 == 0 && b & 0o400 != 0)) => Ok(b),
        Some(b) if b <= 0o777 && b & 0o002 != 0 => Err(cx.invalid(
            v.span(),
            format!("`{key}` = {b:#o} lets any user write the file; drop the others' write bit"),
        )),
        Some(b) if b <= 0o777 => Err(cx.invalid(
            v.span(),
            format!("`{key}` = {b:#o} does not let the owner read the file; add the owner's read bit"),
        )),
        _ => Err(cx.invalid(
            v.span(),
            format!(
                "`{key}` must be permission bits from 0 to 0o777, written 0o640 or \"0640\" (a plain 640 is decimal)"
            ),
        )),
    }
}

/// A uid or gid by number or name. `u32::MAX` means "unchanged" to `chown`, so it is refused.
fn id(cx: &Ctx<'_>, v: &Spanned<RawId>, key: &str, group: bool) -> Result<u32, ConfigError> {
    let what = if group { "group" } else { "user" };
    match v.get_ref() {
        RawId::Id(n) => u32::try_from(*n)
            .ok()
            .filter(|&n| n < u32::MAX)
            .ok_or_else(|| {
                cx.invalid(
                    v.span(),
                    format!("`{key}` = {n}: a {what} id is from 0 to {}", u32::MAX - 1),
                )
            }),
        RawId::Name(name) => {
            let found = if group {
                nix::unistd::Group::from_name(name).map(|g| g.map(|g| g.gid.as_raw()))
            } else {
                nix::unistd::User::from_name(name).map(|u| u.map(|u| u.uid.as_raw()))
            };
            match found {
                Ok(Some(id)) => Ok(id),
                Ok(None) => Err(cx.invalid(
                    v.span(),
                    format!(
                        "`{key}`: no {what} named {} on this machine",
                        crate::text::quoted(name)
                    ),
                )),
                Err(e) => Err(cx.invalid(
                    v.span(),
                    format!("`{key}`: cannot look up {what} {name}: {e}"),
                )),
            }
        }
    }
}

/// An `on_change` table.
pub(super) fn on_change(
    cx: &Ctx<'_>,
    v: &Spanned<RawAction>,
    key: &str,
    base: &Path,
) -> Result<Action, ConfigError> {
    let a = v.get_ref();
    let bad = |why: String| cx.invalid(v.span(), format!("`{key}`: {why}"));
    match (&a.signal, &a.pid_file, &a.command) {
        (Some(signal), Some(pid_file), None) => {
            if pid_file.as_os_str().is_empty() {
                return Err(bad("`pid_file` is empty".into()));
            }
            if a.timeout.is_some() {
                return Err(bad("`timeout` is for a `command`".into()));
            }
            Ok(Action::Signal {
                pid_file: base.join(pid_file),
                signal: action::parse_signal(signal).map_err(bad)?,
            })
        }
        (None, None, Some(argv)) => {
            if argv.first().is_none_or(|p| p.trim().is_empty()) {
                return Err(bad(
                    "`command` needs a program: [\"program\", \"arg\", ...]".into(),
                ));
            }
            if argv.iter().any(|s| s.contains('\0')) {
                return Err(bad("`command` holds a NUL byte".into()));
            }
            let timeout = match &a.timeout {
                Some(t) => cx.duration(
                    t,
                    &format!("{key}.timeout"),
                    Duration::from_secs(1)..=action::MAX_TIMEOUT,
                )?,
                None => action::DEFAULT_TIMEOUT,
            };
            Ok(Action::Command {
                argv: argv.clone(),
                timeout,
            })
        }
        (Some(_), None, None) => Err(bad("`signal` needs the `pid_file` of the process".into())),
        (None, Some(_), None) => Err(bad("`pid_file` needs a `signal`, such as \"HUP\"".into())),
        _ => Err(bad(
            "give either `signal` and `pid_file`, or `command` (an argv list, run without a shell)"
                .into(),
        )),
    }
}

/// One `[[jobs.sinks]]` entry.
pub(super) fn sink(
    cx: &Ctx<'_>,
    raw: &Spanned<RawSink>,
    key: &str,
    base: &Path,
) -> Result<Sink, ConfigError> {
    let r = raw.get_ref();
    let bad =
        |span: std::ops::Range<usize>, why: String| cx.invalid(span, format!("`{key}`: {why}"));
    let path = base.join(r.path.get_ref());
    let written = r.path.get_ref().as_os_str();
    if path.file_name().is_none()
        || written.is_empty()
        || written.as_encoded_bytes().ends_with(b"/")
    {
        return Err(bad(r.path.span(), "`path` must name a file".into()));
    }
    let format_name = r.format.as_ref().map_or("raw", |f| f.get_ref().as_str());
    let format_span = r.format.as_ref().map_or(raw.span(), Spanned::span);
    if r.env_name.is_some() && format_name != "env" {
        return Err(bad(
            format_span.clone(),
            "`env_name` is for the env format".into(),
        ));
    }
    if (r.template.is_some() || r.template_file.is_some()) && format_name != "template" {
        return Err(bad(
            format_span.clone(),
            "`template` and `template_file` are for the template format".into(),
        ));
    }
    let format = match format_name {
        "raw" => Format::Raw,
        "json" => Format::Json,
        "env" => {
            let name = r
                .env_name
                .as_ref()
                .map_or(sink::DEFAULT_ENV_NAME.to_string(), |n| n.get_ref().clone());
            let valid = name.len() <= 128
                && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                let span = r.env_name.as_ref().map_or(raw.span(), Spanned::span);
                return Err(bad(
                    span,
                    format!(
                        "`env_name` = {} must be a variable name ([A-Za-z_][A-Za-z0-9_]*)",
                        crate::text::quoted(&name)
                    ),
                ));
            }
            Format::Env { name }
        }
        "template" => {
            let source = match (&r.template, &r.template_file) {
                (Some(t), None) => t.get_ref().clone(),
                (None, Some(f)) => {
                    let file = base.join(f.get_ref());
                    std::fs::read_to_string(&file).map_err(|e| {
                        bad(f.span(), format!("cannot read {}: {e}", file.display()))
                    })?
                }
                _ => {
                    return Err(bad(
                        format_span,
                        "the template format needs one of `template` (text) or `template_file`"
                            .into(),
                    ));
                }
            };
            Format::Template(Template::new(&source).map_err(|e| bad(format_span, e))?)
        }
        other => {
            return Err(bad(
                format_span,
                format!(
                    "`format` = {} is not one of raw, json, env, template",
                    crate::text::quoted(other)
                ),
            ));
        }
    };
    Ok(Sink {
        path,
        format,
        mode: match &r.mode {
            Some(m) => mode(cx, m, &format!("{key}.mode"), false)?,
            None => sink::DEFAULT_MODE,
        },
        owner: r
            .owner
            .as_ref()
            .map(|o| id(cx, o, &format!("{key}.owner"), false))
            .transpose()?,
        group: r
            .group
            .as_ref()
            .map(|g| id(cx, g, &format!("{key}.group"), true))
            .transpose()?,
        on_change: r
            .on_change
            .as_ref()
            .map(|a| on_change(cx, a, &format!("{key}.on_change"), base))
            .transpose()?,
    })
}

/// `[jobs.consumers]`.
pub(super) fn consumers(
    cx: &Ctx<'_>,
    raw: &RawConsumers,
    key: &str,
) -> Result<Consumers, ConfigError> {
    Ok(Consumers {
        uids: raw
            .users
            .iter()
            .map(|u| id(cx, u, &format!("{key}.users"), false))
            .collect::<Result<_, _>>()?,
        gids: raw
            .groups
            .iter()
            .map(|g| id(cx, g, &format!("{key}.groups"), true))
            .collect::<Result<_, _>>()?,
    })
}

/// `[socket]` (or another Unix socket table, named by `key`).
pub(super) fn socket(
    cx: &Ctx<'_>,
    raw: &RawSocket,
    base: &Path,
    key: &str,
) -> Result<SocketConfig, ConfigError> {
    let path = base.join(raw.path.get_ref());
    // sun_path holds 108 bytes with its terminating NUL.
    if path.as_os_str().len() > 107 || path.file_name().is_none() {
        return Err(cx.invalid(
            raw.path.span(),
            format!(
                "`{key}.path` = {} must name a file in at most 107 bytes (a Unix socket's limit)",
                path.display()
            ),
        ));
    }
    Ok(SocketConfig {
        path,
        mode: match &raw.mode {
            Some(m) => mode(cx, m, &format!("{key}.mode"), true)?,
            None => socket::DEFAULT_MODE,
        },
        group: raw
            .group
            .as_ref()
            .map(|g| id(cx, g, &format!("{key}.group"), true))
            .transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::sink::{Action, Format};
    use std::path::Path;

    const JOB: &str = r#"
[[jobs]]
name = "graph"
scope = "https://graph.microsoft.com/.default"
[jobs.secrets]
client_id = "id"
client_secret = "secret"
tenant_id = "tenant"
access_token = "token"
"#;

    fn parse(extra: &str) -> Result<Config, String> {
        Config::parse(
            &format!("{JOB}{extra}"),
            Path::new("/etc/tw/tokenwarden.toml"),
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn sinks_actions_and_consumers_parse() {
        let c = parse(
            r#"
[jobs.consumers]
users = [1000, "root"]
groups = ["root"]
[jobs.on_change]
command = ["systemctl", "reload", "app"]
timeout = "5s"
[[jobs.sinks]]
path = "run/graph.token"
[[jobs.sinks]]
path = "/run/app/token.json"
format = "json"
mode = 0o640
owner = 0
group = "root"
on_change = { signal = "hup", pid_file = "/run/app.pid" }
[[jobs.sinks]]
path = "/run/app/token.env"
format = "env"
env_name = "GRAPH_TOKEN"
mode = "0644"
[[jobs.sinks]]
path = "/run/app/header"
format = "template"
template = "Authorization: Bearer {{ access_token }}"
"#,
        )
        .unwrap();
        let job = &c.jobs[0];
        assert_eq!(job.consumers.uids, [1000, 0]);
        assert_eq!(job.consumers.gids, [0]);
        assert!(
            matches!(&job.on_change, Some(Action::Command { argv, timeout }) if argv[0] == "systemctl" && timeout.as_secs() == 5)
        );
        let s = &job.sinks;
        assert_eq!(s[0].path, Path::new("/etc/tw/run/graph.token"));
        assert!(matches!(s[0].format, Format::Raw));
        assert_eq!(s[0].mode, 0o600);
        assert_eq!(
            (s[1].mode, s[1].owner, s[1].group),
            (0o640, Some(0), Some(0))
        );
        assert!(
            matches!(&s[1].on_change, Some(Action::Signal { signal, .. }) if *signal == nix::sys::signal::Signal::SIGHUP)
        );
        assert!(matches!(&s[2].format, Format::Env { name } if name == "GRAPH_TOKEN"));
        assert_eq!(s[2].mode, 0o644);
        assert!(matches!(s[3].format, Format::Template(_)));
    }

    #[test]
    fn hostile_and_mistaken_values_are_refused_with_their_line() {
        for (extra, expect) in [
            (
                "[[jobs.sinks]]\npath = \"t\"\nmode = 640\n",
                "a plain 640 is decimal",
            ),
            (
                "[[jobs.sinks]]\npath = \"t\"\nmode = 0o666\n",
                "lets any user write",
            ),
            (
                "[[jobs.sinks]]\npath = \"t\"\nmode = -1\n",
                "permission bits",
            ),
            (
                "[[jobs.sinks]]\npath = \"t\"\nmode = 4294967296\n",
                "permission bits",
            ),
            (
                "[[jobs.sinks]]\npath = \"t\"\nmode = \"0o4755\"\n",
                "permission bits",
            ),
            (
                "[[jobs.sinks]]\npath = \"t\"\nmode = \"rw\"\n",
                "permission bits",
            ),
            (
                "[[jobs.sinks]]\npath = \"t\"\nmode = \"+644\"\n",
                "permission bits",
            ),
            (
                "[[jobs.sinks]]\npath = \"t\"\nmode = \"0o0o640\"\n",
                "permission bits",
            ),
            (
                "[[jobs.sinks]]\npath = \"t\"\nmode = \"0200\"\n",
                "owner read",
            ),
            (
                "[[jobs.sinks]]\npath = \"t\"\nmode = true\n",
                "permission bits, such as",
            ),
            (
                "[[jobs.sinks]]\npath = \"t\"\nowner = 1.5\n",
                "a user or group name",
            ),
            ("[[jobs.sinks]]\npath = \"t/\"\n", "must name a file"),
            (
                "[[jobs.sinks]]\npath = \"data/tokenwarden.db.key\"\n",
                "would overwrite the store",
            ),
            (
                "[[jobs.sinks]]\npath = \"data/x/../tokenwarden.db\"\n",
                "would overwrite the store",
            ),
            (
                "[[jobs.sinks]]\npath = \"tokenwarden.toml\"\n",
                "would overwrite the store",
            ),
            (
                "[[jobs.sinks]]\npath = \"t\"\n[[jobs.sinks]]\npath = \"x/../t\"\n",
                "each file needs one writer",
            ),
            (
                "[jobs.on_change]\nsignal = \"TSTP\"\npid_file = \"p\"\n",
                "would kill or stop",
            ),
            (
                "[jobs.on_change]\nsignal = \"HUP\"\npid_file = \"\"\n",
                "`pid_file` is empty",
            ),
            (
                "[[jobs.sinks]]\npath = \"t\"\nowner = 4294967295\n",
                "a user id is from 0",
            ),
            (
                "[[jobs.sinks]]\npath = \"t\"\nowner = -1\n",
                "a user id is from 0",
            ),
            (
                "[[jobs.sinks]]\npath = \"t\"\nowner = \"no-such-user-here\"\n",
                "no user named",
            ),
            (
                "[[jobs.sinks]]\npath = \"t\"\ngroup = \"no-such-group-here\"\n",
                "no group named",
            ),
            (
                "[[jobs.sinks]]\npath = \"t\"\nformat = \"yaml\"\n",
                "not one of raw",
            ),
            (
                "[[jobs.sinks]]\npath = \"t\"\nformat = \"template\"\n",
                "needs one of `template`",
            ),
            (
                "[[jobs.sinks]]\npath = \"t\"\nformat = \"template\"\ntemplate = \"{{ tokn }}\"\n",
                "undefined",
            ),
            (
                "[[jobs.sinks]]\npath = \"t\"\nenv_name = \"X\"\n",
                "for the env format",
            ),
            (
                "[[jobs.sinks]]\npath = \"t\"\nformat = \"env\"\nenv_name = \"1X\"\n",
                "variable name",
            ),
            (
                "[[jobs.sinks]]\npath = \"t\"\nformat = \"env\"\nenv_name = \"A=B\"\n",
                "variable name",
            ),
            ("[[jobs.sinks]]\npath = \"\"\n", "must name a file"),
            (
                "[[jobs.sinks]]\npath = \"t\"\n[[jobs.sinks]]\npath = \"t\"\n",
                "each file needs one writer",
            ),
            ("[[jobs.sinks]]\npath = \"t\"\nsize = 1\n", "unknown field"),
            (
                "[jobs.on_change]\nsignal = \"HUP\"\n",
                "needs the `pid_file`",
            ),
            ("[jobs.on_change]\npid_file = \"p\"\n", "needs a `signal`"),
            (
                "[jobs.on_change]\nsignal = \"KILL\"\npid_file = \"p\"\n",
                "would kill or stop",
            ),
            (
                "[jobs.on_change]\nsignal = \"HUP\"\npid_file = \"p\"\ncommand = [\"x\"]\n",
                "either",
            ),
            ("[jobs.on_change]\ncommand = []\n", "needs a program"),
            ("[jobs.on_change]\ncommand = [\" \"]\n", "needs a program"),
            (
                "[jobs.on_change]\ncommand = [\"x\"]\ntimeout = \"0s\"\n",
                "out of range",
            ),
            (
                "[jobs.on_change]\ncommand = [\"x\"]\ntimeout = \"11m\"\n",
                "out of range",
            ),
            (
                "[jobs.on_change]\ncommand = [\"x\"]\ntimeout = \"5 parsecs\"\n",
                "timeout",
            ),
            ("[jobs.consumers]\nusers = [-5]\n", "a user id is from 0"),
            (
                "[jobs.consumers]\nusers = [\"nobody-at-all\"]\n",
                "no user named",
            ),
        ] {
            let e = parse(extra).unwrap_err();
            assert!(e.contains(expect), "{extra}: {e}");
            assert!(
                e.contains("tokenwarden.toml") && e.contains("line "),
                "{extra}: no line in {e}"
            );
        }
    }

    #[test]
    fn the_socket_section() {
        let c = Config::parse(
            &format!("[socket]\npath = \"tw.sock\"\n{JOB}"),
            Path::new("/run/tw/tokenwarden.toml"),
        )
        .unwrap();
        let s = c.socket.unwrap();
        assert_eq!(
            (s.path.as_path(), s.mode, s.group),
            (Path::new("/run/tw/tw.sock"), 0o666, None)
        );
        let long = format!("[socket]\npath = \"/{}\"\n{JOB}", "x".repeat(120));
        let e = Config::parse(&long, Path::new("/t.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("107 bytes"), "{e}");
        let e = Config::parse(
            &format!("[socket]\npath = \"s\"\nmode = 0o1777\n{JOB}"),
            Path::new("/t.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("permission bits"), "{e}");
        assert!(
            Config::parse(JOB, Path::new("/t.toml"))
                .unwrap()
                .socket
                .is_none()
        );
    }
}
