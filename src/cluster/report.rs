//! Reporting back on a resource: its status (written only when it changed) and Events for
//! condition transitions.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::warn;

use crate::api::conditions::{self, ConditionState};
use crate::names::FIELD_MANAGER;

/// The conditions after applying `wanted` to `previous` at this moment.
pub(crate) fn next_conditions(
    previous: &[Condition],
    wanted: &[ConditionState],
    generation: Option<i64>,
) -> Vec<Condition> {
    conditions::merge(previous, wanted, generation, &Time(jiff::Timestamp::now()))
}

/// Writes the status subresource by server-side apply with winflow's field manager.
pub(crate) async fn write_status<K>(api: &Api<K>, name: &str, status: &impl Serialize) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let body = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(body))
        .await?;
    Ok(())
}

/// Conditions whose status or reason changed, as Events: Normal when they became true,
/// Warning otherwise. A new resource is announced once, by `Ready`, rather than once per
/// condition; `Enforced` describes the namespace rather than the resource, so its first value
/// is no news either (only its changes are). Event failures are logged, never fatal.
pub(crate) async fn publish_transitions(
    recorder: &Recorder,
    reference: &ObjectReference,
    before: &[Condition],
    after: &[Condition],
) {
    for condition in after {
        let old = conditions::find(before, &condition.type_);
        if old.is_some_and(|o| o.status == condition.status && o.reason == condition.reason) {
            continue;
        }
        if old.is_none()
            && ((condition.status == "True" && condition.type_ != conditions::READY)
                || condition.type_ == conditions::ENFORCED)
        {
            continue;
        }
        let event = Event {
            type_: if condition.status == "True" {
                EventType::Normal
            } else {
                EventType::Warning
            },
            reason: condition.reason.clone(),
            note: Some(crate::text::truncate(
                &format!("{}: {}", condition.type_, condition.message),
                1000,
            )),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, reference).await {
            warn!(error = %e, "could not record event");
        }
    }
}
