//! Who may use what: the gMSA Role of the identity's service account and the use Role of
//! its creators, as the API server's own authorizer answers; the Enforced condition.

use std::collections::BTreeSet;

use k8s_openapi::api::authorization::v1::{LocalSubjectAccessReview, ResourceAttributes, SubjectAccessReviewSpec};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use winflow::api::WindowsTaskIdentity;

use crate::support::{self, TestEnv, wait_until};
use crate::{RESYNC, TIMEOUT, create, create_service_account, identity, wait_ready};

async fn may_use(env: &TestEnv, service_account: &str, credential_spec: &str) -> bool {
    may_use_resource(
        env,
        service_account,
        ("windows.k8s.io", "gmsacredentialspecs"),
        credential_spec,
    )
    .await
}

/// Whether the API server's authorizer lets service account `service_account` of the test's
/// namespace `use` the object `name` of `(group, resource)` there.
async fn may_use_resource(env: &TestEnv, service_account: &str, (group, resource): (&str, &str), name: &str) -> bool {
    let review = LocalSubjectAccessReview {
        metadata: ObjectMeta {
            namespace: Some(env.namespace.clone()),
            ..Default::default()
        },
        spec: SubjectAccessReviewSpec {
            user: Some(format!("system:serviceaccount:{}:{service_account}", env.namespace)),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{}", env.namespace),
            ]),
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(env.namespace.clone()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                name: Some(name.into()),
                verb: Some("use".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        status: None,
    };
    let api: Api<LocalSubjectAccessReview> = env.api();
    let answer = api.create(&PostParams::default(), &review).await.unwrap();
    answer.status.unwrap().allowed
}

#[tokio::test]
async fn only_the_identity_service_account_may_use_its_credential_spec() {
    let env = TestEnv::new("access").await;
    let operator = env.start_operator(RESYNC);
    // /readyz turns ready once every controller's cache is filled.
    wait_until("operator ready", TIMEOUT, || async {
        operator.readiness.is_ready().then_some(())
    })
    .await;
    create(&env, &identity("reports", "svc-reports")).await.unwrap();
    create(&env, &identity("payroll", "svc-payroll")).await.unwrap();
    wait_ready(&env, "reports").await;
    wait_ready(&env, "payroll").await;
    create_service_account(&env, "bystander").await;

    let reports_spec = format!("{}.reports", env.namespace);
    let payroll_spec = format!("{}.payroll", env.namespace);
    assert!(
        may_use(&env, "reports", &reports_spec).await,
        "the identity's service account may use its credential spec"
    );
    assert!(
        !may_use(&env, "bystander", &reports_spec).await,
        "another service account may not"
    );
    assert!(
        !may_use(&env, "reports", &payroll_spec).await,
        "the identity may not use another identity's credential spec"
    );
    assert!(may_use(&env, "payroll", &payroll_spec).await);

    let role = env.api::<Role>().get("winflow-reports-gmsa").await.unwrap();
    let rules = role.rules.unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].verbs, ["use"]);
    assert_eq!(rules[0].resource_names.as_deref(), Some(&[reports_spec][..]));
    let binding = env.api::<RoleBinding>().get("winflow-reports-gmsa").await.unwrap();
    let subjects = binding.subjects.unwrap();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].name, "reports");
    operator.stop().await;
}

const IDENTITIES: (&str, &str) = ("winflow.io", "windowstaskidentities");

/// winflow's labels and the identity's controller owner reference, on a child of `identity`.
fn assert_owned_by(meta: &ObjectMeta, identity: &WindowsTaskIdentity) {
    let labels = meta.labels.as_ref().unwrap();
    assert_eq!(labels["app.kubernetes.io/managed-by"], "winflow", "{meta:?}");
    assert_eq!(labels["winflow.io/identity"], identity.name_any(), "{meta:?}");
    let owners = meta.owner_references.as_ref().unwrap();
    assert_eq!(owners.len(), 1, "{meta:?}");
    let owner = &owners[0];
    assert_eq!(
        (owner.api_version.as_str(), owner.kind.as_str(), owner.name.as_str()),
        (
            "winflow.io/v1alpha1",
            "WindowsTaskIdentity",
            identity.name_any().as_str()
        )
    );
    assert_eq!(Some(&owner.uid), identity.metadata.uid.as_ref());
    assert_eq!(owner.controller, Some(true));
}

/// The webhook lets a pod use identity N only when its creator may `use`
/// windowstaskidentities/N; winflow keeps the Role that grants exactly that and binds
/// `spec.access.creators` to it, and says on the identity whether its namespace is enforced.
#[tokio::test]
async fn creators_may_use_the_identity_and_enforced_follows_the_namespace_label() {
    let env = TestEnv::new("creators").await;
    let operator = env.start_operator(RESYNC);
    let mut reports = identity("reports", "svc-reports");
    reports.spec.access = Some(
        serde_json::from_value(json!({"creators": [{"kind": "ServiceAccount", "name": "airflow-scheduler"}]})).unwrap(),
    );
    create(&env, &reports).await.unwrap();
    create(&env, &identity("payroll", "svc-payroll")).await.unwrap();
    let reports = wait_ready(&env, "reports").await;
    wait_ready(&env, "payroll").await;

    let role = env.api::<Role>().get("winflow-reports-use").await.unwrap();
    assert_eq!(
        serde_json::to_value(&role.rules).unwrap(),
        json!([{
            "apiGroups": ["winflow.io"],
            "resources": ["windowstaskidentities"],
            "resourceNames": ["reports"],
            "verbs": ["use"]
        }]),
        "exactly one rule: use of this identity"
    );
    assert_owned_by(&role.metadata, &reports);
    let binding = env.api::<RoleBinding>().get("winflow-reports-use").await.unwrap();
    assert_eq!(
        (
            binding.role_ref.api_group.as_str(),
            binding.role_ref.kind.as_str(),
            binding.role_ref.name.as_str()
        ),
        ("rbac.authorization.k8s.io", "Role", "winflow-reports-use")
    );
    assert_eq!(
        serde_json::to_value(&binding.subjects).unwrap(),
        json!([{"kind": "ServiceAccount", "name": "airflow-scheduler", "namespace": env.namespace}])
    );
    assert_owned_by(&binding.metadata, &reports);
    // Without creators the binding is there, binding nobody.
    let payroll_binding = env.api::<RoleBinding>().get("winflow-payroll-use").await.unwrap();
    assert_eq!(payroll_binding.subjects.unwrap_or_default(), []);
    let access = support::condition(&reports, "AccessGranted").unwrap();
    assert!(
        access.message.contains("Role and RoleBinding winflow-reports-gmsa")
            && access.message.contains(&format!(
                "ServiceAccount {}/airflow-scheduler may create this identity's pods through Role and RoleBinding winflow-reports-use",
                env.namespace
            )),
        "{}",
        access.message
    );

    // The API server's own authorizer answers, as the webhook's SubjectAccessReview will ask it.
    assert!(may_use_resource(&env, "airflow-scheduler", IDENTITIES, "reports").await);
    assert!(!may_use_resource(&env, "airflow-worker", IDENTITIES, "reports").await);
    assert!(
        !may_use_resource(&env, "airflow-scheduler", IDENTITIES, "payroll").await,
        "a creator of one identity's pods may not use another identity"
    );
    assert!(
        !may_use_resource(&env, "reports", IDENTITIES, "reports").await,
        "the identity's own service account does not create its pods"
    );

    // Changing the creators changes the binding.
    env.api::<WindowsTaskIdentity>()
        .patch(
            "reports",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"access": {"creators": [
                {"kind": "ServiceAccount", "name": "airflow-worker"},
                {"kind": "Group", "name": "finance-operators"}
            ]}}})),
        )
        .await
        .unwrap();
    let wanted = json!([
        {"kind": "ServiceAccount", "name": "airflow-worker", "namespace": env.namespace},
        {"kind": "Group", "name": "finance-operators", "apiGroup": "rbac.authorization.k8s.io"}
    ]);
    wait_until("the binding names the new creators", TIMEOUT, || async {
        let binding = env.api::<RoleBinding>().get("winflow-reports-use").await.unwrap();
        (serde_json::to_value(&binding.subjects).unwrap() == wanted).then_some(())
    })
    .await;
    assert!(may_use_resource(&env, "airflow-worker", IDENTITIES, "reports").await);
    assert!(!may_use_resource(&env, "airflow-scheduler", IDENTITIES, "reports").await);

    // Enforced follows the namespace's label, outside Ready.
    let enforced = |identity: &WindowsTaskIdentity| {
        let c = support::condition(identity, "Enforced").expect("an Enforced condition");
        (c.status.clone(), c.reason.clone(), c.message.clone())
    };
    let reports = env.api::<WindowsTaskIdentity>().get("reports").await.unwrap();
    let (status, reason, message) = enforced(&reports);
    assert_eq!((status.as_str(), reason.as_str()), ("False", "NamespaceNotEnforced"));
    assert!(
        message.starts_with(&format!(
            "namespace {:?} is not labelled winflow.io/enforce=true",
            env.namespace
        )),
        "{message}"
    );
    support::set_enforce_label(&env, Some("true")).await;
    for name in ["reports", "payroll"] {
        let identity: WindowsTaskIdentity =
            support::wait_for_condition(&env, name, "Enforced", "True", Some("NamespaceEnforced")).await;
        assert_eq!(support::condition(&identity, "Ready").unwrap().status, "True");
    }
    support::set_enforce_label(&env, Some("false")).await;
    let identity: WindowsTaskIdentity =
        support::wait_for_condition(&env, "reports", "Enforced", "False", Some("NamespaceNotEnforced")).await;
    assert_eq!(support::condition(&identity, "Ready").unwrap().status, "True");
    support::set_enforce_label(&env, Some("true")).await;
    support::wait_for_condition::<WindowsTaskIdentity>(&env, "reports", "Enforced", "True", None).await;
    support::set_enforce_label(&env, None).await;
    support::wait_for_condition::<WindowsTaskIdentity>(&env, "reports", "Enforced", "False", None).await;
    // Each change is an Event: Normal when the namespace became enforced, Warning when it
    // stopped being (the Recorder may count repeats in one Event's series).
    let events: Api<Event> = env.api();
    let wanted: BTreeSet<(String, String)> = [("NamespaceEnforced", "Normal"), ("NamespaceNotEnforced", "Warning")]
        .map(|(reason, type_)| (reason.to_owned(), type_.to_owned()))
        .into();
    wait_until("Enforced events", TIMEOUT, || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        let found: BTreeSet<(String, String)> = list
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("reports"))
            .filter(|e| e.note.as_deref().is_some_and(|n| n.starts_with("Enforced: ")))
            .map(|e| (e.reason.unwrap_or_default(), e.type_.unwrap_or_default()))
            .collect();
        (found == wanted).then_some(())
    })
    .await;
    operator.stop().await;
}
