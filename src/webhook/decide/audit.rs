//! What a decision tells besides allowed or denied: who asked for what (the audit line, the
//! response's audit annotations, metrics, and an Event and a count on the identity when
//! denied), and the AdmissionResponse that carries it.

use crate::webhook::reason::AdmissionReason;
use std::collections::HashMap;

use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse};

use super::Checked;
use super::airflow_id;
use super::envelope::Subject;

/// Who asked for what and what was decided: one audit line, the response's audit
/// annotations, metrics, and an Event and a count on the identity when denied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Audit {
    /// The identity the pod's label names.
    pub identity: Option<String>,
    /// The identity whose credential a denied pod reached for, when the pod names none itself.
    pub concerns: Option<String>,
    pub namespace: String,
    /// The kind of object reviewed: `Pod`, or the workload (`Deployment`, `Job`, ...) whose pod
    /// template was reviewed.
    pub kind: String,
    /// Its name.
    pub pod: String,
    pub dag_id: Option<String>,
    pub task_id: Option<String>,
    pub run_id: Option<String>,
    pub try_number: Option<String>,
    /// `request.userInfo.username`: who creates or changes the pod.
    pub creator: String,
    pub allowed: bool,
    pub reason: AdmissionReason,
    pub message: String,
}

/// Longest value of an audit annotation (Airflow's run ids are well below it).
pub(super) const MAX_AUDIT_VALUE: usize = 253;

impl Audit {
    /// The identity a denial is recorded on (Event and `status.pods.denied`).
    pub fn identity_concerned(&self) -> Option<&str> {
        self.identity.as_deref().or(self.concerns.as_deref())
    }

    /// What the API server writes into its audit log next to the request, prefixed with the
    /// webhook's name (for example `pods.winflow.io/identity`).
    pub fn annotations(&self) -> HashMap<String, String> {
        let mut annotations = HashMap::new();
        let mut put = |key: &str, value: Option<&str>| {
            // Annotations are the pod creator's to write, and may be long: keep the audit log small.
            if let Some(value) = value.filter(|v| !v.is_empty()) {
                annotations.insert(key.to_owned(), crate::text::truncate(value, MAX_AUDIT_VALUE));
            }
        };
        put("identity", self.identity_concerned());
        put("dag_id", self.dag_id.as_deref());
        put("task_id", self.task_id.as_deref());
        put("run_id", self.run_id.as_deref());
        put("try_number", self.try_number.as_deref());
        put("creator", Some(&self.creator));
        put("decision", Some(if self.allowed { "allowed" } else { "denied" }));
        put("reason", Some(self.reason.as_str()));
        annotations
    }
}

pub struct Decision {
    pub response: AdmissionResponse,
    pub audit: Audit,
}

/// A request that could not be decided because the pod it concerns could not be read: denied.
pub fn pod_lookup_failed(request: &AdmissionRequest<DynamicObject>, error: &str) -> Decision {
    let message = format!(
        "winflow could not read pod {:?} to find out whose identity it runs as ({error}); denied until winflow can read it",
        request.name
    );
    denied_unread(request, AdmissionReason::PodLookupFailed, message)
}

/// A request whose decision did not finish within `deadline`: denied, fail closed.
pub fn decision_timed_out(request: &AdmissionRequest<DynamicObject>, deadline: std::time::Duration) -> Decision {
    let message = format!(
        "winflow could not decide on pod {:?} within its deadline of {} s for one review (the webhooks' timeout is 10 s); denied, as every review winflow cannot finish is. A pod this costly to review has unusually many containers or volumes: split it, or retry once the webhook is less busy",
        request.name,
        deadline.as_secs_f64()
    );
    denied_unread(request, AdmissionReason::DecisionTimeout, message)
}

pub(super) fn audit(
    subject: &Subject,
    allowed: bool,
    reason: AdmissionReason,
    message: String,
    concerns: Option<String>,
) -> Audit {
    let id = |key| airflow_id(&subject.pod, key).map(|(id, _)| id);
    Audit {
        identity: subject.identity_name.clone(),
        concerns,
        namespace: subject.namespace.clone(),
        kind: "Pod".to_owned(),
        pod: subject.pod_name.clone(),
        dag_id: id("dag_id"),
        task_id: id("task_id"),
        run_id: id("run_id"),
        try_number: id("try_number"),
        creator: subject.creator.clone(),
        allowed,
        reason,
        message,
    }
}

pub(super) fn with_audit(response: AdmissionResponse, audit: Audit) -> Decision {
    let mut response = response;
    response.audit_annotations = audit.annotations();
    Decision { response, audit }
}

pub(super) fn invalid(request: &AdmissionRequest<DynamicObject>, message: String) -> Decision {
    denied_unread(request, AdmissionReason::InvalidPod, message)
}

/// A denial of a request whose pod was not (or could not be) read.
pub(super) fn denied_unread(
    request: &AdmissionRequest<DynamicObject>,
    reason: AdmissionReason,
    message: String,
) -> Decision {
    let audit = Audit {
        identity: None,
        concerns: None,
        namespace: request.namespace.clone().unwrap_or_default(),
        kind: request.kind.kind.clone(),
        pod: request.name.clone(),
        dag_id: None,
        task_id: None,
        run_id: None,
        try_number: None,
        creator: request.user_info.username.clone().unwrap_or_default(),
        allowed: false,
        reason,
        message: message.clone(),
    };
    with_audit(AdmissionResponse::from(request).deny(&message), audit)
}

pub(super) fn finish(
    request: &AdmissionRequest<DynamicObject>,
    subject: &Subject,
    outcome: Checked<Option<json_patch::Patch>>,
) -> Decision {
    match outcome {
        Ok(None) => with_audit(
            AdmissionResponse::from(request),
            audit(subject, true, AdmissionReason::Allowed, String::new(), None),
        ),
        Ok(Some(patch)) if patch.0.is_empty() => with_audit(
            AdmissionResponse::from(request),
            audit(subject, true, AdmissionReason::Allowed, String::new(), None),
        ),
        Ok(Some(patch)) => match AdmissionResponse::from(request).with_patch(patch) {
            Ok(response) => with_audit(
                response,
                audit(subject, true, AdmissionReason::Mutated, String::new(), None),
            ),
            Err(e) => invalid(request, format!("winflow could not encode its patch: {e}")),
        },
        Err(denial) => with_audit(
            AdmissionResponse::from(request).deny(&denial.message),
            audit(subject, false, denial.reason, denial.message, denial.concerns),
        ),
    }
}
