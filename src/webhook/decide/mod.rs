//! Admission decisions for pods, as pure functions of the request, a read-only view of
//! winflow's resources and the authorizer's answer about the pod's creator (asked before by
//! the handler). Mutation injects an identity into a labelled pod; validation enforces it and
//! keeps every pod away from credentials that are not its own. A value the user set that
//! conflicts with the identity is denied, never replaced.

mod airflow_ids;
mod credentials;
mod mutate;
#[cfg(test)]
mod tests;
mod validate;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{EphemeralContainer, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};

use super::access::Access;
use super::server::ReviewKind;
use super::token_check::check_token;
use crate::api::conditions;
use crate::api::{WindowsShare, WindowsTaskIdentity};
use crate::names::{IDENTITY_LABEL, use_role_name};

pub use airflow_ids::airflow_id;
pub use mutate::{inline_credential_spec, mutate};
pub use validate::{validate, validate_ephemeral};

/// Read-only access to winflow's resources, as the webhook's caches hold them.
pub trait ResourceView {
    fn identity(&self, namespace: &str, name: &str) -> Option<Arc<WindowsTaskIdentity>>;
    /// Shows `visit` every identity of `namespace`, or of every namespace with `None`
    /// (credential specs are cluster wide), without copying them: a review reads a whole
    /// namespace of a cache that may hold thousands.
    fn each_identity(&self, namespace: Option<&str>, visit: &mut dyn FnMut(&WindowsTaskIdentity));
    /// Shows `visit` every share of `namespace`.
    fn each_share(&self, namespace: &str, visit: &mut dyn FnMut(&WindowsShare));
}

/// Who asked for what and what was decided: one audit line, the response's audit
/// annotations, metrics, and an Event and a count on the identity when denied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Audit {
    /// The identity the pod's label names.
    pub identity: Option<String>,
    /// The identity whose credential a denied pod reached for, when the pod names none itself.
    pub concerns: Option<String>,
    pub namespace: String,
    pub pod: String,
    pub dag_id: Option<String>,
    pub task_id: Option<String>,
    pub run_id: Option<String>,
    pub try_number: Option<String>,
    /// `request.userInfo.username`: who creates or changes the pod.
    pub creator: String,
    pub allowed: bool,
    pub reason: &'static str,
    pub message: String,
}

/// Longest value of an audit annotation (Airflow's run ids are well below it).
const MAX_AUDIT_VALUE: usize = 253;

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
        put("reason", Some(self.reason));
        annotations
    }
}

pub struct Decision {
    pub response: AdmissionResponse,
    pub audit: Audit,
}

/// Why a pod was denied: the reason (for metrics and Events), a message that names the
/// identity, the rule and what is allowed, and the identity concerned when the pod names none.
struct Denial {
    reason: &'static str,
    message: String,
    concerns: Option<String>,
}

impl Denial {
    fn new(reason: &'static str, message: String) -> Self {
        Self {
            reason,
            message,
            concerns: None,
        }
    }

    fn concerning(mut self, identity: &str) -> Self {
        self.concerns = Some(identity.to_owned());
        self
    }
}

type Checked<T> = Result<T, Denial>;

/// The facts every decision starts from.
struct Subject {
    pod: Pod,
    /// The pod before an UPDATE.
    old: Option<Pod>,
    /// A request to `pods/ephemeralcontainers`: only the ephemeral containers are to be judged.
    ephemeral: bool,
    operation: Operation,
    namespace: String,
    pod_name: String,
    identity_name: Option<String>,
    creator: String,
}

/// A pod from the review's object. The `pods/ephemeralcontainers` subresource of Kubernetes
/// before 1.22 sends an `EphemeralContainers` object (the pod's metadata and the list); later
/// ones send the pod.
fn pod_of(object: &DynamicObject) -> Result<Pod, String> {
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

fn subject(request: &AdmissionRequest<DynamicObject>) -> Result<Subject, String> {
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

fn identity_label(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(IDENTITY_LABEL))
        .map(String::as_str)
}

/// The identity whose `use` the request's user must hold, if any: the creator of a labelled
/// pod, whoever changes a labelled pod's spec (its image, say), and whoever adds an ephemeral
/// container to one. Asked by the handler before deciding.
pub fn identity_to_authorize(kind: ReviewKind, request: &AdmissionRequest<DynamicObject>) -> Option<(String, String)> {
    // Read from the review as it came: the pod is decoded once, by the decision itself.
    let object = request.object.as_ref()?;
    let name = object.metadata.labels.as_ref()?.get(IDENTITY_LABEL)?.clone();
    let ephemeral = request.sub_resource.as_deref() == Some("ephemeralcontainers");
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
        _ => false,
    };
    let namespace = request.namespace.clone().or_else(|| object.metadata.namespace.clone());
    needed.then(|| (namespace.unwrap_or_default(), name))
}

/// The pod whose labels an ephemeral-containers request lacks: Kubernetes before 1.22 sends
/// an `EphemeralContainers` object that carries the pod's name but not its labels. The handler
/// looks them up and puts them in with [`with_pod_labels`].
pub fn pod_to_look_up(request: &AdmissionRequest<DynamicObject>) -> Option<(String, String)> {
    let object = request.object.as_ref()?;
    let is_ephemeral_containers = object.types.as_ref().is_some_and(|t| t.kind == "EphemeralContainers");
    (request.sub_resource.as_deref() == Some("ephemeralcontainers") && is_ephemeral_containers).then(|| {
        (
            request.namespace.clone().unwrap_or_default(),
            object.metadata.name.clone().unwrap_or_else(|| request.name.clone()),
        )
    })
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

/// A request that could not be decided because the pod it concerns could not be read: denied.
pub fn pod_lookup_failed(request: &AdmissionRequest<DynamicObject>, error: &str) -> Decision {
    let message = format!(
        "winflow could not read pod {:?} to find out whose identity it runs as ({error}); ephemeral containers are added once it can",
        request.name
    );
    denied_unread(request, "PodLookupFailed", message)
}

/// The creator's `use` of the identity, as the handler found it; fail closed.
fn check_creator(subject: &Subject, name: &str, access: Option<&Access>, doing: &str) -> Checked<()> {
    let user = &subject.creator;
    let namespace = &subject.namespace;
    let role = use_role_name(name);
    match access {
        Some(Access::Allowed) => Ok(()),
        Some(Access::Denied(why)) => {
            let why = if why.is_empty() {
                String::new()
            } else {
                format!(" (the authorizer said: {why})")
            };
            Err(Denial::new(
                "CreatorNotAllowed",
                format!(
                    "user {user:?} may not {doing} identity \"{name}\": that needs verb use on windowstaskidentities.winflow.io \"{name}\" in namespace {namespace:?}{why}; list the user in the identity's spec.access.creators, or bind the Role {role:?} to it"
                ),
            ))
        }
        Some(Access::Unavailable(error)) => Err(Denial::new(
            "AuthorizationUnavailable",
            format!(
                "winflow could not check whether user {user:?} may use identity \"{name}\" ({error}); pods of an identity are admitted only once that check answers"
            ),
        )),
        None => Err(Denial::new(
            "AuthorizationUnavailable",
            format!("winflow did not check whether user {user:?} may use identity \"{name}\"; denied"),
        )),
    }
}

fn audit(subject: &Subject, allowed: bool, reason: &'static str, message: String, concerns: Option<String>) -> Audit {
    let id = |key| airflow_id(&subject.pod, key).map(|(id, _)| id);
    Audit {
        identity: subject.identity_name.clone(),
        concerns,
        namespace: subject.namespace.clone(),
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

fn with_audit(response: AdmissionResponse, audit: Audit) -> Decision {
    let mut response = response;
    response.audit_annotations = audit.annotations();
    Decision { response, audit }
}

fn invalid(request: &AdmissionRequest<DynamicObject>, message: String) -> Decision {
    denied_unread(request, "InvalidPod", message)
}

/// A denial of a request whose pod was not (or could not be) read.
fn denied_unread(request: &AdmissionRequest<DynamicObject>, reason: &'static str, message: String) -> Decision {
    let audit = Audit {
        identity: None,
        concerns: None,
        namespace: request.namespace.clone().unwrap_or_default(),
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

fn finish(
    request: &AdmissionRequest<DynamicObject>,
    subject: &Subject,
    outcome: Checked<Option<json_patch::Patch>>,
) -> Decision {
    match outcome {
        Ok(None) => with_audit(
            AdmissionResponse::from(request),
            audit(subject, true, "Allowed", String::new(), None),
        ),
        Ok(Some(patch)) if patch.0.is_empty() => with_audit(
            AdmissionResponse::from(request),
            audit(subject, true, "Allowed", String::new(), None),
        ),
        Ok(Some(patch)) => match AdmissionResponse::from(request).with_patch(patch) {
            Ok(response) => with_audit(response, audit(subject, true, "Mutated", String::new(), None)),
            Err(e) => invalid(request, format!("winflow could not encode its patch: {e}")),
        },
        Err(denial) => with_audit(
            AdmissionResponse::from(request).deny(&denial.message),
            audit(subject, false, denial.reason, denial.message, denial.concerns),
        ),
    }
}

/// The identity a labelled pod names, if it exists and is Ready. A new pod (`creating`) of an
/// identity with a token is also checked for a token that lasts long enough; this comes
/// first, so that an expired token is named as such rather than as "not Ready".
fn ready_identity(
    view: &dyn ResourceView,
    namespace: &str,
    name: &str,
    creating: Option<&Pod>,
) -> Checked<Arc<WindowsTaskIdentity>> {
    let identity = view.identity(namespace, name).ok_or_else(|| {
        Denial::new("UnknownIdentity", format!("identity \"{name}\" does not exist in namespace \"{namespace}\" (label {IDENTITY_LABEL} must name a WindowsTaskIdentity there)"))
    })?;
    if let Some(pod) = creating {
        check_token(&identity, pod.metadata.annotations.as_ref(), jiff::Timestamp::now())
            .map_err(|(reason, message)| Denial::new(reason, message))?;
    }
    let conditions = identity
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    if !conditions::is_true(conditions, conditions::READY) {
        let why = conditions::find(conditions, conditions::READY)
            .map(|c| format!("{}: {}", c.reason, c.message))
            .unwrap_or_else(|| "not reconciled yet".to_owned());
        return Err(Denial::new(
            "IdentityNotReady",
            format!("identity \"{name}\" is not Ready ({why}); its pods are admitted once it is"),
        ));
    }
    Ok(identity)
}

/// `"name"` of an identity, as messages quote it.
fn quoted_name(identity: &WindowsTaskIdentity) -> String {
    format!("\"{}\"", identity.metadata.name.as_deref().unwrap_or_default())
}
