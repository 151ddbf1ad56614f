//! When to run a job: the schedule a job is configured with, the policy knobs, and pure
//! decisions (time and jitter are arguments, so tests need no clock).
//!
//! - `auto`: refresh at min(`refresh_in`, half the lifetime), and no later than
//!   `refresh_lead` (10 min) before expiry; but never sooner than a quarter of the
//!   lifetime, so short-lived tokens neither expire nor spin. Jitter only ever moves a
//!   refresh earlier, by up to 10 %, so the bounds hold.
//! - `every <d>` and cron run on their schedule, but never let a known expiry pass: the next
//!   run is at the latest a quarter-lifetime (at most `refresh_lead`) before expiry.
//! - Failures: retryable ones back off exponentially from `retry_initial` to `retry_max`
//!   with jitter; a 429 waits `Retry-After` (or `throttle_default`, at most
//!   `max_retry_after`) plus up to 10 %; permanent ones back off from
//!   `permanent_retry_initial` to `permanent_retry_max`. No retry waits past the point
//!   where the stored token needs replacing, and none comes sooner than half of
//!   `retry_initial` (the shortest equal-jitter backoff).
//! - Whatever a reply says, two successful runs of a job are at least `min_interval`
//!   apart: a server answering `expires_in: 0` gets one request per `min_interval`, not a
//!   loop.
//!
//! Every duration and time here may come from outside (a reply, a header, another
//! process's row), so arithmetic saturates at [`crate::time::far_future`].

use crate::outcome::Retry;
use crate::time;

/// The latest time any schedule returns (9999-12-31T23:59:59Z): later times from outside
/// are clamped to it.
pub use crate::time::far_future;
use std::time::{Duration, SystemTime};

/// When a job runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// From the token's lifetime.
    Auto,
    /// A fixed interval, `every 45m`.
    Every(Duration),
    /// A cron expression, evaluated in UTC.
    Cron(Box<CronSchedule>),
}

/// The longest `every` interval: a year. Anything longer is a typo or an attack.
pub const MAX_EVERY: Duration = Duration::from_secs(366 * 24 * 3600);

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

    /// The first slot strictly after `t`; [`time::far_future`] for a pattern that never
    /// fires again.
    pub fn next_after(&self, t: SystemTime) -> SystemTime {
        let at = chrono::DateTime::<chrono::Utc>::from(t.min(time::far_future()));
        match self.cron.find_next_occurrence(&at, false) {
            Ok(next) => SystemTime::from(next).min(time::far_future()),
            Err(_) => time::far_future(),
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
    /// Parses `auto`, `every <duration>` (humantime: `45m`, `1h 30m`; 1 s to a year) or a
    /// cron expression.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text == "auto" {
            return Ok(Schedule::Auto);
        }
        if let Some(rest) = text.strip_prefix("every ") {
            let d = humantime::parse_duration(rest.trim())
                .map_err(|e| format!("`{text}`: {e} (try `every 45m`)"))?;
            if d < Duration::from_secs(1) || d > MAX_EVERY {
                return Err(format!(
                    "`{text}`: the interval must be between 1s and {}",
                    humantime::format_duration(MAX_EVERY)
                ));
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

/// The knobs of the policy (`[daemon]` in the config). The config loader refuses values
/// outside the ranges SECURITY.md lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// `auto` refreshes at least this long before expiry when the lifetime allows.
    pub refresh_lead: Duration,
    /// First backoff after a retryable failure; half of it is the shortest wait before any
    /// retry.
    pub retry_initial: Duration,
    /// Largest backoff after retryable failures.
    pub retry_max: Duration,
    /// First backoff after a permanent failure.
    pub permanent_retry_initial: Duration,
    /// Largest backoff after permanent failures.
    pub permanent_retry_max: Duration,
    /// Wait after a 429 without `Retry-After`.
    pub throttle_default: Duration,
    /// The longest `Retry-After` honoured.
    pub max_retry_after: Duration,
    /// The shortest time between the starts of two successful runs of a job.
    pub min_interval: Duration,
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
            max_retry_after: Duration::from_secs(3600),
            min_interval: Duration::from_secs(30),
            unknown_lifetime_interval: Duration::from_secs(1800),
        }
    }
}

/// Largest share of a delay that jitter may take off (auto) or add (backoff).
const JITTER: f64 = 0.1;

/// A jitter argument as a share in [0, 1]: NaN counts as 0, so `Duration::mul_f64` (which
/// panics on NaN) never sees one.
fn unit(jitter: f64) -> f64 {
    if jitter.is_nan() {
        0.0
    } else {
        jitter.clamp(0.0, 1.0)
    }
}

/// What is known of the stored token: when it was written and when it expires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenState {
    /// Last write.
    pub updated_at: SystemTime,
    /// Expiry, when known.
    pub expires_at: Option<SystemTime>,
}

impl TokenState {
    /// From the store's Unix seconds.
    pub fn from_unix(updated_at: u64, expires_at: Option<u64>) -> Self {
        Self {
            updated_at: time::from_unix(updated_at),
            expires_at: expires_at.map(time::from_unix),
        }
    }

    fn lifetime(&self) -> Option<Duration> {
        let expires = self.expires_at?;
        Some(
            expires
                .duration_since(self.updated_at)
                .unwrap_or(Duration::ZERO),
        )
    }

    /// The latest moment a run may happen for this token, whatever the schedule: a quarter
    /// of its lifetime (at most `lead`) before it expires.
    pub fn replace_by(&self, lead: Duration) -> Option<SystemTime> {
        let expires = self.expires_at?;
        let margin = lead.min(self.lifetime()? / 4);
        Some(expires.checked_sub(margin).unwrap_or(expires))
    }

    /// Whether it is still valid at `now`.
    pub fn valid_at(&self, now: SystemTime) -> bool {
        self.expires_at.is_none_or(|e| e > now)
    }
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
    offset.mul_f64(1.0 - JITTER * unit(jitter))
}

/// When a job whose stored token is `token` is due, as its schedule says. `None` (no
/// token): `now`, a catch-up. The result may be in the past, which also means now.
pub fn due_for(
    schedule: &Schedule,
    policy: &Policy,
    token: Option<&TokenState>,
    refresh_in: Option<Duration>,
    now: SystemTime,
    jitter: f64,
) -> SystemTime {
    let Some(token) = token else {
        return now;
    };
    let planned = match schedule {
        Schedule::Auto => match token.lifetime() {
            Some(lifetime) => time::add(
                token.updated_at,
                auto_offset(lifetime, refresh_in, policy.refresh_lead, jitter),
            ),
            None => time::add(token.updated_at, policy.unknown_lifetime_interval),
        },
        Schedule::Every(interval) => time::add(token.updated_at, *interval),
        Schedule::Cron(cron) => cron.next_after(token.updated_at),
    };
    match token.replace_by(policy.refresh_lead) {
        Some(bound) => planned.min(bound),
        None => planned,
    }
}

/// The next run after a successful run that started at `started` and stored `token`: its
/// schedule's time, but never sooner than `min_interval` after `started`.
pub fn after_success(
    schedule: &Schedule,
    policy: &Policy,
    token: &TokenState,
    refresh_in: Option<Duration>,
    started: SystemTime,
    jitter: f64,
) -> SystemTime {
    due_for(schedule, policy, Some(token), refresh_in, started, jitter)
        .max(time::add(started, policy.min_interval))
}

/// Why a run failed, as far as timing is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Retryable or permanent.
    pub retry: Retry,
    /// HTTP 429.
    pub throttled: bool,
    /// The server's `Retry-After`, when it sent one.
    pub retry_after: Option<Duration>,
}

/// The delay before retrying after the `failures`-th consecutive failure (1-based), before
/// the token bound of [`retry_at`]. `jitter` in [0, 1).
pub fn retry_delay(policy: &Policy, failure: Failure, failures: u32, jitter: f64) -> Duration {
    let jitter = unit(jitter);
    if failure.throttled {
        // Never earlier than the server asked, never later than we are willing to wait.
        let wait = failure
            .retry_after
            .unwrap_or(policy.throttle_default)
            .clamp(
                policy.retry_initial.min(policy.max_retry_after),
                policy.max_retry_after,
            );
        return wait.saturating_add(wait.mul_f64(JITTER * jitter));
    }
    let (initial, max) = match failure.retry {
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
    (backoff / 2).saturating_add((backoff / 2).mul_f64(jitter))
}

/// When to retry after a failure at `now`: [`retry_delay`] later, but not past the time the
/// stored (still valid) token must be replaced by, and never sooner than half of
/// `retry_initial`.
pub fn retry_at(
    policy: &Policy,
    failure: Failure,
    failures: u32,
    token: Option<&TokenState>,
    now: SystemTime,
    jitter: f64,
) -> SystemTime {
    let planned = time::add(now, retry_delay(policy, failure, failures, jitter));
    let earliest = time::add(now, policy.retry_initial / 2);
    let bounded = match token
        .filter(|t| t.valid_at(now))
        .and_then(|t| t.replace_by(policy.refresh_lead))
    {
        Some(bound) => planned.min(bound),
        None => planned,
    };
    bounded.max(earliest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    const MIN: u64 = 60;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    fn t0() -> SystemTime {
        UNIX_EPOCH + s(1_700_000_000)
    }

    fn token(lifetime: u64) -> TokenState {
        TokenState {
            updated_at: t0(),
            expires_at: Some(t0() + s(lifetime)),
        }
    }

    fn due_in(schedule: &Schedule, t: &TokenState, refresh_in: Option<u64>, jitter: f64) -> u64 {
        due_for(
            schedule,
            &Policy::default(),
            Some(t),
            refresh_in.map(s),
            t0(),
            jitter,
        )
        .duration_since(t.updated_at)
        .unwrap()
        .as_secs()
    }

    #[test]
    fn auto_refreshes_at_half_life_for_entra_lifetimes() {
        assert_eq!(
            due_in(&Schedule::Auto, &token(60 * MIN), None, 0.0),
            30 * MIN
        );
        assert_eq!(
            due_in(&Schedule::Auto, &token(90 * MIN), None, 0.0),
            45 * MIN
        );
        assert_eq!(
            due_in(&Schedule::Auto, &token(24 * 60 * MIN), Some(60 * MIN), 0.0),
            60 * MIN,
            "refresh_in wins when sooner"
        );
    }

    #[test]
    fn auto_keeps_a_ten_minute_lead_when_the_lifetime_allows() {
        assert_eq!(
            due_in(&Schedule::Auto, &token(15 * MIN), None, 0.0),
            5 * MIN
        );
        for lifetime in [20 * MIN, 60 * MIN, 24 * 60 * MIN] {
            let due = due_in(&Schedule::Auto, &token(lifetime), None, 0.99);
            assert!(lifetime - due >= 10 * MIN, "{lifetime}: {due}");
        }
    }

    #[test]
    fn auto_is_sane_for_short_lifetimes() {
        assert_eq!(due_in(&Schedule::Auto, &token(60), None, 0.0), 15);
        assert_eq!(due_in(&Schedule::Auto, &token(8 * MIN), None, 0.0), 2 * MIN);
        assert_eq!(due_in(&Schedule::Auto, &token(0), None, 0.0), 0);
    }

    #[test]
    fn a_successful_run_is_never_followed_sooner_than_the_floor() {
        let p = Policy::default();
        for lifetime in [0, 1, 2, 10, 59] {
            let next = after_success(&Schedule::Auto, &p, &token(lifetime), None, t0(), 0.5);
            assert_eq!(next, t0() + p.min_interval, "{lifetime}");
        }
        let next = after_success(&Schedule::Auto, &p, &token(3600), Some(s(0)), t0(), 0.0);
        assert_eq!(next, t0() + p.min_interval, "refresh_in 0 too");
    }

    #[test]
    fn jitter_only_moves_refreshes_earlier_by_at_most_ten_percent() {
        let t = token(60 * MIN);
        let base = due_in(&Schedule::Auto, &t, None, 0.0);
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..100 {
            let due = due_in(&Schedule::Auto, &t, None, f64::from(i) / 100.0);
            assert!(due <= base && due as f64 >= base as f64 * 0.9, "{due}");
            seen.insert(due);
        }
        assert!(seen.len() > 50, "jitter spreads jobs out");
    }

    #[test]
    fn no_token_means_now() {
        assert_eq!(
            due_for(&Schedule::Auto, &Policy::default(), None, None, t0(), 0.5),
            t0()
        );
    }

    #[test]
    fn fixed_schedules_never_let_a_token_expire() {
        let every = Schedule::Every(s(45 * MIN));
        assert_eq!(due_in(&every, &token(24 * 60 * MIN), None, 0.5), 45 * MIN);
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

    fn fail(retry: Retry) -> Failure {
        Failure {
            retry,
            throttled: false,
            retry_after: None,
        }
    }

    #[test]
    fn retryable_backoff_doubles_with_jitter_up_to_the_cap() {
        let p = Policy::default();
        let d = |n, j| retry_delay(&p, fail(Retry::Retryable), n, j);
        assert_eq!((d(1, 0.0), d(1, 1.0)), (Duration::from_millis(2500), s(5)));
        assert_eq!(d(2, 1.0), s(10));
        assert_eq!(d(3, 1.0), s(20));
        assert_eq!(d(10, 1.0), s(300));
        assert_eq!(d(10, 0.0), s(150));
        assert_eq!(d(u32::MAX, 1.0), s(300));
    }

    #[test]
    fn throttling_honours_retry_after_within_bounds() {
        let p = Policy::default();
        let d = |after: Option<u64>, j| {
            retry_delay(
                &p,
                Failure {
                    retry: Retry::Retryable,
                    throttled: true,
                    retry_after: after.map(s),
                },
                1,
                j,
            )
        };
        assert_eq!(d(Some(7), 0.0), s(7));
        assert!(d(Some(7), 0.99) <= Duration::from_millis(7700));
        assert_eq!(d(None, 0.0), s(60));
        assert_eq!(d(Some(0), 0.0), p.retry_initial, "never a tight loop");
        assert_eq!(d(Some(u64::from(u32::MAX)), 0.0), p.max_retry_after);
    }

    #[test]
    fn retries_never_wait_past_the_time_the_token_needs_replacing() {
        let p = Policy::default();
        let throttled = Failure {
            retry: Retry::Retryable,
            throttled: true,
            retry_after: Some(s(u64::from(u32::MAX))),
        };
        // A token with 20 minutes left: replaced 10 minutes before expiry at the latest.
        let t = TokenState {
            updated_at: t0() - s(40 * MIN),
            expires_at: Some(t0() + s(20 * MIN)),
        };
        let at = retry_at(&p, throttled, 1, Some(&t), t0(), 0.5);
        assert_eq!(at, t0() + s(10 * MIN));
        // Already past that point: no sooner than half of retry_initial.
        let t = TokenState {
            updated_at: t0() - s(55 * MIN),
            expires_at: Some(t0() + s(MIN)),
        };
        assert_eq!(
            retry_at(&p, throttled, 1, Some(&t), t0(), 0.5),
            t0() + p.retry_initial / 2
        );
        // No valid token: the backoff as it is.
        assert_eq!(
            retry_at(&p, throttled, 1, None, t0(), 0.0),
            t0() + p.max_retry_after
        );
    }

    #[test]
    fn permanent_errors_retry_far_more_slowly() {
        let p = Policy::default();
        let perm = |n| retry_delay(&p, fail(Retry::Permanent), n, 1.0);
        let temp = |n| retry_delay(&p, fail(Retry::Retryable), n, 1.0);
        assert_eq!(perm(1), s(10 * MIN));
        assert_eq!(perm(2), s(20 * MIN));
        assert_eq!(perm(5), s(60 * MIN));
        for n in 1..10 {
            assert!(perm(n) >= temp(n) * 2, "{n}");
        }
    }

    proptest::proptest! {
        /// Whatever the numbers (a reply's lifetime, a `Retry-After`, the clock), the
        /// decisions never panic, never go past the far future, and a success is never
        /// followed sooner than the floor.
        #[test]
        fn extreme_numbers_never_panic_or_loop(
            updated in 0u64..=u64::MAX,
            lifetime in proptest::option::of(0u64..=u64::MAX),
            refresh_in in proptest::option::of(0u64..=u64::MAX),
            retry_after in proptest::option::of(0u64..=u64::MAX),
            now in 0u64..=u64::MAX,
            failures in 0u32..=u32::MAX,
            jitter in -1.0f64..2.0,
            every in 1u64..=MAX_EVERY.as_secs(),
        ) {
            let p = Policy::default();
            let t = TokenState::from_unix(updated, lifetime.map(|l| updated.saturating_add(l)));
            let now = time::from_unix(now);
            for schedule in [Schedule::Auto, Schedule::Every(s(every)), Schedule::parse("*/5 * * * *").unwrap()] {
                let due = due_for(&schedule, &p, Some(&t), refresh_in.map(s), now, jitter);
                proptest::prop_assert!(due <= time::far_future());
                let next = after_success(&schedule, &p, &t, refresh_in.map(s), now, jitter);
                proptest::prop_assert!(next >= time::add(now, p.min_interval).min(time::far_future()));
            }
            for retry in [Retry::Retryable, Retry::Permanent] {
                for throttled in [false, true] {
                    let f = Failure { retry, throttled, retry_after: retry_after.map(s) };
                    let at = retry_at(&p, f, failures, Some(&t), now, jitter);
                    proptest::prop_assert!(at >= time::add(now, p.retry_initial / 2).min(time::far_future()));
                    proptest::prop_assert!(at <= time::add(now, p.max_retry_after.max(p.permanent_retry_max).mul_f64(1.1)));
                }
            }
        }
    }
}
