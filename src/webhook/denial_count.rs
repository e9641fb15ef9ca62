//! `status.pods.denied`: how many of an identity's pods the webhook denied. Every replica
//! serves the webhook, so each adds its own denials to the stored count: batched, and written
//! with the resourceVersion it read (a write that raced another fails and is retried), so no
//! replica's count overwrites another's. The controller never writes this field.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::Notify;

use crate::api::WindowsTaskIdentity;

/// The webhook's field manager: `status.pods.denied` is its field, not the controller's.
pub(super) const FIELD_MANAGER: &str = "winflow-webhook";
/// Denials that arrive within this time after the first are written together.
const BATCH_DELAY: Duration = Duration::from_secs(1);
/// Tries per identity and batch; what is left waits for the next batch.
const ATTEMPTS: usize = 5;
/// Identities with unwritten denials kept at most (denials are counted for identities that
/// exist, so this is only a bound should the API server stay away).
const MAX_PENDING: usize = 10_000;

type Key = (String, String);

#[derive(Default)]
pub struct DenialCounts {
    pending: Mutex<HashMap<Key, i32>>,
    added: Notify,
}

impl DenialCounts {
    pub fn add(&self, namespace: &str, identity: &str) {
        let mut pending = self.pending.lock().expect("denial counts lock");
        let key = (namespace.to_owned(), identity.to_owned());
        if pending.len() >= MAX_PENDING && !pending.contains_key(&key) {
            tracing::warn!(
                namespace,
                identity,
                "too many identities with unwritten denial counts; not counted"
            );
            return;
        }
        *pending.entry(key).or_default() += 1;
        drop(pending);
        self.added.notify_one();
    }

    fn take(&self) -> HashMap<Key, i32> {
        std::mem::take(&mut *self.pending.lock().expect("denial counts lock"))
    }

    fn put_back(&self, key: Key, count: i32) {
        *self.pending.lock().expect("denial counts lock").entry(key).or_default() += count;
    }

    /// Writes the counts until the process ends.
    pub async fn run(self: Arc<Self>, client: Client) {
        loop {
            self.added.notified().await;
            tokio::time::sleep(BATCH_DELAY).await;
            for ((namespace, name), count) in self.take() {
                let api: Api<WindowsTaskIdentity> = Api::namespaced(client.clone(), &namespace);
                if let Err(error) = add_denials(&api, &name, count).await {
                    tracing::warn!(%namespace, identity = %name, %error, "could not write the denial count; retrying with the next denial");
                    self.put_back((namespace, name), count);
                }
            }
        }
    }
}

/// Adds `count` to the identity's stored `status.pods.denied`.
async fn add_denials(api: &Api<WindowsTaskIdentity>, name: &str, count: i32) -> Result<(), kube::Error> {
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    let mut last = None;
    for _ in 0..ATTEMPTS {
        let Some(identity) = api.get_opt(name).await? else {
            return Ok(());
        };
        let stored = identity
            .status
            .as_ref()
            .and_then(|s| s.pods.as_ref())
            .map_or(0, |p| p.denied);
        // The resourceVersion makes the write conditional: it fails with 409 when anyone
        // (another replica, the controller) wrote in between.
        let patch = json!({
            "metadata": {"resourceVersion": identity.metadata.resource_version},
            "status": {"pods": {"denied": stored.saturating_add(count)}},
        });
        match api.patch_status(name, &params, &Patch::Merge(&patch)).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => last = Some(kube::Error::Api(status)),
            Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
            Err(error) => return Err(error),
        }
    }
    Err(last.expect("a conflict was seen"))
}
