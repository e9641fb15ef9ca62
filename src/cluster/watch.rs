//! The controllers' watches. Each one retries on its own schedule and keeps its failures to
//! itself. kube-runtime's Controller would otherwise pause all of a controller's watches for
//! every failure of any one of them; after an API server restart every watch answers once
//! "resource version too old" before it lists again, so a controller with ten watches sat
//! idle for ten backoff periods after a 15 s outage.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;

use futures::{Stream, StreamExt};
use kube::core::DeserializeGuard;
use kube::runtime::utils::Backoff as _;
use kube::runtime::watcher;
use kube::{Api, Resource};

use super::watch_backoff::WatchBackoff;
use super::watch_health::{Watch, WatchTracker, Watcher};
use crate::metrics::Metrics;

/// The events of one watch, read by `read_by`. A failure is reported (see `WatchTracker`),
/// not passed on, and the watch is retried after its own backoff; "resource version too
/// old" is retried at once (the watcher lists again, which is how that answer is meant to be
/// handled, not a failure to wait out).
pub(crate) fn events<K>(
    api: Api<K>,
    config: watcher::Config,
    read_by: Watcher,
    metrics: &Metrics,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + use<K>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let retrying = Retrying {
        tracker: WatchTracker::new(Watch::of::<K>(read_by, api.namespace()), metrics),
        backoff: WatchBackoff::default(),
        unconfirmed_watch: false,
    };
    // Small pages: a list of thousands of objects is decoded a page at a time, and the
    // memory a page takes stays with the process after it is freed.
    let events = watcher::watcher(api, config.page_size(LIST_PAGE_SIZE)).boxed();
    futures::stream::unfold((events, retrying), |(mut events, mut retrying)| async move {
        loop {
            let event = if retrying.unconfirmed_watch {
                // Cancel-safe: the request in flight lives in the watcher stream, not here.
                match tokio::time::timeout(QUIET_WATCH_WORKS_AFTER, events.next()).await {
                    Ok(event) => event?,
                    Err(_quiet) => {
                        retrying.works();
                        continue;
                    }
                }
            } else {
                events.next().await?
            };
            match event {
                // Sent before the list request, so no sign that the watch works; the list's
                // objects or its end are.
                Ok(watcher::Event::Init) => {
                    retrying.unconfirmed_watch = false;
                    return Some((Ok(watcher::Event::Init), (events, retrying)));
                }
                Ok(event) => {
                    retrying.works();
                    return Some((Ok(event), (events, retrying)));
                }
                Err(error) if is_gone(&error) => {}
                Err(error) => retrying.failed(&error).await,
            }
        }
    })
}

/// A retried list says it works with its objects, a retried watch request with nothing: it
/// waits for changes. A watch retry quiet this long, neither failing nor delivering, works.
const QUIET_WATCH_WORKS_AFTER: Duration = Duration::from_secs(5);

/// A watch's failures and the evidence that it works again.
struct Retrying {
    tracker: WatchTracker,
    backoff: WatchBackoff,
    /// A watch request (not a list) was retried and has not failed or delivered since.
    unconfirmed_watch: bool,
}

impl Retrying {
    fn works(&mut self) {
        self.backoff.reset();
        self.tracker.succeeded();
        self.unconfirmed_watch = false;
    }

    /// Reports the failure and waits out the backoff before the watcher retries.
    async fn failed(&mut self, error: &watcher::Error) {
        let delay = self.backoff.next().unwrap_or_default();
        self.tracker.failed(error, delay);
        self.unconfirmed_watch = !matches!(error, watcher::Error::InitialListFailed(_));
        tokio::time::sleep(delay).await;
    }
}

const LIST_PAGE_SIZE: u32 = 100;

/// The objects of a watch whose `value` changed since the watch last reported them, and those
/// first reported after the initial list (created, or first seen on a relist). The initial list
/// itself yields nothing: everything a trigger would re-check is reconciled at start anyway,
/// from caches that wait for their initial list. Deletions yield nothing.
pub(crate) fn value_changes<K, V>(
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    value: impl Fn(&K) -> V + Send + 'static,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource + Send + 'static,
    V: PartialEq + Send + 'static,
{
    let mut seen: HashMap<(Option<String>, Option<String>), V> = HashMap::new();
    let mut listed = false;
    events.filter_map(move |event| {
        let key = |object: &K| (object.meta().namespace.clone(), object.meta().name.clone());
        let trigger = match event {
            Ok(watcher::Event::Apply(object) | watcher::Event::InitApply(object)) => {
                let now = value(&object);
                let changed = match seen.get(&key(&object)) {
                    Some(before) => *before != now,
                    None => listed,
                };
                seen.insert(key(&object), now);
                changed.then_some(Ok(object))
            }
            Ok(watcher::Event::Delete(object)) => {
                seen.remove(&key(&object));
                None
            }
            Ok(watcher::Event::InitDone) => {
                listed = true;
                None
            }
            Ok(watcher::Event::Init) => None,
            Err(error) => Some(Err(error)),
        };
        std::future::ready(trigger)
    })
}

/// The API server no longer has the version the watch was at (410 Gone).
fn is_gone(error: &watcher::Error) -> bool {
    matches!(error, watcher::Error::WatchError(status) if status.code == 410)
}

/// What is worth a reconcile among a resource's own events: a new spec (generation) or the
/// start of its deletion. Its status and finalizer are winflow's own writes; reconciling on
/// them would only read back what was just written (and, under pod churn, write again).
pub(crate) fn spec_or_deletion<K: Resource>(object: &K) -> Option<u64> {
    let meta = object.meta();
    let mut hasher = DefaultHasher::new();
    (meta.generation, meta.deletion_timestamp.is_some()).hash(&mut hasher);
    Some(hasher.finish())
}

/// What caches of winflow's resources keep of their metadata: neither managed fields nor
/// `kubectl apply`'s copy of the object. Nothing reads them, and together they are most of a
/// cached resource's size.
pub(crate) fn drop_unread_metadata<K: Resource>(object: &mut DeserializeGuard<K>) {
    let meta = match &mut object.0 {
        Ok(object) => object.meta_mut(),
        Err(invalid) => &mut invalid.metadata,
    };
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED_ANNOTATION);
    }
}

const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_new_generation_or_a_deletion_is_worth_a_reconcile() {
        use k8s_openapi::api::core::v1::ConfigMap;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let object = |generation: i64, status: &str, deleting: bool| ConfigMap {
            metadata: kube::api::ObjectMeta {
                generation: Some(generation),
                resource_version: Some(status.to_owned()),
                finalizers: Some(vec![status.to_owned()]),
                deletion_timestamp: deleting.then_some(Time(jiff::Timestamp::UNIX_EPOCH)),
                ..Default::default()
            },
            ..Default::default()
        };
        let key = |o: &ConfigMap| spec_or_deletion(o).unwrap();
        assert_eq!(
            key(&object(1, "a", false)),
            key(&object(1, "b", false)),
            "status or finalizer only"
        );
        assert_ne!(key(&object(1, "a", false)), key(&object(2, "a", false)), "new spec");
        assert_ne!(key(&object(1, "a", false)), key(&object(1, "a", true)), "deletion");
    }

    #[tokio::test]
    async fn value_changes_are_changes_and_objects_new_after_the_initial_list() {
        use k8s_openapi::api::core::v1::Namespace;
        use watcher::Event;
        let namespace = |name: &str, enforced: bool| Namespace {
            metadata: kube::api::ObjectMeta {
                name: Some(name.to_owned()),
                labels: enforced.then(|| [("winflow.io/enforce".to_owned(), "true".to_owned())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let events = vec![
            Ok(Event::Init),
            Ok(Event::InitApply(namespace("airflow", false))),
            Ok(Event::InitApply(namespace("etl", true))),
            Ok(Event::InitDone),
            // Other changes of a namespace are no news.
            Ok(Event::Apply(namespace("airflow", false))),
            Ok(Event::Apply(namespace("airflow", true))),
            Ok(Event::Apply(namespace("airflow", true))),
            Ok(Event::Apply(namespace("reports", false))),
            Ok(Event::Delete(namespace("etl", true))),
            // A relist reports what changed meanwhile, and what it had not seen.
            Ok(Event::Init),
            Ok(Event::InitApply(namespace("airflow", false))),
            Ok(Event::InitApply(namespace("reports", false))),
            Ok(Event::InitApply(namespace("etl", true))),
            Ok(Event::InitDone),
        ];
        let enforced = |ns: &Namespace| {
            ns.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("winflow.io/enforce").cloned())
        };
        let triggers: Vec<(String, bool)> = value_changes(futures::stream::iter(events), enforced)
            .map(|ns| {
                let ns = ns.unwrap();
                let on = enforced(&ns).is_some();
                (ns.metadata.name.unwrap(), on)
            })
            .collect()
            .await;
        let expected = [("airflow", true), ("reports", false), ("airflow", false), ("etl", true)];
        assert_eq!(triggers, expected.map(|(n, on)| (n.to_owned(), on)));
    }

    #[test]
    fn cached_identities_drop_managed_fields_and_the_last_applied_copy() {
        let object = serde_json::json!({
            "apiVersion": "winflow.io/v1alpha1", "kind": "WindowsTaskIdentity",
            "metadata": {"name": "payroll", "namespace": "airflow",
                "annotations": {"team": "finance", LAST_APPLIED_ANNOTATION: "{...}"},
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}]},
            "spec": {}
        });
        let mut guard: DeserializeGuard<crate::api::WindowsTaskIdentity> = serde_json::from_value(object).unwrap();
        drop_unread_metadata(&mut guard);
        let meta = match &guard.0 {
            Ok(identity) => &identity.metadata,
            Err(invalid) => &invalid.metadata,
        };
        assert!(meta.managed_fields.is_none());
        let annotations = meta.annotations.as_ref().unwrap();
        assert_eq!(annotations.keys().collect::<Vec<_>>(), ["team"]);
    }
}
