//! The webhook's caches of identities and shares: one watch each into a [`ResourceIndex`].
//! Every replica has its own, so every replica can decide. Reviews read under a short lock
//! (never held across an await) and take `Arc`s out, so no review copies an identity.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use futures::StreamExt;
use kube::core::DeserializeGuard;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use super::decide::{Protected, ResourceView};
use super::resource_index::{Indexed, NamespaceVersion, ResourceIndex, Term};
use crate::api::creators::CreatorAccounts;
use crate::api::{WindowsShare, WindowsTaskIdentity};
use crate::cluster::watch_health::Watcher;
use crate::metrics::Metrics;
use crate::names::account_key;

/// One kind's index and whether its first list is in.
struct Cached<K> {
    index: Arc<RwLock<ResourceIndex<K>>>,
    synced: watch::Receiver<bool>,
}

impl<K> Clone for Cached<K> {
    fn clone(&self) -> Self {
        Self {
            index: Arc::clone(&self.index),
            synced: self.synced.clone(),
        }
    }
}

impl<K> Cached<K> {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, ResourceIndex<K>> {
        // A panic while applying an event leaves the index as it was before that event.
        self.index.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether the first list is in (`false` when the watch is gone).
    async fn synced(&self) -> bool {
        self.synced.clone().wait_for(|synced| *synced).await.is_ok()
    }
}

/// A watch of `K` (in `namespace`, or all) into an index, and the task that keeps it filled.
fn cached<K>(client: Client, namespace: Option<&str>, metrics: &Metrics) -> Cached<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Indexed
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let api: Api<DeserializeGuard<K>> = match namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    let index = Arc::new(RwLock::new(ResourceIndex::default()));
    let (synced_tx, synced) = watch::channel(false);
    let events = crate::cluster::watch::events(api, watcher::Config::default(), Watcher::Webhook, metrics)
        .modify(crate::cluster::watch::drop_unread_metadata);
    let writer = Arc::clone(&index);
    tokio::spawn(events.for_each(move |event| {
        if let Ok(event) = event {
            let complete = matches!(event, watcher::Event::InitDone);
            writer
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .apply(event);
            if complete {
                synced_tx.send_replace(true);
            }
        }
        std::future::ready(())
    }));
    Cached { index, synced }
}

/// A namespace's `Protected` and the versions of its identities and shares it was built from.
type ProtectedMemo = HashMap<String, ((NamespaceVersion, NamespaceVersion), Arc<Protected>)>;

/// winflow's resources as watches keep them.
#[derive(Clone)]
pub struct ResourceCache {
    identities: Cached<WindowsTaskIdentity>,
    shares: Cached<WindowsShare>,
    protected: Arc<Mutex<ProtectedMemo>>,
}

impl ResourceCache {
    /// Starts watching identities and shares (in `namespace`, or all).
    pub fn start(client: Client, namespace: Option<&str>, metrics: &Metrics) -> Self {
        Self {
            identities: cached(client.clone(), namespace, metrics),
            shares: cached(client, namespace, metrics),
            protected: Arc::default(),
        }
    }

    /// Whether both caches hold their initial list (`false` when a watch is gone).
    pub async fn synced(&self) -> bool {
        self.identities.synced().await && self.shares.synced().await
    }
}

impl ResourceView for ResourceCache {
    fn identity(&self, namespace: &str, name: &str) -> Option<Arc<WindowsTaskIdentity>> {
        self.identities.read().get(namespace, name)
    }

    fn each_identity(&self, namespace: Option<&str>, visit: &mut dyn FnMut(&WindowsTaskIdentity)) {
        // Taken out first: the visitor runs without the lock.
        let identities = match namespace {
            Some(namespace) => self.identities.read().in_namespace(namespace),
            None => self.identities.read().all(),
        };
        for identity in identities {
            visit(&identity);
        }
    }

    fn each_share(&self, namespace: &str, visit: &mut dyn FnMut(&WindowsShare)) {
        let shares = self.shares.read().in_namespace(namespace);
        for share in shares {
            visit(&share);
        }
    }

    fn identities_with_account(&self, account: &str) -> Vec<Arc<WindowsTaskIdentity>> {
        self.identities.read().with_term(&Term::Account(account_key(account)))
    }

    fn identities_with_plugin_input(&self, input: &str) -> Vec<Arc<WindowsTaskIdentity>> {
        self.identities.read().with_term(&Term::PluginInput(input.to_owned()))
    }

    fn identities_created_by(&self, namespace: &str, name: &str) -> Vec<(String, String)> {
        let index = self.identities.read();
        let mut found: Vec<_> = CreatorAccounts::including(namespace, name)
            .into_iter()
            .flat_map(|entry| index.with_term(&Term::Creator(entry)))
            .map(|identity| {
                (
                    identity.metadata.namespace.clone().unwrap_or_default(),
                    identity.metadata.name.clone().unwrap_or_default(),
                )
            })
            .collect();
        found.sort();
        found.dedup();
        found
    }

    fn protected(&self, namespace: &str) -> Arc<Protected> {
        // Read before building: a change made while building shows as a newer version next time.
        let versions = (
            self.identities.read().namespace_version(namespace),
            self.shares.read().namespace_version(namespace),
        );
        let memo = || self.protected.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((built_from, protected)) = memo().get(namespace)
            && *built_from == versions
        {
            return Arc::clone(protected);
        }
        let protected = Arc::new(Protected::of_namespace(self, namespace));
        // Namespaces that never held winflow's resources (most of a cluster's) are not kept.
        if versions != Default::default() {
            memo().insert(namespace.to_owned(), (versions, Arc::clone(&protected)));
        }
        protected
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;
    use kube::core::DeserializeGuard;

    fn unwatched<K>() -> Cached<K> {
        Cached {
            index: Arc::new(RwLock::new(ResourceIndex::default())),
            synced: watch::channel(true).1,
        }
    }

    /// A cache without watches, filled by hand.
    fn cache() -> ResourceCache {
        ResourceCache {
            identities: unwatched(),
            shares: unwatched(),
            protected: Arc::default(),
        }
    }

    fn apply_identity(cache: &ResourceCache, identity: &WindowsTaskIdentity) {
        let event = watcher::Event::Apply(DeserializeGuard(Ok(identity.clone())));
        cache.identities.index.write().unwrap().apply(event);
    }

    #[test]
    fn a_namespaces_protected_set_is_kept_until_its_identities_or_shares_change() {
        let cache = cache();
        let identity = fixtures::domain_joined();
        apply_identity(&cache, &identity);
        let first = cache.protected("airflow");
        assert!(
            Arc::ptr_eq(&first, &cache.protected("airflow")),
            "rebuilt without a change"
        );
        assert_eq!(
            first.service_account_owners(&identity.spec.service_account.name, None),
            [identity.metadata.name.as_deref().unwrap()]
        );

        let mut elsewhere = identity.clone();
        elsewhere.metadata.namespace = Some("batch".to_owned());
        apply_identity(&cache, &elsewhere);
        assert!(
            Arc::ptr_eq(&first, &cache.protected("airflow")),
            "another namespace changed"
        );

        let mut renamed = identity.clone();
        renamed.spec.service_account.name = "reports-v2".to_owned();
        apply_identity(&cache, &renamed);
        let second = cache.protected("airflow");
        assert!(!Arc::ptr_eq(&first, &second));
        assert_eq!(
            second.service_account_owners("reports-v2", None),
            [identity.metadata.name.as_deref().unwrap()]
        );
        assert!(
            second
                .service_account_owners(&identity.spec.service_account.name, None)
                .is_empty()
        );

        let share = fixtures::share();
        let event = watcher::Event::Apply(DeserializeGuard(Ok(share)));
        cache.shares.index.write().unwrap().apply(event);
        assert!(!Arc::ptr_eq(&second, &cache.protected("airflow")), "a share changed");

        // A namespace without winflow's resources is built each time and not kept.
        cache.protected("default");
        assert!(!cache.protected.lock().unwrap().contains_key("default"));
    }
}
