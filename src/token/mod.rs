//! OIDC access tokens for identities: requested with the client-credentials grant, kept in
//! the token Secret, renewed ahead of expiry from the lifetime the provider granted, retried
//! with capped backoff, and removed from the Secret once expired. A token value is only ever
//! written to that Secret: never to logs, Events, status or metrics.

mod assertion;
mod ca_bundle;
mod oidc;
mod report;
pub mod schedule;
pub mod secret;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use openidconnect::ClientSecret;
use tracing::{info, warn};

pub use ca_bundle::{CaBundle, CaBundleProblem, CaFileError};
pub use oidc::OidcSettings;
pub use report::TokenReport;
pub use schedule::RetryPolicy;

use crate::api::WindowsTaskIdentity;
use crate::api::identity::TokenSettings;
use crate::metrics::Metrics;
use crate::names::FIELD_MANAGER;
use crate::validate::parse_duration;
use oidc::{ClientAuth, Oidc};
use schedule::{Failures, Held, Situation, Step};
use secret::TokenContent;

pub const REASON_TOKEN_ISSUED: &str = "TokenIssued";
pub const REASON_BACKOFF: &str = "Backoff";
pub const REASON_EXPIRED: &str = "Expired";
pub const REASON_DISCOVERY_FAILED: &str = "DiscoveryFailed";
pub const REASON_INVALID_CLIENT: &str = "InvalidClient";
pub const REASON_INVALID_SCOPE: &str = "InvalidScope";
pub const REASON_INVALID_ISSUER: &str = "InvalidIssuer";
pub const REASON_SECRET_MISSING: &str = "SecretMissing";
pub const REASON_PROVIDER_UNAVAILABLE: &str = "ProviderUnavailable";
pub const REASON_TOKEN_REQUEST_FAILED: &str = "TokenRequestFailed";
pub const REASON_ASSERTION_FAILED: &str = "AssertionFailed";
pub const REASON_LIFETIME_TOO_SHORT: &str = "LifetimeTooShort";
pub const REASON_CERTIFICATE_NOT_TRUSTED: &str = "CertificateNotTrusted";

/// A refresh that did not produce a token. The message says what is wrong and never holds a
/// secret or a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub reason: &'static str,
    pub message: String,
}

impl Failure {
    pub fn new(reason: &'static str, message: String) -> Self {
        Self { reason, message }
    }
}

/// Settings of token handling, from the operator's flags.
#[derive(Clone, Debug, Default)]
pub struct TokenConfig {
    pub oidc: OidcSettings,
    pub retry: RetryPolicy,
}

/// The provider client and each identity's run of failures, shared by all reconciles.
pub struct Tokens {
    oidc: Oidc,
    retry: RetryPolicy,
    failures: Mutex<HashMap<String, Failures>>,
}

impl Tokens {
    pub fn new(config: TokenConfig) -> Self {
        Self {
            oidc: Oidc::new(config.oidc),
            retry: config.retry,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn failures(&self, key: &str) -> Option<Failures> {
        self.failures.lock().expect("token failures lock").get(key).cloned()
    }

    fn failed(&self, key: &str, failure: &Failure, inputs: &str, now: Timestamp) -> Failures {
        let mut all = self.failures.lock().expect("token failures lock");
        let entry = all.entry(key.to_owned()).or_insert_with(|| Failures {
            count: 0,
            last_at: now,
            inputs: inputs.to_owned(),
            reason: "",
            message: String::new(),
        });
        // A failure with new inputs starts a new run of backoff.
        if entry.inputs != inputs {
            entry.count = 0;
            entry.inputs = inputs.to_owned();
        }
        entry.count += 1;
        entry.last_at = now;
        entry.reason = failure.reason;
        entry.message = failure.message.clone();
        entry.clone()
    }

    fn forget(&self, key: &str) {
        self.failures.lock().expect("token failures lock").remove(key);
    }

    /// Drops what is kept in memory for a deleted identity (its token Secret goes with it).
    pub fn identity_deleted(&self, namespace: &str, name: &str, metrics: &Metrics) {
        self.forget(&format!("{namespace}/{name}"));
        metrics.token_expiry(namespace, name, None);
    }
}

/// The client credentials a token is requested with, and a version that changes with them.
enum Credentials {
    /// The Secret and key of the client secret; its value is read only to request a token.
    Secret { name: String, key: String, version: String },
    ServiceAccount {
        name: String,
        audience: String,
        expiration_seconds: i64,
    },
}

impl Credentials {
    fn version(&self) -> String {
        match self {
            Credentials::Secret { version, .. } => format!("secret:{version}"),
            Credentials::ServiceAccount { name, .. } => format!("serviceaccount:{name}"),
        }
    }
}

/// Everything one identity's token reconcile works with.
struct Job<'a> {
    identity: &'a WindowsTaskIdentity,
    settings: &'a TokenSettings,
    secrets: Api<Secret>,
    client: &'a Client,
    metrics: &'a Metrics,
    secret_name: String,
    key: String,
}

/// Keeps the identity's token current and says how it stands. Transient API errors are
/// returned for a retry; everything else is reported in the result.
pub async fn reconcile(
    identity: &WindowsTaskIdentity,
    client: &Client,
    tokens: &Tokens,
    metrics: &Metrics,
) -> Result<TokenReport, kube::Error> {
    let namespace = identity.namespace().unwrap_or_default();
    let name = identity.name_any();
    let key = format!("{namespace}/{name}");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let previous = identity
        .status
        .as_ref()
        .and_then(|s| s.token.as_ref())
        .and_then(|t| t.secret_name.clone());
    let Some(settings) = &identity.spec.token else {
        if let Some(old) = previous {
            remove_secret(&secrets, identity, &old, metrics).await?;
        }
        tokens.forget(&key);
        metrics.token_expiry(&namespace, &name, None);
        return Ok(TokenReport::not_requested());
    };
    let secret_name = secret::secret_name(settings, &name);
    if let Some(old) = previous.filter(|old| *old != secret_name) {
        remove_secret(&secrets, identity, &old, metrics).await?;
    }
    let job = Job {
        identity,
        settings,
        secrets,
        client,
        metrics,
        secret_name,
        key,
    };
    job.run(tokens).await
}

impl Job<'_> {
    async fn run(&self, tokens: &Tokens) -> Result<TokenReport, kube::Error> {
        let existing = self.secrets.get_opt(&self.secret_name).await?;
        if let Some(existing) = &existing
            && !secret::is_managed(existing, self.identity)
        {
            return Ok(TokenReport::conflict(&self.secret_name));
        }
        let mut held = existing.as_ref().and_then(secret::held);
        let mut token_type = existing.as_ref().map(secret::token_type);
        let min_validity = parse_duration(&self.settings.min_validity).unwrap_or(Duration::from_secs(300));
        let renew_before = self.settings.renew_before.as_deref().and_then(parse_duration);
        let seed = self.identity.metadata.uid.clone().unwrap_or_else(|| self.key.clone());
        let renewal_of =
            |held: &Held| schedule::renewal_time(held.issued_at, held.expires_at, renew_before, min_validity, &seed);
        let credentials = self.credentials().await?;
        let inputs = secret::inputs_digest(
            self.settings,
            &credentials
                .as_ref()
                .map_or_else(|_| "missing".to_owned(), Credentials::version),
        );
        let now = Timestamp::now();
        let step = schedule::next_step(&Situation {
            held: held.as_ref(),
            renewal: held.as_ref().map(renewal_of),
            inputs: &inputs,
            failures: tokens.failures(&self.key).as_ref(),
            now,
            policy: tokens.retry,
            jitter_seed: &seed,
        });
        if let Step::Refresh(why) = step {
            match self.refresh(tokens, credentials, &inputs, now).await? {
                Ok((fresh, kind)) => {
                    tokens.forget(&self.key);
                    self.metrics.token_refreshed("success");
                    info!(
                        identity = %self.key,
                        secret = %self.secret_name,
                        expires_at = %secret::rfc3339(fresh.expires_at),
                        lifetime_seconds = fresh.expires_at.duration_since(fresh.issued_at).as_secs(),
                        why = why.describe(),
                        "token refreshed"
                    );
                    held = Some(fresh);
                    token_type = Some(kind);
                }
                Err(failure) => {
                    self.metrics.token_refreshed(failure.reason);
                    let run = tokens.failed(&self.key, &failure, &inputs, now);
                    warn!(
                        identity = %self.key,
                        reason = failure.reason,
                        attempt = run.count,
                        why = why.describe(),
                        "token refresh failed: {}",
                        failure.message
                    );
                }
            }
        }
        // An expired token is taken out of the Secret rather than handed to pods.
        if let Some(expired) = held.as_ref().filter(|h| h.has_token && now >= h.expires_at) {
            let blank = TokenContent {
                access_token: None,
                token_type: token_type.as_deref().unwrap_or("Bearer"),
                issued_at: expired.issued_at,
                expires_at: expired.expires_at,
                inputs: &expired.inputs,
            };
            self.apply(&blank).await?;
            info!(identity = %self.key, secret = %self.secret_name, expired_at = %secret::rfc3339(expired.expires_at), "removed the expired token from its Secret");
            held = held.map(|h| Held { has_token: false, ..h });
        }
        let namespace = self.identity.namespace().unwrap_or_default();
        let valid_until = held.as_ref().filter(|h| h.has_token).map(|h| h.expires_at.as_second());
        self.metrics
            .token_expiry(&namespace, &self.identity.name_any(), valid_until);
        let failures = tokens.failures(&self.key).filter(|f| f.inputs == inputs);
        Ok(report::describe(&report::Facts {
            secret_name: &self.secret_name,
            held: held.as_ref(),
            renewal: held.as_ref().map(renewal_of),
            retry: failures.as_ref().map(|f| {
                let valid_until = held.as_ref().filter(|h| h.has_token).map(|h| h.expires_at);
                schedule::retry_at(f, tokens.retry, &seed, valid_until)
            }),
            failures: failures.as_ref(),
            min_validity,
            now,
        }))
    }

    /// Names the client secret (by its Secret's metadata: the value stays unread until a
    /// token is requested) or the service account whose token is the assertion. A missing
    /// Secret is a failure to report, not an error to retry.
    async fn credentials(&self) -> Result<Result<Credentials, Failure>, kube::Error> {
        if let Some(workload) = &self.settings.workload_identity {
            return Ok(Ok(Credentials::ServiceAccount {
                name: self.identity.spec.service_account.name.clone(),
                audience: workload.audience.clone(),
                expiration_seconds: workload.expiration_seconds,
            }));
        }
        let Some(reference) = &self.settings.client_secret_ref else {
            return Ok(Err(Failure::new(
                REASON_INVALID_CLIENT,
                "spec.token sets neither clientSecretRef nor workloadIdentity".to_owned(),
            )));
        };
        let Some(found) = self.secrets.get_metadata_opt(&reference.name).await? else {
            return Ok(Err(self.secret_missing(&reference.name)));
        };
        Ok(Ok(Credentials::Secret {
            name: reference.name.clone(),
            key: reference.key.clone(),
            version: found.resource_version().unwrap_or_default(),
        }))
    }

    fn secret_missing(&self, name: &str) -> Failure {
        Failure::new(
            REASON_SECRET_MISSING,
            format!(
                "Secret {name} (spec.token.clientSecretRef) does not exist in namespace {}",
                self.identity.namespace().unwrap_or_default()
            ),
        )
    }

    /// The client secret's value, or why there is none.
    async fn client_secret(&self, name: &str, key: &str) -> Result<Result<ClientSecret, Failure>, kube::Error> {
        let Some(found) = self.secrets.get_opt(name).await? else {
            return Ok(Err(self.secret_missing(name)));
        };
        let value = found
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
            .filter(|v| !v.is_empty());
        Ok(value.map(ClientSecret::new).ok_or_else(|| {
            let keys: Vec<String> = found.data.iter().flat_map(|d| d.keys().cloned()).collect();
            let keys = if keys.is_empty() {
                "none".to_owned()
            } else {
                keys.join(", ")
            };
            Failure::new(
                REASON_SECRET_MISSING,
                format!(
                    "Secret {name} has no non-empty key {key:?} (spec.token.clientSecretRef.key); its keys are: {keys}"
                ),
            )
        }))
    }

    /// Requests a token and writes it to the Secret.
    async fn refresh(
        &self,
        tokens: &Tokens,
        credentials: Result<Credentials, Failure>,
        inputs: &str,
        now: Timestamp,
    ) -> Result<Result<(Held, String), Failure>, kube::Error> {
        let auth = match credentials {
            Err(failure) => return Ok(Err(failure)),
            Ok(Credentials::Secret { name, key, .. }) => match self.client_secret(&name, &key).await? {
                Ok(value) => ClientAuth::Secret(value),
                Err(failure) => return Ok(Err(failure)),
            },
            Ok(Credentials::ServiceAccount {
                name,
                audience,
                expiration_seconds,
            }) => {
                let namespace = self.identity.namespace().unwrap_or_default();
                match assertion::mint(
                    self.client,
                    &namespace,
                    &name,
                    &audience,
                    expiration_seconds,
                    self.metrics,
                )
                .await
                {
                    Ok(jwt) => ClientAuth::Assertion(jwt),
                    Err(failure) => return Ok(Err(failure)),
                }
            }
        };
        let granted = match tokens
            .oidc
            .request_token(
                &self.settings.issuer_url,
                &self.settings.client_id,
                auth,
                &self.settings.scopes,
            )
            .await
        {
            Ok(granted) => granted,
            Err(failure) => return Ok(Err(failure)),
        };
        // Whole seconds, rounded down: the stored expiry is never later than the real one.
        let issued_at = Timestamp::from_second(now.as_second()).unwrap_or(now);
        let lifetime = jiff::SignedDuration::try_from(granted.lifetime).unwrap_or(jiff::SignedDuration::ZERO);
        let expires_at = issued_at.checked_add(lifetime).unwrap_or(Timestamp::MAX);
        self.apply(&TokenContent {
            access_token: Some(granted.access_token.secret()),
            token_type: &granted.token_type,
            issued_at,
            expires_at,
            inputs,
        })
        .await?;
        let held = Held {
            issued_at,
            expires_at,
            inputs: inputs.to_owned(),
            has_token: true,
        };
        Ok(Ok((held, granted.token_type)))
    }

    /// Writes the token Secret (only called when its content changes).
    async fn apply(&self, content: &TokenContent<'_>) -> Result<(), kube::Error> {
        let desired = secret::token_secret(self.identity, &self.secret_name, content);
        self.metrics.api_write("Secret", "apply");
        let params = PatchParams::apply(FIELD_MANAGER).force();
        self.secrets
            .patch(&self.secret_name, &params, &Patch::Apply(&desired))
            .await?;
        Ok(())
    }
}

/// Deletes a token Secret winflow wrote for this identity and no longer needs (the token
/// was turned off or moved to another Secret). Anything else of that name is left alone.
async fn remove_secret(
    secrets: &Api<Secret>,
    identity: &WindowsTaskIdentity,
    name: &str,
    metrics: &Metrics,
) -> Result<(), kube::Error> {
    // Only the name and labels matter: the ownership test is the label test of every child.
    let probe = Secret {
        metadata: crate::build::namespaced_meta(identity, name.to_owned()),
        ..Secret::default()
    };
    if crate::controller::apply::delete_managed_child(secrets, &probe, metrics).await? {
        info!(identity = %format!("{}/{}", identity.namespace().unwrap_or_default(), identity.name_any()), secret = %name, "deleted the token Secret it no longer uses");
    }
    Ok(())
}
