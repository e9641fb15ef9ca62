//! The WindowsTaskIdentity controller: credential spec, RBAC, service account and pod
//! templates; status and Events; finalizer cleanup of the cluster-scoped credential spec.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::core::error_boundary::InvalidObject;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use super::apply::{ChildReport, ensure_child};
use super::status::{Observed, ServiceAccountState, identity_conditions, invalid_spec_conditions};
use super::{Context, Error};
use crate::api::conditions::{self, ConditionState};
use crate::api::identity::PodTemplateStatus;
use crate::api::{GMSACredentialSpec, WindowsTaskIdentity, WindowsTaskIdentityStatus};
use crate::build::{self, IdentityChildren, is_managed_by_identity};
use crate::names::{
    self, EXECUTOR_TEMPLATE_KEY, FIELD_MANAGER, FINALIZER, MANAGED_BY_LABEL, MANAGED_BY_VALUE,
    WINDOWS_TEMPLATE_KEY,
};
use crate::validate;

const CONTROLLER: &str = "identity";

type Guarded = DeserializeGuard<WindowsTaskIdentity>;

/// Runs the controller until `shutdown` completes.
pub async fn run(
    ctx: Arc<Context>,
    readiness: crate::admin::Readiness,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let namespace = ctx.config.namespace.clone();
    let identities: Api<Guarded> = scoped(client.clone(), namespace.as_deref());
    let managed =
        watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"));
    let credential_specs: Api<GMSACredentialSpec> = Api::all(client.clone());
    let controller = Controller::new(identities, watcher::Config::default().any_semantic());
    let store = controller.store();
    tokio::spawn(async move {
        if store.wait_until_ready().await.is_ok() {
            readiness.set_ready();
        }
    });
    controller
        .owns(
            scoped::<ConfigMap>(client.clone(), namespace.as_deref()),
            managed.clone(),
        )
        .owns(
            scoped::<Role>(client.clone(), namespace.as_deref()),
            managed.clone(),
        )
        .owns(
            scoped::<RoleBinding>(client.clone(), namespace.as_deref()),
            managed.clone(),
        )
        .owns(
            scoped::<ServiceAccount>(client.clone(), namespace.as_deref()),
            managed.clone(),
        )
        .watches(credential_specs, managed, |spec| {
            let (namespace, name) =
                names::identity_of_credential_spec(spec.metadata.name.as_deref()?)?;
            Some(ObjectRef::<Guarded>::new(name).within(namespace))
        })
        .with_config(
            kube::runtime::controller::Config::default().concurrency(ctx.config.concurrency),
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "identity controller event");
            }
        })
        .await;
}

/// An API for one namespace, or for all of them.
fn scoped<K>(client: kube::Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    }
}

fn object_key(ns: &str, name: &str) -> String {
    format!("{ns}/{name}")
}

async fn reconcile(guard: Arc<Guarded>, ctx: Arc<Context>) -> Result<Action, Error> {
    let timer = ctx.metrics.reconcile_started(CONTROLLER);
    let result = match &guard.0 {
        Ok(identity) if identity.metadata.deletion_timestamp.is_some() => {
            cleanup(identity, &ctx).await
        }
        Ok(identity) => reconcile_identity(identity, &ctx).await,
        Err(invalid) => report_undecodable(invalid, &ctx).await,
    };
    timer.finish(match &result {
        Ok(_) => "success",
        Err(e) => e.metric_label(),
    });
    if result.is_ok() {
        let meta = match &guard.0 {
            Ok(identity) => &identity.metadata,
            Err(invalid) => &invalid.metadata,
        };
        ctx.backoff.succeeded(&object_key(
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default(),
        ));
    }
    result
}

fn error_policy(guard: Arc<Guarded>, error: &Error, ctx: Arc<Context>) -> Action {
    let meta = match &guard.0 {
        Ok(identity) => &identity.metadata,
        Err(invalid) => &invalid.metadata,
    };
    let key = object_key(
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default(),
    );
    let delay = ctx.backoff.failed(&key);
    warn!(identity = %key, error = %error, retry_in_seconds = delay.as_secs(), "reconcile failed");
    Action::requeue(delay)
}

fn identities_api(ctx: &Context, namespace: &str) -> Api<WindowsTaskIdentity> {
    Api::namespaced(ctx.client.clone(), namespace)
}

async fn reconcile_identity(
    identity: &WindowsTaskIdentity,
    ctx: &Context,
) -> Result<Action, Error> {
    let namespace = identity.namespace().unwrap_or_default();
    let name = identity.name_any();
    ensure_finalizer(identity, ctx).await?;

    let children = match build::children_for(identity) {
        Ok(children) => children,
        Err(violations) => {
            let message = validate::describe(&violations);
            warn!(identity = %object_key(&namespace, &name), %message, "invalid spec");
            update_status(identity, ctx, invalid_spec_conditions(message), None).await?;
            return Ok(Action::await_change());
        }
    };
    let (wanted, summary) = apply_children(identity, &children, ctx).await?;
    let ready = wanted.last().is_some_and(|c| c.status);
    update_status(identity, ctx, wanted, Some(summary)).await?;
    Ok(Action::requeue(if ready {
        ctx.config.resync_period
    } else {
        ctx.config.retry_period
    }))
}

/// Applies every child that is winflow's to write and reports the conditions.
async fn apply_children(
    identity: &WindowsTaskIdentity,
    children: &IdentityChildren,
    ctx: &Context,
) -> Result<(Vec<ConditionState>, WindowsTaskIdentityStatus), Error> {
    let namespace = identity.namespace().unwrap_or_default();
    let name = identity.name_any();
    let client = ctx.client.clone();
    let metrics = &ctx.metrics;
    let credential_spec = ensure_child(
        &Api::all(client.clone()),
        &children.credential_spec,
        &name,
        metrics,
    )
    .await?;
    let service_account = ensure_service_account(identity, children, ctx).await?;
    let role = ensure_child(
        &Api::namespaced(client.clone(), &namespace),
        &children.role,
        &name,
        metrics,
    )
    .await?;
    let role_binding = ensure_child(
        &Api::namespaced(client.clone(), &namespace),
        &children.role_binding,
        &name,
        metrics,
    )
    .await?;
    let pod_templates = ensure_child(
        &Api::namespaced(client, &namespace),
        &children.pod_templates,
        &name,
        metrics,
    )
    .await?;

    for report in [&credential_spec, &role, &role_binding, &pod_templates] {
        if report.state == super::apply::ChildState::Applied {
            info!(identity = %object_key(&namespace, &name), kind = %report.kind, child = %report.name, "applied");
        }
    }
    let service_account_name = identity.spec.service_account.name.clone();
    let wanted = identity_conditions(&Observed {
        credential_spec: &credential_spec,
        role: &role,
        role_binding: &role_binding,
        service_account_name: &service_account_name,
        service_account,
        pod_templates: &pod_templates,
        shares_requested: !identity.spec.shares.is_empty(),
        token_requested: identity.spec.token.is_some(),
    });
    let summary = WindowsTaskIdentityStatus {
        credential_spec_name: Some(credential_spec.name.clone()),
        service_account_name: Some(service_account_name),
        pod_template: Some(PodTemplateStatus {
            config_map_name: pod_templates.name.clone(),
            windows_key: WINDOWS_TEMPLATE_KEY.to_owned(),
            executor_key: EXECUTOR_TEMPLATE_KEY.to_owned(),
        }),
        ..WindowsTaskIdentityStatus::default()
    };
    Ok((wanted, summary))
}

/// A service account winflow creates is applied like any child; one that exists without
/// winflow's labels is bound as it is and never taken over.
async fn ensure_service_account(
    identity: &WindowsTaskIdentity,
    children: &IdentityChildren,
    ctx: &Context,
) -> Result<ServiceAccountState, Error> {
    let api: Api<ServiceAccount> = Api::namespaced(
        ctx.client.clone(),
        &identity.namespace().unwrap_or_default(),
    );
    match &children.service_account {
        Some(desired) => {
            let ChildReport { state, .. } =
                ensure_child(&api, desired, &identity.name_any(), &ctx.metrics).await?;
            Ok(match state {
                super::apply::ChildState::Conflict(_) => ServiceAccountState::ExistingUnmanaged,
                other => ServiceAccountState::Managed(other),
            })
        }
        None => Ok(
            match api.get_opt(&identity.spec.service_account.name).await? {
                Some(_) => ServiceAccountState::ExistingUnmanaged,
                None => ServiceAccountState::Missing,
            },
        ),
    }
}

async fn ensure_finalizer(identity: &WindowsTaskIdentity, ctx: &Context) -> Result<(), Error> {
    if identity.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(());
    }
    // A JSON patch with a test keeps finalizers written concurrently by others.
    let patch = match identity.meta().finalizers.as_ref() {
        None => json!([{ "op": "add", "path": "/metadata/finalizers", "value": [FINALIZER] }]),
        Some(current) => json!([
            { "op": "test", "path": "/metadata/finalizers", "value": current },
            { "op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER }
        ]),
    };
    let patch: json_patch::Patch = serde_json::from_value(patch).expect("valid JSON patch");
    ctx.metrics.api_write("WindowsTaskIdentity", "patch");
    identities_api(ctx, &identity.namespace().unwrap_or_default())
        .patch(
            &identity.name_any(),
            &PatchParams::default(),
            &Patch::<()>::Json(patch),
        )
        .await?;
    Ok(())
}

/// Removes the credential spec (cluster scoped, so no garbage collection) and then the
/// finalizer. Namespaced children go with their owner reference.
async fn cleanup(identity: &WindowsTaskIdentity, ctx: &Context) -> Result<Action, Error> {
    let Some(index) = identity.finalizers().iter().position(|f| f == FINALIZER) else {
        return Ok(Action::await_change());
    };
    let namespace = identity.namespace().unwrap_or_default();
    let name = identity.name_any();
    let specs: Api<GMSACredentialSpec> = Api::all(ctx.client.clone());
    let spec_name = names::credential_spec_name(&namespace, &name);
    if let Some(existing) = specs.get_opt(&spec_name).await?
        && is_managed_by_identity(&existing.metadata, &name)
    {
        ctx.metrics.api_write("GMSACredentialSpec", "delete");
        match specs.delete(&spec_name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
        info!(identity = %object_key(&namespace, &name), credential_spec = %spec_name, "deleted credential spec");
    }
    let patch: json_patch::Patch = serde_json::from_value(json!([
        { "op": "test", "path": format!("/metadata/finalizers/{index}"), "value": FINALIZER },
        { "op": "remove", "path": format!("/metadata/finalizers/{index}") }
    ]))
    .expect("valid JSON patch");
    ctx.metrics.api_write("WindowsTaskIdentity", "patch");
    identities_api(ctx, &namespace)
        .patch(&name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await?;
    Ok(Action::await_change())
}

/// An identity that cannot even be decoded (for example stored before a schema change) gets
/// `Ready=False, InvalidSpec`; the other identities carry on.
async fn report_undecodable(invalid: &InvalidObject, ctx: &Context) -> Result<Action, Error> {
    let (Some(namespace), Some(name)) = (
        invalid.metadata.namespace.as_deref(),
        invalid.metadata.name.as_deref(),
    ) else {
        return Ok(Action::await_change());
    };
    let message = format!(
        "the object does not match the WindowsTaskIdentity API: {}",
        invalid.error
    );
    warn!(identity = %object_key(namespace, name), %message, "undecodable identity");
    let now = Time(jiff::Timestamp::now());
    let conditions = conditions::merge(
        &[],
        &invalid_spec_conditions(message),
        invalid.metadata.generation,
        &now,
    );
    write_status(
        ctx,
        namespace,
        name,
        &WindowsTaskIdentityStatus {
            observed_generation: invalid.metadata.generation,
            conditions,
            ..Default::default()
        },
    )
    .await?;
    Ok(Action::await_change())
}

/// Writes the status only when it differs from the stored one, and records an Event for each
/// condition that changed status or reason.
async fn update_status(
    identity: &WindowsTaskIdentity,
    ctx: &Context,
    wanted: Vec<ConditionState>,
    summary: Option<WindowsTaskIdentityStatus>,
) -> Result<(), Error> {
    let previous = identity.status.clone().unwrap_or_default();
    let now = Time(jiff::Timestamp::now());
    let generation = identity.metadata.generation;
    let mut next = summary.unwrap_or_else(|| previous.clone());
    next.observed_generation = generation;
    next.conditions = conditions::merge(&previous.conditions, &wanted, generation, &now);
    next.token = previous.token.clone();
    next.pods = previous.pods.clone();
    if next == previous {
        return Ok(());
    }
    write_status(
        ctx,
        &identity.namespace().unwrap_or_default(),
        &identity.name_any(),
        &next,
    )
    .await?;
    publish_transitions(identity, ctx, &previous.conditions, &next.conditions).await;
    Ok(())
}

async fn write_status(
    ctx: &Context,
    namespace: &str,
    name: &str,
    status: &WindowsTaskIdentityStatus,
) -> Result<(), Error> {
    let body = json!({
        "apiVersion": WindowsTaskIdentity::api_version(&()),
        "kind": WindowsTaskIdentity::kind(&()),
        "status": status,
    });
    ctx.metrics.api_write("WindowsTaskIdentity", "apply-status");
    identities_api(ctx, namespace)
        .patch_status(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(body),
        )
        .await?;
    Ok(())
}

/// Conditions whose status or reason changed, as Events: Normal when they became true,
/// Warning otherwise. Event failures are logged, never fatal.
async fn publish_transitions(
    identity: &WindowsTaskIdentity,
    ctx: &Context,
    before: &[Condition],
    after: &[Condition],
) {
    let reference = identity.object_ref(&());
    for condition in after {
        let old = conditions::find(before, &condition.type_);
        if old.is_some_and(|o| o.status == condition.status && o.reason == condition.reason) {
            continue;
        }
        // Creation is announced once, by Ready, rather than once per condition.
        if old.is_none() && condition.status == "True" && condition.type_ != conditions::READY {
            continue;
        }
        let event = Event {
            type_: if condition.status == "True" {
                EventType::Normal
            } else {
                EventType::Warning
            },
            reason: condition.reason.clone(),
            note: Some(truncate(
                &format!("{}: {}", condition.type_, condition.message),
                1000,
            )),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        ctx.metrics.api_write("Event", "create");
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            warn!(error = %e, "could not record event");
        }
    }
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}
