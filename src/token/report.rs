//! How a token stands, as `TokenReady`, `status.token` and when to look again. Pure.

use std::time::Duration;

use jiff::Timestamp;

use crate::text::human_duration;

use super::Reason;
use super::schedule::{Failures, Held};
use super::secret::{rfc3339, rfc3339_up};
use crate::api::conditions::{ConditionReason, ConditionState, TOKEN_READY};
use crate::api::identity::TokenStatus;

/// How an identity's token stands: its `TokenReady` condition and `status.token`.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenReport {
    pub condition: ConditionState,
    /// `None` when no token is requested (the field is dropped from status).
    pub status: Option<TokenStatus>,
}

impl TokenReport {
    pub fn not_requested() -> Self {
        Self {
            condition: ConditionState::new(
                TOKEN_READY,
                true,
                ConditionReason::NotRequested,
                "spec.token is not set",
            ),
            status: None,
        }
    }

    pub fn conflict(secret_name: &str) -> Self {
        Self {
            condition: ConditionState::new(
                TOKEN_READY,
                false,
                ConditionReason::Conflict,
                format!(
                    "Secret {secret_name} exists and is not managed by winflow for this identity; it was left untouched (delete it, or set spec.token.secretName to another name)"
                ),
            ),
            status: Some(TokenStatus {
                secret_name: Some(secret_name.to_owned()),
                ..TokenStatus::default()
            }),
        }
    }
}

/// How many pod names a message lists.
const NAMED_PODS: usize = 5;

impl TokenReport {
    /// Pods that are not the identity's own name the token Secret (`pods`, by name): no token
    /// is written to it until they are gone.
    pub fn exposed(secret_name: &str, pods: &[String]) -> Self {
        let mut named = pods.iter().take(NAMED_PODS).cloned().collect::<Vec<_>>().join(", ");
        if pods.len() > NAMED_PODS {
            named.push_str(&format!(" and {} more", pods.len() - NAMED_PODS));
        }
        Self {
            condition: token_ready(
                false,
                Reason::Exposed,
                format!(
                    "Secret {secret_name} is named by pods that are not this identity's own ({named}); winflow writes no token to it (and took out one that was there) until they are gone (see status.exposure)"
                ),
            ),
            status: Some(TokenStatus {
                secret_name: Some(secret_name.to_owned()),
                ..TokenStatus::default()
            }),
        }
    }
}

/// What the report is made from.
pub(super) struct Facts<'a> {
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

impl Facts<'_> {
    fn next_attempt(&self) -> Option<Timestamp> {
        self.retry.or(self.renewal)
    }

    fn valid(&self) -> Option<&Held> {
        self.held.filter(|h| h.is_valid_at(self.now))
    }

    /// When the token needs attention again: the next attempt, or the expiry of the valid
    /// token (it is then taken out of the Secret), whichever comes first.
    pub(super) fn next_look(&self) -> Option<Timestamp> {
        [self.next_attempt(), self.valid().map(|h| h.expires_at)]
            .into_iter()
            .flatten()
            .min()
    }

    fn status(&self, renewal_time: Option<String>) -> TokenStatus {
        TokenStatus {
            secret_name: Some(self.secret_name.to_owned()),
            expires_at: self.held.map(|h| rfc3339(h.expires_at)),
            renewal_time,
            last_refresh_time: self.held.map(|h| rfc3339(h.issued_at)),
            failed_attempts: self.failures.map_or(0, |f| f.count.try_into().unwrap_or(i32::MAX)),
            last_failure_reason: self.failures.map(|f| f.reason.as_str().to_owned()),
        }
    }
}

fn token_ready(status: bool, reason: Reason, message: String) -> ConditionState {
    ConditionState::new(TOKEN_READY, status, reason, message)
}

pub(super) fn describe(facts: &Facts<'_>) -> TokenReport {
    let next_attempt = facts.next_attempt();
    let next = next_attempt
        .map(rfc3339_up)
        .unwrap_or_else(|| "the next reconcile".to_owned());
    let condition = match (facts.valid(), facts.failures) {
        (Some(held), Some(failures)) => token_ready(
            true,
            Reason::Backoff,
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
                token_ready(
                    false,
                    Reason::LifetimeTooShort,
                    format!(
                        "the provider grants tokens for {}, not longer than spec.token.minValidity ({}), so no pod could be admitted; lower minValidity or have the provider grant longer tokens",
                        human_duration(lifetime),
                        human_duration(facts.min_validity)
                    ),
                )
            } else {
                token_ready(
                    true,
                    Reason::TokenIssued,
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
                (Some(expired), _) => token_ready(
                    false,
                    Reason::Expired,
                    format!(
                        "the token expired at {} and could not be refreshed ({why}); next attempt at {next}",
                        rfc3339(expired.expires_at)
                    ),
                ),
                (None, Some(failure)) => token_ready(
                    false,
                    failure.reason,
                    format!("{}; next attempt at {next}", failure.message),
                ),
                (None, None) => token_ready(
                    false,
                    Reason::Backoff,
                    format!("no token yet ({why}); next attempt at {next}"),
                ),
            }
        }
    };
    TokenReport {
        condition,
        status: Some(facts.status(next_attempt.map(rfc3339_up))),
    }
}

/// An attempt whose outcome is not in yet, for a report of it.
pub(super) struct Attempting<'a> {
    pub issuer: &'a str,
    pub since: Timestamp,
    /// What it waits for, as `attempt::Stage` says it.
    pub waiting_for: &'a str,
    /// How long it may take once it has its slots.
    pub deadline: Duration,
}

/// While the first attempt for the current settings is under way: `TokenPending`, true as long
/// as the Secret still holds a valid token (pods go on using it), and no renewal time (a fresh
/// token is being requested now).
pub(super) fn pending(facts: &Facts<'_>, attempting: &Attempting<'_>) -> TokenReport {
    let requesting = format!(
        "requesting a token from issuer {:?} since {} ({}; an attempt is given {}, --token-attempt-deadline)",
        attempting.issuer,
        rfc3339(attempting.since),
        attempting.waiting_for,
        human_duration(attempting.deadline)
    );
    let condition = match facts.valid() {
        Some(held) => token_ready(
            true,
            Reason::TokenPending,
            format!(
                "Secret {} holds a token valid until {} for the previous token settings; {requesting}",
                facts.secret_name,
                rfc3339(held.expires_at)
            ),
        ),
        None => token_ready(false, Reason::TokenPending, format!("no token yet: {requesting}")),
    };
    TokenReport {
        condition,
        status: Some(facts.status(None)),
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

    fn failures(count: u32, reason: Reason) -> Failures {
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
        let facts = facts(Some(&token), None, at(100));
        let report = describe(&facts);
        assert!(report.condition.status);
        assert_eq!(report.condition.reason, "TokenIssued");
        let status = report.status.unwrap();
        assert_eq!(status.expires_at.as_deref(), Some("2027-01-15T09:00:00Z"));
        assert_eq!(status.renewal_time.as_deref(), Some("2027-01-15T08:40:00Z"));
        assert_eq!(status.last_refresh_time.as_deref(), Some("2027-01-15T08:00:00Z"));
        assert_eq!(status.failed_attempts, 0);
        assert_eq!(facts.next_look(), Some(at(2400)), "2300 s on, at the renewal");
    }

    #[test]
    fn failures_with_a_valid_token_back_off_and_keep_it() {
        let token = held(true);
        let run = failures(3, Reason::ProviderUnavailable);
        let facts = facts(Some(&token), Some(&run), at(2505));
        let report = describe(&facts);
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
        assert_eq!(facts.next_look(), Some(at(2510)), "5 s on, at the retry");
    }

    #[test]
    fn without_a_valid_token_the_reason_says_why() {
        let expired = held(false);
        let run = failures(9, Reason::ProviderUnavailable);
        let report = describe(&facts(Some(&expired), Some(&run), at(3700)));
        assert!(!report.condition.status);
        assert_eq!(report.condition.reason, "Expired");
        assert!(report.condition.message.contains("expired at 2027-01-15T09:00:00Z"));

        let first = failures(1, Reason::InvalidClient);
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

    #[test]
    fn a_token_kept_out_for_exposing_pods_names_them() {
        let pods: Vec<String> = (1..=7).map(|i| format!("p{i}")).collect();
        let report = TokenReport::exposed("payroll-export-token", &pods);
        assert!(!report.condition.status);
        assert_eq!(report.condition.reason, "Exposed");
        assert!(
            report
                .condition
                .message
                .starts_with("Secret payroll-export-token is named by pods that are not this identity's own (p1, p2, p3, p4, p5 and 2 more)"),
            "{}",
            report.condition.message
        );
        let status = report.status.unwrap();
        assert_eq!(status.secret_name.as_deref(), Some("payroll-export-token"));
        assert_eq!(status.expires_at, None);
    }

    #[test]
    fn an_expiry_before_the_next_attempt_is_looked_at_first() {
        let expiring = Held {
            expires_at: at(2505),
            ..held(true)
        };
        let run = failures(2, Reason::ProviderUnavailable);
        assert_eq!(facts(Some(&expiring), Some(&run), at(2500)).next_look(), Some(at(2505)));
        // Once expired, only the next attempt is left.
        assert_eq!(facts(Some(&expiring), Some(&run), at(2506)).next_look(), Some(at(2510)));
    }

    #[test]
    fn an_attempt_under_way_is_pending_and_a_valid_token_keeps_serving() {
        let attempting = Attempting {
            issuer: "https://idp.example.com",
            since: at(2500),
            waiting_for: "waiting for the discovery document",
            deadline: Duration::from_secs(20),
        };
        let token = held(true);
        let report = pending(&facts(Some(&token), None, at(2505)), &attempting);
        assert!(report.condition.status, "pods go on using the valid token");
        assert_eq!(report.condition.reason, "TokenPending");
        assert_eq!(
            report.condition.message,
            "Secret payroll-export-token holds a token valid until 2027-01-15T09:00:00Z for the previous token settings; requesting a token from issuer \"https://idp.example.com\" since 2027-01-15T08:41:40Z (waiting for the discovery document; an attempt is given 20s, --token-attempt-deadline)"
        );
        let status = report.status.unwrap();
        assert_eq!(status.expires_at.as_deref(), Some("2027-01-15T09:00:00Z"));
        assert_eq!(status.renewal_time, None, "a fresh token is being requested now");

        let report = pending(&facts(None, None, at(2505)), &attempting);
        assert!(!report.condition.status);
        assert_eq!(report.condition.reason, "TokenPending");
        assert!(
            report
                .condition
                .message
                .starts_with("no token yet: requesting a token from issuer \"https://idp.example.com\" since"),
            "{}",
            report.condition.message
        );
        assert_eq!(report.status.unwrap().expires_at, None);
    }
}
