//! The review as it came: the pod it carries (or, from Kubernetes before 1.22, the ephemeral
//! containers object; for exec, attach and port-forward, the options), who sends it, and what
//! the handler must look up or ask before a decision.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EphemeralContainer, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, Operation};

use super::ResourceView;
use crate::names::IDENTITY_LABEL;
use crate::webhook::server::ReviewKind;

/// The facts every decision starts from.
pub(super) struct Subject {
    pub(super) pod: Pod,
    /// The pod before an UPDATE.
    pub(super) old: Option<Pod>,
    /// A request to `pods/ephemeralcontainers`: only the ephemeral containers are to be judged.
    pub(super) ephemeral: bool,
    pub(super) operation: Operation,
    pub(super) namespace: String,
    pub(super) pod_name: String,
    pub(super) identity_name: Option<String>,
    pub(super) creator: String,
}

/// A pod from the review's object. The `pods/ephemeralcontainers` subresource of Kubernetes
/// before 1.22 sends an `EphemeralContainers` object (the pod's metadata and the list); later
/// ones send the pod.
pub(super) fn pod_of(object: &DynamicObject) -> Result<Pod, String> {
    let value = serde_json::to_value(object).map_err(|e| e.to_string())?;
    if object.types.as_ref().is_some_and(|t| t.kind == "EphemeralContainers") {
        let metadata: ObjectMeta = serde_json::from_value(value["metadata"].clone())
            .map_err(|e| format!("the object's metadata is not valid: {e}"))?;
        let containers: Option<Vec<EphemeralContainer>> = serde_json::from_value(value["ephemeralContainers"].clone())
            .map_err(|e| format!("the object's ephemeralContainers are not valid: {e}"))?;
        return Ok(Pod {
            metadata,
            spec: Some(PodSpec {
                ephemeral_containers: containers,
                ..PodSpec::default()
            }),
            status: None,
        });
    }
    serde_json::from_value(value).map_err(|e| format!("the object is not a valid pod: {e}"))
}

pub(super) fn subject(request: &AdmissionRequest<DynamicObject>) -> Result<Subject, String> {
    let object = request.object.as_ref().ok_or("the request carries no pod")?;
    let pod = pod_of(object)?;
    let old = request.old_object.as_ref().map(pod_of).transpose()?;
    let namespace = request
        .namespace
        .clone()
        .or_else(|| pod.metadata.namespace.clone())
        .unwrap_or_default();
    let pod_name = pod
        .metadata
        .name
        .clone()
        .or_else(|| pod.metadata.generate_name.as_ref().map(|g| format!("{g}*")))
        .unwrap_or_else(|| request.name.clone());
    let identity_name = identity_label(&pod).map(str::to_owned);
    Ok(Subject {
        pod,
        old,
        ephemeral: request.sub_resource.as_deref() == Some("ephemeralcontainers"),
        operation: request.operation.clone(),
        namespace,
        pod_name,
        identity_name,
        creator: request.user_info.username.clone().unwrap_or_default(),
    })
}

pub(super) fn identity_label(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(IDENTITY_LABEL))
        .map(String::as_str)
}

/// The identities (namespace, name) whose `use` the request's user must hold, without
/// duplicates: that of a labelled pod for its creator, whoever changes a labelled pod's spec
/// (its image, say), adds an ephemeral container to one, or opens exec, attach or port-forward
/// to one; and for a new pod, or a new or changed workload template, that runs as a creator's
/// service account, every identity that account creates pods of. Asked by the handler before
/// deciding.
pub fn identities_to_authorize(
    kind: ReviewKind,
    request: &AdmissionRequest<DynamicObject>,
    view: &dyn ResourceView,
) -> Vec<(String, String)> {
    // Read from the review as it came: the pod is decoded once, by the decision itself.
    let Some(object) = request.object.as_ref() else {
        return Vec::new();
    };
    let namespace = request
        .namespace
        .clone()
        .or_else(|| object.metadata.namespace.clone())
        .unwrap_or_default();
    let ephemeral = request.sub_resource.as_deref() == Some("ephemeralcontainers");
    let creating = request.operation == Operation::Create && kind == ReviewKind::Validate && !ephemeral;
    let mut wanted = std::collections::BTreeSet::new();
    if let Some(name) = object.metadata.labels.as_ref().and_then(|l| l.get(IDENTITY_LABEL)) {
        let spec_changed = || {
            request
                .old_object
                .as_ref()
                .is_some_and(|old| old.data.get("spec") != object.data.get("spec"))
        };
        let needed = match (&request.operation, kind, ephemeral) {
            (Operation::Create, ReviewKind::Mutate | ReviewKind::Validate, false) => true,
            (Operation::Update, ReviewKind::Validate, false) => spec_changed(),
            (Operation::Update, ReviewKind::ValidateEphemeral, true) => true,
            (Operation::Connect, ReviewKind::ValidateConnect, _) => true,
            _ => false,
        };
        if needed {
            wanted.insert((namespace.clone(), name.clone()));
        }
    }
    if creating && !super::creator_account::made_by_workload_controller(request) {
        let account = service_account_of(object);
        wanted.extend(view.identities_created_by(&namespace, account));
    }
    if kind == ReviewKind::ValidateWorkload
        && let Some(account) = super::workload::account_to_check(request)
    {
        wanted.extend(view.identities_created_by(&namespace, &account));
    }
    wanted.into_iter().collect()
}

/// The service account a pod in a review runs as (`default` when none is set).
pub(super) fn service_account_of(object: &DynamicObject) -> &str {
    service_account_in(&object.data["spec"])
}

/// The service account a pod spec (as JSON: a pod's, or a workload template's) runs as.
pub(super) fn service_account_in(spec: &serde_json::Value) -> &str {
    ["serviceAccountName", "serviceAccount"]
        .iter()
        .find_map(|key| spec[key].as_str().filter(|s| !s.is_empty()))
        .unwrap_or("default")
}

/// The pod whose labels the request lacks: exec, attach and port-forward send the options
/// (`PodExecOptions`, ...) and Kubernetes before 1.22 sends ephemeral containers as an
/// `EphemeralContainers` object, with the pod's name but not its labels. The handler looks
/// them up and puts them in with [`with_pod_labels`].
pub fn pod_to_look_up(request: &AdmissionRequest<DynamicObject>) -> Option<(String, String)> {
    let object = request.object.as_ref()?;
    let is_ephemeral_containers = object.types.as_ref().is_some_and(|t| t.kind == "EphemeralContainers");
    let labels_missing = request.operation == Operation::Connect
        || (request.sub_resource.as_deref() == Some("ephemeralcontainers") && is_ephemeral_containers);
    labels_missing.then(|| {
        (
            request.namespace.clone().unwrap_or_default(),
            object.metadata.name.clone().unwrap_or_else(|| request.name.clone()),
        )
    })
}

/// The facts of an exec, attach or port-forward request, whose object carries no pod: the
/// pod's name and the labels the handler looked up, and whether it did.
pub(super) fn connect_subject(request: &AdmissionRequest<DynamicObject>) -> (Subject, bool) {
    let labels = request.object.as_ref().and_then(|o| o.metadata.labels.as_ref());
    let namespace = request.namespace.clone().unwrap_or_default();
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(request.name.clone()),
            namespace: Some(namespace.clone()),
            labels: labels.cloned(),
            ..ObjectMeta::default()
        },
        spec: None,
        status: None,
    };
    let identity_name = identity_label(&pod).map(str::to_owned);
    let subject = Subject {
        pod,
        old: None,
        ephemeral: false,
        operation: request.operation.clone(),
        namespace,
        pod_name: request.name.clone(),
        identity_name,
        creator: request.user_info.username.clone().unwrap_or_default(),
    };
    (subject, labels.is_some())
}

/// The request with the pod's labels in its objects.
pub fn with_pod_labels(
    request: &AdmissionRequest<DynamicObject>,
    labels: BTreeMap<String, String>,
) -> AdmissionRequest<DynamicObject> {
    let mut request = request.clone();
    for object in [request.object.as_mut(), request.old_object.as_mut()]
        .into_iter()
        .flatten()
    {
        object.metadata.labels = Some(labels.clone());
    }
    request
}
