//! What an identity wants of its token, as the identity reconcile tells the issuer: the
//! settings, the Secret, the credentials and a digest of them all. Reading the client secret's
//! metadata is the only API call; the provider is never asked here.

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, ResourceExt};

use super::{Failure, Reason, secret};
use crate::api::WindowsTaskIdentity;
use crate::api::identity::TokenSettings;
use crate::api::refs::{self, SecretRef, SecretUse};

/// The client credentials a token is requested with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Credentials {
    /// The Secret and key of the client secret; its value is read only to request a token.
    Secret { name: String, key: String, version: String },
    ServiceAccount {
        name: String,
        audience: String,
        expiration_seconds: i64,
    },
}

impl Credentials {
    /// A version that changes with the credentials (never their value).
    fn version(&self) -> String {
        match self {
            Credentials::Secret { version, .. } => format!("secret:{version}"),
            Credentials::ServiceAccount { name, .. } => format!("serviceaccount:{name}"),
        }
    }
}

/// One identity's wish, as of one reconcile.
#[derive(Clone, Debug)]
pub(super) struct Want {
    /// The identity as the reconcile saw it: the token Secret's owner.
    pub identity: WindowsTaskIdentity,
    pub settings: TokenSettings,
    pub secret_name: String,
    /// The credentials, or why there are none (a missing client secret).
    pub credentials: Result<Credentials, Failure>,
    /// Digest of the settings and the credentials' version: the token in the Secret was
    /// requested with these when its annotation says so.
    pub inputs: String,
    /// Pods that are not the identity's own and name its token Secret: while there are any,
    /// no token is written to it.
    pub exposed_to: Vec<String>,
}

/// Which wish a report answers: a report for other inputs says nothing about the current ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Version {
    uid: String,
    secret_name: String,
    inputs: String,
    exposed_to: Vec<String>,
}

impl Want {
    /// What `identity` (with `settings` as its `spec.token`) wants now, with the pods that
    /// are not its own and name its token Secret.
    pub(super) async fn of(
        identity: &WindowsTaskIdentity,
        settings: &TokenSettings,
        exposed_to: &[String],
        client: &Client,
    ) -> Result<Want, kube::Error> {
        let namespace = identity.namespace().unwrap_or_default();
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
        let credentials = credentials(identity, settings, &secrets).await?;
        let inputs = secret::inputs_digest(
            settings,
            &credentials
                .as_ref()
                .map_or_else(|_| "missing".to_owned(), Credentials::version),
        );
        Ok(Want {
            identity: identity.clone(),
            settings: settings.clone(),
            secret_name: secret::secret_name(settings, &identity.name_any()),
            credentials,
            inputs,
            exposed_to: exposed_to.to_vec(),
        })
    }

    pub(super) fn version(&self) -> Version {
        Version {
            uid: self.uid(),
            secret_name: self.secret_name.clone(),
            inputs: self.inputs.clone(),
            exposed_to: self.exposed_to.clone(),
        }
    }

    pub(super) fn uid(&self) -> String {
        self.identity.uid().unwrap_or_default()
    }

    pub(super) fn namespace(&self) -> String {
        self.identity.namespace().unwrap_or_default()
    }

    /// `namespace/name`, as logs name the identity.
    pub(super) fn key(&self) -> String {
        format!("{}/{}", self.namespace(), self.identity.name_any())
    }
}

/// Names the client secret (by its Secret's metadata: the value stays unread until a token is
/// requested) or the service account whose token is the assertion. A missing Secret is a
/// failure to report, not an error to retry.
async fn credentials(
    identity: &WindowsTaskIdentity,
    settings: &TokenSettings,
    secrets: &Api<Secret>,
) -> Result<Result<Credentials, Failure>, kube::Error> {
    if let Some(workload) = &settings.workload_identity {
        return Ok(Ok(Credentials::ServiceAccount {
            name: refs::identity_service_account(identity).to_owned(),
            audience: workload.audience.clone(),
            expiration_seconds: workload.expiration_seconds,
        }));
    }
    let client_secret = refs::identity_secrets(identity)
        .into_iter()
        .find(|r| r.what == SecretUse::ClientSecret);
    let Some(SecretRef { name, key, .. }) = client_secret else {
        return Ok(Err(Failure::new(
            Reason::InvalidClient,
            "spec.token sets neither clientSecretRef nor workloadIdentity".to_owned(),
        )));
    };
    let Some(found) = secrets.get_metadata_opt(&name).await? else {
        return Ok(Err(secret_missing(&name, &identity.namespace().unwrap_or_default())));
    };
    Ok(Ok(Credentials::Secret {
        name,
        key: key.unwrap_or_default(),
        version: found.resource_version().unwrap_or_default(),
    }))
}

pub(super) fn secret_missing(name: &str, namespace: &str) -> Failure {
    Failure::new(
        Reason::SecretMissing,
        format!("Secret {name} (spec.token.clientSecretRef) does not exist in namespace {namespace}"),
    )
}
