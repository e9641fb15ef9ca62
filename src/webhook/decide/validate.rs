//! Validation: the final pod (after every mutating webhook) against its identity's rules, and
//! every pod the webhook sees against the credentials that are not its own.

use crate::webhook::reason::AdmissionReason;
use k8s_openapi::api::core::v1::{Pod, PodSpec, SecurityContext, WindowsSecurityContextOptions};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, Operation};

use super::airflow_ids::check_airflow_id;
use super::audit::{finish, invalid};
use super::creator_account::{check_creator_account, made_by_workload_controller};
use super::credentials::{check_references, references};
use super::envelope::{Subject, identity_label, service_account_of, subject};
use super::gmsa::{check_content_named, check_no_identitys_gmsa, check_own_gmsa};
use super::{Authorizations, Checked, Decision, Denial, ResourceView, check_creator, quoted_name, ready_identity};
use crate::api::WindowsTaskIdentity;
use crate::api::identity::CONTAINER_ADMINISTRATOR;
use crate::names::{ENFORCE_LABEL, IDENTITY_LABEL};

/// `/validate-pods`: enforces the identity a labelled pod names (its creator may use it, its
/// DAG and task match, it runs as the identity's service account with its own credential
/// spec); keeps every pod, labelled or not, away from other identities' credentials.
pub fn validate(
    request: &AdmissionRequest<DynamicObject>,
    view: &dyn ResourceView,
    access: &dyn Authorizations,
) -> Decision {
    let subject = match subject(request) {
        Ok(subject) => subject,
        Err(message) => return invalid(request, message),
    };
    let outcome = check_label_unchanged(&subject)
        .and_then(|()| match &subject.identity_name {
            // The ephemeral-containers webhook judges those of an identity's pod; this one sees
            // them only in an enforcement namespace, for a 1.20 request without the pod's labels.
            Some(_) if subject.ephemeral => Ok(()),
            Some(name) => validate_labelled(&subject, name, view, access),
            None => validate_unlabelled(&subject, view),
        })
        .and_then(|()| match (&subject.operation, request.object.as_ref()) {
            // Pods of a workload were checked as its template (`workloads.winflow.io`).
            (Operation::Create, Some(object)) if !subject.ephemeral && !made_by_workload_controller(request) => {
                let account = service_account_of(object);
                check_creator_account(&subject.namespace, &subject.creator, account, view, access)
                    .map_err(|denial| denial.reworded(|message| format!("pod {message}")))
            }
            _ => Ok(()),
        });
    finish(request, &subject, outcome.map(|()| None))
}

/// `/validate-ephemeral-containers`: an ephemeral container added to an identity's pod runs
/// as the identity, so whoever adds it must be allowed to use the identity, and it reaches no
/// credential the pod's own containers could not. Other pods' are left to the enforcement
/// webhook.
pub fn validate_ephemeral(
    request: &AdmissionRequest<DynamicObject>,
    view: &dyn ResourceView,
    access: &dyn Authorizations,
) -> Decision {
    let subject = match subject(request) {
        Ok(subject) if subject.ephemeral => subject,
        Ok(_) => {
            return invalid(
                request,
                "only pods/ephemeralcontainers requests are reviewed here".to_owned(),
            );
        }
        Err(message) => return invalid(request, message),
    };
    let outcome = match subject.identity_name.as_deref() {
        None => Ok(()),
        Some(name) => check_label_unchanged(&subject)
            .and_then(|()| check_creator(&subject, name, access, "add ephemeral containers to pods of"))
            .and_then(|()| {
                let identity = view.identity(&subject.namespace, name);
                if let Some(identity) = &identity {
                    let (spec, who) = (subject.pod.spec.clone().unwrap_or_default(), quoted_name(identity));
                    check_own_gmsa(&spec, identity, &who)?;
                    check_privileges(&spec, identity, &who)?;
                }
                check_pod_spec_references(&subject, view, identity.as_deref())
            }),
    };
    finish(request, &subject, outcome.map(|()| None))
}

/// A pod's identity is fixed for its lifetime: the label is neither added, changed nor removed.
fn check_label_unchanged(subject: &Subject) -> Checked<()> {
    let Some(old) = &subject.old else { return Ok(()) };
    let (before, after) = (identity_label(old), subject.identity_name.as_deref());
    if before == after {
        return Ok(());
    }
    let show = |label: Option<&str>| label.map_or_else(|| "no label".to_owned(), |l| format!("{l:?}"));
    let denial = Denial::new(
        AdmissionReason::IdentityLabelChanged,
        format!(
            "the {IDENTITY_LABEL} label of a running pod cannot be added, changed or removed (it was {}, the update makes it {}); create a new pod instead",
            show(before),
            show(after)
        ),
    );
    Err(match before.or(after) {
        Some(identity) => denial.concerning(identity),
        None => denial,
    })
}

fn validate_labelled(
    subject: &Subject,
    name: &str,
    view: &dyn ResourceView,
    access: &dyn Authorizations,
) -> Checked<()> {
    let pod = &subject.pod;
    match (&subject.operation, &subject.old) {
        // Metadata only (labels other than the identity's, annotations, finalizers): nothing
        // that reaches a credential changes, and a deleted identity must not hold its pods.
        (Operation::Update, Some(old)) if old.spec == pod.spec => return Ok(()),
        (Operation::Update, Some(old)) => {
            check_unchanged_gmsa(old, pod, name)?;
            check_creator(subject, name, access, "change pods of")?;
        }
        _ => check_creator(subject, name, access, "create pods of")?,
    }
    let creating = subject.old.is_none().then_some(pod);
    let identity = ready_identity(view, &subject.namespace, name, creating)?;
    let who = quoted_name(&identity);
    let airflow = &identity.spec.airflow;
    check_airflow_id(pod, "dag_id", "dag", &airflow.dag_ids, &who)?;
    check_airflow_id(pod, "task_id", "task", &airflow.task_ids, &who)?;
    let spec = pod.spec.clone().unwrap_or_default();
    let wanted_account = &identity.spec.service_account.name;
    if spec.service_account_name.as_deref() != Some(wanted_account) {
        let found = spec.service_account_name.as_deref().unwrap_or("default");
        return Err(Denial::new(
            AdmissionReason::ServiceAccountMismatch,
            format!("pod runs as service account {found:?}, but identity {who} allows only {wanted_account:?}"),
        ));
    }
    check_own_gmsa(&spec, &identity, &who)?;
    check_privileges(&spec, &identity, &who)?;
    check_pod_spec_references(subject, view, Some(&identity))
}

fn validate_unlabelled(subject: &Subject, view: &dyn ResourceView) -> Checked<()> {
    let spec = subject.pod.spec.clone().unwrap_or_default();
    check_no_node_access(&spec)?;
    let protected = view.protected(&subject.namespace);
    if !subject.ephemeral {
        let account = spec.service_account_name.as_deref().unwrap_or("default");
        if let Some(owner) = protected.service_account_owners(account, None).first() {
            return Err(Denial::new(
                AdmissionReason::ServiceAccountOfIdentity,
                format!(
                    "pod runs as service account {account:?}, the service account of identity \"{owner}\", but has no {IDENTITY_LABEL} label; in this namespace ({ENFORCE_LABEL}=true) only pods labelled {IDENTITY_LABEL}={owner} may run as it"
                ),
            )
            .concerning(owner));
        }
    }
    for (place, options) in windows_options(&spec) {
        check_content_named(&place, &options)?;
        check_no_identitys_gmsa(&place, &options, view, &subject.namespace)?;
    }
    check_references(&references(&spec), &protected, None)
}

/// Secrets and claims of the pod spec (or of the ephemeral containers being added).
fn check_pod_spec_references(
    subject: &Subject,
    view: &dyn ResourceView,
    own: Option<&WindowsTaskIdentity>,
) -> Checked<()> {
    let spec = subject.pod.spec.clone().unwrap_or_default();
    let protected = view.protected(&subject.namespace);
    check_references(&references(&spec), &protected, own)
}

fn check_privileges(spec: &PodSpec, identity: &WindowsTaskIdentity, who: &str) -> Checked<()> {
    for (place, options) in windows_options(spec) {
        if options
            .run_as_user_name
            .as_deref()
            .is_some_and(|u| u.eq_ignore_ascii_case(CONTAINER_ADMINISTRATOR))
            && !identity.spec.pod.allow_administrator
        {
            return Err(Denial::new(
                AdmissionReason::AdministratorNotAllowed,
                format!(
                    "{place} runs as {CONTAINER_ADMINISTRATOR}, which identity {who} does not allow (set spec.pod.allowAdministrator on the identity, or run as ContainerUser)"
                ),
            ));
        }
        if options.host_process == Some(true) {
            return Err(Denial::new(
                AdmissionReason::PrivilegedNotAllowed,
                format!("{place} asks for a HostProcess container, which no identity allows ({who} included)"),
            ));
        }
    }
    for (place, context) in security_contexts(spec) {
        if context.privileged == Some(true) {
            return Err(Denial::new(
                AdmissionReason::PrivilegedNotAllowed,
                format!("{place} is privileged, which no identity allows ({who} included)"),
            ));
        }
    }
    Ok(())
}

/// In an enforcement namespace no pod reaches the node: as SYSTEM, a HostProcess or privileged
/// container reads every gMSA the node may retrieve and every Secret mounted on it.
fn check_no_node_access(spec: &PodSpec) -> Checked<()> {
    let rule = format!(
        "in this namespace ({ENFORCE_LABEL}=true) no pod may run on the node itself, where it could read every gMSA the node may retrieve and every Secret mounted there; other namespaces that reach Windows nodes should enforce Pod Security baseline (pod-security.kubernetes.io/enforce=baseline)"
    );
    if let Some((place, _)) = windows_options(spec)
        .into_iter()
        .find(|(_, options)| options.host_process == Some(true))
    {
        return Err(Denial::new(
            AdmissionReason::PrivilegedNotAllowed,
            format!("{place} asks for a HostProcess container; {rule}"),
        ));
    }
    if let Some((place, _)) = security_contexts(spec)
        .into_iter()
        .find(|(_, context)| context.privileged == Some(true))
    {
        return Err(Denial::new(
            AdmissionReason::PrivilegedNotAllowed,
            format!("{place} is privileged; {rule}"),
        ));
    }
    Ok(())
}

/// The security context of every container (init, app and ephemeral), with where it is.
pub(super) fn security_contexts(spec: &PodSpec) -> Vec<(String, &SecurityContext)> {
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .filter_map(|c| Some((format!("container {:?}", c.name), c.security_context.as_ref()?)));
    let ephemeral = spec.ephemeral_containers.iter().flatten().filter_map(|c| {
        Some((
            format!("ephemeral container {:?}", c.name),
            c.security_context.as_ref()?,
        ))
    });
    containers.chain(ephemeral).collect()
}

/// The pod-level and every container's Windows options, with where they are.
pub(super) fn windows_options(spec: &PodSpec) -> Vec<(String, WindowsSecurityContextOptions)> {
    let pod_level = spec
        .security_context
        .as_ref()
        .and_then(|s| s.windows_options.clone())
        .map(|o| ("the pod".to_owned(), o));
    let containers = security_contexts(spec)
        .into_iter()
        .filter_map(|(place, context)| Some((place, context.windows_options.clone()?)));
    pod_level.into_iter().chain(containers).collect()
}

/// gMSA fields are fixed for a pod's lifetime.
fn check_unchanged_gmsa(old: &Pod, new: &Pod, name: &str) -> Checked<()> {
    let gmsa = |pod: &Pod| {
        windows_options(&pod.spec.clone().unwrap_or_default())
            .into_iter()
            .map(|(place, o)| (place, o.gmsa_credential_spec_name, o.gmsa_credential_spec))
            .collect::<Vec<_>>()
    };
    if gmsa(old) != gmsa(new) {
        return Err(Denial::new(
            AdmissionReason::GmsaChanged,
            format!("gMSA fields of a pod of identity \"{name}\" cannot change after creation"),
        ));
    }
    Ok(())
}
