//! "Check token expiration for each scheduled run": a pod of an identity with a token is
//! admitted only while the token stays valid for as long as the pod asks. Otherwise it is
//! denied with the time a fresh token is due, so Airflow retries the task rather than running
//! it into an authentication failure. Pure.

use crate::webhook::reason::AdmissionReason;
use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;

use crate::text::human_duration;

use crate::api::WindowsTaskIdentity;
use crate::api::conditions::{self, TOKEN_READY};
use crate::names::MIN_TOKEN_VALIDITY_ANNOTATION;
use crate::validate::parse_duration;

/// `Ok` when the identity has no token or its token lasts long enough; otherwise the reason
/// and the message for the denial.
pub(super) fn check_token(
    identity: &WindowsTaskIdentity,
    pod_annotations: Option<&BTreeMap<String, String>>,
    now: Timestamp,
) -> Result<(), (AdmissionReason, String)> {
    let Some(settings) = &identity.spec.token else {
        return Ok(());
    };
    let name = identity.metadata.name.as_deref().unwrap_or_default();
    let floor = parse_duration(&settings.min_validity).unwrap_or(Duration::from_secs(300));
    let asked = match pod_annotations.and_then(|a| a.get(MIN_TOKEN_VALIDITY_ANNOTATION)) {
        None => None,
        Some(text) => Some(parse_duration(text).ok_or_else(|| {
            (
                AdmissionReason::InvalidAnnotation,
                format!(
                    "annotation {MIN_TOKEN_VALIDITY_ANNOTATION}: {text:?} is not a positive duration (for example 30m or 2h)"
                ),
            )
        })?),
    };
    let needed = asked.map_or(floor, |asked| asked.max(floor));
    let status = identity.status.as_ref();
    let token = status.and_then(|s| s.token.as_ref());
    let due = token
        .and_then(|t| t.renewal_time.as_deref())
        .and_then(|t| t.parse::<Timestamp>().ok())
        .filter(|at| *at > now)
        .map_or_else(
            || "a fresh token is being requested now".to_owned(),
            |at| format!("a fresh token is due at {at}"),
        );
    let expires_at = token
        .and_then(|t| t.expires_at.as_deref())
        .and_then(|t| t.parse::<Timestamp>().ok());
    let Some(expires_at) = expires_at else {
        let why = status
            .and_then(|s| conditions::find(&s.conditions, TOKEN_READY))
            .map(|c| format!(" ({}: {})", c.reason, c.message))
            .unwrap_or_default();
        return Err((
            AdmissionReason::TokenNotIssued,
            format!("identity \"{name}\" has no OIDC token yet{why}; {due}, retry the task then"),
        ));
    };
    if expires_at <= now {
        return Err((
            AdmissionReason::TokenExpired,
            format!("the OIDC token of identity \"{name}\" expired at {expires_at}; {due}, retry the task then"),
        ));
    }
    let left = Duration::try_from(expires_at.duration_since(now)).unwrap_or_default();
    if left < needed {
        let source = if asked.is_some_and(|a| a > floor) {
            format!("annotation {MIN_TOKEN_VALIDITY_ANNOTATION}")
        } else {
            "spec.token.minValidity".to_owned()
        };
        return Err((
            AdmissionReason::TokenExpiring,
            format!(
                "the OIDC token of identity \"{name}\" expires at {expires_at}, in {}, sooner than the {} this pod needs ({source}); {due}, retry the task then",
                human_duration(left),
                human_duration(needed)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::identity::TokenStatus;
    use crate::fixtures;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn identity(expires_at: Option<Timestamp>, renewal: Timestamp) -> WindowsTaskIdentity {
        let mut identity = fixtures::key_vault_with_token();
        identity.status = Some(crate::api::WindowsTaskIdentityStatus {
            token: Some(TokenStatus {
                secret_name: Some("payroll-export-token".into()),
                expires_at: expires_at.map(|t| t.to_string()),
                renewal_time: Some(renewal.to_string()),
                ..TokenStatus::default()
            }),
            ..Default::default()
        });
        identity
    }

    fn annotations(value: &str) -> BTreeMap<String, String> {
        BTreeMap::from([(MIN_TOKEN_VALIDITY_ANNOTATION.to_owned(), value.to_owned())])
    }

    #[test]
    fn identities_without_a_token_are_not_checked() {
        assert!(check_token(&fixtures::key_vault(), None, at(0)).is_ok());
    }

    #[test]
    fn a_token_valid_long_enough_admits_the_pod() {
        let fresh = identity(Some(at(3600)), at(2400));
        assert!(check_token(&fresh, None, at(0)).is_ok());
        assert!(check_token(&fresh, Some(&annotations("30m")), at(0)).is_ok());
    }

    #[test]
    fn an_expired_or_missing_token_is_denied_with_the_time_a_fresh_one_is_due() {
        let expired = identity(Some(at(-10)), at(20));
        let (reason, message) = check_token(&expired, None, at(0)).unwrap_err();
        assert_eq!(reason.as_str(), "TokenExpired");
        assert!(message.contains("expired at 2027-01-15T07:59:50Z"), "{message}");
        assert!(
            message.contains("a fresh token is due at 2027-01-15T08:00:20Z"),
            "{message}"
        );

        let none = identity(None, at(-5));
        let (reason, message) = check_token(&none, None, at(0)).unwrap_err();
        assert_eq!(reason.as_str(), "TokenNotIssued");
        assert!(message.contains("being requested now"), "{message}");
    }

    #[test]
    fn the_pod_may_ask_for_more_validity_but_not_less_than_the_identity_floor() {
        let identity = identity(Some(at(1200)), at(900));
        let (reason, message) = check_token(&identity, Some(&annotations("1h")), at(0)).unwrap_err();
        assert_eq!(reason.as_str(), "TokenExpiring");
        assert!(message.contains("in 20m"), "{message}");
        assert!(message.contains("the 1h this pod needs"), "{message}");
        assert!(
            message.contains("a fresh token is due at 2027-01-15T08:15:00Z"),
            "{message}"
        );
        // Asking for less than spec.token.minValidity (5m) does not lower the floor.
        let (reason, message) = check_token(&identity, Some(&annotations("1s")), at(1000)).unwrap_err();
        assert_eq!(reason.as_str(), "TokenExpiring");
        assert!(message.contains("spec.token.minValidity"), "{message}");
        let (reason, message) = check_token(&identity, Some(&annotations("soon")), at(0)).unwrap_err();
        assert_eq!(reason.as_str(), "InvalidAnnotation");
        assert!(message.contains("\"soon\""), "{message}");
    }
}
