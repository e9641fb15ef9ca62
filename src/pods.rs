//! Task pods back on their identity: counts by phase, the last failure and its category, and
//! whether tasks recently failed to authenticate. Pure: the controller feeds it pods.

use std::time::Duration;

use jiff::Timestamp;

use crate::api::conditions::{ConditionReason, ConditionState, TASKS_HEALTHY};
use crate::api::identity::{PodsStatus, TaskFailure};
use crate::task_pod::TaskPod;

/// How long an authentication failure keeps `TasksHealthy` false.
pub(crate) const RECENT_FAILURE_WINDOW: Duration = Duration::from_secs(3600);

/// What a failed task's termination message says went wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FailureCategory {
    PermissionDenied,
    LogonFailure,
    DomainTrust,
    CredentialExpired,
    Other,
}

impl FailureCategory {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            FailureCategory::PermissionDenied => "PermissionDenied",
            FailureCategory::LogonFailure => "LogonFailure",
            FailureCategory::DomainTrust => "DomainTrust",
            FailureCategory::CredentialExpired => "CredentialExpired",
            FailureCategory::Other => "Other",
        }
    }

    /// Failures that point at the identity rather than at the task's own code.
    pub(crate) fn is_authentication(self) -> bool {
        !matches!(self, FailureCategory::Other)
    }
}

/// Phrases and Win32/HRESULT codes Windows and Kerberos print for each kind of failure, most
/// specific first (an expired password is also a logon failure).
const PATTERNS: &[(FailureCategory, &[&str])] = &[
    (
        FailureCategory::DomainTrust,
        &[
            "trust relationship",
            "0x800706fd",
            "no logon servers",
            "0x8007051f",
            "domain controller",
            "domain is not available",
        ],
    ),
    (
        FailureCategory::CredentialExpired,
        &[
            "password has expired",
            "password must be changed",
            "0x80070532",
            "expired",
            "0x80090328",
        ],
    ),
    (
        FailureCategory::LogonFailure,
        &[
            "logon failure",
            "0x8007052e",
            "unknown user name or bad password",
            "user name or password is incorrect",
            "kdc_err",
            "kerberos",
        ],
    ),
    (
        FailureCategory::PermissionDenied,
        &[
            "access is denied",
            "access denied",
            "permission denied",
            "0x80070005",
            "unauthorized",
            "forbidden",
        ],
    ),
];

pub(crate) fn categorize(reason: &str, message: &str) -> FailureCategory {
    let text = format!("{reason} {message}").to_lowercase();
    PATTERNS
        .iter()
        .find(|(_, phrases)| phrases.iter().any(|p| text.contains(p)))
        .map(|(category, _)| *category)
        .unwrap_or(FailureCategory::Other)
}

/// The Airflow id of a pod: the exact annotation (KubernetesExecutor) first, the label
/// (sanitised by Airflow, possibly shortened) otherwise.
fn airflow_id(pod: &TaskPod, key: &str) -> Option<String> {
    let meta = &pod.metadata;
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .or_else(|| meta.labels.as_ref().and_then(|l| l.get(key)))
        .cloned()
}

/// Why and when a failed pod failed: its first terminated container, else the pod's own
/// status; and the kind of failure that is.
fn failure_of(pod: &TaskPod) -> (FailureCategory, TaskFailure) {
    let status = pod.status.as_ref();
    let terminated = pod.terminated().find(|t| t.exit_code != 0);
    let reason = terminated
        .and_then(|t| t.reason.clone())
        .or_else(|| status.and_then(|s| s.reason.clone()));
    let message = terminated
        .and_then(|t| t.message.clone())
        .or_else(|| status.and_then(|s| s.message.clone()));
    let time = terminated
        .and_then(|t| t.finished_at.clone())
        .or_else(|| pod.metadata.creation_timestamp.clone())
        .map(|t| t.0.to_string())
        .unwrap_or_default();
    let category = categorize(
        reason.as_deref().unwrap_or_default(),
        message.as_deref().unwrap_or_default(),
    );
    let failure = TaskFailure {
        pod: pod.metadata.name.clone().unwrap_or_default(),
        dag_id: airflow_id(pod, "dag_id"),
        task_id: airflow_id(pod, "task_id"),
        reason,
        message: message.map(|m| crate::text::truncate(&m, 512)),
        category: category.as_str().to_owned(),
        time,
    };
    (category, failure)
}

/// When a pod's last container finished (or, lacking that, when the pod was created).
fn finished_at(pod: &TaskPod) -> Option<Timestamp> {
    let finished = pod.terminated().filter_map(|t| t.finished_at.clone());
    finished
        .map(|t| t.0)
        .max()
        .or_else(|| pod.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// The pods part of an identity's status, `TasksHealthy`, and when that condition must be
/// looked at again. Authentication failures make tasks unhealthy until a task succeeds
/// after them, or for at most an hour.
pub(crate) fn summarize<'a>(
    pods: impl IntoIterator<Item = &'a TaskPod>,
    denied: i32,
    now: Timestamp,
) -> (PodsStatus, ConditionState, Option<Duration>) {
    let mut status = PodsStatus {
        denied,
        ..PodsStatus::default()
    };
    let mut failures = Vec::new();
    let mut last_success: Option<Timestamp> = None;
    for pod in pods {
        match pod.phase() {
            Some("Running") => status.running += 1,
            Some("Succeeded") => {
                status.succeeded += 1;
                last_success = last_success.max(finished_at(pod));
            }
            Some("Failed") => {
                status.failed += 1;
                failures.push(failure_of(pod));
            }
            _ => status.pending += 1,
        }
    }
    failures.sort_by(|(_, a), (_, b)| a.time.cmp(&b.time).then_with(|| a.pod.cmp(&b.pod)));
    let recent_auth = failures.iter().rev().find(|(category, f)| {
        let Ok(failed_at) = f.time.parse::<Timestamp>() else {
            return false;
        };
        let recent = now.duration_since(failed_at).unsigned_abs() < RECENT_FAILURE_WINDOW;
        // Times have second precision: a success in the same second does not count as after.
        let not_since_succeeded = last_success.is_none_or(|success| success <= failed_at);
        recent && not_since_succeeded && category.is_authentication()
    });
    let (condition, recheck) = match recent_auth {
        Some((_, failure)) => {
            let failed_at: Timestamp = failure.time.parse().expect("checked above");
            let left = RECENT_FAILURE_WINDOW.saturating_sub(now.duration_since(failed_at).unsigned_abs());
            let message = format!(
                "task pod {} (dag {}, task {}) failed with {} at {}: {}",
                failure.pod,
                failure.dag_id.as_deref().unwrap_or("?"),
                failure.task_id.as_deref().unwrap_or("?"),
                failure.category,
                failure.time,
                failure
                    .message
                    .as_deref()
                    .or(failure.reason.as_deref())
                    .unwrap_or("no message")
            );
            (
                ConditionState::new(TASKS_HEALTHY, false, ConditionReason::AuthenticationFailures, message),
                Some(left),
            )
        }
        None => (
            ConditionState::new(
                TASKS_HEALTHY,
                true,
                ConditionReason::NoRecentFailures,
                "no task pod failed to authenticate since the last success or in the last hour",
            ),
            None,
        ),
    };
    status.last_failure = failures.pop().map(|(_, failure)| failure);
    (status, condition, recheck)
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde_json::json;

    fn pod(name: &str, phase: &str, extra: serde_json::Value) -> TaskPod {
        let mut value = json!({
            "metadata": {"name": name, "labels": {"winflow.io/identity": "reports", "dag_id": "finance_daily", "task_id": "copy"},
                          "creationTimestamp": "2026-11-28T10:00:00Z"},
            "status": {"phase": phase}
        });
        if let Some(map) = extra.as_object() {
            for (k, v) in map {
                value["status"][k] = v.clone();
            }
        }
        serde_json::from_value(value).unwrap()
    }

    fn failed(name: &str, message: &str, finished: &str) -> TaskPod {
        pod(
            name,
            "Failed",
            json!({"containerStatuses": [{"name": "base", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 1, "reason": "Error", "message": message, "finishedAt": finished}}}]}),
        )
    }

    #[test]
    fn categories_from_windows_messages() {
        let cases = [
            (
                "Logon failure: unknown user name or bad password. (0x8007052E)",
                FailureCategory::LogonFailure,
            ),
            (
                "The trust relationship between this workstation and the primary domain failed",
                FailureCategory::DomainTrust,
            ),
            (
                "There are currently no logon servers available to service the logon request.",
                FailureCategory::DomainTrust,
            ),
            (
                "The password for this account has expired.",
                FailureCategory::CredentialExpired,
            ),
            (
                "Access is denied. (Exception from HRESULT: 0x80070005)",
                FailureCategory::PermissionDenied,
            ),
            ("KeyError: 'report_date'", FailureCategory::Other),
        ];
        for (message, category) in cases {
            assert_eq!(categorize("Error", message), category, "{message}");
        }
    }

    #[test]
    fn counts_by_phase_and_reports_the_latest_failure() {
        let now: Timestamp = "2026-11-28T12:00:00Z".parse().unwrap();
        let pods = [
            pod("a", "Running", json!({})),
            pod("b", "Pending", json!({})),
            pod("c", "Succeeded", json!({})),
            failed("d", "KeyError: 'report_date'", "2026-11-28T11:00:00Z"),
            failed("e", "Access is denied.", "2026-11-28T11:30:00Z"),
        ];
        let (status, healthy, recheck) = summarize(&pods, 2, now);
        assert_eq!(
            (
                status.running,
                status.pending,
                status.succeeded,
                status.failed,
                status.denied
            ),
            (1, 1, 1, 2, 2)
        );
        let last = status.last_failure.unwrap();
        assert_eq!((last.pod.as_str(), last.category.as_str()), ("e", "PermissionDenied"));
        assert_eq!(
            (last.dag_id.as_deref(), last.task_id.as_deref()),
            (Some("finance_daily"), Some("copy"))
        );
        assert_eq!(last.reason.as_deref(), Some("Error"));
        assert!(!healthy.status);
        assert!(
            healthy
                .message
                .contains("task pod e (dag finance_daily, task copy) failed with PermissionDenied"),
            "{}",
            healthy.message
        );
        assert_eq!(recheck, Some(Duration::from_secs(30 * 60)));
    }

    #[test]
    fn the_cache_trims_nothing_the_summary_reads() {
        let now: Timestamp = "2026-11-28T12:00:00Z".parse().unwrap();
        let succeeded = json!({"containerStatuses": [{"name": "base",
            "state": {"terminated": {"exitCode": 0, "finishedAt": "2026-11-28T11:45:00Z"}}}]});
        let whole = [
            pod("a", "Running", json!({"reason": "x"})),
            pod("b", "Pending", json!({})),
            pod("c", "Succeeded", succeeded),
            failed("d", "KeyError: 'report_date'", "2026-11-28T11:00:00Z"),
            failed(
                "e",
                "Logon failure: unknown user name or bad password",
                "2026-11-28T11:50:00Z",
            ),
        ];
        let mut trimmed = whole.clone();
        trimmed.iter_mut().for_each(crate::task_pod::keep_summarized_fields);
        assert_eq!(
            format!("{:?}", summarize(&trimmed, 1, now)),
            format!("{:?}", summarize(&whole, 1, now))
        );
    }

    #[test]
    fn old_or_non_authentication_failures_leave_tasks_healthy() {
        let now: Timestamp = "2026-11-28T12:00:00Z".parse().unwrap();
        let pods = [
            failed("old", "Logon failure", "2026-11-28T09:00:00Z"),
            failed("bug", "ZeroDivisionError", "2026-11-28T11:59:00Z"),
        ];
        let (status, healthy, recheck) = summarize(&pods, 0, now);
        assert!(healthy.status);
        assert_eq!(recheck, None);
        assert_eq!(status.last_failure.unwrap().pod, "bug");
    }

    #[test]
    fn a_later_success_heals_tasks() {
        let now: Timestamp = "2026-11-28T12:00:00Z".parse().unwrap();
        let succeeded = |name: &str, finished: &str| {
            pod(
                name,
                "Succeeded",
                json!({"containerStatuses": [{"name": "base", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                    "state": {"terminated": {"exitCode": 0, "finishedAt": finished}}}]}),
            )
        };
        let failure = failed("f", "Logon failure", "2026-11-28T11:30:00Z");
        let (_, healthy, _) = summarize(&[succeeded("before", "2026-11-28T11:00:00Z"), failure.clone()], 0, now);
        assert!(!healthy.status, "a success before the failure does not heal");
        let (_, healthy, recheck) = summarize(&[failure, succeeded("after", "2026-11-28T11:45:00Z")], 0, now);
        assert!(healthy.status, "a success after the failure heals");
        assert_eq!(recheck, None);
    }

    #[test]
    fn annotations_win_over_shortened_labels() {
        let mut p = failed("x", "Logon failure", "2026-11-28T11:59:00Z");
        p.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("dag_id".into(), "finance_daily_with_a_very_lo-3f2a1b9c0".into());
        p.metadata.annotations = Some([("dag_id".to_owned(), "finance_daily_with_a_very_long_name".to_owned())].into());
        let (status, _, _) = summarize(&[p], 0, "2026-11-28T12:00:00Z".parse().unwrap());
        assert_eq!(
            status.last_failure.unwrap().dag_id.as_deref(),
            Some("finance_daily_with_a_very_long_name")
        );
    }
}
