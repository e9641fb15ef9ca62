//! Pods that predate an identity: created before it (and before its share), they name its
//! future token Secret, its client secret or its share's claim. The webhook never saw them
//! reach for those; the identity controller finds them in its pod cache, reports them, and
//! keeps the token out of a Secret that pods other than the identity's own name. Against a
//! real control plane and a real OpenID provider.

use winflow_test_support as support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, PostParams};
use serde_json::{Value, json};
use support::identities::identity_with_token;
use support::oidc::{OidcProvider, ProviderConfig};
use support::{TestEnv, wait_until};
use winflow::api::identity::ExposedPod;
use winflow::api::share::{LocalSecretReference, WindowsShareSpec};
use winflow::api::{WindowsShare, WindowsTaskIdentity};

const CLIENT_SECRET: &str = "s3cret-c1ient-value-for-predating";
const TIMEOUT: Duration = Duration::from_secs(90);

/// An unscheduled pod (there is no kubelet: it stays Pending) with `spec` fields added.
fn pod(name: &str, identity: Option<&str>, spec: Value) -> Value {
    let labels = identity.map_or_else(|| json!({}), |i| json!({"winflow.io/identity": i}));
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"automountServiceAccountToken": false,
                 "containers": [{"name": "base", "image": "registry.example.com/app:1"}]}
    });
    for (key, value) in spec.as_object().unwrap() {
        pod["spec"][key] = value.clone();
    }
    pod
}

fn secret_volume(secret: &str) -> Value {
    json!({"volumes": [{"name": "token", "secret": {"secretName": secret}}]})
}

async fn create(env: &TestEnv, pod: Value) {
    support::create_pod(&env.client, &env.namespace, pod).await.unwrap();
}

async fn delete_pod(env: &TestEnv, name: &str) {
    env.api::<Pod>()
        .delete(name, &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
}

/// The access token the Secret holds; empty when it holds none or does not exist.
async fn held_token(env: &TestEnv, name: &str) -> String {
    let secret = env.api::<Secret>().get_opt(name).await.unwrap();
    let token = secret.and_then(|s| s.data?.get("access_token").cloned());
    token.map(|t| String::from_utf8(t.0).unwrap()).unwrap_or_default()
}

fn exposed(identity: &WindowsTaskIdentity) -> Vec<ExposedPod> {
    let exposure = identity.status.as_ref().and_then(|s| s.exposure.clone());
    exposure.map(|e| e.examples).unwrap_or_default()
}

#[tokio::test]
async fn pods_that_predate_an_identity_are_reported_and_keep_its_token_out_until_they_go() {
    let env = TestEnv::new("predating").await;
    let provider = OidcProvider::start(ProviderConfig::with_client(
        3600,
        "reports",
        CLIENT_SECRET,
        "reports.read",
    ))
    .await;
    support::create_client_secret(&env, "reports-oidc", CLIENT_SECRET).await;

    // The pods come first, unlabelled, naming what the identity and its share will name.
    create(&env, pod("mounts-token", None, secret_volume("reports-token"))).await;
    let client_secret_env = json!({"containers": [{"name": "base", "image": "registry.example.com/app:1",
        "env": [{"name": "S", "valueFrom": {"secretKeyRef": {"name": "reports-oidc", "key": "client-secret"}}}]}]});
    create(&env, pod("reads-client-secret", None, client_secret_env)).await;
    let claim = json!({"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "archive"}}]});
    create(&env, pod("mounts-share", None, claim)).await;
    // The identity's own pod may name its own token: it is what winflow injects.
    create(&env, pod("own-task", Some("reports"), secret_volume("reports-token"))).await;

    let _operator = env.start_operator(Duration::from_secs(300));
    let token = json!({"issuerUrl": provider.issuer(), "clientId": "reports",
        "clientSecretRef": {"name": "reports-oidc", "key": "client-secret"},
        "scopes": ["reports.read"], "minValidity": "2s"});
    let mut identity = identity_with_token("reports", token);
    identity.spec.shares = serde_json::from_value(json!([{"name": "archive", "mountPath": "C:\\archive"}])).unwrap();
    env.api::<WindowsTaskIdentity>()
        .create(&PostParams::default(), &identity)
        .await
        .unwrap();
    let share = WindowsShare::new(
        "archive",
        WindowsShareSpec {
            server: "fs01.corp.example.com".into(),
            share: "archive".into(),
            sub_dir: None,
            credentials_secret_ref: LocalSecretReference {
                name: "archive-smb".into(),
            },
            capacity: "1Gi".into(),
            read_only: true,
        },
    );
    env.api::<WindowsShare>()
        .create(&PostParams::default(), &share)
        .await
        .unwrap();

    let reported = wait_until("the pods reported and the token kept out", TIMEOUT, || async {
        let identity = env.api::<WindowsTaskIdentity>().get("reports").await.ok()?;
        let contained = support::condition(&identity, "CredentialsContained")?;
        let token = support::condition(&identity, "TokenReady")?;
        (contained.reason == "ExposedToPods" && token.reason == "Exposed").then_some(identity)
    })
    .await;
    let contained = support::condition(&reported, "CredentialsContained").unwrap();
    assert_eq!(contained.status, "False");
    let pods = exposed(&reported);
    let found: Vec<(&str, &str, &str, &str)> = pods
        .iter()
        .flat_map(|p| {
            p.references
                .iter()
                .map(|r| (p.pod.as_str(), r.kind.as_str(), r.name.as_str(), r.rule.as_str()))
        })
        .collect();
    assert_eq!(
        found,
        [
            ("mounts-share", "PersistentVolumeClaim", "archive", "ShareNotListed"),
            ("mounts-token", "Secret", "reports-token", "TokenSecretNotOwn"),
            ("reads-client-secret", "Secret", "reports-oidc", "ClientSecretReference"),
        ],
        "own-task, the identity's own pod, is not reported"
    );
    assert_eq!(reported.status.as_ref().unwrap().exposure.as_ref().unwrap().pods, 3);
    let token_ready = support::condition(&reported, "TokenReady").unwrap();
    assert_eq!(token_ready.status, "False");
    assert!(
        token_ready.message.contains("(mounts-token)"),
        "only the pod that names the token Secret keeps the token out: {}",
        token_ready.message
    );
    assert_eq!(held_token(&env, "reports-token").await, "", "no token was written");
    let events = env.api::<Event>().list(&ListParams::default()).await.unwrap();
    let warned = events.items.iter().any(|e| {
        e.reason.as_deref() == Some("ExposedToPods")
            && e.type_.as_deref() == Some("Warning")
            && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("reports")
    });
    assert!(warned, "a Warning Event says the credentials are exposed");

    // The pods go: the token is issued and the report clears.
    for name in ["mounts-token", "reads-client-secret", "mounts-share"] {
        delete_pod(&env, name).await;
    }
    let issued: WindowsTaskIdentity =
        support::wait_for_condition(&env, "reports", "TokenReady", "True", Some("TokenIssued")).await;
    let cleared: WindowsTaskIdentity =
        support::wait_for_condition(&env, "reports", "CredentialsContained", "True", Some("NotExposed")).await;
    assert!(cleared.status.as_ref().unwrap().exposure.is_none());
    assert!(issued.status.as_ref().unwrap().token.is_some());
    let token = held_token(&env, "reports-token").await;
    assert!(!token.is_empty());
    assert_eq!(
        provider.introspect("reports", CLIENT_SECRET, &token).await["active"],
        true
    );

    // A pod that names the token Secret later (where nothing denies it) gets the token taken
    // out; it is issued again once the pod is gone.
    create(&env, pod("late", None, secret_volume("reports-token"))).await;
    support::wait_for_condition::<WindowsTaskIdentity>(&env, "reports", "TokenReady", "False", Some("Exposed")).await;
    wait_until("the token taken out of its Secret", TIMEOUT, || async {
        held_token(&env, "reports-token").await.is_empty().then_some(())
    })
    .await;
    let secret = env.api::<Secret>().get("reports-token").await.unwrap();
    let annotations = secret.metadata.annotations.unwrap_or_default();
    assert!(
        annotations.contains_key("winflow.io/token-removed-at"),
        "{annotations:?}"
    );
    delete_pod(&env, "late").await;
    support::wait_for_condition::<WindowsTaskIdentity>(&env, "reports", "TokenReady", "True", Some("TokenIssued"))
        .await;
    assert!(!held_token(&env, "reports-token").await.is_empty());
}
