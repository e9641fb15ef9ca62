//! A task pod as the operator caches it. Thousands of task pods are cached, and a whole pod
//! (spec, conditions, IPs, managed fields, Airflow's labels and annotations) is many times the
//! size of what the status is made of. This type is decoded straight from the API server's
//! pod JSON: the spec and every status field `pods::summarize` does not read are skipped
//! while decoding, never held.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ContainerStateTerminated;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

use crate::names::IDENTITY_LABEL;

/// The labels and annotations a failed task pod is reported by: winflow's identity label and
/// Airflow's ids.
const KEPT_LABELS: &[&str] = &[IDENTITY_LABEL, "dag_id", "task_id"];
const KEPT_ANNOTATIONS: &[&str] = &["dag_id", "task_id"];

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub(crate) struct TaskPod {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub status: Option<TaskPodStatus>,
    /// The pod's `winflow.io/identity` label, held apart once trimmed: a pod that did not
    /// fail then needs no label map at all (a map costs about 600 bytes, more than the rest).
    #[serde(skip)]
    identity: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TaskPodStatus {
    #[serde(default)]
    pub phase: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub container_statuses: Option<Vec<TaskContainerStatus>>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub(crate) struct TaskContainerStatus {
    #[serde(default)]
    pub state: Option<TaskContainerState>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub(crate) struct TaskContainerState {
    #[serde(default)]
    pub terminated: Option<ContainerStateTerminated>,
}

impl TaskPod {
    /// The containers that terminated, as the kubelet reported them.
    pub(crate) fn terminated(&self) -> impl Iterator<Item = &ContainerStateTerminated> {
        self.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|c| c.state.as_ref()?.terminated.as_ref())
    }

    /// The identity the pod names in its `winflow.io/identity` label.
    pub(crate) fn identity(&self) -> Option<&str> {
        self.identity
            .as_deref()
            .or_else(|| self.metadata.labels.as_ref()?.get(IDENTITY_LABEL).map(String::as_str))
    }

    pub(crate) fn phase(&self) -> Option<&str> {
        self.status.as_ref()?.phase.as_deref()
    }
}

/// Implements what kube needs to read `$kind` (a struct with a `metadata: ObjectMeta` field)
/// as pods: the same group, version and path as `Pod`, so a watch fetches only what it keeps.
macro_rules! served_as_pods {
    ($kind:ty) => {
        impl k8s_openapi::Resource for $kind {
            const API_VERSION: &'static str = <k8s_openapi::api::core::v1::Pod as k8s_openapi::Resource>::API_VERSION;
            const GROUP: &'static str = <k8s_openapi::api::core::v1::Pod as k8s_openapi::Resource>::GROUP;
            const KIND: &'static str = <k8s_openapi::api::core::v1::Pod as k8s_openapi::Resource>::KIND;
            const VERSION: &'static str = <k8s_openapi::api::core::v1::Pod as k8s_openapi::Resource>::VERSION;
            const URL_PATH_SEGMENT: &'static str =
                <k8s_openapi::api::core::v1::Pod as k8s_openapi::Resource>::URL_PATH_SEGMENT;
            type Scope = k8s_openapi::NamespaceResourceScope;
        }

        impl k8s_openapi::ListableResource for $kind {
            const LIST_KIND: &'static str =
                <k8s_openapi::api::core::v1::Pod as k8s_openapi::ListableResource>::LIST_KIND;
        }

        impl k8s_openapi::Metadata for $kind {
            type Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

            fn metadata(&self) -> &Self::Ty {
                &self.metadata
            }

            fn metadata_mut(&mut self) -> &mut Self::Ty {
                &mut self.metadata
            }
        }
    };
}
pub(crate) use served_as_pods;

served_as_pods!(TaskPod);

/// Drops the metadata `summarize` does not read (managed fields, owner references, Airflow's
/// other labels and annotations) and the containers that have not terminated. Only a failed
/// pod is reported by its DAG and task, so only a failed pod keeps their ids; most pods are
/// pending, running or done, and each map kept costs a few hundred bytes per pod.
pub(crate) fn keep_summarized_fields(pod: &mut TaskPod) {
    let failed = pod.phase() == Some("Failed");
    pod.identity = pod.identity().map(str::to_owned);
    let (labels, annotations): (&[&str], &[&str]) = if failed {
        (KEPT_LABELS, KEPT_ANNOTATIONS)
    } else {
        (&[], &[])
    };
    let keep = |map: Option<BTreeMap<String, String>>, keys: &[&str]| {
        map.map(|m| m.into_iter().filter(|(k, _)| keys.contains(&k.as_str())).collect())
    };
    let meta = std::mem::take(&mut pod.metadata);
    pod.metadata = ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        creation_timestamp: meta.creation_timestamp,
        labels: keep(meta.labels, labels).filter(|kept: &BTreeMap<_, _>| !kept.is_empty()),
        annotations: keep(meta.annotations, annotations).filter(|kept: &BTreeMap<_, _>| !kept.is_empty()),
        ..ObjectMeta::default()
    };
    let done = failed || pod.phase() == Some("Succeeded");
    if let Some(status) = pod.status.as_mut() {
        // Finish times and exit codes matter once the pod is done.
        match status.container_statuses.as_mut() {
            Some(containers) if done => containers.retain(|c| c.state.as_ref().is_some_and(|s| s.terminated.is_some())),
            _ => status.container_statuses = None,
        }
        if !failed {
            status.reason = None;
            status.message = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_only_what_the_summary_reads_from_a_whole_pod() {
        let mut pod: TaskPod = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "t1", "namespace": "airflow", "uid": "u", "resourceVersion": "7",
                "creationTimestamp": "2026-11-29T01:00:00Z",
                "labels": {"winflow.io/identity": "payroll", "dag_id": "payroll_export", "task_id": "upload", "airflow_version": "3.3.2", "try_number": "1"},
                "annotations": {"dag_id": "payroll_export", "task_id": "upload", "kubectl.kubernetes.io/last-applied-configuration": "{}"},
                "managedFields": [{"manager": "kubelet"}], "ownerReferences": []},
            "spec": {"containers": [{"name": "base", "image": "win:1"}]},
            "status": {"phase": "Failed", "hostIP": "10.0.0.1", "podIP": "10.1.0.9", "qosClass": "BestEffort",
                "conditions": [{"type": "Ready", "status": "False"}],
                "containerStatuses": [
                    {"name": "base", "image": "win:1", "imageID": "x", "ready": false, "restartCount": 0,
                     "state": {"terminated": {"exitCode": 5, "reason": "Error", "message": "Logon failure", "finishedAt": "2026-11-29T01:02:00Z"}}},
                    {"name": "sidecar", "image": "s:1", "imageID": "y", "ready": true, "restartCount": 0, "state": {"running": {}}}]}
        }))
        .unwrap();
        assert_eq!(pod.phase(), Some("Failed"));
        assert_eq!(pod.identity(), Some("payroll"), "from the label before trimming");
        keep_summarized_fields(&mut pod);
        assert_eq!(pod.identity(), Some("payroll"));
        let labels = pod.metadata.labels.as_ref().unwrap();
        assert_eq!(labels.len(), 3, "{labels:?}");
        assert_eq!(pod.metadata.annotations.as_ref().unwrap().len(), 2);
        assert!(pod.metadata.managed_fields.is_none() && pod.metadata.owner_references.is_none());
        assert_eq!(pod.metadata.name.as_deref(), Some("t1"));
        let terminated: Vec<_> = pod.terminated().collect();
        assert_eq!(terminated.len(), 1, "running containers are not kept");
        assert_eq!(terminated[0].exit_code, 5);
        assert_eq!(terminated[0].message.as_deref(), Some("Logon failure"));
    }

    #[test]
    fn pods_that_did_not_fail_keep_only_their_identity_and_phase() {
        for phase in ["Pending", "Running", "Succeeded"] {
            let mut pod: TaskPod = serde_json::from_value(serde_json::json!({
                "metadata": {"name": "t2", "namespace": "airflow", "creationTimestamp": "2026-11-29T01:00:00Z",
                    "labels": {"winflow.io/identity": "payroll", "dag_id": "payroll_export", "task_id": "upload"},
                    "annotations": {"dag_id": "payroll_export", "task_id": "upload"}},
                "status": {"phase": phase, "reason": "r", "message": "m", "containerStatuses": [
                    {"name": "base", "state": {"terminated": {"exitCode": 0, "finishedAt": "2026-11-29T01:02:00Z"}}}]}
            }))
            .unwrap();
            keep_summarized_fields(&mut pod);
            assert!(pod.metadata.labels.is_none(), "{phase}");
            assert_eq!(pod.identity(), Some("payroll"), "{phase}");
            assert!(pod.metadata.annotations.is_none(), "{phase}");
            assert_eq!(pod.phase(), Some(phase));
            assert!(pod.metadata.creation_timestamp.is_some());
            let status = pod.status.as_ref().unwrap();
            assert!(status.reason.is_none() && status.message.is_none(), "{phase}");
            let finished = pod.terminated().count();
            assert_eq!(
                finished,
                usize::from(phase == "Succeeded"),
                "{phase}: finish times only once done"
            );
        }
    }

    #[test]
    fn a_pod_without_status_decodes() {
        let pod: TaskPod = serde_json::from_value(serde_json::json!({"metadata": {"name": "new"}})).unwrap();
        assert_eq!(pod.phase(), None);
        assert_eq!(pod.terminated().count(), 0);
    }

    #[test]
    fn it_is_served_where_pods_are() {
        use kube::Resource;
        assert_eq!(TaskPod::kind(&()), "Pod");
        assert_eq!(TaskPod::plural(&()), "pods");
        assert_eq!(TaskPod::api_version(&()), "v1");
        assert_eq!(
            TaskPod::url_path(&(), Some("airflow")),
            "/api/v1/namespaces/airflow/pods"
        );
    }
}
