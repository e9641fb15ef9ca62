//! Admission decisions for pods, as pure functions of the request and a read-only view of
//! the identities. Mutation injects an identity into a labelled pod; validation enforces it.
//! A value the user set that conflicts with the identity is denied, never replaced.

use std::collections::BTreeMap;
use std::sync::Arc;

use globset::{Glob, GlobSetBuilder};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, Pod, PodOS, PodSecurityContext, PodSpec, SecurityContext, Volume, VolumeMount,
    WindowsSecurityContextOptions,
};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use sha2::{Digest, Sha256};

use super::token_check::check_token;
use crate::api::WindowsTaskIdentity;
use crate::api::conditions;
use crate::api::identity::CONTAINER_ADMINISTRATOR;
use crate::build::{Os, credential_spec_document, identity_env, share_volumes, token_wiring};
use crate::names::{self, IDENTITY_LABEL, ROLE_EXECUTOR, ROLE_LABEL, ROLE_WINDOWS_TASK};

/// Read-only access to the identities, as the webhook's cache holds them.
pub trait IdentityLookup {
    fn identity(&self, namespace: &str, name: &str) -> Option<Arc<WindowsTaskIdentity>>;
}

/// Who asked for what and what was decided: one audit line, metrics, and an Event on denial.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Audit {
    pub identity: Option<String>,
    pub namespace: String,
    pub pod: String,
    pub dag_id: Option<String>,
    pub task_id: Option<String>,
    pub allowed: bool,
    pub reason: &'static str,
    pub message: String,
}

pub struct Decision {
    pub response: AdmissionResponse,
    pub audit: Audit,
}

/// Why a pod was denied: the reason (for metrics and Events) and a message that names the
/// identity, the rule and what is allowed.
struct Denial(&'static str, String);

type Checked<T> = Result<T, Denial>;

/// The facts every decision starts from.
struct Subject {
    pod: Pod,
    namespace: String,
    pod_name: String,
    identity_name: Option<String>,
}

fn subject(request: &AdmissionRequest<DynamicObject>) -> Result<Subject, String> {
    let object = request.object.as_ref().ok_or("the request carries no pod")?;
    let value = serde_json::to_value(object).map_err(|e| e.to_string())?;
    let pod: Pod = serde_json::from_value(value).map_err(|e| format!("the object is not a valid pod: {e}"))?;
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
    let identity_name = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(IDENTITY_LABEL))
        .cloned();
    Ok(Subject {
        pod,
        namespace,
        pod_name,
        identity_name,
    })
}

fn audit(subject: &Subject, allowed: bool, reason: &'static str, message: String) -> Audit {
    Audit {
        identity: subject.identity_name.clone(),
        namespace: subject.namespace.clone(),
        pod: subject.pod_name.clone(),
        dag_id: airflow_id(&subject.pod, "dag_id").map(|(id, _)| id),
        task_id: airflow_id(&subject.pod, "task_id").map(|(id, _)| id),
        allowed,
        reason,
        message,
    }
}

fn invalid(request: &AdmissionRequest<DynamicObject>, message: String) -> Decision {
    let namespace = request.namespace.clone().unwrap_or_default();
    Decision {
        response: AdmissionResponse::from(request).deny(&message),
        audit: Audit {
            identity: None,
            namespace,
            pod: request.name.clone(),
            dag_id: None,
            task_id: None,
            allowed: false,
            reason: "InvalidPod",
            message,
        },
    }
}

fn finish(
    request: &AdmissionRequest<DynamicObject>,
    subject: &Subject,
    outcome: Checked<Option<json_patch::Patch>>,
) -> Decision {
    match outcome {
        Ok(None) => Decision {
            response: AdmissionResponse::from(request),
            audit: audit(subject, true, "Allowed", String::new()),
        },
        Ok(Some(patch)) => {
            let reason = if patch.0.is_empty() { "Allowed" } else { "Mutated" };
            let response = AdmissionResponse::from(request);
            let response = if patch.0.is_empty() {
                Ok(response)
            } else {
                response.with_patch(patch)
            };
            match response {
                Ok(response) => Decision {
                    response,
                    audit: audit(subject, true, reason, String::new()),
                },
                Err(e) => invalid(request, format!("winflow could not encode its patch: {e}")),
            }
        }
        Err(Denial(reason, message)) => Decision {
            response: AdmissionResponse::from(request).deny(&message),
            audit: audit(subject, false, reason, message),
        },
    }
}

/// The identity a labelled pod names, if it exists and is Ready. A new pod (`creating`) of an
/// identity with a token is also checked for a token that lasts long enough; this comes
/// first, so that an expired token is named as such rather than as "not Ready".
fn ready_identity(
    view: &dyn IdentityLookup,
    namespace: &str,
    name: &str,
    creating: Option<&Pod>,
) -> Checked<Arc<WindowsTaskIdentity>> {
    let identity = view.identity(namespace, name).ok_or_else(|| {
        Denial("UnknownIdentity", format!("identity \"{name}\" does not exist in namespace \"{namespace}\" (label {IDENTITY_LABEL} must name a WindowsTaskIdentity there)"))
    })?;
    if let Some(pod) = creating {
        check_token(&identity, pod.metadata.annotations.as_ref(), jiff::Timestamp::now())
            .map_err(|(reason, message)| Denial(reason, message))?;
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
        return Err(Denial(
            "IdentityNotReady",
            format!("identity \"{name}\" is not Ready ({why}); its pods are admitted once it is"),
        ));
    }
    Ok(identity)
}

// ---------------------------------------------------------------------------------------
// Mutation

/// `/mutate-pods`: injects the identity into a pod labelled `winflow.io/identity`.
/// Idempotent: a second pass over its own output changes nothing.
pub fn mutate(request: &AdmissionRequest<DynamicObject>, view: &dyn IdentityLookup) -> Decision {
    let subject = match subject(request) {
        Ok(subject) => subject,
        Err(message) => return invalid(request, message),
    };
    let outcome = match (&subject.identity_name, &request.operation) {
        (Some(name), Operation::Create) => ready_identity(view, &subject.namespace, name, Some(&subject.pod))
            .and_then(|identity| mutated(&subject.pod, &identity, &request.uid))
            .map(Some),
        _ => Ok(None),
    };
    finish(request, &subject, outcome)
}

fn mutated(pod: &Pod, identity: &WindowsTaskIdentity, request_uid: &str) -> Checked<json_patch::Patch> {
    let mut changed = pod.clone();
    let spec = changed.spec.get_or_insert_with(PodSpec::default);
    let who = identity_label(identity);
    set_service_account(spec, identity, &who)?;
    let os = match role(pod) {
        ROLE_WINDOWS_TASK => {
            inject_windows(spec, identity, &who, request_uid)?;
            Os::Windows
        }
        ROLE_EXECUTOR => Os::Linux,
        other => return Err(unknown_role(&who, other)),
    };
    let token = token_wiring(identity, os);
    if let Some(token) = &token {
        add_volume(spec, token.volume.clone(), &who, "the token Secret")?;
    }
    if let Some(base) = spec.containers.first_mut() {
        let mut wanted = identity_env(identity);
        if let Some(token) = token {
            wanted.extend(token.env);
            add_mounts(base, vec![token.mount]);
        }
        inject_env(base, wanted, &who)?;
    }
    let before = serde_json::to_value(pod).expect("pods serialize");
    let after = serde_json::to_value(&changed).expect("pods serialize");
    Ok(json_patch::diff(&before, &after))
}

fn identity_label(identity: &WindowsTaskIdentity) -> String {
    format!("\"{}\"", identity.metadata.name.as_deref().unwrap_or_default())
}

fn role(pod: &Pod) -> &str {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(ROLE_LABEL))
        .map(String::as_str)
        .unwrap_or(ROLE_WINDOWS_TASK)
}

fn unknown_role(who: &str, role: &str) -> Denial {
    Denial(
        "UnknownRole",
        format!("pod of identity {who} has {ROLE_LABEL}={role:?} (allowed: {ROLE_WINDOWS_TASK}, {ROLE_EXECUTOR})"),
    )
}

fn conflict(who: &str, field: &str, found: &str, wanted: &str) -> Denial {
    Denial(
        "FieldConflict",
        format!(
            "pod sets {field} to {found:?}, but identity {who} requires {wanted:?}; remove the field or set it to that value"
        ),
    )
}

/// Sets `value` into `slot` unless it holds something else, which is a conflict.
fn claim(slot: &mut Option<String>, value: &str, who: &str, field: &str) -> Checked<()> {
    match slot.as_deref() {
        Some(found) if found != value => Err(conflict(who, field, found, value)),
        _ => {
            *slot = Some(value.to_owned());
            Ok(())
        }
    }
}

fn set_service_account(spec: &mut PodSpec, identity: &WindowsTaskIdentity, who: &str) -> Checked<()> {
    let wanted = &identity.spec.service_account.name;
    match spec.service_account_name.as_deref() {
        None | Some("") | Some("default") => {
            spec.service_account_name = Some(wanted.clone());
            spec.service_account = None;
            Ok(())
        }
        Some(found) if found == wanted => Ok(()),
        Some(found) => Err(Denial(
            "ServiceAccountMismatch",
            format!("pod runs as service account {found:?}, but identity {who} allows only {wanted:?}"),
        )),
    }
}

/// The credential spec content as the pod carries it: compact JSON with sorted keys, equal to
/// the GMSACredentialSpec object's `credspec`.
pub fn inline_credential_spec(identity: &WindowsTaskIdentity) -> String {
    let namespace = identity.metadata.namespace.as_deref().unwrap_or_default();
    serde_json::to_string(&credential_spec_document(namespace, &identity.spec)).expect("JSON serializes")
}

fn credential_spec_name_of(identity: &WindowsTaskIdentity) -> String {
    names::credential_spec_name(
        identity.metadata.namespace.as_deref().unwrap_or_default(),
        identity.metadata.name.as_deref().unwrap_or_default(),
    )
}

/// Same JSON document, whatever the spacing and key order.
fn same_json(a: &str, b: &str) -> bool {
    match (
        serde_json::from_str::<serde_json::Value>(a),
        serde_json::from_str::<serde_json::Value>(b),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

fn inject_windows(spec: &mut PodSpec, identity: &WindowsTaskIdentity, who: &str, request_uid: &str) -> Checked<()> {
    let settings = &identity.spec.pod;
    match &spec.os {
        Some(os) if os.name != "windows" => return Err(conflict(who, "spec.os.name", &os.name, "windows")),
        _ => {
            spec.os = Some(PodOS {
                name: "windows".to_owned(),
            })
        }
    }
    let selector = spec.node_selector.get_or_insert_with(BTreeMap::new);
    let mut wanted = settings.node_selector.clone();
    wanted.insert("kubernetes.io/os".to_owned(), "windows".to_owned());
    for (key, value) in &wanted {
        match selector.get(key) {
            Some(found) if found != value => {
                return Err(conflict(who, &format!("spec.nodeSelector[{key}]"), found, value));
            }
            _ => {
                selector.insert(key.clone(), value.clone());
            }
        }
    }
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    for toleration in &settings.tolerations {
        if !tolerations.contains(toleration) {
            tolerations.push(toleration.clone());
        }
    }
    if tolerations.is_empty() {
        spec.tolerations = None;
    }

    let options = spec
        .security_context
        .get_or_insert_with(PodSecurityContext::default)
        .windows_options
        .get_or_insert_with(WindowsSecurityContextOptions::default);
    claim(
        &mut options.gmsa_credential_spec_name,
        &credential_spec_name_of(identity),
        who,
        "securityContext.windowsOptions.gmsaCredentialSpecName",
    )?;
    let content = inline_credential_spec(identity);
    match options.gmsa_credential_spec.as_deref() {
        Some(found) if !same_json(found, &content) => {
            return Err(Denial(
                "GmsaConflict",
                format!(
                    "pod sets securityContext.windowsOptions.gmsaCredentialSpec to content other than identity {who}'s credential spec; remove it and winflow fills it in"
                ),
            ));
        }
        _ => options.gmsa_credential_spec = Some(content),
    }
    claim(
        &mut options.run_as_user_name,
        &settings.run_as_user_name,
        who,
        "securityContext.windowsOptions.runAsUserName",
    )?;

    // Windows truncates a container's NetBIOS name to 15 characters; a stable, short, unique
    // hostname avoids collisions in Active Directory.
    if spec.hostname.as_deref().is_none_or(str::is_empty) {
        let digest = Sha256::digest(request_uid.as_bytes());
        let suffix: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
        spec.hostname = Some(format!("wf-{suffix}"));
    }

    let (volumes, mounts) = share_volumes(&identity.spec.shares);
    for volume in volumes {
        add_volume(spec, volume, who, "the share of that name")?;
    }
    if let Some(base) = spec.containers.first_mut() {
        add_mounts(base, mounts);
    }
    Ok(())
}

/// Adds a volume the identity needs; a different pod volume of the same name is a conflict.
fn add_volume(spec: &mut PodSpec, volume: Volume, who: &str, what: &str) -> Checked<()> {
    let pod_volumes = spec.volumes.get_or_insert_with(Vec::new);
    match pod_volumes.iter().find(|v| v.name == volume.name) {
        Some(existing) if *existing != volume => Err(Denial(
            "FieldConflict",
            format!(
                "pod has a volume named {:?} that differs from identity {who}'s volume for {what}; rename the pod's volume",
                volume.name
            ),
        )),
        Some(_) => Ok(()),
        None => {
            pod_volumes.push(volume);
            Ok(())
        }
    }
}

/// Mounts the identity's volumes in the task container, keeping mounts the pod already has.
fn add_mounts(container: &mut Container, mounts: Vec<VolumeMount>) {
    let container_mounts = container.volume_mounts.get_or_insert_with(Vec::new);
    for mount in mounts {
        if !container_mounts.iter().any(|m| m.name == mount.name) {
            container_mounts.push(mount);
        }
    }
    if container_mounts.is_empty() {
        container.volume_mounts = None;
    }
}

/// How an env var gets its value, for conflict messages.
fn env_source(var: &EnvVar) -> String {
    match (
        &var.value,
        var.value_from.as_ref().and_then(|f| f.secret_key_ref.as_ref()),
    ) {
        (_, Some(key)) => format!("Secret {} key {}", key.name, key.key),
        (Some(value), None) => value.clone(),
        (None, None) if var.value_from.is_some() => "another source".to_owned(),
        (None, None) => String::new(),
    }
}

fn inject_env(container: &mut Container, wanted: Vec<EnvVar>, who: &str) -> Checked<()> {
    let env = container.env.get_or_insert_with(Vec::new);
    for var in wanted {
        match env.iter().find(|e| e.name == var.name) {
            Some(existing) if *existing != var => {
                return Err(conflict(
                    who,
                    &format!("env {} of container {:?}", var.name, container.name),
                    &env_source(existing),
                    &env_source(&var),
                ));
            }
            Some(_) => {}
            None => env.push(var),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Validation

/// `/validate-pods`: enforces the identity a labelled pod names; in enforcement namespaces,
/// refuses unlabelled pods that reach for a winflow credential spec.
pub fn validate(request: &AdmissionRequest<DynamicObject>, view: &dyn IdentityLookup) -> Decision {
    let subject = match subject(request) {
        Ok(subject) => subject,
        Err(message) => return invalid(request, message),
    };
    let old = request
        .old_object
        .as_ref()
        .and_then(|o| serde_json::to_value(o).ok())
        .and_then(|v| serde_json::from_value::<Pod>(v).ok());
    let outcome = match &subject.identity_name {
        Some(name) => validate_labelled(&subject, name, old.as_ref(), view),
        None => validate_unlabelled(&subject, view),
    };
    finish(request, &subject, outcome.map(|()| None))
}

fn validate_labelled(subject: &Subject, name: &str, old: Option<&Pod>, view: &dyn IdentityLookup) -> Checked<()> {
    let pod = &subject.pod;
    if let Some(old) = old {
        check_unchanged_identity(old, pod, name)?;
    }
    let identity = ready_identity(view, &subject.namespace, name, old.is_none().then_some(pod))?;
    let who = identity_label(&identity);
    let airflow = &identity.spec.airflow;
    check_airflow_id(pod, "dag_id", "dag", &airflow.dag_ids, &who)?;
    check_airflow_id(pod, "task_id", "task", &airflow.task_ids, &who)?;
    let spec = pod.spec.clone().unwrap_or_default();
    let wanted_account = &identity.spec.service_account.name;
    if spec.service_account_name.as_deref() != Some(wanted_account) {
        let found = spec.service_account_name.as_deref().unwrap_or("default");
        return Err(Denial(
            "ServiceAccountMismatch",
            format!("pod runs as service account {found:?}, but identity {who} allows only {wanted_account:?}"),
        ));
    }
    let own_spec = credential_spec_name_of(&identity);
    for (place, options) in windows_options(&spec) {
        if let Some(found) = options.gmsa_credential_spec_name.as_deref()
            && found != own_spec
        {
            return Err(Denial(
                "GmsaConflict",
                format!("{place} names credential spec {found:?}, but identity {who} may use only {own_spec:?}"),
            ));
        }
        if options
            .run_as_user_name
            .as_deref()
            .is_some_and(|u| u.eq_ignore_ascii_case(CONTAINER_ADMINISTRATOR))
            && !identity.spec.pod.allow_administrator
        {
            return Err(Denial(
                "AdministratorNotAllowed",
                format!(
                    "{place} runs as {CONTAINER_ADMINISTRATOR}, which identity {who} does not allow (set spec.pod.allowAdministrator on the identity, or run as ContainerUser)"
                ),
            ));
        }
        if options.host_process == Some(true) {
            return Err(Denial(
                "PrivilegedNotAllowed",
                format!("{place} asks for a HostProcess container, which no identity allows ({who} included)"),
            ));
        }
    }
    for container in all_containers(&spec) {
        if container.security_context.as_ref().and_then(|s| s.privileged) == Some(true) {
            return Err(Denial(
                "PrivilegedNotAllowed",
                format!(
                    "container {:?} is privileged, which no identity allows ({who} included)",
                    container.name
                ),
            ));
        }
    }
    Ok(())
}

fn validate_unlabelled(subject: &Subject, view: &dyn IdentityLookup) -> Checked<()> {
    let spec = subject.pod.spec.clone().unwrap_or_default();
    for (place, options) in windows_options(&spec) {
        let Some(name) = options.gmsa_credential_spec_name.as_deref() else {
            continue;
        };
        let Some((namespace, identity)) = names::identity_of_credential_spec(name) else {
            continue;
        };
        if view.identity(namespace, identity).is_some() {
            return Err(Denial(
                "UnlabelledGmsaUse",
                format!(
                    "{place} names credential spec {name:?} of identity \"{identity}\", but the pod has no {IDENTITY_LABEL} label; in this namespace (winflow.io/enforce=true) only pods labelled {IDENTITY_LABEL}={identity} may use it"
                ),
            ));
        }
    }
    Ok(())
}

fn all_containers(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.init_containers.iter().flatten().chain(&spec.containers)
}

/// The pod-level and every container's Windows options, with where they are.
fn windows_options(spec: &PodSpec) -> Vec<(String, WindowsSecurityContextOptions)> {
    let pod_level = spec
        .security_context
        .as_ref()
        .and_then(|s| s.windows_options.clone())
        .map(|o| ("the pod".to_owned(), o));
    let containers = all_containers(spec).filter_map(|c| {
        let options = c
            .security_context
            .as_ref()
            .and_then(|s: &SecurityContext| s.windows_options.clone())?;
        Some((format!("container {:?}", c.name), options))
    });
    pod_level.into_iter().chain(containers).collect()
}

/// gMSA fields and the identity label are fixed for a pod's lifetime.
fn check_unchanged_identity(old: &Pod, new: &Pod, name: &str) -> Checked<()> {
    let label = |pod: &Pod| {
        pod.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(IDENTITY_LABEL))
            .cloned()
    };
    if label(old) != label(new) {
        return Err(Denial(
            "GmsaChanged",
            format!("the {IDENTITY_LABEL} label of a pod cannot change (identity \"{name}\")"),
        ));
    }
    let gmsa = |pod: &Pod| {
        windows_options(&pod.spec.clone().unwrap_or_default())
            .into_iter()
            .map(|(place, o)| (place, o.gmsa_credential_spec_name, o.gmsa_credential_spec))
            .collect::<Vec<_>>()
    };
    if gmsa(old) != gmsa(new) {
        return Err(Denial(
            "GmsaChanged",
            format!("gMSA fields of a pod of identity \"{name}\" cannot change after creation"),
        ));
    }
    Ok(())
}

/// The Airflow id of a pod: the exact annotation (KubernetesExecutor) first, else the label
/// (KubernetesPodOperator), with whether it came from the label.
fn airflow_id(pod: &Pod, key: &str) -> Option<(String, bool)> {
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
fn looks_shortened(label: &str) -> bool {
    label.len() > 10
        && label.as_bytes()[label.len() - 10] == b'-'
        && label[label.len() - 9..].bytes().all(|b| b.is_ascii_hexdigit())
}

fn check_airflow_id(pod: &Pod, key: &str, what: &str, patterns: &[String], who: &str) -> Checked<()> {
    let allowed = patterns.join(", ");
    let allows_all = patterns.iter().any(|p| p == "*");
    let reason = if what == "dag" {
        "DagNotAllowed"
    } else {
        "TaskNotAllowed"
    };
    let Some((id, from_label)) = airflow_id(pod, key) else {
        if allows_all {
            return Ok(());
        }
        return Err(Denial(
            reason,
            format!(
                "pod carries no {key} (annotation or label), so it cannot use identity {who} (allowed {what} ids: {allowed})"
            ),
        ));
    };
    if from_label && looks_shortened(&id) && !allows_all {
        return Err(Denial(
            reason,
            format!(
                "{what} label {id:?} looks shortened by Airflow, so the exact {key} is unknown and cannot be matched against identity {who} (allowed {what} ids: {allowed}); set the {key} annotation"
            ),
        ));
    }
    if matches_any(patterns, &id) {
        return Ok(());
    }
    Err(Denial(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use kube::core::admission::AdmissionReview;
    use serde_json::{Value, json};
    use std::collections::HashMap;

    struct View(HashMap<(String, String), Arc<WindowsTaskIdentity>>);

    impl IdentityLookup for View {
        fn identity(&self, namespace: &str, name: &str) -> Option<Arc<WindowsTaskIdentity>> {
            self.0.get(&(namespace.to_owned(), name.to_owned())).cloned()
        }
    }

    fn ready(mut identity: WindowsTaskIdentity, ready: bool) -> WindowsTaskIdentity {
        let condition = Condition {
            type_: "Ready".into(),
            status: if ready { "True" } else { "False" }.into(),
            reason: if ready { "Reconciled" } else { "Conflict" }.into(),
            message: "m".into(),
            observed_generation: None,
            last_transition_time: Time("2026-11-28T00:00:00Z".parse().unwrap()),
        };
        identity.status = Some(crate::api::WindowsTaskIdentityStatus {
            conditions: vec![condition],
            ..Default::default()
        });
        identity
    }

    fn view() -> View {
        let mut map = HashMap::new();
        for (identity, is_ready) in [(fixtures::domain_joined(), true), (fixtures::key_vault(), false)] {
            let identity = ready(identity, is_ready);
            let key = (
                identity.metadata.namespace.clone().unwrap(),
                identity.metadata.name.clone().unwrap(),
            );
            map.insert(key, Arc::new(identity));
        }
        View(map)
    }

    /// A KubernetesPodOperator-style pod of `finance_daily`.
    fn pod() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "copy-reports-x1", "namespace": "airflow",
                "labels": {"winflow.io/identity": "finance-reports", "dag_id": "finance_daily", "task_id": "copy", "kubernetes_pod_operator": "True"}},
            "spec": {"containers": [{"name": "base", "image": "registry.example.com/finance/reports-win:1.4"}]}
        })
    }

    fn request(operation: &str, object: Value, old: Option<Value>) -> AdmissionRequest<DynamicObject> {
        let review: AdmissionReview<DynamicObject> = serde_json::from_value(json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "4d3c2b1a-0000-4000-8000-000000000001",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "name": object["metadata"]["name"], "namespace": "airflow", "operation": operation,
                "userInfo": {"username": "system:serviceaccount:airflow:airflow-worker"},
                "object": object, "oldObject": old}
        }))
        .unwrap();
        review.try_into().unwrap()
    }

    /// Applies a mutation's patch, as the API server would.
    fn apply(object: &Value, decision: &Decision) -> Value {
        let mut patched = object.clone();
        if let Some(patch) = &decision.response.patch {
            let patch: json_patch::Patch = serde_json::from_slice(patch).unwrap();
            json_patch::patch(&mut patched, &patch).unwrap();
        }
        patched
    }

    fn denial(decision: &Decision) -> (&'static str, &str) {
        assert!(!decision.response.allowed, "expected a denial");
        (decision.audit.reason, decision.response.result.message.as_str())
    }

    #[test]
    fn mutation_injects_the_identity_and_is_idempotent() {
        let view = view();
        let first = mutate(&request("CREATE", pod(), None), &view);
        assert!(first.response.allowed);
        assert_eq!(first.audit.reason, "Mutated");
        let mutated = apply(&pod(), &first);
        let spec = &mutated["spec"];
        assert_eq!(spec["serviceAccountName"], "finance-reports");
        assert_eq!(spec["os"]["name"], "windows");
        assert_eq!(spec["nodeSelector"]["kubernetes.io/os"], "windows");
        assert_eq!(spec["nodeSelector"]["node.kubernetes.io/windows-build"], "10.0.20348");
        assert_eq!(spec["tolerations"][0]["key"], "os");
        let options = &spec["securityContext"]["windowsOptions"];
        assert_eq!(options["gmsaCredentialSpecName"], "airflow.finance-reports");
        assert_eq!(options["runAsUserName"], "ContainerUser");
        let inlined = options["gmsaCredentialSpec"].as_str().unwrap();
        let expected =
            serde_json::to_string(&credential_spec_document("airflow", &fixtures::domain_joined_spec())).unwrap();
        assert_eq!(inlined, expected);
        assert!(
            !inlined.contains(' ') && inlined.starts_with(r#"{"ActiveDirectoryConfig":"#),
            "compact, sorted keys"
        );
        let hostname = spec["hostname"].as_str().unwrap();
        assert!(hostname.len() <= 15, "{hostname}");
        assert_eq!(
            spec["volumes"][0]["persistentVolumeClaim"]["claimName"],
            "finance-reports-share"
        );
        assert_eq!(spec["containers"][0]["volumeMounts"][0]["mountPath"], "C:\\reports");
        let env: Vec<&str> = spec["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        assert_eq!(env, ["WINFLOW_IDENTITY", "WINFLOW_GMSA_ACCOUNT", "WINFLOW_DOMAIN"]);

        let second = mutate(&request("CREATE", mutated.clone(), None), &view);
        assert!(second.response.allowed);
        assert_eq!(apply(&mutated, &second), mutated, "a second pass changes nothing");
        assert_eq!(second.audit.reason, "Allowed");
        // And the mutated pod passes validation.
        assert!(validate(&request("CREATE", mutated, None), &view).response.allowed);
    }

    #[test]
    fn conflicting_values_are_denied_not_replaced() {
        let view = view();
        let cases: [(&str, Value, &str); 5] = [
            (
                "/spec/serviceAccountName",
                json!("payroll-export"),
                "ServiceAccountMismatch",
            ),
            (
                "/spec/nodeSelector",
                json!({"kubernetes.io/os": "linux"}),
                "FieldConflict",
            ),
            (
                "/spec/securityContext",
                json!({"windowsOptions": {"gmsaCredentialSpecName": "airflow.payroll-export"}}),
                "FieldConflict",
            ),
            (
                "/spec/securityContext",
                json!({"windowsOptions": {"gmsaCredentialSpec": "{\"CmsPlugins\":[]}"}}),
                "GmsaConflict",
            ),
            (
                "/spec/securityContext",
                json!({"windowsOptions": {"runAsUserName": "ContainerAdministrator"}}),
                "FieldConflict",
            ),
        ];
        for (path, value, reason) in cases {
            let mut object = pod();
            *object
                .pointer_mut("/spec")
                .unwrap()
                .as_object_mut()
                .unwrap()
                .entry(path.trim_start_matches("/spec/"))
                .or_insert(Value::Null) = value;
            let decision = mutate(&request("CREATE", object, None), &view);
            let (got, message) = denial(&decision);
            assert_eq!(got, reason, "{path}: {message}");
            assert!(message.contains("\"finance-reports\""), "names the identity: {message}");
        }
    }

    #[test]
    fn unknown_or_unready_identities_are_denied_with_the_reason() {
        let view = view();
        let mut object = pod();
        object["metadata"]["labels"]["winflow.io/identity"] = json!("nobody");
        let decision = mutate(&request("CREATE", object, None), &view);
        assert_eq!(denial(&decision).0, "UnknownIdentity");
        let mut object = pod();
        object["metadata"]["labels"]["winflow.io/identity"] = json!("payroll-export");
        let decision = validate(&request("CREATE", object, None), &view);
        let (reason, message) = denial(&decision);
        assert_eq!(reason, "IdentityNotReady");
        assert!(message.contains("Conflict"), "{message}");
    }

    fn mutated_pod(view: &View, object: Value) -> Value {
        let decision = mutate(&request("CREATE", object.clone(), None), view);
        assert!(decision.response.allowed, "{}", decision.response.result.message);
        apply(&object, &decision)
    }

    #[test]
    fn dags_and_tasks_outside_the_patterns_are_denied() {
        let view = view();
        let mut object = pod();
        object["metadata"]["labels"]["dag_id"] = json!("payroll");
        let decision = validate(&request("CREATE", mutated_pod(&view, object), None), &view);
        let (reason, message) = denial(&decision);
        assert_eq!(reason, "DagNotAllowed");
        assert_eq!(
            message,
            "dag \"payroll\" may not use identity \"finance-reports\" (allowed dag ids: finance_*)"
        );

        // The exact annotation wins over the label (KubernetesExecutor pods carry both).
        let mut object = pod();
        object["metadata"]["labels"]["dag_id"] = json!("finance_daily");
        object["metadata"]["annotations"] = json!({"dag_id": "payroll"});
        let decision = validate(&request("CREATE", mutated_pod(&view, object), None), &view);
        assert_eq!(denial(&decision).0, "DagNotAllowed");
    }

    #[test]
    fn a_shortened_label_never_lets_a_pod_through() {
        let view = view();
        let mut object = pod();
        // What Airflow makes of a long dag id: a prefix that matches finance_*, and a hash.
        object["metadata"]["labels"]["dag_id"] =
            json!("finance_quarterly_close_with_a_name_longer_than_sixty-3f2a1b9c0");
        let decision = validate(&request("CREATE", mutated_pod(&view, object.clone()), None), &view);
        let (reason, message) = denial(&decision);
        assert_eq!(reason, "DagNotAllowed");
        assert!(
            message.contains("looks shortened") && message.contains("annotation"),
            "{message}"
        );
        object["metadata"]["annotations"] =
            json!({"dag_id": "finance_quarterly_close_with_a_name_longer_than_sixty_three_characters"});
        assert!(
            validate(&request("CREATE", mutated_pod(&view, object), None), &view)
                .response
                .allowed
        );
    }

    #[test]
    fn administrator_host_process_and_privileged_containers_are_denied() {
        let view = view();
        let base = mutated_pod(&view, pod());
        let mut admin = base.clone();
        admin["spec"]["containers"][0]["securityContext"] =
            json!({"windowsOptions": {"runAsUserName": "ContainerAdministrator"}});
        assert_eq!(
            denial(&validate(&request("CREATE", admin, None), &view)).0,
            "AdministratorNotAllowed"
        );
        let mut host = base.clone();
        host["spec"]["securityContext"]["windowsOptions"]["hostProcess"] = json!(true);
        assert_eq!(
            denial(&validate(&request("CREATE", host, None), &view)).0,
            "PrivilegedNotAllowed"
        );
        let mut privileged = base.clone();
        privileged["spec"]["containers"][0]["securityContext"] = json!({"privileged": true});
        assert_eq!(
            denial(&validate(&request("CREATE", privileged, None), &view)).0,
            "PrivilegedNotAllowed"
        );
        let mut other_spec = base;
        other_spec["spec"]["containers"][0]["securityContext"] =
            json!({"windowsOptions": {"gmsaCredentialSpecName": "airflow.payroll-export"}});
        assert_eq!(
            denial(&validate(&request("CREATE", other_spec, None), &view)).0,
            "GmsaConflict"
        );
    }

    #[test]
    fn gmsa_fields_cannot_change_on_update() {
        let view = view();
        let old = mutated_pod(&view, pod());
        let mut new = old.clone();
        new["spec"]["securityContext"]["windowsOptions"]["gmsaCredentialSpec"] = json!("{}");
        let (reason, _) = denial(&validate(&request("UPDATE", new, Some(old.clone())), &view));
        assert_eq!(reason, "GmsaChanged");
        let mut relabelled = old.clone();
        relabelled["metadata"]["labels"]["winflow.io/identity"] = json!("payroll-export");
        assert_eq!(
            denial(&validate(&request("UPDATE", relabelled, Some(old.clone())), &view)).0,
            "GmsaChanged"
        );
        let mut annotated = old.clone();
        annotated["metadata"]["annotations"] = json!({"note": "fine"});
        assert!(
            validate(&request("UPDATE", annotated, Some(old)), &view)
                .response
                .allowed
        );
    }

    #[test]
    fn unlabelled_pods_may_not_reach_for_a_winflow_credential_spec() {
        let view = view();
        let mut object = pod();
        object["metadata"]["labels"] = json!({"app": "sneaky"});
        object["spec"]["securityContext"] =
            json!({"windowsOptions": {"gmsaCredentialSpecName": "airflow.finance-reports"}});
        let decision = validate(&request("CREATE", object.clone(), None), &view);
        let (reason, message) = denial(&decision);
        assert_eq!(reason, "UnlabelledGmsaUse");
        assert!(message.contains("winflow.io/identity=finance-reports"), "{message}");
        // A credential spec winflow does not manage is none of its business.
        object["spec"]["securityContext"] = json!({"windowsOptions": {"gmsaCredentialSpecName": "webapp-gmsa"}});
        assert!(validate(&request("CREATE", object, None), &view).response.allowed);
    }

    #[test]
    fn executor_pods_get_the_service_account_and_identity_env_but_stay_linux() {
        let view = view();
        let mut object = pod();
        object["metadata"]["labels"]["winflow.io/role"] = json!("executor");
        let mutated = mutated_pod(&view, object);
        assert_eq!(mutated["spec"]["serviceAccountName"], "finance-reports");
        assert!(mutated["spec"].get("os").is_none() && mutated["spec"].get("securityContext").is_none());
        assert_eq!(mutated["spec"]["containers"][0]["env"][0]["name"], "WINFLOW_IDENTITY");
        let mut unknown = pod();
        unknown["metadata"]["labels"]["winflow.io/role"] = json!("sidecar");
        assert_eq!(
            denial(&mutate(&request("CREATE", unknown, None), &view)).0,
            "UnknownRole"
        );
    }

    #[test]
    fn shortened_labels_are_recognised() {
        assert!(looks_shortened("manual__2026-11-28T0000000000-1d0036463"));
        assert!(!looks_shortened("finance_daily"));
        assert!(!looks_shortened("-1d0036463"));
    }

    /// The domain-joined identity with a token that expires `expires_in` seconds from now.
    fn view_with_token(expires_in: i64) -> View {
        let mut identity = ready(fixtures::domain_joined(), true);
        identity.spec.token = Some(fixtures::token_settings());
        let now = jiff::Timestamp::now();
        identity.status.as_mut().unwrap().token = Some(crate::api::identity::TokenStatus {
            secret_name: Some("finance-reports-token".into()),
            expires_at: Some(
                now.checked_add(jiff::SignedDuration::from_secs(expires_in))
                    .unwrap()
                    .to_string(),
            ),
            renewal_time: Some(
                now.checked_add(jiff::SignedDuration::from_secs(90))
                    .unwrap()
                    .to_string(),
            ),
            ..Default::default()
        });
        let key = ("airflow".to_owned(), "finance-reports".to_owned());
        View(HashMap::from([(key, Arc::new(identity))]))
    }

    #[test]
    fn pods_of_an_identity_with_a_token_get_it_as_env_and_file_and_stay_idempotent() {
        let view = view_with_token(3600);
        let first = mutate(&request("CREATE", pod(), None), &view);
        assert!(first.response.allowed, "{}", first.response.result.message);
        let mutated = apply(&pod(), &first);
        let base = &mutated["spec"]["containers"][0];
        let token = base["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "WINFLOW_ACCESS_TOKEN")
            .unwrap();
        assert_eq!(token["valueFrom"]["secretKeyRef"]["name"], "finance-reports-token");
        assert_eq!(token["valueFrom"]["secretKeyRef"]["key"], "access_token");
        let volumes = mutated["spec"]["volumes"].as_array().unwrap();
        let volume = volumes.iter().find(|v| v["name"] == "winflow-token").unwrap();
        assert_eq!(volume["secret"]["secretName"], "finance-reports-token");
        let mounts = base["volumeMounts"].as_array().unwrap();
        assert!(
            mounts
                .iter()
                .any(|m| m["mountPath"] == "C:\\var\\run\\secrets\\winflow.io\\token")
        );
        let second = mutate(&request("CREATE", mutated.clone(), None), &view);
        assert_eq!(apply(&mutated, &second), mutated, "a second pass changes nothing");
        assert!(validate(&request("CREATE", mutated, None), &view).response.allowed);

        // A pod that maps the variable to something else is denied, not rewritten.
        let mut own = pod();
        own["spec"]["containers"][0]["env"] = json!([{"name": "WINFLOW_ACCESS_TOKEN", "value": "mine"}]);
        let decision = mutate(&request("CREATE", own, None), &view);
        let (reason, message) = denial(&decision);
        assert_eq!(reason, "FieldConflict");
        assert!(
            message.contains("Secret finance-reports-token key access_token"),
            "{message}"
        );
    }

    #[test]
    fn pods_are_denied_when_the_token_would_not_last_and_updates_are_not_checked() {
        let expiring = view_with_token(120);
        let decision = mutate(&request("CREATE", pod(), None), &expiring);
        let (reason, message) = denial(&decision);
        assert_eq!(reason, "TokenExpiring");
        assert!(message.contains("a fresh token is due at"), "{message}");
        let mut patient = pod();
        patient["metadata"]["annotations"] = json!({"winflow.io/min-token-validity": "1m"});
        let (reason, _) = denial(&mutate(&request("CREATE", patient, None), &expiring));
        assert_eq!(reason, "TokenExpiring", "the identity's 5m floor still applies");

        let expired = view_with_token(-1);
        let decision = validate(&request("CREATE", pod(), None), &expired);
        let (reason, message) = denial(&decision);
        assert_eq!(reason, "TokenExpired");
        assert!(message.contains("retry the task then"), "{message}");
        // A running pod's update is not refused because the token has since expired.
        let running = apply(&pod(), &mutate(&request("CREATE", pod(), None), &view_with_token(3600)));
        let update = validate(&request("UPDATE", running.clone(), Some(running)), &expired);
        assert!(update.response.allowed, "{}", update.response.result.message);
    }
}
