//! `/validate-workloads`: Deployments, ReplicaSets, StatefulSets, DaemonSets, Jobs, CronJobs
//! and ReplicationControllers whose pods run as a creator's service account (row 10 of the
//! threat model). Their pods are made by Kubernetes' controllers, whose requests say nothing
//! of who wrote the workload, so the workload is checked when it is created and whenever its
//! pod template changes.

use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use serde_json::Value;

use super::audit::{Audit, invalid, with_audit};
use super::creator_account::{check_creator_account, made_by_workload_controller};
use super::envelope::service_account_in;
use super::{Authorizations, Decision, ResourceView};
use crate::webhook::reason::AdmissionReason;

/// The pod template in a workload object's body (`DynamicObject::data`, everything but its
/// metadata): `spec.template` or, for a CronJob, `spec.jobTemplate.spec.template`.
fn pod_template(body: &Value) -> Option<&Value> {
    let spec = body.get("spec")?;
    spec.get("template")
        .or_else(|| spec.get("jobTemplate")?.get("spec")?.get("template"))
}

/// The service account whose creator rule the request must pass, if any: that of a new
/// workload, or of one whose pod template changes (scaling, status and metadata do not).
pub(super) fn account_to_check(request: &AdmissionRequest<DynamicObject>) -> Option<String> {
    if made_by_workload_controller(request) {
        return None;
    }
    let template = pod_template(&request.object.as_ref()?.data)?;
    let changed = match request.operation {
        Operation::Create => true,
        Operation::Update => request.old_object.as_ref().and_then(|old| pod_template(&old.data)) != Some(template),
        _ => false,
    };
    changed.then(|| service_account_in(&template["spec"]).to_owned())
}

pub fn validate_workload(
    request: &AdmissionRequest<DynamicObject>,
    view: &dyn ResourceView,
    access: &dyn Authorizations,
) -> Decision {
    let Some(object) = request.object.as_ref() else {
        return invalid(request, "the request carries no workload".to_owned());
    };
    let kind = request.kind.kind.clone();
    let namespace = request.namespace.clone().unwrap_or_default();
    let user = request.user_info.username.clone().unwrap_or_default();
    let outcome = match account_to_check(request) {
        None => Ok(()),
        Some(account) => check_creator_account(&namespace, &user, &account, view, access).map_err(|denial| {
            denial.reworded(|message| format!("{kind} {:?}: its pod template {message}", request.name))
        }),
    };
    let name = object.metadata.name.clone().unwrap_or_else(|| request.name.clone());
    let audit = |allowed, reason, message: String, concerns| Audit {
        identity: None,
        concerns,
        namespace: namespace.clone(),
        kind: kind.clone(),
        pod: name.clone(),
        dag_id: None,
        task_id: None,
        run_id: None,
        try_number: None,
        creator: user.clone(),
        allowed,
        reason,
        message,
    };
    match outcome {
        Ok(()) => with_audit(
            AdmissionResponse::from(request),
            audit(true, AdmissionReason::Allowed, String::new(), None),
        ),
        Err(denial) => {
            let response = AdmissionResponse::from(request).deny(&denial.message);
            with_audit(response, audit(false, denial.reason, denial.message, denial.concerns))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn templates_are_found_in_every_workload_kind() {
        let deployment = json!({"spec": {"template": {"spec": {"serviceAccountName": "airflow-worker"}}}});
        let cron_job =
            json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": {"serviceAccount": "airflow-worker"}}}}}});
        let bare = json!({"spec": {"template": {"spec": {}}}});
        let account = |body: &Value| service_account_in(&pod_template(body).unwrap()["spec"]).to_owned();
        assert_eq!(account(&deployment), "airflow-worker");
        assert_eq!(account(&cron_job), "airflow-worker");
        assert_eq!(account(&bare), "default");
        assert!(pod_template(&json!({"spec": {"replicas": 2}})).is_none());
    }
}
