//! Kubeconfigs for clients that are not the admin.

use std::path::PathBuf;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::PostParams;
use serde_json::{Value, json};

use crate::TestEnv;

/// A kubeconfig that authenticates as service account `name` with a token from the
/// TokenRequest API, as a pod of that account would.
pub async fn service_account_kubeconfig(env: &TestEnv, name: &str) -> PathBuf {
    let request: TokenRequest = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(3600),
            bound_object_ref: None,
        },
        ..Default::default()
    };
    let token = env
        .api::<ServiceAccount>()
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    let admin = std::fs::read_to_string(crate::kubeconfig_path()).unwrap();
    let admin: Value = serde_yaml_ng::from_str(&admin).unwrap();
    let cluster = &admin["clusters"][0]["cluster"];
    let kubeconfig = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "local", "cluster": cluster}],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": "local", "user": name, "namespace": env.namespace}}],
        "current-context": name,
    });
    let path = crate::target::tmp_dir().join(format!("{}-{name}.kubeconfig", env.namespace));
    std::fs::write(&path, serde_json::to_string(&kubeconfig).unwrap()).unwrap();
    path
}
