//! Text for people: the tables and lines the CLI, the demo and `status` print. Every piece
//! of text that came from outside (a token type, an error description) goes through
//! [`crate::text::clean`] first, so a reply cannot drive the terminal.

use crate::daemon::RunRecord;
use crate::job::JobConfig;
use crate::store::{JobRow, SecretMeta};
use crate::text::clean;
use crate::time::{relative, rfc3339};

/// The `secrets list` table.
pub fn secrets_table(list: &[SecretMeta], now: u64) -> String {
    let names: Vec<String> = list.iter().map(|m| clean(&m.name, 300)).collect();
    let width = names
        .iter()
        .map(|n| n.chars().count())
        .max()
        .unwrap_or(4)
        .max(4);
    let mut s = format!("{:<width$}  {:<20}  EXPIRES\n", "NAME", "UPDATED");
    for (m, name) in list.iter().zip(&names) {
        let expires = m.expires_at.map_or("-".to_string(), |at| {
            format!("{} ({})", rfc3339(at), relative(at, now))
        });
        s.push_str(&format!(
            "{name:<width$}  {:<20}  {expires}\n",
            rfc3339(m.updated_at)
        ));
    }
    s
}

/// One line describing a run's outcome, for `refresh` and `status`.
pub fn run_line(job: &str, token_secret: &str, record: &RunRecord, now: u64) -> String {
    match (&record.outcome, &record.error) {
        (Some(o), _) => {
            let expiry = match o.expires_at {
                Some(at) => format!(", expires {} ({})", relative(at, now), rfc3339(at)),
                None => ", no expiry given by the server".to_string(),
            };
            format!(
                "refreshed `{job}`: {} token stored in `{}`{expiry}",
                clean(&o.token_type, 64),
                clean(token_secret, 300)
            )
        }
        (None, Some(e)) => format!(
            "refresh of `{job}` failed ({}, {}): {}",
            e.class,
            e.retry,
            clean(&e.message, 2048)
        ),
        (None, None) => format!("refresh of `{job}`: no outcome recorded"),
    }
}

/// What `tokenwarden status` prints for one job.
pub fn status_block(
    job: &JobConfig,
    token: Option<&SecretMeta>,
    row: Option<&JobRow>,
    now_ms: u64,
) -> String {
    let now = now_ms / 1000;
    let mut s = format!("{}  ({})\n", job.name, job.schedule);
    let token_line = match token {
        None => "none stored yet".to_string(),
        Some(m) => match m.expires_at {
            Some(at) if at > now => {
                format!("valid, expires {} ({})", relative(at, now), rfc3339(at))
            }
            Some(at) => format!("EXPIRED {} ({})", relative(at, now), rfc3339(at)),
            None => format!("stored {} (no expiry known)", rfc3339(m.updated_at)),
        },
    };
    s.push_str(&format!("  token       {token_line}\n"));
    let last = row.and_then(|r| r.last_run.as_deref().and_then(RunRecord::from_json));
    match &last {
        Some(r) => {
            let when = rfc3339(r.started_at_ms / 1000);
            let what = match &r.error {
                None => "ok".to_string(),
                Some(e) => format!(
                    "FAILED {} ({}): {}",
                    e.class,
                    e.retry,
                    clean(&e.message, 300)
                ),
            };
            s.push_str(&format!(
                "  last run    {when} {} by {}: {what}\n",
                r.trigger,
                clean(&r.runner, 100)
            ));
        }
        None => s.push_str("  last run    none recorded\n"),
    }
    if let Some(r) = row {
        if r.failures > 0 {
            s.push_str(&format!("  failures    {} in a row\n", r.failures));
        }
        if let Some(holder) = r.holder(now_ms) {
            s.push_str(&format!("  running     now, in {}\n", clean(holder, 100)));
        }
        if let Some(due) = r.next_due_ms {
            let due = due / 1000;
            s.push_str(&format!(
                "  next run    {} ({})\n",
                rfc3339(due),
                relative_run(due, now)
            ));
        }
    }
    s
}

fn relative_run(at: u64, now: u64) -> String {
    if at > now {
        relative(at, now)
    } else {
        "due now".into()
    }
}
