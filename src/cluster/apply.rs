//! Writing children: never touch what winflow does not manage, and write nothing when the
//! object already holds what winflow wants (steady state costs zero API writes).

use std::fmt::Debug;

use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::child_versions::{self, ChildVersions};
use crate::build::carries_labels_of;
use crate::names::FIELD_MANAGER;

/// What happened to one child.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChildState {
    /// It already held what winflow wants; nothing was written.
    UpToDate,
    /// Created or repaired by server-side apply.
    Applied,
    /// An object of that name exists and winflow does not manage it; left untouched.
    Conflict(String),
    /// The API server refused the object (4xx): a problem no retry fixes by itself.
    Rejected(String),
    /// Something the cluster must provide is missing: the kind is not served (its
    /// CustomResourceDefinition is not installed), or winflow's own RBAC does not allow the
    /// write (its ClusterRole lacks a rule); the message says what to install or grant.
    PrerequisiteMissing(String),
}

/// A child as the controller reports it.
#[derive(Clone, Debug)]
pub struct ChildReport {
    pub kind: String,
    pub name: String,
    pub state: ChildState,
}

/// Writes one child unless it is up to date or not winflow's (an existing object is winflow's
/// when it carries every label winflow puts on the child). Transient API errors are returned
/// for a retry; refusals become `Rejected`. With `versions`, a child known to hold `desired`
/// is not even read.
pub(crate) async fn ensure_child<K>(
    api: &Api<K>,
    desired: &K,
    versions: Option<&ChildVersions>,
) -> Result<ChildReport, kube::Error>
where
    K: Resource<DynamicType = ()> + Serialize + DeserializeOwned + Clone + Debug,
{
    let kind = K::kind(&()).into_owned();
    let name = desired.name_any();
    let report = |state| ChildReport {
        kind: kind.clone(),
        name: name.clone(),
        state,
    };
    let desired_json = to_json(desired);
    let digest = versions
        .map(|_| child_versions::digest(&desired_json))
        .unwrap_or_default();
    let confirm = |version: Option<&str>| {
        if let Some(versions) = versions {
            versions.confirm(desired, digest, version);
        }
    };
    if versions.is_some_and(|v| v.holds(desired, digest)) {
        return Ok(report(ChildState::UpToDate));
    }
    // A kind that is not served answers 404 without a Status ("404 page not found"), which
    // get_opt does not take for a missing object.
    let existing = match api.get_opt(&name).await {
        Err(kube::Error::Api(status)) if status.code == 404 => {
            return Ok(report(ChildState::PrerequisiteMissing(not_served_message::<K>(&name))));
        }
        Err(kube::Error::Api(status)) if status.code == 403 => {
            return Ok(report(ChildState::PrerequisiteMissing(forbidden_message(
                "read",
                &kind,
                &name,
                &status.message,
            ))));
        }
        found => found?,
    };
    if let Some(existing) = existing {
        if !carries_labels_of(existing.meta(), desired.meta()) {
            return Ok(report(ChildState::Conflict(format!(
                "{kind} {name} exists and is not managed by winflow for this resource; it was left untouched (delete or rename it to let winflow create its own)"
            ))));
        }
        if is_subset(&desired_json, &to_json(&existing)) {
            confirm(existing.meta().resource_version.as_deref());
            return Ok(report(ChildState::UpToDate));
        }
    }
    // Forced: winflow owns these fields, so a hand edit of them is drift to repair.
    let params = PatchParams::apply(FIELD_MANAGER).force();
    if let Some(versions) = versions {
        versions.start_write(desired);
    }
    let result = api.patch(&name, &params, &Patch::Apply(desired)).await;
    if let Some(versions) = versions {
        let applied_version = result.as_ref().ok().and_then(|o| o.meta().resource_version.as_deref());
        versions.finish_write(desired, digest, applied_version);
    }
    let state = match result {
        Ok(_) => ChildState::Applied,
        Err(kube::Error::Api(status)) if status.code == 404 => {
            ChildState::PrerequisiteMissing(not_served_message::<K>(&name))
        }
        Err(kube::Error::Api(status)) if status.code == 403 => {
            ChildState::PrerequisiteMissing(forbidden_message("apply", &kind, &name, &status.message))
        }
        Err(kube::Error::Api(status)) if is_permanent(status.code) => {
            ChildState::Rejected(format!("the API server refused {kind} {name}: {}", status.message))
        }
        Err(e) => return Err(e),
    };
    Ok(report(state))
}

/// Deletes a child if it is winflow's (cluster-scoped ones, which garbage collection cannot
/// reach, and token Secrets an identity no longer uses),
/// by the same ownership test as `ensure_child`. Returns whether winflow deleted it.
pub(crate) async fn delete_managed_child<K>(api: &Api<K>, desired: &K) -> Result<bool, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let name = desired.name_any();
    let existing = match api.get_opt(&name).await {
        // The kind is not served (its CRD is gone): no object of it is left to delete.
        Err(kube::Error::Api(status)) if status.code == 404 => return Ok(false),
        found => found?,
    };
    let Some(existing) = existing else {
        return Ok(false);
    };
    if !carries_labels_of(existing.meta(), desired.meta()) {
        return Ok(false);
    }
    match api.delete(&name, &kube::api::DeleteParams::default()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(false),
        Err(e) => Err(e),
    }
}

/// What to install when the API server does not serve `K`: its CustomResourceDefinition,
/// named as `kubectl get crd` shows it.
fn not_served_message<K: Resource<DynamicType = ()>>(name: &str) -> String {
    let kind = K::kind(&());
    let crd = format!("{}.{}", K::plural(&()), K::group(&()));
    format!(
        "the API server does not serve {kind}, so {name} cannot be created: install the CustomResourceDefinition {crd} (crds/{crd}.yaml, or the chart with gmsa.installCRD=true for the GMSACredentialSpec one); winflow creates {name} once it is served"
    )
}

/// What to grant when winflow's own RBAC refuses a child: the rule its ClusterRole lacks (or,
/// for a Role that grants `use`, the permission RBAC escalation prevention wants it to hold).
fn forbidden_message(verb: &str, kind: &str, name: &str, refusal: &str) -> String {
    format!(
        "winflow may not {verb} {kind} {name}: {refusal}; winflow's ClusterRole lacks what this needs: grant it as deploy/rbac.yaml (or the Helm chart) does, and winflow creates {name} by itself"
    )
}

/// 4xx answers other than conflicts and throttling do not go away by retrying.
fn is_permanent(code: u16) -> bool {
    (400..500).contains(&code) && code != 409 && code != 429
}

fn to_json<T: Serialize>(object: &T) -> Value {
    serde_json::to_value(object).expect("Kubernetes objects serialize to JSON")
}

/// Whether `existing` holds everything in `desired`. Maps may hold more (fields set by other
/// managers or defaulted by the server), so an entry winflow no longer sets is noticed only
/// through the spec-hash annotation every child carries, whose value then differs; lists
/// must match element by element, so a removed entry is noticed. Empty maps, lists and
/// strings and `false` count as absent, as the API server drops them (Go's `omitempty`), for
/// example a PersistentVolume's empty storage class.
pub(crate) fn is_subset(desired: &Value, existing: &Value) -> bool {
    match (desired, existing) {
        (Value::Object(want), Value::Object(have)) => want.iter().all(|(key, value)| match have.get(key) {
            Some(found) => is_subset(value, found),
            None => is_empty(value),
        }),
        (Value::Array(want), Value::Array(have)) => {
            want.len() == have.len() && want.iter().zip(have).all(|(w, h)| is_subset(w, h))
        }
        (want, Value::Null) => is_empty(want),
        (want, have) => want == have,
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null | Value::Bool(false) => true,
        Value::String(text) => text.is_empty(),
        Value::Object(map) => map.is_empty(),
        Value::Array(list) => list.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::with_spec_hash;
    use serde_json::json;

    #[test]
    fn extra_fields_on_the_server_are_fine() {
        let desired = json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "data": {"k": "v"}});
        let existing =
            json!({"metadata": {"name": "a", "uid": "u", "labels": {"x": "1", "y": "2"}}, "data": {"k": "v"}});
        assert!(is_subset(&desired, &existing));
    }

    #[test]
    fn changed_or_missing_values_are_drift() {
        let desired = json!({"data": {"k": "v"}});
        assert!(!is_subset(&desired, &json!({"data": {"k": "edited"}})));
        assert!(!is_subset(&desired, &json!({"data": {}})));
        assert!(!is_subset(&desired, &json!({})));
    }

    #[test]
    fn lists_compare_element_by_element() {
        let desired = json!({"rules": [{"verbs": ["use"]}]});
        assert!(is_subset(&desired, &json!({"rules": [{"verbs": ["use"], "extra": 1}]})));
        assert!(!is_subset(
            &desired,
            &json!({"rules": [{"verbs": ["use"]}, {"verbs": ["get"]}]})
        ));
        assert!(!is_subset(&desired, &json!({"rules": [{"verbs": ["use", "get"]}]})));
    }

    #[test]
    fn empty_collections_count_as_absent() {
        assert!(is_subset(
            &json!({"a": {}, "b": [], "c": null, "d": "", "e": false}),
            &json!({})
        ));
        assert!(!is_subset(&json!({"a": 0}), &json!({})));
        assert!(!is_subset(&json!({"a": true}), &json!({})));
        assert!(!is_subset(&json!({"a": ""}), &json!({"a": "x"})));
    }

    #[test]
    fn an_entry_winflow_no_longer_sets_is_drift_through_the_spec_hash() {
        use k8s_openapi::api::core::v1::ServiceAccount;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
        let account = |annotations: &[(&str, &str)]| ServiceAccount {
            metadata: ObjectMeta {
                name: Some("airflow-worker".into()),
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            ..ServiceAccount::default()
        };
        let client_id = ("azure.workload.identity/client-id", "c0ffee");
        let before = account(&[("team", "finance"), client_id]);
        let after = account(&[("team", "finance")]);
        assert!(is_subset(&to_json(&after), &to_json(&before)), "a subset by itself");
        let (before, after) = (with_spec_hash(before), with_spec_hash(after));
        assert!(!is_subset(&to_json(&after), &to_json(&before)));
        assert!(is_subset(
            &to_json(&after),
            &to_json(&with_spec_hash(account(&[("team", "finance")])))
        ));
    }

    #[test]
    fn a_refusal_by_rbac_says_what_to_grant() {
        let message = forbidden_message(
            "apply",
            "Role",
            "winflow-reports-gmsa",
            "attempting to grant RBAC permissions not currently held",
        );
        assert!(
            message.starts_with("winflow may not apply Role winflow-reports-gmsa: attempting to grant")
                && message.contains("grant it as deploy/rbac.yaml"),
            "{message}"
        );
    }

    #[test]
    fn a_kind_not_served_names_the_crd_to_install() {
        let missing = not_served_message::<crate::api::GMSACredentialSpec>("airflow.reports");
        assert!(
            missing.contains("does not serve GMSACredentialSpec")
                && missing.contains("install the CustomResourceDefinition gmsacredentialspecs.windows.k8s.io")
                && missing.contains("crds/gmsacredentialspecs.windows.k8s.io.yaml"),
            "{missing}"
        );
    }

    #[test]
    fn permanent_errors() {
        assert!(is_permanent(403));
        assert!(is_permanent(422));
        assert!(!is_permanent(409));
        assert!(!is_permanent(429));
        assert!(!is_permanent(500));
    }
}
