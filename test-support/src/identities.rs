//! Identities for tests that create one or a few: the Azure Key Vault example under another
//! name, with or without token settings.

use serde_json::Value;
use winflow::api::WindowsTaskIdentity;

/// The Azure Key Vault example (no share, no token) as `name`, with a service account of the
/// same name.
pub fn example_identity(name: &str) -> WindowsTaskIdentity {
    let path = format!("{}/examples/identity-azure-key-vault.yaml", crate::REPO);
    let mut identity: WindowsTaskIdentity = serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    identity.metadata.name = Some(name.to_owned());
    identity.spec.service_account.name = name.to_owned();
    identity
}

/// The example as `name` with `token` (`spec.token`, as the API takes it) as its token settings.
pub fn identity_with_token(name: &str, token: Value) -> WindowsTaskIdentity {
    let mut identity = example_identity(name);
    identity.spec.token = Some(serde_json::from_value(token).expect("token settings of the API"));
    identity
}
