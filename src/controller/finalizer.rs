//! The `winflow.io/cleanup` finalizer, added and removed with JSON patches whose `test`
//! keeps finalizers that others write concurrently.

use std::fmt::Debug;

use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::metrics::Metrics;
use crate::names::FINALIZER;

fn json_patch(value: serde_json::Value) -> Patch<()> {
    Patch::Json(serde_json::from_value(value).expect("valid JSON patch"))
}

/// Adds the finalizer unless the object has it. `false` when the object is gone (deleted
/// since the cache saw it, for example with its namespace): nothing is left to reconcile.
pub async fn ensure<K>(api: &Api<K>, object: &K, metrics: &Metrics) -> Result<bool, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    if object.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(true);
    }
    let patch = match object.meta().finalizers.as_ref() {
        None => json!([{ "op": "add", "path": "/metadata/finalizers", "value": [FINALIZER] }]),
        Some(current) => json!([
            { "op": "test", "path": "/metadata/finalizers", "value": current },
            { "op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER }
        ]),
    };
    metrics.api_write(&K::kind(&()), "patch");
    match api
        .patch(&object.name_any(), &PatchParams::default(), &json_patch(patch))
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The API server's 404: the object is gone.
pub fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.is_not_found())
}

/// Whether the object still waits for winflow's cleanup.
pub fn is_pending(object: &impl Resource) -> bool {
    object.meta().finalizers.iter().flatten().any(|f| f == FINALIZER)
}

/// Removes the finalizer once cleanup is done. An object already gone needs no removal.
pub async fn remove<K>(api: &Api<K>, object: &K, metrics: &Metrics) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let Some(index) = object.finalizers().iter().position(|f| f == FINALIZER) else {
        return Ok(());
    };
    let patch = json!([
        { "op": "test", "path": format!("/metadata/finalizers/{index}"), "value": FINALIZER },
        { "op": "remove", "path": format!("/metadata/finalizers/{index}") }
    ]);
    metrics.api_write(&K::kind(&()), "patch");
    match api
        .patch(&object.name_any(), &PatchParams::default(), &json_patch(patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(e),
    }
}
