//! A prerequisite missing from the cluster is said on the resource: without the
//! GMSACredentialSpec CRD (windows.k8s.io, which the chart's NOTES ask users to install), an
//! identity is `CredentialSpecReady=False` and `Ready=False` with reason `PrerequisiteMissing`,
//! a message that says what to install and an Event; once the CRD is applied it converges by
//! itself. Its own test binary, so its own control plane: the CRD is removed here, which no
//! other test may see.

use winflow_test_support as support;

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client};
use support::{REPO, TestEnv, wait_until};
use winflow::api::{GMSACredentialSpec, WindowsTaskIdentity};

const CRD: &str = "gmsacredentialspecs.windows.k8s.io";
const TIMEOUT: Duration = Duration::from_secs(90);

async fn remove_gmsa_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.delete(CRD, &DeleteParams::default()).await.unwrap();
    wait_until("the GMSACredentialSpec CRD gone", TIMEOUT, || {
        let crds = crds.clone();
        async move { crds.get_opt(CRD).await.unwrap().is_none().then_some(()) }
    })
    .await;
}

async fn apply_gmsa_crd(client: &Client) {
    let text = std::fs::read_to_string(Path::new(REPO).join("crds").join(format!("{CRD}.yaml"))).unwrap();
    let crd = support::crd_for_server(client, serde_yaml_ng::from_str(&text).unwrap()).await;
    Api::<CustomResourceDefinition>::all(client.clone())
        .patch(CRD, &PatchParams::apply("winflow-tests").force(), &Patch::Apply(&crd))
        .await
        .unwrap();
}

#[tokio::test]
async fn without_the_gmsa_crd_the_identity_says_what_to_install_and_converges_once_it_is_there() {
    let env = TestEnv::new("prerequisites").await;
    remove_gmsa_crd(&env.client).await;

    let operator = env.start_operator(Duration::from_secs(300));
    support::apply_file(&env, "examples/identity-azure-key-vault.yaml").await;
    let identity: WindowsTaskIdentity = support::wait_for_condition(
        &env,
        "payroll-export",
        "CredentialSpecReady",
        "False",
        Some("PrerequisiteMissing"),
    )
    .await;
    let credential_spec = support::condition(&identity, "CredentialSpecReady").unwrap();
    assert!(
        credential_spec.message.contains("GMSACredentialSpec")
            && credential_spec.message.contains(CRD)
            && credential_spec.message.contains("install"),
        "{}",
        credential_spec.message
    );
    let ready = support::condition(&identity, "Ready").unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "PrerequisiteMissing"),
        "{}",
        ready.message
    );
    // The same words as an Event on the identity, for `kubectl describe`.
    let events: Api<Event> = env.api();
    let event = wait_until("an Event says what is missing", TIMEOUT, || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items.into_iter().find(|e| {
                e.involved_object.name.as_deref() == Some("payroll-export")
                    && e.reason.as_deref() == Some("PrerequisiteMissing")
            })
        }
    })
    .await;
    assert!(event.message.unwrap_or_default().contains(CRD));

    apply_gmsa_crd(&env.client).await;
    support::wait_for_condition::<WindowsTaskIdentity>(&env, "payroll-export", "Ready", "True", None).await;
    let specs: Api<GMSACredentialSpec> = Api::all(env.client.clone());
    let name = format!("{}.payroll-export", env.namespace);
    assert!(
        specs.get_opt(&name).await.unwrap().is_some(),
        "the credential spec {name} was created"
    );
    operator.stop().await;
}
