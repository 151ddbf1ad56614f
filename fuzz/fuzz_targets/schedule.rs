//! Scheduling decisions against arbitrary numbers: any schedule text, any policy (not only
//! the ranges the config loader accepts), any token times, `Retry-After`, failure count and
//! jitter (NaN and infinities too). Invariants: no panic; nothing goes past the far future;
//! a success is never followed sooner than `min_interval`; a retry never comes sooner than
//! half of `retry_initial` nor later than the longest wait the policy allows (plus jitter).
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use std::time::Duration;
use tokenwarden::Retry;
use tokenwarden::schedule::{self, Failure, Policy, Schedule, TokenState};
use std::time::{SystemTime, UNIX_EPOCH};

/// `secs` after the epoch, clamped to the schedule's horizon as the daemon clamps it.
fn from_unix(secs: u64) -> SystemTime {
    UNIX_EPOCH
        .checked_add(Duration::from_secs(secs))
        .map_or_else(schedule::far_future, |t| t.min(schedule::far_future()))
}

/// `t + d`, clamped to the horizon.
fn add(t: SystemTime, d: Duration) -> SystemTime {
    t.checked_add(d)
        .map_or_else(schedule::far_future, |s| s.min(schedule::far_future()))
}

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    schedule: &'a str,
    policy: [(u64, u32); 9],
    updated_at: u64,
    expires_at: Option<u64>,
    refresh_in: Option<(u64, u32)>,
    retry_after: Option<(u64, u32)>,
    now: u64,
    failures: u32,
    jitter: f64,
    permanent: bool,
    throttled: bool,
}

fn d((secs, nanos): (u64, u32)) -> Duration {
    Duration::new(secs, nanos % 1_000_000_000)
}

fuzz_target!(|input: Input| {
    let Ok(schedule) = Schedule::parse(input.schedule) else {
        return;
    };
    let [a, b, c, e, f, g, h, i, j] = input.policy.map(d);
    let policy = Policy {
        refresh_lead: a,
        retry_initial: b,
        retry_max: c,
        permanent_retry_initial: e,
        permanent_retry_max: f,
        throttle_default: g,
        max_retry_after: h,
        min_interval: i,
        unknown_lifetime_interval: j,
    };
    let token = TokenState::from_unix(input.updated_at, input.expires_at);
    let now = from_unix(input.now);
    let refresh_in = input.refresh_in.map(d);
    let far = schedule::far_future();

    let due = schedule::due_for(&schedule, &policy, Some(&token), refresh_in, now, input.jitter);
    assert!(due <= far);
    let next =
        schedule::after_success(&schedule, &policy, &token, refresh_in, now, input.jitter);
    assert!(next <= far);
    assert!(next >= add(now, policy.min_interval));

    let failure = Failure {
        retry: if input.permanent {
            Retry::Permanent
        } else {
            Retry::Retryable
        },
        throttled: input.throttled,
        retry_after: input.retry_after.map(d),
    };
    let delay = schedule::retry_delay(&policy, failure, input.failures, input.jitter);
    let longest = policy
        .retry_max
        .max(policy.permanent_retry_max)
        .max(policy.max_retry_after)
        .max(policy.retry_initial)
        .max(policy.permanent_retry_initial);
    // Jitter is computed in f64 (`Duration::mul_f64`), exact to about 1e-16 of the value:
    // allow that much on top of the 10 % jitter (it matters only for absurd policies).
    let slack = longest / 10 + longest / 1_000_000_000 + Duration::from_secs(1);
    assert!(delay <= longest.saturating_add(slack));
    let at = schedule::retry_at(&policy, failure, input.failures, Some(&token), now, input.jitter);
    assert!(at <= far);
    assert!(at >= add(now, policy.retry_initial / 2).min(far));
});
