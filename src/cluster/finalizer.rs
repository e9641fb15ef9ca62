//! The `winflow.io/cleanup` finalizer, added and removed with JSON patches that `test` the
//! view they were built from, so that a stale cache never drops a finalizer another
//! controller wrote meanwhile. A failed test re-reads the object and builds the patch again.

use std::borrow::Cow;
use std::fmt::Debug;

use kube::api::{ObjectMeta, Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::names::FINALIZER;

/// Patches tried before the last failed test is returned (and the reconcile retried with
/// backoff): each failure means someone else wrote the object in between.
const ATTEMPTS: usize = 5;

/// Adds the finalizer unless the object has it. `false` when the object is gone (deleted
/// since the cache saw it, for example with its namespace): nothing is left to reconcile.
pub async fn ensure<K>(api: &Api<K>, object: &K) -> Result<bool, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    Ok(patch_tested(api, object, add_patch).await? == Outcome::Done)
}

/// Removes the finalizer once cleanup is done. An object already gone needs no removal.
pub async fn remove<K>(api: &Api<K>, object: &K) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    patch_tested(api, object, remove_patch).await.map(|_| ())
}

/// The API server's 404: the object is gone.
pub fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.is_not_found())
}

/// Whether the object still waits for winflow's cleanup.
pub fn is_pending(object: &impl Resource) -> bool {
    object.meta().finalizers.iter().flatten().any(|f| f == FINALIZER)
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Patched, or nothing to patch.
    Done,
    /// The object does not exist (any more).
    Gone,
}

/// Sends the patch `build` makes from the object as seen (none: nothing to do), re-reading
/// the object after a failed `test` and trying again.
async fn patch_tested<K>(
    api: &Api<K>,
    object: &K,
    build: fn(&ObjectMeta) -> Option<Value>,
) -> Result<Outcome, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let name = object.name_any();
    let mut seen = Cow::Borrowed(object);
    let mut attempt = 1;
    loop {
        let Some(patch) = build(seen.meta()) else {
            return Ok(Outcome::Done);
        };
        match api.patch(&name, &PatchParams::default(), &json_patch(patch)).await {
            Ok(_) => return Ok(Outcome::Done),
            Err(e) if is_not_found(&e) => return Ok(Outcome::Gone),
            Err(e) if is_failed_test(&e) && attempt < ATTEMPTS => attempt += 1,
            Err(e) => return Err(e),
        }
        match api.get_opt(&name).await? {
            Some(fresh) => seen = Cow::Owned(fresh),
            None => return Ok(Outcome::Gone),
        }
    }
}

/// Adds the finalizer to the list seen: appended after a `test` of exactly that list; when
/// there was none, the list is created after a `test` of the resourceVersion seen (RFC 6902
/// has no portable test that a member is absent), so a list written meanwhile is never
/// replaced. `None` when the finalizer is there.
fn add_patch(meta: &ObjectMeta) -> Option<Value> {
    match &meta.finalizers {
        Some(current) if current.iter().any(|f| f == FINALIZER) => None,
        Some(current) => Some(json!([
            { "op": "test", "path": "/metadata/finalizers", "value": current },
            { "op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER }
        ])),
        None => Some(json!([
            { "op": "test", "path": "/metadata/resourceVersion", "value": meta.resource_version },
            { "op": "add", "path": "/metadata/finalizers", "value": [FINALIZER] }
        ])),
    }
}

/// Removes exactly one entry, after a `test` that it is winflow's: others' finalizers, added
/// before or after it meanwhile, are never touched (a shifted index fails the test).
/// `None` when the finalizer is not there.
fn remove_patch(meta: &ObjectMeta) -> Option<Value> {
    let index = meta.finalizers.iter().flatten().position(|f| f == FINALIZER)?;
    Some(json!([
        { "op": "test", "path": format!("/metadata/finalizers/{index}"), "value": FINALIZER },
        { "op": "remove", "path": format!("/metadata/finalizers/{index}") }
    ]))
}

fn json_patch(value: Value) -> Patch<()> {
    Patch::Json(serde_json::from_value(value).expect("valid JSON patch"))
}

/// A JSON patch whose `test` failed: the API server answers 422 Invalid (as for any patch it
/// cannot apply; a patch that is wrong for another reason fails every attempt).
fn is_failed_test(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 422)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(finalizers: Option<&[&str]>, resource_version: &str) -> ObjectMeta {
        ObjectMeta {
            finalizers: finalizers.map(|list| list.iter().map(|f| (*f).to_owned()).collect()),
            resource_version: Some(resource_version.to_owned()),
            ..Default::default()
        }
    }

    fn document(meta: &ObjectMeta) -> Value {
        json!({ "metadata": meta })
    }

    /// `patch` applied to `current` as the API server would: the finalizers after it, or `None`
    /// when a `test` failed.
    fn applied(patch: &Value, current: &ObjectMeta) -> Option<Vec<String>> {
        let patch: json_patch::Patch = serde_json::from_value(patch.clone()).unwrap();
        let mut doc = document(current);
        json_patch::patch(&mut doc, &patch.0).ok()?;
        Some(serde_json::from_value(doc["metadata"]["finalizers"].clone()).unwrap())
    }

    #[test]
    fn adding_to_no_list_tests_the_version_and_to_a_list_tests_exactly_that_list() {
        let none = add_patch(&meta(None, "7")).unwrap();
        assert_eq!(
            none[0],
            json!({"op": "test", "path": "/metadata/resourceVersion", "value": "7"})
        );
        let some = add_patch(&meta(Some(&["example.com/a"]), "7")).unwrap();
        assert_eq!(
            some[0],
            json!({"op": "test", "path": "/metadata/finalizers", "value": ["example.com/a"]})
        );
        assert_eq!(add_patch(&meta(Some(&["example.com/a", FINALIZER]), "7")), None);
    }

    #[test]
    fn an_add_built_from_a_stale_view_fails_instead_of_dropping_a_finalizer() {
        // As seen, and as stored after another controller added its own.
        let cases = [
            (meta(None, "7"), meta(Some(&["example.com/other"]), "8")),
            (
                meta(Some(&["example.com/a"]), "7"),
                meta(Some(&["example.com/a", "example.com/other"]), "8"),
            ),
        ];
        for (seen, current) in cases {
            let patch = add_patch(&seen).unwrap();
            assert_eq!(applied(&patch, &current), None, "{seen:?} then {current:?}");
            // Rebuilt from the re-read object, it keeps both.
            let rebuilt = add_patch(&current).unwrap();
            let after = applied(&rebuilt, &current).unwrap();
            assert!(after.contains(&"example.com/other".to_owned()), "{after:?}");
            assert!(after.contains(&FINALIZER.to_owned()), "{after:?}");
        }
        let fresh = meta(None, "7");
        assert_eq!(
            applied(&add_patch(&fresh).unwrap(), &fresh),
            Some(vec![FINALIZER.to_owned()])
        );
    }

    #[test]
    fn a_removal_takes_only_winflows_entry_and_fails_when_the_index_moved() {
        let seen = meta(Some(&["example.com/a", FINALIZER]), "7");
        let patch = remove_patch(&seen).unwrap();
        // Added after it: the index holds, only winflow's entry goes.
        let appended = meta(Some(&["example.com/a", FINALIZER, "example.com/b"]), "8");
        assert_eq!(
            applied(&patch, &appended),
            Some(vec!["example.com/a".to_owned(), "example.com/b".to_owned()])
        );
        // Inserted before it, or an earlier entry removed: the index moved, the test fails.
        let inserted = meta(Some(&["example.com/a", "example.com/b", FINALIZER]), "8");
        assert_eq!(applied(&patch, &inserted), None);
        let shifted = meta(Some(&[FINALIZER]), "8");
        assert_eq!(applied(&patch, &shifted), None);
        assert_eq!(remove_patch(&meta(Some(&["example.com/a"]), "7")), None);
        assert_eq!(remove_patch(&meta(None, "7")), None);
    }
}
