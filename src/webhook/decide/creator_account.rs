//! Row 10 of the threat model: a pod that runs as a creator's service account makes its
//! requests as that creator, so it can create the identities' pods from inside. Whoever starts
//! such a pod, directly or through a workload (Deployment, Job, ...), must be allowed to use
//! every identity the account creates pods of. Pods and ReplicaSets or Jobs that Kubernetes'
//! own controllers make from a workload are not checked again: the workload was.

use kube::core::DynamicObject;
use kube::core::admission::AdmissionRequest;

use super::{Authorizations, Checked, Denial, ResourceView};
use crate::webhook::access::Access;
use crate::webhook::reason::AdmissionReason;

/// The controllers of kube-controller-manager that make objects from a workload, with the
/// kinds of owner they make them for. With `--use-service-account-credentials` (the default
/// of kubeadm and managed clusters) each acts as its own service account in kube-system;
/// without it, all act as `system:kube-controller-manager`.
const WORKLOAD_CONTROLLERS: &[(&str, &[&str])] = &[
    ("replicaset-controller", &["ReplicaSet"]),
    ("replication-controller", &["ReplicationController"]),
    ("statefulset-controller", &["StatefulSet"]),
    ("daemon-set-controller", &["DaemonSet"]),
    ("job-controller", &["Job"]),
    ("deployment-controller", &["Deployment"]),
    ("cronjob-controller", &["CronJob"]),
];

/// Whether the request comes from one of Kubernetes' workload controllers making the object
/// for the workload that controls it (its controller ownerReference): that workload's
/// template was checked when it was created or changed. Nobody else can send a request as
/// these users (they are kube-system's service accounts or the controller manager's own).
pub(super) fn made_by_workload_controller(request: &AdmissionRequest<DynamicObject>) -> bool {
    let Some(user) = request.user_info.username.as_deref() else {
        return false;
    };
    let owner_kinds: Vec<&str> = if user == "system:kube-controller-manager" {
        WORKLOAD_CONTROLLERS
            .iter()
            .flat_map(|(_, kinds)| kinds.iter().copied())
            .collect()
    } else {
        match user.strip_prefix("system:serviceaccount:kube-system:") {
            Some(controller) => WORKLOAD_CONTROLLERS
                .iter()
                .filter(|(name, _)| *name == controller)
                .flat_map(|(_, kinds)| kinds.iter().copied())
                .collect(),
            None => return false,
        }
    };
    let Some(object) = request.object.as_ref() else {
        return false;
    };
    object
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|owner| owner.controller == Some(true) && owner_kinds.contains(&owner.kind.as_str()))
}

/// Whoever (`user`) starts a pod in `namespace` that runs as service account `account` must be
/// allowed to use every identity the account creates pods of, in any namespace. The answers
/// were asked before deciding (`identities_to_authorize`); a missing one fails closed.
pub(super) fn check_creator_account(
    namespace: &str,
    user: &str,
    account: &str,
    view: &dyn ResourceView,
    access: &dyn Authorizations,
) -> Checked<()> {
    let identities = view.identities_created_by(namespace, account);
    let mut refused = Vec::new();
    for (identity_namespace, name) in &identities {
        match access.answer(identity_namespace, name) {
            Some(Access::Allowed) => {}
            Some(Access::Denied(_)) => refused.push((identity_namespace, name)),
            Some(Access::Unavailable(error)) => {
                return Err(Denial::new(
                    AdmissionReason::AuthorizationUnavailable,
                    format!(
                        "winflow could not check whether user {user:?} may use identity \"{name}\" ({error}); pods that run as service account {account:?}, one of its creators, are admitted only once that check answers"
                    ),
                ));
            }
            None => {
                return Err(Denial::new(
                    AdmissionReason::AuthorizationUnavailable,
                    format!(
                        "winflow did not check whether user {user:?} may use identity \"{name}\", which service account {account:?} creates pods of; denied"
                    ),
                ));
            }
        }
    }
    if refused.is_empty() {
        return Ok(());
    }
    // Names only: identities of other namespaces are not described.
    let quoted =
        |names: &mut dyn Iterator<Item = &String>| names.map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", ");
    let all = quoted(&mut identities.iter().map(|(_, name)| name));
    let not_usable = quoted(&mut refused.iter().map(|(_, name)| *name));
    let denial = Denial::new(
        AdmissionReason::CreatorServiceAccount,
        format!(
            "runs as service account {account:?}, a creator of identities {all} (their spec.access.creators): whatever runs as it acts as their creator, so only users that may use those identities may start pods or workloads that run as it; user {user:?} may not use {not_usable} (verb use on windowstaskidentities.winflow.io)"
        ),
    );
    Err(match refused.iter().find(|(ns, _)| *ns == namespace) {
        Some((_, name)) => denial.concerning(name),
        None => denial,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::admission::AdmissionReview;
    use serde_json::json;

    fn request(user: &str, owner_kind: Option<&str>) -> AdmissionRequest<DynamicObject> {
        let owners = owner_kind
            .map(|kind| json!([{"apiVersion": "apps/v1", "kind": kind, "name": "airflow-worker-5d8f", "uid": "u1", "controller": true}]))
            .unwrap_or(json!([]));
        let review: AdmissionReview<DynamicObject> = serde_json::from_value(json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "1",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "name": "airflow-worker-5d8f-x",
                "namespace": "airflow",
                "operation": "CREATE",
                "userInfo": {"username": user},
                "object": {"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": "airflow-worker-5d8f-x", "ownerReferences": owners},
                    "spec": {"serviceAccountName": "airflow-worker", "containers": []}},
                "dryRun": false
            }
        }))
        .unwrap();
        review.try_into().unwrap()
    }

    #[test]
    fn only_kubernetes_workload_controllers_making_objects_for_their_owner_are_trusted() {
        let replicaset = "system:serviceaccount:kube-system:replicaset-controller";
        assert!(made_by_workload_controller(&request(replicaset, Some("ReplicaSet"))));
        assert!(made_by_workload_controller(&request(
            "system:kube-controller-manager",
            Some("ReplicaSet")
        )));
        // Not its kind of owner, no owner, another namespace's account of that name, a user.
        assert!(!made_by_workload_controller(&request(replicaset, Some("StatefulSet"))));
        assert!(!made_by_workload_controller(&request(replicaset, None)));
        assert!(!made_by_workload_controller(&request(
            "system:serviceaccount:airflow:replicaset-controller",
            Some("ReplicaSet")
        )));
        assert!(!made_by_workload_controller(&request("alice", Some("ReplicaSet"))));
    }
}
