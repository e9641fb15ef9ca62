use super::*;
use crate::fixtures;
use kube::CustomResourceExt;
use serde_json::{Value, json};

/// Spec properties whose name says "secret" but that name no Kubernetes Secret winflow keeps
/// or guards, and why. Everything else whose name says "secret" must come out of this module.
const NOT_GUARDED: &[(&str, &str)] = &[
    (
        "spec.hostAccount.azureKeyVault.secretUri",
        "a Key Vault URI, outside Kubernetes",
    ),
    (
        "spec.hostAccount.awsSecretsManager",
        "the AWS Secrets Manager plugin's settings (a secret ARN), outside Kubernetes",
    ),
    (
        "spec.pod.env[].valueFrom.secretKeyRef",
        "a Secret of the user's that the templates hand to the identity's own tasks, not a credential winflow keeps",
    ),
];

/// Every property under the CRD's `spec` whose name contains "secret" (any case), as a dotted
/// path (`[]` for array items), with its schema. The rule is by name: Kubernetes and winflow
/// name every Secret reference so (`secretName`, `...SecretRef`, `kubernetesSecret`,
/// `secretKeyRef`); a reference named otherwise would escape it, which review must catch.
fn secret_properties(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Vec<(String, Value)> {
    let schema = serde_json::to_value(&crd.spec.versions[0].schema).unwrap();
    let spec = &schema["openAPIV3Schema"]["properties"]["spec"];
    let mut found = Vec::new();
    walk(spec, "spec", &mut found);
    found
}

fn walk(schema: &Value, path: &str, found: &mut Vec<(String, Value)>) {
    if let Some(items) = schema.get("items") {
        walk(items, &format!("{path}[]"), found);
    }
    for (name, property) in schema
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let path = format!("{path}.{name}");
        if name.to_lowercase().contains("secret") {
            found.push((path, property.clone()));
        } else {
            walk(property, &path, found);
        }
    }
}

/// A value for a Secret reference of this schema: the name itself, or an object with it (and
/// every other required string filled in).
fn reference_to(marker: &str, schema: &Value) -> Value {
    if schema["type"] == "string" {
        return json!(marker);
    }
    let mut object = json!({"name": marker});
    for required in schema["required"].as_array().into_iter().flatten() {
        let key = required.as_str().unwrap();
        if key != "name" {
            object[key] = json!("x");
        }
    }
    object
}

/// `document` with `value` at the dotted `path` (below the root), creating what is missing.
fn set(document: &mut Value, path: &str, value: Value) {
    let mut at = document;
    let segments: Vec<&str> = path.split('.').collect();
    for segment in &segments[..segments.len() - 1] {
        at = at
            .as_object_mut()
            .unwrap()
            .entry(segment.to_string())
            .or_insert_with(|| json!({}));
    }
    at[segments[segments.len() - 1]] = value;
}

/// Each Secret property of a CRD, set to its own name in `base`, is reported by `named`.
fn every_secret_property_is_reported<K>(base: &K, named: impl Fn(&K) -> Vec<SecretRef>) -> usize
where
    K: CustomResourceExt + serde::Serialize + serde::de::DeserializeOwned,
{
    let mut checked = 0;
    for (path, schema) in secret_properties(&K::crd()) {
        if NOT_GUARDED.iter().any(|(excluded, _)| *excluded == path) {
            continue;
        }
        assert!(
            !path.contains("[]"),
            "{path}: a Secret reference inside a list; teach this test and api::refs about it"
        );
        let marker = format!("marker-{}", path.replace(['.', '[', ']'], "-").to_lowercase());
        let mut document = serde_json::to_value(base).unwrap();
        set(&mut document, &path, reference_to(&marker, &schema));
        let object: K = serde_json::from_value(document).unwrap();
        let names: Vec<String> = named(&object).into_iter().map(|r| r.name).collect();
        assert!(
            names.contains(&marker),
            "{path} names a Secret that api::refs does not report (it reports {names:?}); add it there, or to NOT_GUARDED with the reason"
        );
        checked += 1;
    }
    checked
}

#[test]
fn every_secret_an_identity_names_is_reported() {
    let checked = every_secret_property_is_reported(&fixtures::key_vault_with_token(), identity_secrets);
    assert_eq!(
        checked, 3,
        "token.secretName, token.clientSecretRef, hostAccount.kubernetesSecret"
    );
    let found: Vec<String> = secret_properties(&WindowsTaskIdentity::crd())
        .into_iter()
        .map(|(path, _)| path)
        .collect();
    for (excluded, _) in NOT_GUARDED {
        assert!(found.iter().any(|p| p == excluded), "{excluded} is gone from the CRD");
    }
}

#[test]
fn every_secret_a_share_names_is_reported() {
    let checked = every_secret_property_is_reported(&fixtures::share(), share_secrets);
    assert_eq!(checked, 1, "credentialsSecretRef");
}

#[test]
fn an_identity_names_its_token_client_and_host_account_secrets_its_claims_and_account() {
    let mut identity = fixtures::key_vault_with_token();
    assert_eq!(
        identity_secrets(&identity),
        [
            SecretRef::new("payroll-export-token", SecretUse::Token),
            SecretRef {
                key: Some("client-secret".into()),
                ..SecretRef::new("payroll-oidc", SecretUse::ClientSecret)
            },
        ]
    );
    identity.spec.token.as_mut().unwrap().secret_name = Some("custom".into());
    assert_eq!(token_secret(&identity).as_deref(), Some("custom"));
    assert_eq!(token_secret(&fixtures::key_vault()), None);
    assert!(identity_secrets(&fixtures::key_vault()).is_empty());
    assert_eq!(identity_service_account(&identity), identity.spec.service_account.name);
    identity.spec.shares = serde_json::from_value(json!([{"name": "reports", "mountPath": "C:\\r"}])).unwrap();
    assert_eq!(identity_claims(&identity), ["reports"]);
    let share = fixtures::share();
    assert_eq!(share_claim(&share), share.metadata.name.clone().unwrap());
}
