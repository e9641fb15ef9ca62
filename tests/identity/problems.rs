//! Identities that cannot become Ready: refused by the API server, or reported by winflow
//! until fixed, while the others carry on.

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::ResourceExt;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use winflow::api::WindowsTaskIdentity;
use winflow::api::identity::KubernetesSecretHostAccount;

use crate::support::{self, TestEnv};
use crate::{RESYNC, create, create_service_account, credential_spec, example, identity, wait_condition, wait_ready};

#[tokio::test]
async fn invalid_identities_are_refused_or_reported_and_others_carry_on() {
    let env = TestEnv::new("invalid").await;
    let operator = env.start_operator(RESYNC);

    // Rules the schema states are enforced by the API server itself.
    let mut bad_sid = identity("bad-sid", "svc-a");
    bad_sid.spec.domain.sid = "S-1-5-32-544".into();
    let err = create(&env, &bad_sid).await.unwrap_err().to_string();
    assert!(err.contains("spec.domain.sid"), "{err}");
    let mut long_account = identity("long-account", "svc-a");
    long_account.spec.gmsa.account = "svc-account-longer-than-15".into();
    let err = create(&env, &long_account).await.unwrap_err().to_string();
    assert!(err.contains("spec.gmsa.account"), "{err}");
    let mut two_kinds = example("identity-azure-key-vault.yaml");
    two_kinds.metadata.name = Some("two-kinds".into());
    two_kinds.spec.host_account.as_mut().unwrap().kubernetes_secret =
        Some(KubernetesSecretHostAccount { name: "ccg".into() });
    let err = create(&env, &two_kinds).await.unwrap_err().to_string();
    assert!(err.contains("spec.hostAccount"), "{err}");

    // Rules the schema cannot state on every supported server are reported by the operator.
    let mut admin = identity("admin", "svc-admin");
    admin.spec.pod.run_as_user_name = "ContainerAdministrator".into();
    create(&env, &admin).await.unwrap();
    let mut bad_glob = identity("bad-glob", "svc-glob");
    bad_glob.spec.airflow.dag_ids = vec!["finance_[".into()];
    create(&env, &bad_glob).await.unwrap();
    create(&env, &identity("valid", "svc-valid")).await.unwrap();

    let admin = wait_condition(&env, "admin", "Ready", "False").await;
    let ready = support::condition(&admin, "Ready").unwrap();
    assert_eq!(ready.reason, "InvalidSpec");
    assert!(
        ready.message.contains("spec.pod.runAsUserName") && ready.message.contains("allowAdministrator"),
        "{}",
        ready.message
    );
    assert!(
        credential_spec(&env, "admin").await.is_none(),
        "nothing is created for an invalid identity"
    );
    let bad_glob = wait_condition(&env, "bad-glob", "Ready", "False").await;
    assert!(
        support::condition(&bad_glob, "Ready")
            .unwrap()
            .message
            .contains("spec.airflow.dagIds[0]")
    );
    wait_ready(&env, "valid").await;

    // Fixing the spec makes it Ready.
    env.api::<WindowsTaskIdentity>()
        .patch(
            "admin",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"pod": {"allowAdministrator": true}}})),
        )
        .await
        .unwrap();
    wait_ready(&env, "admin").await;
    operator.stop().await;
}

#[tokio::test]
async fn missing_service_account_is_reported_until_it_exists() {
    let env = TestEnv::new("sa").await;
    let operator = env.start_operator(RESYNC);
    let mut byo = identity("byo", "svc-byo");
    byo.spec.service_account.create = false;
    byo.spec.service_account.name = "airflow-worker".into();
    create(&env, &byo).await.unwrap();
    let identity = wait_condition(&env, "byo", "AccessGranted", "False").await;
    assert_eq!(
        support::condition(&identity, "AccessGranted").unwrap().reason,
        "ServiceAccountMissing"
    );
    create_service_account(&env, "airflow-worker").await;
    wait_ready(&env, "byo").await;
    let sa = env.api::<ServiceAccount>().get("airflow-worker").await.unwrap();
    assert!(
        sa.labels().is_empty(),
        "a service account winflow does not create stays as it is"
    );
    operator.stop().await;
}
