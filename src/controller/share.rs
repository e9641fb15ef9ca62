//! The WindowsShare controller: a static PersistentVolume for the SMB CSI driver and a claim
//! bound to it; the credentials Secret is checked (and watched) but never read into status.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Secret};
use kube::core::DeserializeGuard;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use tracing::{info, warn};

use super::{Context, Error};
use crate::api::conditions::{self, ConditionReason, ConditionState};
use crate::api::share::{WindowsShare, WindowsShareStatus};
use crate::build::{self, with_spec_hash};
use crate::cluster::apply::{ChildReport, ChildState, delete_managed_child, ensure_child};
use crate::cluster::watch_health::Watcher;
use crate::cluster::{finalizer, report, scoped, watch as watches};
use crate::names::{self, MANAGED_BY_LABEL, MANAGED_BY_VALUE};
use crate::validate;

const CONTROLLER: &str = "share";

type Guarded = DeserializeGuard<WindowsShare>;

/// Runs the controller until `shutdown` completes.
pub async fn run(
    ctx: Arc<Context>,
    readiness: crate::admin::Readiness,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let namespace = ctx.config.namespace.clone();
    let managed = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"));
    let (store, store_writer) = reflector::store();
    let share_events = reflector::reflector(
        store_writer,
        watches::events(
            scoped::<Guarded>(client.clone(), namespace.as_deref()),
            watcher::Config::default().any_semantic(),
            Watcher::Share,
            &ctx.metrics,
        ),
    );
    let share_changes = share_events
        .applied_objects()
        .predicate_filter(watches::spec_or_deletion, kube::runtime::PredicateConfig::default());
    let controller = Controller::for_stream(share_changes, store.clone());
    tokio::spawn(crate::cluster::report_ready_when_synced(store.clone(), readiness));
    // Secrets are watched as metadata only: their data never enters the operator's memory
    // through the watch. A Secret that appears or changes re-checks the shares naming it.
    let secrets = watches::events(
        scoped::<PartialObjectMeta<Secret>>(client.clone(), namespace.as_deref()),
        watcher::Config::default(),
        Watcher::Share,
        &ctx.metrics,
    )
    .touched_objects();
    let volumes = watches::events(
        Api::<PersistentVolume>::all(client.clone()),
        managed.clone(),
        Watcher::Share,
        &ctx.metrics,
    );
    controller
        .owns_stream(
            watches::events(
                scoped::<PersistentVolumeClaim>(client.clone(), namespace.as_deref()),
                managed,
                Watcher::Share,
                &ctx.metrics,
            )
            .touched_objects(),
        )
        .watches_stream(volumes.touched_objects(), |volume| {
            let (namespace, name) = names::share_of_persistent_volume(volume.metadata.name.as_deref()?)?;
            Some(ObjectRef::<Guarded>::new(name).within(namespace))
        })
        .watches_stream(secrets, move |secret| {
            let namespace = secret.metadata.namespace.clone();
            let name = secret.metadata.name.clone();
            store
                .state()
                .into_iter()
                .filter_map(|guarded| guarded.0.as_ref().ok().cloned())
                .filter(move |share| {
                    share.metadata.namespace == namespace
                        && Some(&share.spec.credentials_secret_ref.name) == name.as_ref()
                })
                .map(|share| {
                    ObjectRef::<Guarded>::new(&share.name_any()).within(&share.namespace().unwrap_or_default())
                })
                .collect::<Vec<_>>()
        })
        .with_config(kube::runtime::controller::Config::default().concurrency(ctx.config.concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "share controller event");
            }
        })
        .await;
}

async fn reconcile(guard: Arc<Guarded>, ctx: Arc<Context>) -> Result<Action, Error> {
    let work = async {
        match &guard.0 {
            Ok(share) if share.metadata.deletion_timestamp.is_some() => cleanup(share, &ctx).await,
            Ok(share) => reconcile_share(share, &ctx).await,
            Err(invalid) => {
                let key = super::guarded_key(&guard);
                warn!(share = %key, error = %invalid.error, "undecodable share");
                Ok(Action::await_change())
            }
        }
    };
    super::measured(CONTROLLER, &guard, &ctx, work).await
}

fn error_policy(guard: Arc<Guarded>, error: &Error, ctx: Arc<Context>) -> Action {
    super::retry_with_backoff(CONTROLLER, &guard, error, &ctx)
}

fn shares_api(ctx: &Context, namespace: &str) -> Api<WindowsShare> {
    Api::namespaced(ctx.client.clone(), namespace)
}

async fn reconcile_share(share: &WindowsShare, ctx: &Context) -> Result<Action, Error> {
    let namespace = share.namespace().unwrap_or_default();
    let name = share.name_any();
    if !finalizer::ensure(&shares_api(ctx, &namespace), share)
        .await
        .map_err(Error::Finalizer)?
    {
        return Ok(Action::await_change());
    }
    if let Err(violations) = validate::check_share(&namespace, &name, &share.spec) {
        let message = validate::describe(&violations);
        warn!(share = %format!("{namespace}/{name}"), %message, "invalid spec");
        let wanted = ConditionState::new(conditions::READY, false, ConditionReason::InvalidSpec, message);
        update_status(share, ctx, wanted, None).await?;
        return Ok(Action::await_change());
    }

    let volume = with_spec_hash(build::persistent_volume_for(share));
    let volume = ensure_child(&Api::all(ctx.client.clone()), &volume, None)
        .await
        .map_err(Error::applying(&volume))?;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &namespace);
    let desired = keeping_requested_size(&claims, build::persistent_volume_claim_for(share)).await?;
    let desired = with_spec_hash(desired);
    let claim = ensure_child(&claims, &desired, None)
        .await
        .map_err(Error::applying(&desired))?;
    for report in [&volume, &claim] {
        if report.state == ChildState::Applied {
            info!(share = %format!("{namespace}/{name}"), kind = %report.kind, child = %report.name, "applied");
        }
    }
    let secret = check_secret(ctx, &namespace, &share.spec.credentials_secret_ref.name).await?;
    let bound = match &claim.state {
        ChildState::UpToDate | ChildState::Applied => {
            claims
                .get_opt(&claim.name)
                .await
                .map_err(Error::reading(format_args!("PersistentVolumeClaim {}", claim.name)))?
                .and_then(|c| c.status?.phase)
                .as_deref()
                == Some("Bound")
        }
        _ => false,
    };
    let wanted = share_condition(&volume, &claim, &secret, bound);
    let ready = wanted.status;
    let summary = WindowsShareStatus {
        source: Some(build::share_source(&share.spec)),
        persistent_volume_name: Some(volume.name.clone()),
        persistent_volume_claim_name: Some(claim.name.clone()),
        ..WindowsShareStatus::default()
    };
    update_status(share, ctx, wanted, Some(summary)).await?;
    Ok(Action::requeue(if ready {
        ctx.config.resync_period
    } else {
        ctx.config.retry_period
    }))
}

/// The API server refuses to resize a claim of a static volume ("only dynamically provisioned
/// pvc can be resized"), so an existing claim keeps the size it asked for; a new `capacity`
/// reaches the PersistentVolume, where it is nominal anyway for SMB.
async fn keeping_requested_size(
    claims: &Api<PersistentVolumeClaim>,
    mut desired: PersistentVolumeClaim,
) -> Result<PersistentVolumeClaim, Error> {
    let name = desired.metadata.name.clone().unwrap_or_default();
    let existing = claims
        .get_opt(&name)
        .await
        .map_err(Error::reading(format_args!("PersistentVolumeClaim {name}")))?
        .and_then(|claim| claim.spec?.resources?.requests?.get("storage").cloned());
    if let (Some(size), Some(spec)) = (existing, desired.spec.as_mut())
        && let Some(requests) = spec.resources.as_mut().and_then(|r| r.requests.as_mut())
    {
        requests.insert("storage".to_owned(), size);
    }
    Ok(desired)
}

/// What the credentials Secret holds, by key presence only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretCheck {
    Missing,
    LacksKeys(Vec<&'static str>),
    /// Complete; `false` when it names no `domain`.
    Complete {
        has_domain: bool,
    },
}

async fn check_secret(ctx: &Context, namespace: &str, name: &str) -> Result<(String, SecretCheck), Error> {
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(Error::reading(format_args!("Secret {name}")))?;
    Ok((name.to_owned(), secret_check(secret.as_ref())))
}

fn has_key(secret: &Secret, key: &str) -> bool {
    let in_data = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .is_some_and(|v| !v.0.is_empty());
    let in_string_data = secret
        .string_data
        .as_ref()
        .and_then(|d| d.get(key))
        .is_some_and(|v| !v.is_empty());
    in_data || in_string_data
}

/// Which required keys the Secret has; values are never looked at beyond being non-empty.
pub fn secret_check(secret: Option<&Secret>) -> SecretCheck {
    let Some(secret) = secret else {
        return SecretCheck::Missing;
    };
    let lacking: Vec<&'static str> = ["username", "password"]
        .into_iter()
        .filter(|key| !has_key(secret, key))
        .collect();
    if lacking.is_empty() {
        SecretCheck::Complete {
            has_domain: has_key(secret, "domain"),
        }
    } else {
        SecretCheck::LacksKeys(lacking)
    }
}

/// The share's `Ready` condition. Pure.
pub fn share_condition(
    volume: &ChildReport,
    claim: &ChildReport,
    secret: &(String, SecretCheck),
    bound: bool,
) -> ConditionState {
    use crate::api::conditions::READY;
    for child in [volume, claim] {
        match &child.state {
            ChildState::Conflict(message) => {
                return ConditionState::new(READY, false, ConditionReason::Conflict, message.clone());
            }
            ChildState::Rejected(message) => {
                return ConditionState::new(READY, false, ConditionReason::ApiError, message.clone());
            }
            ChildState::PrerequisiteMissing(message) => {
                return ConditionState::new(READY, false, ConditionReason::PrerequisiteMissing, message.clone());
            }
            ChildState::UpToDate | ChildState::Applied => {}
        }
    }
    let (secret_name, check) = secret;
    let has_domain = match check {
        SecretCheck::Missing => {
            return ConditionState::new(
                READY,
                false,
                ConditionReason::SecretMissing,
                format!("Secret {secret_name} does not exist; create it with keys username, password and domain"),
            );
        }
        SecretCheck::LacksKeys(keys) => {
            return ConditionState::new(
                READY,
                false,
                ConditionReason::SecretMissing,
                format!(
                    "Secret {secret_name} lacks the key(s) {}; it needs username, password and, for a domain account, domain",
                    keys.join(", ")
                ),
            );
        }
        SecretCheck::Complete { has_domain } => *has_domain,
    };
    if !bound {
        return ConditionState::new(
            READY,
            false,
            ConditionReason::Pending,
            format!(
                "waiting for PersistentVolumeClaim {} to bind to PersistentVolume {}",
                claim.name, volume.name
            ),
        );
    }
    let mut message = format!(
        "PersistentVolumeClaim {} is bound to PersistentVolume {}",
        claim.name, volume.name
    );
    if !has_domain {
        message.push_str(&format!(
            "; note: Secret {secret_name} has no domain, so the SMB driver logs on with a local account of the file server; add key domain (for example CORP) for a domain account"
        ));
    }
    ConditionState::new(READY, true, ConditionReason::Bound, message)
}

async fn update_status(
    share: &WindowsShare,
    ctx: &Context,
    wanted: ConditionState,
    summary: Option<WindowsShareStatus>,
) -> Result<(), Error> {
    let previous = share.status.clone().unwrap_or_default();
    let generation = share.metadata.generation;
    let mut next = summary.unwrap_or_else(|| previous.clone());
    next.observed_generation = generation;
    next.conditions = report::next_conditions(&previous.conditions, &[wanted], generation);
    if next == previous {
        return Ok(());
    }
    let api = shares_api(ctx, &share.namespace().unwrap_or_default());
    report::write_status(&api, &share.name_any(), &next)
        .await
        .map_err(Error::Status)?;
    report::publish_transitions(
        &ctx.recorder,
        &share.object_ref(&()),
        &previous.conditions,
        &next.conditions,
    )
    .await;
    Ok(())
}

/// Removes the PersistentVolume (cluster scoped); the claim goes with its owner reference.
/// With reclaim policy `Retain` no data on the server is touched.
async fn cleanup(share: &WindowsShare, ctx: &Context) -> Result<Action, Error> {
    if !finalizer::is_pending(share) {
        return Ok(Action::await_change());
    }
    let namespace = share.namespace().unwrap_or_default();
    let name = share.name_any();
    let volume = build::persistent_volume_for(share);
    if delete_managed_child(&Api::all(ctx.client.clone()), &volume)
        .await
        .map_err(Error::deleting(&volume))?
    {
        let volume_name = volume.metadata.name.unwrap_or_default();
        info!(
            share = %format!("{namespace}/{name}"),
            persistent_volume = %volume_name,
            source = %build::share_source(&share.spec),
            "deleted PersistentVolume; the data on the share was retained (reclaim policy Retain)"
        );
    }
    finalizer::remove(&shares_api(ctx, &namespace), share)
        .await
        .map_err(Error::Finalizer)?;
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use std::collections::BTreeMap;

    fn ok(kind: &str) -> ChildReport {
        ChildReport {
            kind: kind.into(),
            name: format!("{kind}-name"),
            state: ChildState::UpToDate,
        }
    }

    fn secret(keys: &[&str]) -> Secret {
        Secret {
            data: Some(
                keys.iter()
                    .map(|k| (k.to_string(), ByteString(b"x".to_vec())))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn secret_keys() {
        assert_eq!(secret_check(None), SecretCheck::Missing);
        assert_eq!(
            secret_check(Some(&secret(&["username"]))),
            SecretCheck::LacksKeys(vec!["password"])
        );
        assert_eq!(
            secret_check(Some(&secret(&["username", "password"]))),
            SecretCheck::Complete { has_domain: false }
        );
        assert_eq!(
            secret_check(Some(&secret(&["username", "password", "domain"]))),
            SecretCheck::Complete { has_domain: true }
        );
    }

    #[test]
    fn conditions_in_order_of_what_blocks() {
        let pv = ok("PersistentVolume");
        let pvc = ok("PersistentVolumeClaim");
        let missing = ("smb".to_owned(), SecretCheck::Missing);
        let c = share_condition(&pv, &pvc, &missing, true);
        assert_eq!((c.status, c.reason), (false, ConditionReason::SecretMissing.as_str()));
        assert!(c.message.contains("Secret smb does not exist"));
        let complete = ("smb".to_owned(), SecretCheck::Complete { has_domain: true });
        let c = share_condition(&pv, &pvc, &complete, false);
        assert_eq!((c.status, c.reason), (false, ConditionReason::Pending.as_str()));
        let c = share_condition(&pv, &pvc, &complete, true);
        assert_eq!((c.status, c.reason), (true, ConditionReason::Bound.as_str()));
        assert!(!c.message.contains("no domain"));
        let no_domain = ("smb".to_owned(), SecretCheck::Complete { has_domain: false });
        assert!(
            share_condition(&pv, &pvc, &no_domain, true)
                .message
                .contains("has no domain")
        );
        let conflict = ChildReport {
            state: ChildState::Conflict("taken".into()),
            ..ok("PersistentVolume")
        };
        assert_eq!(
            share_condition(&conflict, &pvc, &complete, true).reason,
            ConditionReason::Conflict.as_str()
        );
    }
}
