//! How a token stands, as `TokenReady`, `status.token` and when to look again. Pure.

use std::time::Duration;

use jiff::Timestamp;

use crate::text::human_duration;

use super::schedule::{Failures, Held};
use super::secret::{rfc3339, rfc3339_up};
use crate::api::conditions::{ConditionState, REASON_CONFLICT, REASON_NOT_REQUESTED, TOKEN_READY};
use crate::api::identity::TokenStatus;

/// The outcome of a token reconcile.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenReport {
    pub condition: ConditionState,
    /// `None` when no token is requested (the field is dropped from status).
    pub status: Option<TokenStatus>,
    /// When the token needs attention again (renewal, retry or expiry).
    pub wake: Option<Duration>,
}

impl TokenReport {
    pub fn not_requested() -> Self {
        Self {
            condition: ConditionState::new(TOKEN_READY, true, REASON_NOT_REQUESTED, "spec.token is not set"),
            status: None,
            wake: None,
        }
    }

    pub fn conflict(secret_name: &str) -> Self {
        Self {
            condition: ConditionState::new(
                TOKEN_READY,
                false,
                REASON_CONFLICT,
                format!(
                    "Secret {secret_name} exists and is not managed by winflow for this identity; it was left untouched (delete it, or set spec.token.secretName to another name)"
                ),
            ),
            status: Some(TokenStatus {
                secret_name: Some(secret_name.to_owned()),
                ..TokenStatus::default()
            }),
            wake: None,
        }
    }
}

/// What the report is made from.
pub struct Facts<'a> {
    pub secret_name: &'a str,
    pub held: Option<&'a Held>,
    /// When `held` is renewed on schedule.
    pub renewal: Option<Timestamp>,
    /// When the next attempt after failures is due.
    pub retry: Option<Timestamp>,
    /// The current run of failures, if the last attempt failed.
    pub failures: Option<&'a Failures>,
    pub min_validity: Duration,
    pub now: Timestamp,
}

fn until(now: Timestamp, at: Timestamp) -> Duration {
    Duration::try_from(at.duration_since(now)).unwrap_or_default()
}

pub fn describe(facts: &Facts<'_>) -> TokenReport {
    let valid = facts.held.filter(|h| h.is_valid_at(facts.now));
    let next_attempt = facts.retry.or(facts.renewal);
    let next = next_attempt
        .map(rfc3339_up)
        .unwrap_or_else(|| "the next reconcile".to_owned());
    let condition = match (valid, facts.failures) {
        (Some(held), Some(failures)) => ConditionState::new(
            TOKEN_READY,
            true,
            super::REASON_BACKOFF,
            format!(
                "refreshing the token failed {} time(s) in a row ({}: {}); the current token stays valid until {}; next attempt at {next}",
                failures.count,
                failures.reason,
                failures.message,
                rfc3339(held.expires_at)
            ),
        ),
        (Some(held), None) => {
            let lifetime = until(held.issued_at, held.expires_at);
            if lifetime <= facts.min_validity {
                ConditionState::new(
                    TOKEN_READY,
                    false,
                    super::REASON_LIFETIME_TOO_SHORT,
                    format!(
                        "the provider grants tokens for {}, not longer than spec.token.minValidity ({}), so no pod could be admitted; lower minValidity or have the provider grant longer tokens",
                        human_duration(lifetime),
                        human_duration(facts.min_validity)
                    ),
                )
            } else {
                ConditionState::new(
                    TOKEN_READY,
                    true,
                    super::REASON_TOKEN_ISSUED,
                    format!(
                        "Secret {} holds a token valid until {}; it is renewed at {next}",
                        facts.secret_name,
                        rfc3339(held.expires_at)
                    ),
                )
            }
        }
        (None, failures) => {
            let why = failures
                .map(|f| format!("{}: {}", f.reason, f.message))
                .unwrap_or_else(|| "no attempt yet".to_owned());
            match (facts.held, failures) {
                (Some(expired), _) => ConditionState::new(
                    TOKEN_READY,
                    false,
                    super::REASON_EXPIRED,
                    format!(
                        "the token expired at {} and could not be refreshed ({why}); next attempt at {next}",
                        rfc3339(expired.expires_at)
                    ),
                ),
                (None, Some(failure)) => ConditionState::new(
                    TOKEN_READY,
                    false,
                    failure.reason,
                    format!("{}; next attempt at {next}", failure.message),
                ),
                (None, None) => ConditionState::new(
                    TOKEN_READY,
                    false,
                    super::REASON_BACKOFF,
                    format!("no token yet ({why}); next attempt at {next}"),
                ),
            }
        }
    };
    let wake = [next_attempt, valid.map(|h| h.expires_at)]
        .into_iter()
        .flatten()
        .map(|at| until(facts.now, at).max(Duration::from_millis(200)))
        .min();
    let status = TokenStatus {
        secret_name: Some(facts.secret_name.to_owned()),
        expires_at: facts.held.map(|h| rfc3339(h.expires_at)),
        renewal_time: next_attempt.map(rfc3339_up),
        last_refresh_time: facts.held.map(|h| rfc3339(h.issued_at)),
        failed_attempts: facts.failures.map_or(0, |f| f.count.try_into().unwrap_or(i32::MAX)),
        last_failure_reason: facts.failures.map(|f| f.reason.to_owned()),
    };
    TokenReport {
        condition,
        status: Some(status),
        wake,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn held(has_token: bool) -> Held {
        Held {
            issued_at: at(0),
            expires_at: at(3600),
            inputs: "v1".into(),
            has_token,
        }
    }

    fn failures(count: u32, reason: &'static str) -> Failures {
        Failures {
            count,
            last_at: at(2500),
            inputs: "v1".into(),
            reason,
            message: "the token endpoint did not answer: Connection refused (os error 111)".into(),
        }
    }

    fn facts<'a>(held: Option<&'a Held>, failures: Option<&'a Failures>, now: Timestamp) -> Facts<'a> {
        Facts {
            secret_name: "payroll-export-token",
            held,
            renewal: held.map(|_| at(2400)),
            retry: failures.map(|_| at(2510)),
            failures,
            min_validity: Duration::from_secs(300),
            now,
        }
    }

    #[test]
    fn a_fresh_token_is_issued_with_its_renewal_and_wakes_for_it() {
        let token = held(true);
        let report = describe(&facts(Some(&token), None, at(100)));
        assert!(report.condition.status);
        assert_eq!(report.condition.reason, "TokenIssued");
        let status = report.status.unwrap();
        assert_eq!(status.expires_at.as_deref(), Some("2027-01-15T09:00:00Z"));
        assert_eq!(status.renewal_time.as_deref(), Some("2027-01-15T08:40:00Z"));
        assert_eq!(status.last_refresh_time.as_deref(), Some("2027-01-15T08:00:00Z"));
        assert_eq!(status.failed_attempts, 0);
        assert_eq!(report.wake, Some(Duration::from_secs(2300)));
    }

    #[test]
    fn failures_with_a_valid_token_back_off_and_keep_it() {
        let token = held(true);
        let run = failures(3, "ProviderUnavailable");
        let report = describe(&facts(Some(&token), Some(&run), at(2505)));
        assert!(report.condition.status, "the old token still serves pods");
        assert_eq!(report.condition.reason, "Backoff");
        assert!(
            report.condition.message.contains("3 time(s)"),
            "{}",
            report.condition.message
        );
        assert!(report.condition.message.contains("valid until 2027-01-15T09:00:00Z"));
        let status = report.status.unwrap();
        assert_eq!(status.failed_attempts, 3);
        assert_eq!(status.last_failure_reason.as_deref(), Some("ProviderUnavailable"));
        assert_eq!(status.renewal_time.as_deref(), Some("2027-01-15T08:41:50Z"));
        assert_eq!(report.wake, Some(Duration::from_secs(5)));
    }

    #[test]
    fn without_a_valid_token_the_reason_says_why() {
        let expired = held(false);
        let run = failures(9, "ProviderUnavailable");
        let report = describe(&facts(Some(&expired), Some(&run), at(3700)));
        assert!(!report.condition.status);
        assert_eq!(report.condition.reason, "Expired");
        assert!(report.condition.message.contains("expired at 2027-01-15T09:00:00Z"));

        let first = failures(1, "InvalidClient");
        let report = describe(&facts(None, Some(&first), at(2505)));
        assert_eq!(report.condition.reason, "InvalidClient");
        assert!(
            report
                .condition
                .message
                .ends_with("next attempt at 2027-01-15T08:41:50Z")
        );
        assert_eq!(report.status.unwrap().expires_at, None);
    }

    #[test]
    fn a_lifetime_no_longer_than_min_validity_is_called_out() {
        let short = Held {
            expires_at: at(300),
            ..held(true)
        };
        let report = describe(&facts(Some(&short), None, at(10)));
        assert!(!report.condition.status);
        assert_eq!(report.condition.reason, "LifetimeTooShort");
        assert!(report.condition.message.contains("5m"), "{}", report.condition.message);
        assert!(TokenReport::conflict("x").condition.message.contains("left untouched"));
    }
}
