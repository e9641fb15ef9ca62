//! Identities for unit tests, read from `examples/` so the examples stay valid.

use crate::api::{WindowsShare, WindowsTaskIdentity, WindowsTaskIdentitySpec};

pub(crate) fn domain_joined() -> WindowsTaskIdentity {
    with_namespace(serde_yaml_ng::from_str(include_str!("../examples/identity-domain-joined.yaml")).unwrap())
}

pub(crate) fn key_vault() -> WindowsTaskIdentity {
    with_namespace(serde_yaml_ng::from_str(include_str!("../examples/identity-azure-key-vault.yaml")).unwrap())
}

pub(crate) fn domain_joined_spec() -> WindowsTaskIdentitySpec {
    domain_joined().spec
}

pub(crate) fn key_vault_spec() -> WindowsTaskIdentitySpec {
    key_vault().spec
}

fn with_namespace(mut identity: WindowsTaskIdentity) -> WindowsTaskIdentity {
    identity.metadata.namespace = Some("airflow".into());
    identity.metadata.uid = Some("5b1d7c44-2f1e-4f7a-9a57-0c7c7f1d2e3a".into());
    identity
}

/// The WindowsShare of `examples/share-reports.yaml` (its second document).
pub(crate) fn share() -> WindowsShare {
    let text = include_str!("../examples/share-reports.yaml");
    let document = serde_yaml_ng::Deserializer::from_str(text).nth(1).unwrap();
    let mut share: WindowsShare = serde::Deserialize::deserialize(document).unwrap();
    share.metadata.namespace = Some("airflow".into());
    share.metadata.uid = Some("0f5c8a51-6c0e-4a8e-8d0b-6a3e2c1f9b7d".into());
    share
}

/// Token settings for an Entra ID app registration authenticated by client secret.
pub(crate) fn token_settings() -> crate::api::identity::TokenSettings {
    serde_yaml_ng::from_str(
        "issuerUrl: https://login.microsoftonline.com/6f1c2b1e-0000-4000-8000-000000000001/v2.0\n\
         clientId: 3c9a7e55-0000-4000-8000-000000000002\n\
         clientSecretRef: {name: payroll-oidc, key: client-secret}\n\
         scopes: [api://payroll/.default]\n",
    )
    .unwrap()
}

/// The Key Vault identity of the examples with [`token_settings`].
pub(crate) fn key_vault_with_token() -> WindowsTaskIdentity {
    let mut identity = key_vault();
    identity.spec.token = Some(token_settings());
    identity
}
