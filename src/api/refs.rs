//! What each winflow resource names in its namespace: the Secrets (and what each is for), the
//! claims and the service account. The webhook's protected list, the controller's triggers,
//! the token issuer and the exposure report all ask here, so they cannot drift apart.

use super::{WindowsShare, WindowsTaskIdentity};
use crate::names::token_secret_name;

/// Keys of the token Secret, as winflow writes them and hands them to task pods.
pub const ACCESS_TOKEN_KEY: &str = "access_token";
pub const TOKEN_TYPE_KEY: &str = "token_type";
pub const EXPIRES_AT_KEY: &str = "expires_at";

/// What a Secret named by a winflow resource is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SecretUse {
    /// An identity's OIDC token (`spec.token.secretName`, default `<name>-token`): winflow
    /// writes it, the identity's own pods read it.
    Token,
    /// An identity's OIDC client secret (`spec.token.clientSecretRef`): only winflow reads it.
    ClientSecret,
    /// An identity's host account Secret (`spec.hostAccount.kubernetesSecret`): only the node's
    /// credential guard reads it.
    HostAccount,
    /// A share's SMB credentials (`spec.credentialsSecretRef`): only the SMB CSI driver reads
    /// them.
    ShareCredentials,
}

/// A Secret a resource names, what for, and the key it reads when it names one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretRef {
    pub name: String,
    pub what: SecretUse,
    pub key: Option<String>,
}

impl SecretRef {
    fn new(name: &str, what: SecretUse) -> Self {
        Self {
            name: name.to_owned(),
            what,
            key: None,
        }
    }
}

/// The identity's token Secret, when it has a token.
pub fn token_secret(identity: &WindowsTaskIdentity) -> Option<String> {
    let token = identity.spec.token.as_ref()?;
    Some(token_secret_name(
        token.secret_name.as_deref(),
        identity.metadata.name.as_deref().unwrap_or_default(),
    ))
}

/// Every Secret the identity names: its token Secret, its client secret, its host account
/// Secret.
pub fn identity_secrets(identity: &WindowsTaskIdentity) -> Vec<SecretRef> {
    let spec = &identity.spec;
    let token = spec.token.as_ref();
    let client_secret = token.and_then(|t| t.client_secret_ref.as_ref()).map(|r| SecretRef {
        key: Some(r.key.clone()),
        ..SecretRef::new(&r.name, SecretUse::ClientSecret)
    });
    let host_account = spec.host_account.as_ref().and_then(|h| h.kubernetes_secret.as_ref());
    token_secret(identity)
        .map(|name| SecretRef::new(&name, SecretUse::Token))
        .into_iter()
        .chain(client_secret)
        .chain(host_account.map(|h| SecretRef::new(&h.name, SecretUse::HostAccount)))
        .collect()
}

/// The claims the identity's pods mount: one per share it lists.
pub fn identity_claims(identity: &WindowsTaskIdentity) -> Vec<String> {
    identity.spec.shares.iter().map(|s| share_claim_name(&s.name)).collect()
}

/// The service account the identity's pods run as.
pub fn identity_service_account(identity: &WindowsTaskIdentity) -> &str {
    &identity.spec.service_account.name
}

/// Every Secret the share names: its SMB credentials.
pub fn share_secrets(share: &WindowsShare) -> Vec<SecretRef> {
    vec![SecretRef::new(
        &share.spec.credentials_secret_ref.name,
        SecretUse::ShareCredentials,
    )]
}

/// The claim a share's pods mount: a share's claim is named after it.
pub fn share_claim(share: &WindowsShare) -> String {
    share_claim_name(share.metadata.name.as_deref().unwrap_or_default())
}

/// The claim of the share of that name.
pub fn share_claim_name(share: &str) -> String {
    share.to_owned()
}

#[cfg(test)]
mod tests;
