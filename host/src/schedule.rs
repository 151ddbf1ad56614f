//! When to run a job: pure decisions, tested without clocks (DESIGN §6).
//!
//! - `auto`: refresh at min(`refresh_in`, half the lifetime), and no later than
//!   `refresh_lead` (10 min) before expiry; but never sooner than a quarter of the lifetime,
//!   so short-lived tokens (a 60 s token refreshes after 15 s) neither expire nor spin.
//!   Jitter only ever moves a refresh earlier, by up to 10 %, so the bounds hold.
//! - `every <d>` and cron run on their schedule, but never let a known expiry pass: the next
//!   run is at the latest a quarter-lifetime (at most `refresh_lead`) before expiry.
//! - Failures: retryable ones back off exponentially from `retry_initial` to `retry_max`
//!   with jitter; a 429 waits exactly `Retry-After` (or `throttle_default`) plus up to 10 %;
//!   permanent ones back off from `permanent_retry_initial` to `permanent_retry_max`.

use crate::config::Schedule;
use crate::outcome::Retry;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The knobs of the policy (`[daemon]` in the config).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// `auto` refreshes at least this long before expiry when the lifetime allows.
    pub refresh_lead: Duration,
    /// First backoff after a retryable failure.
    pub retry_initial: Duration,
    /// Largest backoff after retryable failures.
    pub retry_max: Duration,
    /// First backoff after a permanent failure.
    pub permanent_retry_initial: Duration,
    /// Largest backoff after permanent failures.
    pub permanent_retry_max: Duration,
    /// Wait after a 429 without `Retry-After`.
    pub throttle_default: Duration,
    /// Next run when a token's lifetime is unknown (`auto` without `expires_in`).
    pub unknown_lifetime_interval: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            refresh_lead: Duration::from_secs(600),
            retry_initial: Duration::from_secs(5),
            retry_max: Duration::from_secs(300),
            permanent_retry_initial: Duration::from_secs(600),
            permanent_retry_max: Duration::from_secs(3600),
            throttle_default: Duration::from_secs(60),
            unknown_lifetime_interval: Duration::from_secs(1800),
        }
    }
}

/// Largest share of a delay that jitter may take off (auto) or add (backoff).
const JITTER: f64 = 0.1;

/// What is known of the stored token: when it was written and when it expires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenState {
    /// Last write.
    pub updated_at: SystemTime,
    /// Expiry, when known.
    pub expires_at: Option<SystemTime>,
}

/// `auto`'s refresh offset after a token of `lifetime` was obtained. `jitter` in [0, 1).
pub fn auto_offset(
    lifetime: Duration,
    refresh_in: Option<Duration>,
    lead: Duration,
    jitter: f64,
) -> Duration {
    // The lead gives way to a quarter-life floor for short tokens; the server's
    // `refresh_in` is advice to refresh sooner, so it always wins.
    let by_lead = lifetime.saturating_sub(lead).max(lifetime / 4);
    let mut offset = (lifetime / 2).min(by_lead);
    if let Some(r) = refresh_in {
        offset = offset.min(r);
    }
    offset.mul_f64(1.0 - JITTER * jitter.clamp(0.0, 1.0))
}

/// The latest moment a run may happen for a token with this state, whatever the schedule.
fn expiry_bound(token: &TokenState, lead: Duration) -> Option<SystemTime> {
    let expires = token.expires_at?;
    let lifetime = expires
        .duration_since(token.updated_at)
        .unwrap_or(Duration::ZERO);
    Some(expires - lead.min(lifetime / 4))
}

/// When the job is next due, given the stored token (`None`: no token, run now).
/// `refresh_in` comes from the last reply, when there was one. The result may be in the
/// past, which means "now" (catch-up after a restart).
pub fn next_due(
    schedule: &Schedule,
    policy: &Policy,
    token: Option<&TokenState>,
    refresh_in: Option<Duration>,
    jitter: f64,
) -> SystemTime {
    let Some(token) = token else {
        return UNIX_EPOCH;
    };
    let planned = match schedule {
        Schedule::Auto => match token.expires_at {
            Some(expires) => {
                let lifetime = expires
                    .duration_since(token.updated_at)
                    .unwrap_or(Duration::ZERO);
                token.updated_at + auto_offset(lifetime, refresh_in, policy.refresh_lead, jitter)
            }
            None => token.updated_at + policy.unknown_lifetime_interval,
        },
        Schedule::Every(interval) => token.updated_at + *interval,
        Schedule::Cron(cron) => cron.next_after(token.updated_at),
    };
    match expiry_bound(token, policy.refresh_lead) {
        Some(bound) => planned.min(bound),
        None => planned,
    }
}

/// The delay before retrying after the `failures`-th consecutive failure (1-based).
/// `jitter` in [0, 1).
pub fn retry_delay(
    policy: &Policy,
    retry: Retry,
    throttled: bool,
    retry_after: Option<Duration>,
    failures: u32,
    jitter: f64,
) -> Duration {
    let jitter = jitter.clamp(0.0, 1.0);
    if throttled {
        // Never earlier than the server asked.
        let wait = retry_after.unwrap_or(policy.throttle_default);
        return wait + wait.mul_f64(JITTER * jitter);
    }
    let (initial, max) = match retry {
        Retry::Retryable => (policy.retry_initial, policy.retry_max),
        Retry::Permanent => (policy.permanent_retry_initial, policy.permanent_retry_max),
    };
    let exp = failures.saturating_sub(1).min(30);
    let backoff = initial
        .saturating_mul(1u32 << exp)
        .min(max)
        .max(initial.min(max));
    // Equal jitter: half fixed, half random, so retries of many jobs spread out but
    // never collapse to zero.
    backoff / 2 + (backoff / 2).mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Schedule;

    const MIN: u64 = 60;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    fn token(lifetime: u64) -> TokenState {
        let now = UNIX_EPOCH + s(1_700_000_000);
        TokenState {
            updated_at: now,
            expires_at: Some(now + s(lifetime)),
        }
    }

    fn due_in(schedule: &Schedule, t: &TokenState, refresh_in: Option<u64>, jitter: f64) -> u64 {
        next_due(
            schedule,
            &Policy::default(),
            Some(t),
            refresh_in.map(s),
            jitter,
        )
        .duration_since(t.updated_at)
        .unwrap()
        .as_secs()
    }

    #[test]
    fn auto_refreshes_at_half_life_for_entra_lifetimes() {
        // Entra: 60 to 90 minutes.
        assert_eq!(
            due_in(&Schedule::Auto, &token(60 * MIN), None, 0.0),
            30 * MIN
        );
        assert_eq!(
            due_in(&Schedule::Auto, &token(90 * MIN), None, 0.0),
            45 * MIN
        );
        // refresh_in wins when sooner.
        assert_eq!(
            due_in(&Schedule::Auto, &token(24 * 60 * MIN), Some(60 * MIN), 0.0),
            60 * MIN
        );
    }

    #[test]
    fn auto_keeps_a_ten_minute_lead_when_the_lifetime_allows() {
        // 15 min token: half-life would leave 7.5 min; refresh 10 min before expiry.
        assert_eq!(
            due_in(&Schedule::Auto, &token(15 * MIN), None, 0.0),
            5 * MIN
        );
        for lifetime in [20 * MIN, 60 * MIN, 24 * 60 * MIN] {
            let t = token(lifetime);
            let due = due_in(&Schedule::Auto, &t, None, 0.99);
            assert!(lifetime - due >= 10 * MIN, "{lifetime}: {due}");
        }
    }

    #[test]
    fn auto_is_sane_for_short_lifetimes() {
        // A 60 s token refreshes after 15 s (a quarter), well before it expires.
        assert_eq!(due_in(&Schedule::Auto, &token(60), None, 0.0), 15);
        assert_eq!(due_in(&Schedule::Auto, &token(8 * MIN), None, 0.0), 2 * MIN);
        // An already-expired token: run now.
        assert_eq!(due_in(&Schedule::Auto, &token(0), None, 0.0), 0);
    }

    #[test]
    fn jitter_only_moves_refreshes_earlier_by_at_most_ten_percent() {
        let t = token(60 * MIN);
        let base = due_in(&Schedule::Auto, &t, None, 0.0);
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..100 {
            let j = f64::from(i) / 100.0;
            let due = due_in(&Schedule::Auto, &t, None, j);
            assert!(due <= base && due as f64 >= base as f64 * 0.9, "{due}");
            seen.insert(due);
        }
        assert!(seen.len() > 50, "jitter spreads jobs out");
    }

    #[test]
    fn no_token_means_now() {
        assert_eq!(
            next_due(&Schedule::Auto, &Policy::default(), None, None, 0.5),
            UNIX_EPOCH
        );
    }

    #[test]
    fn fixed_schedules_never_let_a_token_expire() {
        let every = Schedule::Every(s(45 * MIN));
        assert_eq!(due_in(&every, &token(24 * 60 * MIN), None, 0.5), 45 * MIN);
        // A 30 min token under "every 45m": at the latest a quarter-life (7.5 min) before
        // expiry; a 2 h token: 10 min before.
        assert_eq!(
            due_in(&every, &token(30 * MIN), None, 0.5),
            30 * MIN * 3 / 4
        );
        assert_eq!(
            due_in(
                &Schedule::Every(s(3 * 60 * MIN)),
                &token(120 * MIN),
                None,
                0.5
            ),
            110 * MIN
        );
        // Unknown lifetime: the schedule as written.
        let t = TokenState {
            expires_at: None,
            ..token(0)
        };
        assert_eq!(due_in(&every, &t, None, 0.5), 45 * MIN);
        assert_eq!(due_in(&Schedule::Auto, &t, None, 0.5), 30 * MIN);
    }

    #[test]
    fn cron_runs_at_the_next_slot_after_the_last_write() {
        let cron = Schedule::parse("0 */15 * * * *").unwrap();
        // 1_700_000_000 is 22:13:20 UTC; the next quarter hour is 22:15:00.
        assert_eq!(due_in(&cron, &token(24 * 60 * MIN), None, 0.0), 100);
        let five = Schedule::parse("30 2 * * *").unwrap();
        let due = due_in(&five, &token(48 * 60 * MIN), None, 0.0);
        assert_eq!(due, (2 * 60 + 30 + 24 * 60 - (22 * 60 + 13)) * MIN - 20);
    }

    #[test]
    fn retryable_backoff_doubles_with_jitter_up_to_the_cap() {
        let p = Policy::default();
        let d = |n, j| retry_delay(&p, Retry::Retryable, false, None, n, j);
        assert_eq!(
            (d(1, 0.0), d(1, 1.0)),
            (s(2) + Duration::from_millis(500), s(5))
        );
        assert_eq!(d(2, 1.0), s(10));
        assert_eq!(d(3, 1.0), s(20));
        assert_eq!(d(10, 1.0), s(300));
        assert_eq!(d(10, 0.0), s(150));
        assert_eq!(d(u32::MAX, 1.0), s(300));
    }

    #[test]
    fn throttling_honours_retry_after() {
        let p = Policy::default();
        let d = |after, j| retry_delay(&p, Retry::Retryable, true, after, 1, j);
        assert_eq!(d(Some(s(7)), 0.0), s(7));
        assert!(d(Some(s(7)), 0.99) <= Duration::from_millis(7700));
        assert_eq!(d(None, 0.0), s(60));
        // However many failures came before.
        assert_eq!(
            retry_delay(&p, Retry::Retryable, true, Some(s(3)), 9, 0.0),
            s(3)
        );
    }

    #[test]
    fn permanent_errors_retry_far_more_slowly() {
        let p = Policy::default();
        let perm = |n| retry_delay(&p, Retry::Permanent, false, None, n, 1.0);
        let temp = |n| retry_delay(&p, Retry::Retryable, false, None, n, 1.0);
        assert_eq!(perm(1), s(10 * MIN));
        assert_eq!(perm(2), s(20 * MIN));
        assert_eq!(perm(5), s(60 * MIN));
        for n in 1..10 {
            assert!(perm(n) >= temp(n) * 2, "{n}");
        }
    }
}
