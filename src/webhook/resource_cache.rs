//! The webhook's caches of identities and shares: one watch each into a [`ResourceIndex`].
//! Every replica has its own, so every replica can decide. Reviews read under a short lock
//! (never held across an await) and take `Arc`s out, so no review copies an identity.

use std::sync::{Arc, RwLock};

use futures::StreamExt;
use kube::core::DeserializeGuard;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use super::decide::ResourceView;
use super::resource_index::{Indexed, ResourceIndex, Term};
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

/// winflow's resources as watches keep them.
#[derive(Clone)]
pub struct ResourceCache {
    identities: Cached<WindowsTaskIdentity>,
    shares: Cached<WindowsShare>,
}

impl ResourceCache {
    /// Starts watching identities and shares (in `namespace`, or all).
    pub fn start(client: Client, namespace: Option<&str>, metrics: &Metrics) -> Self {
        Self {
            identities: cached(client.clone(), namespace, metrics),
            shares: cached(client, namespace, metrics),
        }
    }

    /// Whether both caches hold their initial list (`false` when a watch is gone).
    pub async fn synced(&self) -> bool {
        self.identities.synced().await && self.shares.synced().await
    }

    /// How many identities the cache holds.
    pub fn identity_count(&self) -> usize {
        self.identities.read().len()
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
}
