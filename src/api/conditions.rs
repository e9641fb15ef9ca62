//! Status conditions: types, reasons, and the bookkeeping that keeps `lastTransitionTime`
//! stable so that an unchanged status compares equal and costs no write.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const READY: &str = "Ready";
pub const CREDENTIAL_SPEC_READY: &str = "CredentialSpecReady";
pub const ACCESS_GRANTED: &str = "AccessGranted";
pub const POD_TEMPLATE_READY: &str = "PodTemplateReady";
pub const SHARES_READY: &str = "SharesReady";
pub const TOKEN_READY: &str = "TokenReady";
/// Whether the identity's namespace is labelled `winflow.io/enforce: "true"`. Outside `Ready`.
pub const ENFORCED: &str = "Enforced";

/// The task pods' health (`status.pods`). Outside `Ready`.
pub const TASKS_HEALTHY: &str = "TasksHealthy";

/// Whether no pod but the identity's own names its credentials (`status.exposure`). Outside
/// `Ready`; while pods that are not its own name the token Secret, `TokenReady` is false.
pub const CREDENTIALS_CONTAINED: &str = "CredentialsContained";

/// A condition's reason as one domain decides it: `ConditionReason` for the identity's and the
/// share's configuration, enforcement and task pods, `token::Reason` for `TokenReady`. The
/// strings are part of the API (SPEC.md, the README's condition tables).
pub trait Reason: Copy {
    fn as_str(self) -> &'static str;
}

/// The reasons of every condition but `TokenReady`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionReason {
    Reconciled,
    InvalidSpec,
    /// An object of a child's name exists and is not winflow's.
    Conflict,
    /// The spec does not ask for it (no shares, no token).
    NotRequested,
    ServiceAccountMissing,
    /// The API server refused a child.
    ApiError,
    /// The cluster lacks something winflow cannot do without (a CRD it writes).
    PrerequisiteMissing,
    ShareNotReady,
    NamespaceEnforced,
    NamespaceNotEnforced,
    /// Creators' service accounts live in namespaces that are not enforced.
    CreatorNamespaceNotEnforced,
    /// winflow cannot list namespaces.
    NamespaceUnknown,
    NoRecentFailures,
    AuthenticationFailures,
    /// winflow cannot list pods.
    PodsUnknown,
    /// A share's claim is bound to its volume.
    Bound,
    Pending,
    /// A share's credentials Secret is missing or lacks a key.
    SecretMissing,
    /// No pod but the identity's own names its credentials.
    NotExposed,
    /// Pods that are not the identity's own name its credentials.
    ExposedToPods,
}

impl ConditionReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            ConditionReason::Reconciled => "Reconciled",
            ConditionReason::InvalidSpec => "InvalidSpec",
            ConditionReason::Conflict => "Conflict",
            ConditionReason::NotRequested => "NotRequested",
            ConditionReason::ServiceAccountMissing => "ServiceAccountMissing",
            ConditionReason::ApiError => "ApiError",
            ConditionReason::PrerequisiteMissing => "PrerequisiteMissing",
            ConditionReason::ShareNotReady => "ShareNotReady",
            ConditionReason::NamespaceEnforced => "NamespaceEnforced",
            ConditionReason::NamespaceNotEnforced => "NamespaceNotEnforced",
            ConditionReason::CreatorNamespaceNotEnforced => "CreatorNamespaceNotEnforced",
            ConditionReason::NamespaceUnknown => "NamespaceUnknown",
            ConditionReason::NoRecentFailures => "NoRecentFailures",
            ConditionReason::AuthenticationFailures => "AuthenticationFailures",
            ConditionReason::PodsUnknown => "PodsUnknown",
            ConditionReason::Bound => "Bound",
            ConditionReason::Pending => "Pending",
            ConditionReason::SecretMissing => "SecretMissing",
            ConditionReason::NotExposed => "NotExposed",
            ConditionReason::ExposedToPods => "ExposedToPods",
        }
    }
}

impl Reason for ConditionReason {
    fn as_str(self) -> &'static str {
        ConditionReason::as_str(self)
    }
}

/// A condition's wanted state, before bookkeeping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConditionState {
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

impl ConditionState {
    pub fn new(type_: &'static str, status: bool, reason: impl Reason, message: impl Into<String>) -> Self {
        Self {
            type_,
            status,
            reason: reason.as_str(),
            message: message.into(),
        }
    }
}

fn status_word(status: bool) -> &'static str {
    if status { "True" } else { "False" }
}

/// Merges wanted states into the previous conditions: a condition whose status did not change
/// keeps its `lastTransitionTime`; conditions not mentioned are kept as they were.
pub fn merge(previous: &[Condition], wanted: &[ConditionState], generation: Option<i64>, now: &Time) -> Vec<Condition> {
    let mut merged: Vec<Condition> = previous.to_vec();
    for state in wanted {
        let old = previous.iter().find(|c| c.type_ == state.type_);
        let status = status_word(state.status);
        let last_transition_time = match old {
            Some(old) if old.status == status => old.last_transition_time.clone(),
            _ => now.clone(),
        };
        let condition = Condition {
            type_: state.type_.to_owned(),
            status: status.to_owned(),
            reason: state.reason.to_owned(),
            message: state.message.clone(),
            observed_generation: generation,
            last_transition_time,
        };
        match merged.iter_mut().find(|c| c.type_ == state.type_) {
            Some(slot) => *slot = condition,
            None => merged.push(condition),
        }
    }
    merged
}

/// The condition of the given type, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of the given type is `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    #[test]
    fn unchanged_status_keeps_transition_time() {
        let first = merge(
            &[],
            &[ConditionState::new(READY, true, ConditionReason::Reconciled, "ok")],
            Some(1),
            &time("2026-01-01T00:00:00Z"),
        );
        let second = merge(
            &first,
            &[ConditionState::new(READY, true, ConditionReason::Reconciled, "ok")],
            Some(1),
            &time("2026-01-02T00:00:00Z"),
        );
        assert_eq!(first, second);
    }

    #[test]
    fn changed_status_moves_transition_time_and_keeps_others() {
        let t1 = time("2026-01-01T00:00:00Z");
        let t2 = time("2026-01-02T00:00:00Z");
        let first = merge(
            &[],
            &[
                ConditionState::new(READY, true, ConditionReason::Reconciled, "ok"),
                ConditionState::new(ACCESS_GRANTED, true, ConditionReason::Reconciled, "ok"),
            ],
            Some(1),
            &t1,
        );
        let second = merge(
            &first,
            &[ConditionState::new(READY, false, ConditionReason::Conflict, "taken")],
            Some(2),
            &t2,
        );
        let ready = find(&second, READY).unwrap();
        assert_eq!(ready.status, "False");
        assert_eq!(ready.last_transition_time, t2);
        assert_eq!(ready.observed_generation, Some(2));
        let access = find(&second, ACCESS_GRANTED).unwrap();
        assert_eq!(access.last_transition_time, t1);
        assert!(is_true(&second, ACCESS_GRANTED));
        assert!(!is_true(&second, READY));
    }
}
