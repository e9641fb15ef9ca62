//! Objects winflow would write that someone else owns: conflicts, left untouched.

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use winflow::api::{GMSACredentialSpec, WindowsTaskIdentity};

use crate::support::{self, TestEnv, wait_until};
use crate::{RESYNC, TIMEOUT, create, identity, wait_condition};

#[tokio::test]
async fn unmanaged_objects_are_conflicts_and_stay_untouched() {
    let env = TestEnv::new("conflict").await;
    let specs: Api<GMSACredentialSpec> = Api::all(env.client.clone());
    let foreign_name = format!("{}.reports", env.namespace);
    let foreign = GMSACredentialSpec::new(
        ObjectMeta {
            name: Some(foreign_name.clone()),
            labels: Some([("owner".to_owned(), "platform-team".to_owned())].into()),
            ..Default::default()
        },
        json!({"CmsPlugins": ["ActiveDirectory"], "DomainJoinConfig": {"MachineAccountName": "someone-else"}}),
    );
    let foreign = specs.create(&PostParams::default(), &foreign).await.unwrap();
    // An existing service account that winflow must use but never take over.
    let own_sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some("reports".into()),
            labels: Some([("team".to_owned(), "finance".to_owned())].into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let own_sa = env
        .api::<ServiceAccount>()
        .create(&PostParams::default(), &own_sa)
        .await
        .unwrap();

    let operator = env.start_operator(RESYNC);
    create(&env, &identity("reports", "svc-reports")).await.unwrap();
    let identity = wait_condition(&env, "reports", "CredentialSpecReady", "False").await;
    let c = support::condition(&identity, "CredentialSpecReady").unwrap();
    assert_eq!(c.reason, "Conflict");
    assert!(c.message.contains(&foreign_name), "{}", c.message);
    let ready = support::condition(&identity, "Ready").unwrap();
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "Conflict"));
    let access = wait_condition(&env, "reports", "AccessGranted", "True").await;
    assert!(
        support::condition(&access, "AccessGranted")
            .unwrap()
            .message
            .contains("does not manage")
    );

    let after = specs.get(&foreign_name).await.unwrap();
    assert_eq!(
        after.metadata.resource_version, foreign.metadata.resource_version,
        "the foreign credential spec was not written"
    );
    let sa_after = env.api::<ServiceAccount>().get("reports").await.unwrap();
    assert!(
        sa_after.labels().get("app.kubernetes.io/managed-by").is_none(),
        "the service account was not taken over"
    );
    assert!(sa_after.owner_references().is_empty());
    assert_eq!(sa_after.labels(), own_sa.labels());

    let events: Api<Event> = env.api();
    wait_until("Conflict warning event", TIMEOUT, || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("Conflict") && e.type_.as_deref() == Some("Warning"))
    })
    .await;

    // Deleting the identity leaves the foreign credential spec alone.
    env.api::<WindowsTaskIdentity>()
        .delete("reports", &DeleteParams::default())
        .await
        .unwrap();
    wait_until("identity gone", TIMEOUT, || async {
        env.api::<WindowsTaskIdentity>()
            .get_opt("reports")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    let still_there = specs.get(&foreign_name).await.unwrap();
    assert_eq!(still_there.metadata.resource_version, foreign.metadata.resource_version);
    specs.delete(&foreign_name, &DeleteParams::default()).await.unwrap();
    operator.stop().await;
}
