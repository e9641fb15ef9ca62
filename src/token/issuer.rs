//! The token issuer: one `Keeper` task per identity with `spec.token`, started by the
//! identity controller and stopped with it (so only while this replica leads). The
//! identity reconcile hands it the identity as it is now, which never waits for a provider,
//! and gets back the last outcome for exactly that; the keeper wakes the reconcile (through
//! the stream `Issuer::new` returns) when its outcome changes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::channel::mpsc;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

use super::attempt::Providers;
use super::keeper::{Keeper, Outcome};
use super::want::Want;
use super::{RetryPolicy, TokenConfig, TokenReport, secret};
use crate::api::WindowsTaskIdentity;
use crate::cluster::apply::delete_managed_child;
use crate::cluster::child_versions::ChildVersions;
use crate::metrics::Metrics;

/// An identity, by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IdentityKey {
    pub namespace: String,
    pub name: String,
}

impl IdentityKey {
    pub fn of(identity: &WindowsTaskIdentity) -> Self {
        Self {
            namespace: identity.namespace().unwrap_or_default(),
            name: identity.name_any(),
        }
    }
}

/// What every keeper uses.
pub(super) struct Shared {
    pub providers: Providers,
    pub client: Client,
    pub metrics: Metrics,
    pub retry: RetryPolicy,
    /// The identity controller's: its Secret watch tells winflow's own writes from others'.
    pub versions: Arc<ChildVersions>,
    pub wake: mpsc::UnboundedSender<IdentityKey>,
}

/// A keeper as the issuer holds it.
struct Kept {
    uid: String,
    secret_name: String,
    wants: watch::Sender<Arc<Want>>,
    outcome: Arc<Outcome>,
    task: JoinHandle<()>,
}

pub struct Issuer {
    shared: Arc<Shared>,
    kept: Mutex<HashMap<IdentityKey, Kept>>,
}

impl Issuer {
    /// The issuer, and the identities whose outcome changed, to reconcile.
    pub fn new(
        client: Client,
        metrics: Metrics,
        config: TokenConfig,
        versions: Arc<ChildVersions>,
    ) -> (Self, mpsc::UnboundedReceiver<IdentityKey>) {
        let (wake, woken) = mpsc::unbounded();
        let shared = Shared {
            providers: Providers::new(config.oidc, client.clone()),
            client,
            metrics,
            retry: config.retry,
            versions,
            wake,
        };
        let issuer = Self {
            shared: Arc::new(shared),
            kept: Mutex::new(HashMap::new()),
        };
        (issuer, woken)
    }

    /// The token part of reconciling `identity`: tells its keeper what it wants now (starting
    /// one, or stopping it when the token is off or moves to another Secret), deletes the
    /// Secret it no longer uses, and returns the outcome for what it wants now; `None` while
    /// there is none yet (the keeper wakes the reconcile when there is). Waits for the API
    /// server only, never for a provider. `exposed_to`: the pods that are not the identity's
    /// own and name its token Secret; while there are any, the keeper writes no token.
    pub async fn report(
        &self,
        identity: &WindowsTaskIdentity,
        exposed_to: &[String],
    ) -> Result<Option<TokenReport>, kube::Error> {
        let key = IdentityKey::of(identity);
        let wanted_secret = identity
            .spec
            .token
            .as_ref()
            .map(|settings| secret::secret_name(settings, &key.name));
        self.release(&key, wanted_secret.as_deref()).await;
        let previous = identity
            .status
            .as_ref()
            .and_then(|s| s.token.as_ref())
            .and_then(|t| t.secret_name.clone());
        if let Some(unused) = previous.filter(|old| Some(old) != wanted_secret.as_ref()) {
            remove_secret(&self.shared, identity, &unused).await?;
        }
        let Some(settings) = &identity.spec.token else {
            return Ok(Some(TokenReport::not_requested()));
        };
        let want = Want::of(identity, settings, exposed_to, &self.shared.client).await?;
        Ok(self.want(key, want))
    }

    /// Hands `want` to the identity's keeper (a new one for a new identity) and returns the
    /// keeper's outcome if it answers `want`. The same wish again is news to the keeper too:
    /// the reconcile looked because something changed, maybe the Secret.
    fn want(&self, key: IdentityKey, want: Want) -> Option<TokenReport> {
        let version = want.version();
        let uid = want.uid();
        let mut kept = self.kept.lock().expect("token keepers lock");
        if let Some(keeper) = kept.get(&key).filter(|k| k.uid == uid) {
            keeper.wants.send_replace(Arc::new(want));
            return keeper.outcome.for_version(&version);
        }
        // An identity deleted and created again under its name: its Secret went with it.
        if let Some(stale) = kept.remove(&key) {
            stale.task.abort();
        }
        let secret_name = want.secret_name.clone();
        let (wants, watched) = watch::channel(Arc::new(want));
        let outcome = Arc::new(Outcome::default());
        let keeper = Keeper {
            shared: self.shared.clone(),
            key: key.clone(),
            wants: watched,
            outcome: outcome.clone(),
            failures: None,
        };
        let task = tokio::spawn(keeper.run());
        kept.insert(
            key,
            Kept {
                uid,
                secret_name,
                wants,
                outcome,
                task,
            },
        );
        None
    }

    /// Stops the identity's keeper unless it keeps Secret `keep`, and waits until it has
    /// stopped: a keeper stops between writes, never in one, so the caller may delete the
    /// Secret afterwards without the keeper writing it again.
    async fn release(&self, key: &IdentityKey, keep: Option<&str>) {
        let released = {
            let mut kept = self.kept.lock().expect("token keepers lock");
            let other = kept.get(key).is_some_and(|k| Some(k.secret_name.as_str()) != keep);
            other.then(|| kept.remove(key)).flatten()
        };
        if let Some(Kept { wants, task, .. }) = released {
            drop(wants);
            // A keeper that panicked has stopped too.
            let _ = task.await;
            self.shared.metrics.token_expiry(&key.namespace, &key.name, None);
        }
    }

    /// Drops what is kept for a deleted identity (its token Secret goes with it).
    pub async fn forget(&self, identity: &WindowsTaskIdentity) {
        let key = IdentityKey::of(identity);
        self.release(&key, None).await;
        self.shared.metrics.token_expiry(&key.namespace, &key.name, None);
    }
}

impl Drop for Issuer {
    /// The controller stopped (this replica no longer leads): so do the keepers.
    fn drop(&mut self) {
        let kept = self.kept.get_mut().expect("token keepers lock");
        for (_, keeper) in kept.drain() {
            keeper.task.abort();
        }
    }
}

/// Deletes a token Secret winflow wrote for this identity and no longer needs (the token
/// was turned off or moved to another Secret). Anything else of that name is left alone.
async fn remove_secret(shared: &Shared, identity: &WindowsTaskIdentity, name: &str) -> Result<(), kube::Error> {
    let secrets: Api<Secret> = Api::namespaced(shared.client.clone(), &identity.namespace().unwrap_or_default());
    // Only the name and labels matter: the ownership test is the label test of every child.
    let probe = Secret {
        metadata: crate::build::namespaced_meta(identity, name.to_owned()),
        ..Secret::default()
    };
    if delete_managed_child(&secrets, &probe).await? {
        let key = IdentityKey::of(identity);
        info!(identity = %format!("{}/{}", key.namespace, key.name), secret = %name, "deleted the token Secret it no longer uses");
    }
    Ok(())
}
