//! Airflow's ids on a pod (`dag_id`, `task_id`, `run_id`, `try_number`): the exact annotation
//! of KubernetesExecutor pods, else the label (shortened by Airflow when too long), matched
//! against an identity's glob patterns. These are claims of the pod's creator: they narrow
//! what an allowed creator may do, they never grant.

use crate::webhook::reason::AdmissionReason;
use globset::{Glob, GlobSetBuilder};
use k8s_openapi::api::core::v1::Pod;

use super::{Checked, Denial};

/// The Airflow id of a pod: the exact annotation (KubernetesExecutor) first, else the label
/// (KubernetesPodOperator), with whether it came from the label.
pub fn airflow_id(pod: &Pod, key: &str) -> Option<(String, bool)> {
    let meta = &pod.metadata;
    if let Some(exact) = meta.annotations.as_ref().and_then(|a| a.get(key)) {
        return Some((exact.clone(), false));
    }
    meta.labels
        .as_ref()
        .and_then(|l| l.get(key))
        .map(|label| (label.clone(), true))
}

/// Airflow shortens label values that are too long or hold other characters to a prefix, `-`
/// and 9 hex digits of a hash: the real id is then unknown.
pub(super) fn looks_shortened(label: &str) -> bool {
    label.len() > 10
        && label.as_bytes()[label.len() - 10] == b'-'
        && label[label.len() - 9..].bytes().all(|b| b.is_ascii_hexdigit())
}

pub(super) fn check_airflow_id(pod: &Pod, key: &str, what: &str, patterns: &[String], who: &str) -> Checked<()> {
    let allowed = patterns.join(", ");
    let reason = if what == "dag" {
        AdmissionReason::DagNotAllowed
    } else {
        AdmissionReason::TaskNotAllowed
    };
    let Some((id, from_label)) = airflow_id(pod, key) else {
        if patterns.iter().any(|p| p == "*") {
            return Ok(());
        }
        return Err(Denial::new(
            reason,
            format!(
                "pod carries no {key} (annotation or label), so it cannot use identity {who} (allowed {what} ids: {allowed})"
            ),
        ));
    };
    // Literally first: an exact id may end like Airflow's hash (`x_load-202401011`).
    if matches_any(patterns, &id) {
        return Ok(());
    }
    if from_label && looks_shortened(&id) {
        return Err(Denial::new(
            reason,
            format!(
                "{what} label {id:?} looks shortened by Airflow, so the exact {key} is unknown and cannot be matched against identity {who} (allowed {what} ids: {allowed}); set the {key} annotation"
            ),
        ));
    }
    Err(Denial::new(
        reason,
        format!("{what} {id:?} may not use identity {who} (allowed {what} ids: {allowed})"),
    ))
}

fn matches_any(patterns: &[String], id: &str) -> bool {
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        // Patterns were validated when the identity was reconciled; a bad one matches nothing.
        if let Ok(glob) = Glob::new(pattern) {
            builder.add(glob);
        }
    }
    builder.build().is_ok_and(|set| set.is_match(id))
}
