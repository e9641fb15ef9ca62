//! Leader election on a `coordination.k8s.io` Lease: only the holder reconciles; every replica
//! keeps serving the webhook.
//!
//! Written on kube's Lease API rather than a crate. kube-leader-election 0.44 needs kube 4 and
//! kube-coordinate 2.0.0-rc.0 kube 2. kube-lease-manager 0.13.1 is built on kube 5 but does not
//! do what this module does: a follower sleeps until the expiry it last read, so a released
//! lease is taken only when it would have expired anyway (a graceful hand-over takes the whole
//! lease duration); expiry is the holder's `renewTime` on the reader's wall clock, so clocks
//! skewed by more than its grace period let two replicas lead; a holder whose renewals fail
//! keeps reporting itself leader while its lease runs out (no renew deadline); and its
//! release is a patch after a read, not a compare-and-swap.
//!
//! As in client-go, a lease is taken over when its record has not changed for a whole lease
//! duration as observed on this replica's own clock (no trust in other replicas' clocks). The
//! holder renews every `retry` period; when it cannot renew within `renew_deadline` or sees
//! another holder, it stops reconciling at once. On shutdown it releases the lease, so the
//! next replica takes over without waiting for expiry.

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::{Api, Client};
use tracing::{info, warn};

use crate::metrics::Metrics;

/// Where the lease is and who this replica is.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// This replica (the pod name).
    pub identity: String,
    /// How long a lease is valid without renewal.
    pub duration: Duration,
}

impl LeaseSettings {
    /// How often the holder renews and the others try to acquire.
    fn retry(&self) -> Duration {
        (self.duration / 5).max(Duration::from_millis(200))
    }

    /// How long the holder keeps trying to renew before it gives up leading.
    fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
    }
}

/// What this replica last saw of the lease, and when (on its own clock).
struct Observed {
    record: Option<LeaseSpec>,
    at: Instant,
}

struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    observed: Observed,
}

/// Why a term as leader ended.
enum End {
    Shutdown,
    Lost(String),
    Stopped,
}

/// Outcome of one attempt to take or keep the lease.
enum Attempt {
    Held,
    HeldBy(String),
}

fn holder(spec: Option<&LeaseSpec>) -> Option<&str> {
    spec.and_then(|s| s.holder_identity.as_deref())
        .filter(|h| !h.is_empty())
}

impl Elector {
    fn spec(&self, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        let now = MicroTime(jiff::Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.settings.identity.clone()),
            lease_duration_seconds: Some(self.settings.duration.as_secs().max(1).try_into().unwrap_or(i32::MAX)),
            acquire_time: Some(acquired.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// Takes the lease when it is free or expired, renews it when it is ours.
    async fn try_acquire_or_renew(&mut self) -> Result<Attempt, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.settings.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.settings.name.clone()),
                    namespace: Some(self.settings.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(None, 0)),
            };
            let created = self.api.create(&PostParams::default(), &lease).await?;
            self.observe(created.spec);
            return Ok(Attempt::Held);
        };
        let current = lease.spec.clone().unwrap_or_default();
        if self.observed.record.as_ref() != Some(&current) {
            self.observe(Some(current.clone()));
        }
        let ours = holder(Some(&current)) == Some(self.settings.identity.as_str());
        let expired = self.observed.at.elapsed() >= self.lease_duration_of(&current);
        if let Some(other) = holder(Some(&current)).filter(|_| !ours && !expired) {
            return Ok(Attempt::HeldBy(other.to_owned()));
        }
        let transitions = current.lease_transitions.unwrap_or(0) + i32::from(!ours);
        let acquired = if ours { current.acquire_time.clone() } else { None };
        lease.spec = Some(self.spec(acquired, transitions));
        // The resourceVersion makes this a compare-and-swap: two replicas cannot both win.
        let replaced = self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await?;
        self.observe(replaced.spec);
        Ok(Attempt::Held)
    }

    fn lease_duration_of(&self, spec: &LeaseSpec) -> Duration {
        spec.lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.settings.duration, Duration::from_secs)
    }

    fn observe(&mut self, record: Option<LeaseSpec>) {
        self.observed = Observed {
            record,
            at: Instant::now(),
        };
    }

    /// Gives the lease up (empty holder, as client-go does), if it is still ours.
    async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.settings.name).await else {
            return;
        };
        if holder(lease.spec.as_ref()) != Some(self.settings.identity.as_str()) {
            return;
        }
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => info!(lease = %self.settings.name, "released the leader lease"),
            Err(e) => {
                warn!(lease = %self.settings.name, error = %e, "could not release the leader lease; it expires by itself")
            }
        }
    }
}

/// Calls `lead` each time this replica becomes leader and runs it while it leads, until
/// `shutdown` completes. `lead` gets a future that completes when it should stop gracefully
/// (shutdown); on lost leadership its task is aborted at once.
pub async fn run<F, Fut>(
    client: Client,
    settings: LeaseSettings,
    metrics: Metrics,
    joined: crate::admin::Readiness,
    shutdown: impl Future<Output = ()>,
    lead: F,
) where
    F: Fn(tokio::sync::oneshot::Receiver<()>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut elector = Elector {
        api: Api::namespaced(client, &settings.namespace),
        settings: settings.clone(),
        observed: Observed {
            record: None,
            at: Instant::now(),
        },
    };
    let mut shutdown = std::pin::pin!(shutdown);
    let mut joined = Some(joined);
    let mut last_holder = None;
    metrics.set_leader(false);
    loop {
        // Follower: try to take the lease every retry period.
        let acquired = async {
            loop {
                match elector.try_acquire_or_renew().await {
                    Ok(Attempt::Held) => break,
                    Ok(Attempt::HeldBy(other)) => {
                        if last_holder.as_ref() != Some(&other) {
                            info!(leader = %other, lease = %settings.name, "another replica leads; serving the webhook only");
                            last_holder = Some(other);
                        }
                    }
                    Err(e) => warn!(lease = %settings.name, error = %e, "could not read or take the leader lease"),
                }
                if let Some(joined) = joined.take() {
                    joined.set_ready();
                }
                tokio::time::sleep(settings.retry()).await;
            }
        };
        tokio::select! {
            _ = &mut shutdown => return,
            () = acquired => {}
        }
        if let Some(joined) = joined.take() {
            joined.set_ready();
        }
        last_holder = None;
        info!(lease = %settings.name, identity = %settings.identity, "became the leader; reconciling");
        metrics.set_leader(true);
        let (stop, stopping) = tokio::sync::oneshot::channel();
        let mut leading = tokio::spawn(lead(stopping));

        // Leader: renew until shutdown, or until the lease is lost.
        let end = {
            let mut last_renewed = Instant::now();
            let lost = async {
                loop {
                    tokio::time::sleep(settings.retry()).await;
                    match elector.try_acquire_or_renew().await {
                        Ok(Attempt::Held) => last_renewed = Instant::now(),
                        Ok(Attempt::HeldBy(other)) => return format!("replica {other} holds the lease"),
                        Err(e) if last_renewed.elapsed() >= settings.renew_deadline() => {
                            return format!(
                                "the lease could not be renewed for {:?}: {e}",
                                settings.renew_deadline()
                            );
                        }
                        Err(e) => {
                            warn!(lease = %settings.name, error = %e, "could not renew the leader lease; retrying")
                        }
                    }
                }
            };
            tokio::select! {
                _ = &mut shutdown => End::Shutdown,
                why = lost => End::Lost(why),
                _ = &mut leading => End::Stopped,
            }
        };
        metrics.set_leader(false);
        match end {
            End::Shutdown => {
                let _ = stop.send(());
                // In-flight reconciles may finish, but the lease is released within one lease
                // duration whatever they do: the next leader must not wait on this one.
                if tokio::time::timeout(settings.duration, &mut leading).await.is_err() {
                    warn!(lease = %settings.name, "reconciles still running at shutdown; stopped them");
                    leading.abort();
                    let _ = leading.await;
                }
                elector.release().await;
                return;
            }
            End::Lost(why) => {
                leading.abort();
                let _ = leading.await;
                warn!(lease = %settings.name, %why, "lost the leadership; stopped reconciling");
            }
            End::Stopped => {
                // The controllers ended by themselves: let another replica lead.
                elector.release().await;
                warn!(lease = %settings.name, "the controllers stopped; gave up the leadership");
            }
        }
    }
}
