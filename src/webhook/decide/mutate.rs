//! Mutation: a pod labelled `winflow.io/identity` gets its identity injected (service account,
//! Windows settings and gMSA, shares, token). Idempotent: a second pass over its own output
//! changes nothing.

use crate::webhook::reason::AdmissionReason;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, EnvVar, Pod, PodOS, PodSecurityContext, PodSpec, Volume, VolumeMount, WindowsSecurityContextOptions,
};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, Operation};
use sha2::{Digest, Sha256};

use super::audit::{finish, invalid};
use super::envelope::subject;
use super::gmsa::check_own_contents;
use super::{Authorizations, Checked, Decision, Denial, ResourceView, check_creator, quoted_name, ready_identity};
use crate::api::WindowsTaskIdentity;
use crate::build::{Os, credential_spec_document, identity_env, share_volumes, token_wiring};
use crate::names::{self, ROLE_EXECUTOR, ROLE_LABEL, ROLE_WINDOWS_TASK};

/// `/mutate-pods`: injects the identity into a new pod labelled `winflow.io/identity`, once
/// its creator is known to be allowed to use it (nothing is injected for anyone else).
pub fn mutate(
    request: &AdmissionRequest<DynamicObject>,
    view: &dyn ResourceView,
    access: &dyn Authorizations,
) -> Decision {
    let subject = match subject(request) {
        Ok(subject) => subject,
        Err(message) => return invalid(request, message),
    };
    let outcome = match (&subject.identity_name, &request.operation) {
        // The creator first: someone who may not use the identity learns nothing about it
        // (whether it exists, is Ready, has a fresh token).
        (Some(name), Operation::Create) if !subject.ephemeral => {
            check_creator(&subject, name, access, "create pods of")
                .and_then(|()| ready_identity(view, &subject.namespace, name, Some(&subject.pod)))
                .and_then(|identity| mutated(&subject.pod, &identity, &request.uid))
                .map(Some)
        }
        _ => Ok(None),
    };
    let mut decision = finish(request, &subject, outcome);
    // Both webhooks are named pods.winflow.io, and the API server keeps the first value of an
    // audit annotation key: the validating answer (the final word) writes them unless the
    // mutating one ends the request with a denial.
    if decision.audit.allowed {
        decision.response.audit_annotations.clear();
    }
    decision
}

fn mutated(pod: &Pod, identity: &WindowsTaskIdentity, request_uid: &str) -> Checked<json_patch::Patch> {
    let mut changed = pod.clone();
    let spec = changed.spec.get_or_insert_with(PodSpec::default);
    let who = quoted_name(identity);
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

fn role(pod: &Pod) -> &str {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(ROLE_LABEL))
        .map(String::as_str)
        .unwrap_or(ROLE_WINDOWS_TASK)
}

fn unknown_role(who: &str, role: &str) -> Denial {
    Denial::new(
        AdmissionReason::UnknownRole,
        format!("pod of identity {who} has {ROLE_LABEL}={role:?} (allowed: {ROLE_WINDOWS_TASK}, {ROLE_EXECUTOR})"),
    )
}

fn conflict(who: &str, field: &str, found: &str, wanted: &str) -> Denial {
    Denial::new(
        AdmissionReason::FieldConflict,
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
        Some(found) => Err(Denial::new(
            AdmissionReason::ServiceAccountMismatch,
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

pub(super) fn credential_spec_name_of(identity: &WindowsTaskIdentity) -> String {
    names::credential_spec_name(
        identity.metadata.namespace.as_deref().unwrap_or_default(),
        identity.metadata.name.as_deref().unwrap_or_default(),
    )
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
    if let Some(found) = options.gmsa_credential_spec.as_deref() {
        check_own_contents("the pod", found, identity, who)?;
    }
    options.gmsa_credential_spec = Some(inline_credential_spec(identity));
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
        Some(existing) if !same_volume(existing, &volume) => Err(Denial::new(
            AdmissionReason::FieldConflict,
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

/// Equal once the API server's defaults are applied to both: a pod built from winflow's
/// template reaches the webhook with them filled in (a Secret volume's `defaultMode: 0644`).
fn same_volume(pod: &Volume, wanted: &Volume) -> bool {
    let defaulted = |volume: &Volume| {
        let mut volume = volume.clone();
        if let Some(secret) = &mut volume.secret {
            secret.default_mode.get_or_insert(SECRET_VOLUME_DEFAULT_MODE);
        }
        volume
    };
    defaulted(pod) == defaulted(wanted)
}

/// What the API server sets as a Secret volume's `defaultMode` when none is given (0644).
const SECRET_VOLUME_DEFAULT_MODE: i32 = 0o644;

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
