//! When a token is renewed and when a failed refresh is tried again. Pure.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use sha2::{Digest, Sha256};

use super::{Failure, Reason};

/// How failed refreshes are retried: doubling from `first`, never longer than `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub first: Duration,
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            first: Duration::from_secs(5),
            max: Duration::from_secs(120),
        }
    }
}

/// A number in `[0, 1)` derived from `seed`: the same object gets the same jitter on every
/// reconcile (and after a restart), different objects get different ones.
fn unit_fraction(seed: &str) -> f64 {
    let digest = Sha256::digest(seed.as_bytes());
    let bits = u64::from_be_bytes(digest[..8].try_into().expect("a SHA-256 digest has 8 bytes"));
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

fn signed(duration: Duration) -> SignedDuration {
    SignedDuration::try_from(duration).unwrap_or(SignedDuration::MAX)
}

/// How long before expiry a token is renewed: `renew_before` as configured, or a third of the
/// lifetime; never less than `min_validity` (so a token on schedule always satisfies the
/// admission check) and never more than half the lifetime (so a token is requested at most
/// twice per lifetime, however the settings are combined).
pub fn renew_before(lifetime: Duration, configured: Option<Duration>, min_validity: Duration) -> Duration {
    let wanted = configured.unwrap_or(lifetime / 3).max(min_validity);
    wanted.min(lifetime / 2)
}

/// When a token issued at `issued_at` and expiring at `expires_at` is renewed: `renew_before`
/// ahead of expiry, moved earlier by up to a tenth of that margin so that identities issued
/// together do not all renew in the same second.
pub fn renewal_time(
    issued_at: Timestamp,
    expires_at: Timestamp,
    configured: Option<Duration>,
    min_validity: Duration,
    jitter_seed: &str,
) -> Timestamp {
    let lifetime = expires_at.duration_since(issued_at).max(SignedDuration::ZERO);
    let lifetime = Duration::try_from(lifetime).unwrap_or_default();
    let margin = renew_before(lifetime, configured, min_validity);
    let jitter = margin.mul_f64(0.1 * unit_fraction(jitter_seed));
    expires_at
        .checked_sub(signed(margin + jitter))
        .unwrap_or(issued_at)
        .max(issued_at)
}

/// How long to wait after the `failures`-th failure in a row (1 for the first), with up to
/// a fifth taken off so that identities failing together do not retry together.
pub fn retry_delay(failures: u32, policy: RetryPolicy, jitter_seed: &str) -> Duration {
    let exponent = failures.saturating_sub(1).min(30);
    let full = policy.first.saturating_mul(1u32 << exponent).min(policy.max);
    let seed = format!("{jitter_seed}/{failures}");
    full.mul_f64(1.0 - 0.2 * unit_fraction(&seed))
}

/// The token currently in the Secret, as its annotations describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
    /// Digest of what the token was requested with (settings, client secret version).
    pub inputs: String,
    /// False once winflow has blanked an expired token.
    pub has_token: bool,
}

impl Held {
    pub fn is_valid_at(&self, now: Timestamp) -> bool {
        self.has_token && now < self.expires_at
    }
}

/// Failed refreshes since the last success (kept in memory; counted again after a restart).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failures {
    pub count: u32,
    pub last_at: Timestamp,
    /// The inputs the failing attempts used: new inputs are tried at once.
    pub inputs: String,
    /// Why the last attempt failed.
    pub reason: Reason,
    /// What went wrong, for status and Events (never a secret).
    pub message: String,
}

impl Failures {
    /// The run of failures after `failure` at `now`: one more of the same inputs, or the first
    /// of new inputs (a changed setting or client secret starts a new run of backoff).
    pub fn after(previous: Option<Failures>, failure: &Failure, inputs: &str, now: Timestamp) -> Failures {
        let count = previous.filter(|p| p.inputs == inputs).map_or(0, |p| p.count);
        Failures {
            count: count + 1,
            last_at: now,
            inputs: inputs.to_owned(),
            reason: failure.reason,
            message: failure.message.clone(),
        }
    }
}

/// Why a refresh is needed now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    NoToken,
    SettingsChanged,
    Due,
    Retry,
}

impl Why {
    pub fn describe(self) -> &'static str {
        match self {
            Why::NoToken => "no token yet",
            Why::SettingsChanged => "the token settings or the client credentials changed",
            Why::Due => "the token is due for renewal",
            Why::Retry => "retrying after a failure",
        }
    }
}

/// What to do about a token now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Refresh(Why),
    /// Nothing until then (a renewal or a retry).
    WaitUntil(Timestamp),
}

/// Inputs of [`next_step`].
pub struct Situation<'a> {
    pub held: Option<&'a Held>,
    /// When `held` is due for renewal.
    pub renewal: Option<Timestamp>,
    pub inputs: &'a str,
    pub failures: Option<&'a Failures>,
    pub now: Timestamp,
    pub policy: RetryPolicy,
    pub jitter_seed: &'a str,
}

/// Attempts are never spaced wider than this while a valid token runs out.
const MIN_SPACING: Duration = Duration::from_millis(500);

/// When the next attempt after `failures` is due: the backoff delay, but while the current
/// token is still valid, at most a third of the time it has left (and not under half a
/// second), so that a provider reachable only now and then is still reached before expiry.
pub fn retry_at(
    failures: &Failures,
    policy: RetryPolicy,
    jitter_seed: &str,
    valid_until: Option<Timestamp>,
) -> Timestamp {
    let delay = retry_delay(failures.count, policy, jitter_seed);
    let delay = match valid_until.filter(|until| *until > failures.last_at) {
        Some(until) => {
            let left = Duration::try_from(until.duration_since(failures.last_at)).unwrap_or_default();
            delay.min((left / 3).max(MIN_SPACING))
        }
        None => delay,
    };
    failures.last_at.checked_add(signed(delay)).unwrap_or(Timestamp::MAX)
}

/// Refresh now, or wait. Failing attempts back off unless the inputs changed since; a token
/// with other inputs than the current ones is replaced at once; otherwise the token is renewed
/// on schedule.
pub fn next_step(s: &Situation<'_>) -> Step {
    if let Some(failures) = s.failures.filter(|f| f.count > 0 && f.inputs == s.inputs) {
        let valid_until = s.held.filter(|h| h.has_token).map(|h| h.expires_at);
        let at = retry_at(failures, s.policy, s.jitter_seed, valid_until);
        return if s.now >= at {
            Step::Refresh(Why::Retry)
        } else {
            Step::WaitUntil(at)
        };
    }
    let Some(held) = s.held.filter(|h| h.has_token) else {
        return Step::Refresh(Why::NoToken);
    };
    if held.inputs != s.inputs {
        return Step::Refresh(Why::SettingsChanged);
    }
    match s.renewal {
        Some(at) if s.now < at => Step::WaitUntil(at),
        _ => Step::Refresh(Why::Due),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn renews_a_third_before_expiry_by_default_within_bounds() {
        assert_eq!(renew_before(secs(3600), None, secs(300)), secs(1200));
        // Never less than minValidity, so a token on schedule always admits pods.
        assert_eq!(renew_before(secs(600), None, secs(300)), secs(300));
        // Never more than half the lifetime.
        assert_eq!(renew_before(secs(3600), Some(secs(3000)), secs(300)), secs(1800));
        assert_eq!(renew_before(secs(30), None, secs(300)), secs(15));
        assert_eq!(renew_before(secs(3600), Some(secs(600)), secs(60)), secs(600));
    }

    #[test]
    fn renewal_time_is_before_the_margin_by_at_most_a_tenth_and_stable() {
        let issued = at(0);
        let expires = at(3600);
        let mut distinct = std::collections::BTreeSet::new();
        for seed in ["a/x", "a/y", "b/x", "c/z", "d/w"] {
            let renewal = renewal_time(issued, expires, None, secs(300), seed);
            let ahead = expires.duration_since(renewal).as_secs();
            assert!((1200..=1320).contains(&ahead), "{seed}: renews {ahead}s ahead");
            assert_eq!(renewal, renewal_time(issued, expires, None, secs(300), seed));
            distinct.insert(renewal);
        }
        assert!(distinct.len() > 1, "jitter spreads renewals");
        // A token that was already expired when issued is renewed at once.
        assert_eq!(renewal_time(at(10), at(5), None, secs(300), "a"), at(10));
    }

    #[test]
    fn retries_double_up_to_the_cap_with_downward_jitter() {
        let policy = RetryPolicy {
            first: secs(5),
            max: secs(60),
        };
        let delays: Vec<u64> = (1..=7)
            .map(|n| retry_delay(n, policy, "ns/a").as_millis() as u64)
            .collect();
        let nominal = [5_000, 10_000, 20_000, 40_000, 60_000, 60_000, 60_000];
        for (delay, full) in delays.iter().zip(nominal) {
            assert!(*delay <= full && *delay >= full * 8 / 10, "{delays:?}");
        }
        assert!(delays[0] < delays[1] && delays[1] < delays[2] && delays[2] < delays[3]);
        assert!(retry_delay(u32::MAX, policy, "x") <= secs(60));
    }

    fn held(inputs: &str) -> Held {
        Held {
            issued_at: at(0),
            expires_at: at(30),
            inputs: inputs.to_owned(),
            has_token: true,
        }
    }

    fn situation<'a>(held: Option<&'a Held>, failures: Option<&'a Failures>, now: Timestamp) -> Situation<'a> {
        Situation {
            held,
            renewal: held.map(|_| at(20)),
            inputs: "v1",
            failures,
            now,
            policy: RetryPolicy {
                first: secs(2),
                max: secs(16),
            },
            jitter_seed: "ns/a",
        }
    }

    #[test]
    fn a_held_token_is_renewed_on_schedule() {
        let token = held("v1");
        assert_eq!(
            next_step(&situation(Some(&token), None, at(5))),
            Step::WaitUntil(at(20))
        );
        assert_eq!(
            next_step(&situation(Some(&token), None, at(20))),
            Step::Refresh(Why::Due)
        );
        assert_eq!(next_step(&situation(None, None, at(5))), Step::Refresh(Why::NoToken));
        let blanked = Held {
            has_token: false,
            ..held("v1")
        };
        assert_eq!(
            next_step(&situation(Some(&blanked), None, at(5))),
            Step::Refresh(Why::NoToken)
        );
        let old = held("v0");
        assert_eq!(
            next_step(&situation(Some(&old), None, at(5))),
            Step::Refresh(Why::SettingsChanged)
        );
    }

    #[test]
    fn failures_back_off_unless_the_inputs_changed() {
        let token = held("v1");
        let failures = Failures {
            count: 3,
            last_at: at(21),
            inputs: "v1".to_owned(),
            reason: Reason::ProviderUnavailable,
            message: "connection refused".to_owned(),
        };
        // The third failure would wait 6.4 to 8 s, but the token has 9 s left: a third of that.
        let Step::WaitUntil(retry) = next_step(&situation(Some(&token), Some(&failures), at(22))) else {
            panic!("expected a wait");
        };
        assert_eq!(retry, at(24));
        // Without a valid token, the backoff alone.
        let Step::WaitUntil(retry) = next_step(&situation(None, Some(&failures), at(22))) else {
            panic!("expected a wait");
        };
        let wait = retry.duration_since(at(21)).as_secs_f64();
        assert!((6.4..=8.0).contains(&wait), "waits {wait}s");
        assert_eq!(
            next_step(&situation(Some(&token), Some(&failures), retry)),
            Step::Refresh(Why::Retry)
        );
        // A fixed client secret (new inputs) is tried at once.
        let stale = Failures {
            inputs: "v0".to_owned(),
            ..failures
        };
        assert_eq!(
            next_step(&situation(Some(&token), Some(&stale), at(5))),
            Step::WaitUntil(at(20))
        );
        let replaced = held("v0");
        assert_eq!(
            next_step(&situation(Some(&replaced), Some(&stale), at(5))),
            Step::Refresh(Why::SettingsChanged)
        );
    }

    #[test]
    fn a_run_of_failures_counts_on_until_the_inputs_change() {
        let refused = Failure::new(Reason::InvalidClient, "invalid_client".to_owned());
        let first = Failures::after(None, &refused, "v1", at(1));
        assert_eq!(
            (first.count, first.last_at, first.reason),
            (1, at(1), Reason::InvalidClient)
        );
        let unavailable = Failure::new(Reason::ProviderUnavailable, "refused".to_owned());
        let second = Failures::after(Some(first), &unavailable, "v1", at(3));
        assert_eq!((second.count, second.last_at), (2, at(3)));
        assert_eq!(
            (second.reason, second.message.as_str()),
            (Reason::ProviderUnavailable, "refused")
        );
        let fixed = Failures::after(Some(second), &refused, "v2", at(4));
        assert_eq!((fixed.count, fixed.inputs.as_str()), (1, "v2"));
    }

    #[test]
    fn retries_get_denser_as_a_valid_token_runs_out() {
        let policy = RetryPolicy {
            first: secs(5),
            max: secs(60),
        };
        let failures = Failures {
            count: 4,
            last_at: at(100),
            inputs: "v1".to_owned(),
            reason: Reason::ProviderUnavailable,
            message: String::new(),
        };
        // Backoff alone would wait 32 s or more (with jitter); 6 s are left, so 2 s.
        assert_eq!(retry_at(&failures, policy, "a", Some(at(106))), at(102));
        // Never closer than half a second.
        let soon = retry_at(&failures, policy, "a", Some(at(101)));
        assert_eq!(soon.duration_since(at(100)).as_millis(), 500);
        // Without a valid token, plain backoff.
        let plain = retry_at(&failures, policy, "a", None).duration_since(at(100)).as_secs();
        assert!((25..=40).contains(&plain), "{plain}");
        assert_eq!(
            retry_at(&failures, policy, "a", Some(at(90))),
            retry_at(&failures, policy, "a", None)
        );
    }
}
