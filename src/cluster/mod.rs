//! The Kubernetes layer below the features (controllers, tokens, webhook), which depend on it
//! and never on each other's machinery: the client that counts every write (`api_writes`),
//! watches with their own backoff and health (`watch`, `watch_backoff`, `watch_health`,
//! `throttle`), cache readiness (`store_synced`), ownership-checked zero-write apply and
//! delete (`apply`, `child_versions`), the finalizer, status writes and Events (`report`,
//! `written`).

pub mod api_writes;
pub(crate) mod apply;
pub(crate) mod child_versions;
pub mod finalizer;
pub(crate) mod report;
pub(crate) mod throttle;
pub(crate) mod watch;
mod watch_backoff;
pub(crate) mod watch_health;
pub(crate) mod written;

use kube::{Api, Client, Resource};

/// An API for one namespace, or for all of them.
pub(crate) fn scoped<K>(client: Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    }
}

/// Waits until a reflector store holds its initial list; `false` when its writer is gone.
/// `Store::wait_until_ready` (kube-runtime 5.0) wakes only the last task that polled it, and a
/// controller's own runner polls it too: a fresh future per short interval sees the state anyway.
pub(crate) async fn store_synced<K>(store: &kube::runtime::reflector::Store<K>) -> bool
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    loop {
        match tokio::time::timeout(std::time::Duration::from_millis(500), store.wait_until_ready()).await {
            Ok(result) => return result.is_ok(),
            Err(_elapsed) => {}
        }
    }
}

/// Marks one part of `readiness` ready once the controller's cache holds the initial list.
pub(crate) async fn report_ready_when_synced<K>(
    store: kube::runtime::reflector::Store<K>,
    readiness: crate::admin::Readiness,
) where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    if store_synced(&store).await {
        readiness.set_ready();
    }
}
