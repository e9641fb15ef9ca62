//! WindowsTaskIdentity against a real kube-apiserver + controller-manager: one test binary,
//! one control plane, a module per scenario; the helpers they share are here.

use winflow_test_support as support;

mod children;
mod conflicts;
mod problems;
mod rbac;
mod templates;
mod writes;

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, ServiceAccount};
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use support::TestEnv;
use winflow::api::{GMSACredentialSpec, WindowsTaskIdentity};

const TIMEOUT: Duration = Duration::from_secs(60);
const RESYNC: Duration = Duration::from_secs(300);

fn example(file: &str) -> WindowsTaskIdentity {
    let text = std::fs::read_to_string(format!("{}/examples/{file}", support::REPO)).unwrap();
    serde_yaml_ng::from_str(&text).unwrap()
}

/// The domain-joined example under another name and account.
fn identity(name: &str, account: &str) -> WindowsTaskIdentity {
    let mut identity = example("identity-domain-joined.yaml");
    identity.metadata.name = Some(name.to_owned());
    identity.spec.gmsa.account = account.to_owned();
    identity.spec.gmsa.additional_accounts.clear();
    identity.spec.shares.clear();
    identity.spec.service_account.name = name.to_owned();
    identity
}

/// Creates the Secret and the WindowsShare of `examples/share-reports.yaml`, which the
/// domain-joined example mounts.
async fn create_example_share(env: &TestEnv) {
    support::apply_file(env, "examples/share-reports.yaml").await;
}

async fn create(env: &TestEnv, identity: &WindowsTaskIdentity) -> Result<WindowsTaskIdentity, kube::Error> {
    env.api::<WindowsTaskIdentity>()
        .create(&PostParams::default(), identity)
        .await
}

async fn wait_condition(env: &TestEnv, name: &str, type_: &str, status: &str) -> WindowsTaskIdentity {
    support::wait_for_condition(env, name, type_, status, None).await
}

async fn wait_ready(env: &TestEnv, name: &str) -> WindowsTaskIdentity {
    wait_condition(env, name, "Ready", "True").await
}

async fn credential_spec(env: &TestEnv, name: &str) -> Option<GMSACredentialSpec> {
    Api::<GMSACredentialSpec>::all(env.client.clone())
        .get_opt(&winflow::names::credential_spec_name(&env.namespace, name))
        .await
        .unwrap()
}

/// A service account that winflow does not manage.
async fn create_service_account(env: &TestEnv, name: &str) {
    let account = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    env.api::<ServiceAccount>()
        .create(&PostParams::default(), &account)
        .await
        .unwrap();
}

fn template(config_map: &ConfigMap, key: &str) -> Pod {
    let yaml = &config_map.data.as_ref().unwrap()[key];
    serde_yaml_ng::from_str(yaml).unwrap_or_else(|e| panic!("{key} is not a Pod manifest: {e}"))
}
