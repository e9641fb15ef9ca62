//! One attempt at a token: a slot of the issuer's and one of all issuers' (at most
//! `concurrency_per_issuer` and `concurrency` attempts in flight), then the client secret or
//! the assertion, discovery and the token request, all within one deadline. An attempt that
//! outlives it ends as `DeadlineExceeded`, naming the issuer, the deadline and what it was
//! still waiting for, and gives its slots back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use openidconnect::ClientSecret;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::oidc::{ClientAuth, Granted, Oidc, OidcSettings};
use super::want::{Credentials, Want, secret_missing};
use super::{Failure, Reason, assertion};
use crate::text::human_duration;

/// Where an attempt is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stage {
    SlotOfIssuer,
    Slot,
    ClientSecret,
    Assertion,
    Discovery,
    TokenRequest,
}

impl Stage {
    pub(super) fn waiting_for(self) -> &'static str {
        match self {
            Stage::SlotOfIssuer => {
                "waiting for one of the request slots for this issuer (--token-concurrency-per-issuer)"
            }
            Stage::Slot => "waiting for one of the request slots (--token-concurrency)",
            Stage::ClientSecret => "reading the client secret",
            Stage::Assertion => "waiting for the API server to mint the service account token",
            Stage::Discovery => "waiting for the discovery document",
            Stage::TokenRequest => "waiting for the token endpoint",
        }
    }
}

/// The stage of an attempt under way, for whoever reports on it meanwhile.
pub(super) struct Progress(Mutex<Stage>);

impl Progress {
    pub(super) fn new() -> Self {
        Self(Mutex::new(Stage::SlotOfIssuer))
    }

    pub(super) fn stage(&self) -> Stage {
        *self.0.lock().expect("attempt progress lock")
    }

    fn enter(&self, stage: Stage) {
        *self.0.lock().expect("attempt progress lock") = stage;
    }
}

/// Slots for attempts: one of the issuer's, then one of all.
struct Limits {
    overall: Arc<Semaphore>,
    per_issuer: usize,
    issuers: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// Held while an attempt is in flight.
struct Slot {
    _issuer: OwnedSemaphorePermit,
    _overall: OwnedSemaphorePermit,
}

impl Limits {
    /// At least one slot each, or no token could ever be requested.
    fn new(overall: usize, per_issuer: usize) -> Self {
        Self {
            overall: Arc::new(Semaphore::new(overall.max(1))),
            per_issuer: per_issuer.max(1),
            issuers: Mutex::new(HashMap::new()),
        }
    }

    /// The issuer's slot first: attempts queued behind an issuer that does not answer then
    /// wait there and hold none of the slots the other issuers need.
    async fn acquire(&self, issuer: &str, progress: &Progress) -> Slot {
        let of_issuer = {
            let mut issuers = self.issuers.lock().expect("issuer slots lock");
            let slots = issuers
                .entry(issuer.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_issuer)));
            slots.clone()
        };
        progress.enter(Stage::SlotOfIssuer);
        let issuer_permit = of_issuer.acquire_owned().await.expect("issuer slots are never closed");
        progress.enter(Stage::Slot);
        let permit = self
            .overall
            .clone()
            .acquire_owned()
            .await
            .expect("slots are never closed");
        Slot {
            _issuer: issuer_permit,
            _overall: permit,
        }
    }
}

/// A token the provider granted, and when it was asked for: its lifetime counts from then at
/// the latest, so an expiry computed from that moment is never later than the real one.
pub(super) struct Issued {
    pub granted: Granted,
    pub requested_at: Timestamp,
}

/// Everything attempts go through: the provider client, the API server (for client secrets
/// and assertions), the slots and the deadline.
pub(super) struct Providers {
    oidc: Oidc,
    limits: Limits,
    deadline: Duration,
    client: Client,
}

impl Providers {
    pub(super) fn new(settings: OidcSettings, client: Client) -> Self {
        Self {
            limits: Limits::new(settings.concurrency, settings.concurrency_per_issuer),
            deadline: settings.attempt_deadline,
            oidc: Oidc::new(settings),
            client,
        }
    }

    pub(super) fn deadline(&self) -> Duration {
        self.deadline
    }

    /// One attempt at a token for `want`; `progress` follows it.
    pub(super) async fn attempt(&self, want: &Want, progress: &Progress) -> Result<Issued, Failure> {
        let credentials = want.credentials.clone()?;
        let issuer = want.settings.issuer_url.as_str();
        let _slot = self.limits.acquire(issuer, progress).await;
        match tokio::time::timeout(self.deadline, self.exchange(want, credentials, progress)).await {
            Ok(outcome) => outcome,
            Err(_elapsed) => {
                // Its endpoints may have moved: discover again next time.
                self.oidc.forget(issuer);
                Err(Failure::new(
                    Reason::DeadlineExceeded,
                    format!(
                        "the token attempt for issuer {issuer:?} did not finish within its deadline of {} (--token-attempt-deadline): it was still {}",
                        human_duration(self.deadline),
                        progress.stage().waiting_for()
                    ),
                ))
            }
        }
    }

    async fn exchange(&self, want: &Want, credentials: Credentials, progress: &Progress) -> Result<Issued, Failure> {
        let namespace = want.namespace();
        let auth = match credentials {
            Credentials::Secret { name, key, .. } => {
                progress.enter(Stage::ClientSecret);
                ClientAuth::Secret(self.client_secret(&namespace, &name, &key).await?)
            }
            Credentials::ServiceAccount {
                name,
                audience,
                expiration_seconds,
            } => {
                progress.enter(Stage::Assertion);
                let jwt = assertion::mint(&self.client, &namespace, &name, &audience, expiration_seconds).await?;
                ClientAuth::Assertion(jwt)
            }
        };
        let settings = &want.settings;
        progress.enter(Stage::Discovery);
        let metadata = self.oidc.discover(&settings.issuer_url).await?;
        progress.enter(Stage::TokenRequest);
        // Whole seconds, rounded down, like every time winflow stores.
        let now = Timestamp::now();
        let requested_at = Timestamp::from_second(now.as_second()).unwrap_or(now);
        let granted = self
            .oidc
            .request_token(
                &settings.issuer_url,
                metadata,
                &settings.client_id,
                auth,
                &settings.scopes,
            )
            .await?;
        Ok(Issued { granted, requested_at })
    }

    /// The client secret's value, or why there is none.
    async fn client_secret(&self, namespace: &str, name: &str, key: &str) -> Result<ClientSecret, Failure> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let found = match secrets.get_opt(name).await {
            Ok(Some(found)) => found,
            Ok(None) => return Err(secret_missing(name, namespace)),
            Err(e) => {
                return Err(Failure::new(
                    Reason::ApiError,
                    format!("reading Secret {name} (spec.token.clientSecretRef) failed: {e}"),
                ));
            }
        };
        let value = found
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
            .filter(|v| !v.is_empty());
        value.map(ClientSecret::new).ok_or_else(|| {
            let keys: Vec<String> = found.data.iter().flat_map(|d| d.keys().cloned()).collect();
            let keys = if keys.is_empty() {
                "none".to_owned()
            } else {
                keys.join(", ")
            };
            Failure::new(
                Reason::SecretMissing,
                format!(
                    "Secret {name} has no non-empty key {key:?} (spec.token.clientSecretRef.key); its keys are: {keys}"
                ),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_issuer_gets_its_own_slots_and_leaves_the_others_to_the_rest() {
        let limits = Arc::new(Limits::new(3, 2));
        let hung = "https://hung.example.com";
        let first = limits.acquire(hung, &Progress::new()).await;
        let second = limits.acquire(hung, &Progress::new()).await;
        // A third attempt at the same issuer waits for one of its two slots...
        let progress = Arc::new(Progress::new());
        let queued = {
            let (limits, progress) = (limits.clone(), progress.clone());
            tokio::spawn(async move { limits.acquire(hung, &progress).await })
        };
        tokio::task::yield_now().await;
        assert!(!queued.is_finished(), "the issuer's two slots are taken");
        assert_eq!(progress.stage(), Stage::SlotOfIssuer);
        // ...and holds none of the overall slots meanwhile: another issuer gets the last one.
        let other = tokio::time::timeout(
            Duration::from_secs(5),
            limits.acquire("https://login.example.com", &Progress::new()),
        )
        .await
        .expect("another issuer is not held up");
        drop(other);
        tokio::task::yield_now().await;
        assert!(!queued.is_finished(), "a free overall slot is not the issuer's");
        drop(first);
        let third = tokio::time::timeout(Duration::from_secs(5), queued)
            .await
            .expect("the issuer's slot given back is taken")
            .unwrap();
        drop((second, third));
    }
}
