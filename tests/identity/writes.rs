//! The write economy: a converge writes each child once, steady state writes nothing, and a
//! restart loses and duplicates nothing.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use winflow::api::{GMSACredentialSpec, WindowsTaskIdentity};

use crate::support::{self, TestEnv, wait_until};
use crate::{RESYNC, TIMEOUT, create, create_example_share, create_service_account, example, identity, wait_ready};

async fn version_of<K>(api: Api<K>, name: &str) -> Option<String>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.get(name).await.unwrap().meta().resource_version.clone()
}

/// resourceVersions of every identity and every child of it.
async fn resource_versions(env: &TestEnv, names: &[&str]) -> Vec<Option<String>> {
    let mut versions = Vec::new();
    for name in names {
        versions.push(version_of(env.api::<WindowsTaskIdentity>(), name).await);
        versions.push(
            version_of(
                Api::<GMSACredentialSpec>::all(env.client.clone()),
                &winflow::names::credential_spec_name(&env.namespace, name),
            )
            .await,
        );
        for role in [
            winflow::names::gmsa_role_name(name),
            winflow::names::use_role_name(name),
        ] {
            versions.push(version_of(env.api::<Role>(), &role).await);
            versions.push(version_of(env.api::<RoleBinding>(), &role).await);
        }
        versions.push(version_of(env.api::<ServiceAccount>(), name).await);
        versions.push(
            version_of(
                env.api::<ConfigMap>(),
                &winflow::names::pod_templates_config_map_name(name),
            )
            .await,
        );
    }
    versions
}

#[tokio::test]
async fn steady_state_costs_zero_writes() {
    let env = TestEnv::new("steady").await;
    // Resync every second: each resync reconciles every identity again.
    let operator = env.start_operator(Duration::from_secs(1));
    let names = ["steady-a", "steady-b", "steady-c"];
    create_example_share(&env).await;
    for (i, name) in names.iter().enumerate() {
        let mut identity = identity(name, &format!("svc-steady-{i}"));
        if i == 0 {
            identity.spec.shares = example("identity-domain-joined.yaml").spec.shares;
        }
        create(&env, &identity).await.unwrap();
    }
    for name in names {
        wait_ready(&env, name).await;
    }
    // Let the watch events of the operator's own writes settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let writes_before = operator.total_writes();
    let audited_before = operator.audited_writes().await.writes.len();
    let reconciles_before = reconciles(&operator);
    let versions_before = resource_versions(&env, &names).await;
    let shares_before = share_versions(&env).await;

    tokio::time::sleep(Duration::from_secs(6)).await;

    let reconciles_after = reconciles(&operator);
    assert!(
        reconciles_after >= reconciles_before + 3 * names.len() as u64,
        "resyncs ran: {reconciles_before} -> {reconciles_after}"
    );
    assert_eq!(
        operator.total_writes(),
        writes_before,
        "no API writes in steady state\n{}",
        operator.metrics.encode()
    );
    assert_eq!(
        operator.audited_writes().await.writes.len(),
        audited_before,
        "nor did the API server record one"
    );
    assert_eq!(
        resource_versions(&env, &names).await,
        versions_before,
        "no object changed"
    );
    assert_eq!(share_versions(&env).await, shares_before, "no share object changed");
    println!(
        "steady state: {} reconciles, 0 writes",
        reconciles_after - reconciles_before
    );
    operator.stop().await;
}

/// The write economy of a converge (issue 7): each identity costs one apply per child, the
/// finalizer, one status write and one Ready Event, and one reconcile: winflow's own writes
/// start none (without that guard the finalizer and status writes came back as watch events
/// and reconciled each identity again). The identities use a service account they do not
/// create, because the 1.20 controller-manager updates each new ServiceAccount (its token
/// Secret), which is rightly a reason to look again.
#[tokio::test]
async fn converging_writes_each_child_once_and_reconciles_once() {
    let env = TestEnv::new("economy").await;
    create_service_account(&env, "airflow-worker").await;
    let operator = env.start_operator(RESYNC);
    let names: Vec<String> = (0..6).map(|i| format!("economy-{i}")).collect();
    let with_worker_account = |name: &str, i: usize| {
        let mut identity = identity(name, &format!("svc-economy-{i}"));
        identity.spec.service_account.create = false;
        identity.spec.service_account.name = "airflow-worker".into();
        identity
    };
    for (i, name) in names.iter().enumerate() {
        create(&env, &with_worker_account(name, i)).await.unwrap();
    }
    for name in &names {
        wait_ready(&env, name).await;
    }
    // Let the watch events of every write arrive.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let metrics = operator.metrics.encode();
    let count = |prefix: &str| support::process::sum_samples(&metrics, prefix);
    let writes =
        |kind: &str, verb: &str| count(&format!("winflow_api_writes_total{{kind=\"{kind}\",verb=\"{verb}\"}}"));
    let n = names.len() as u64;
    // What the API server recorded of the operator's writes (agreeing with its counter).
    let audited = operator.audited_writes().await;
    // The gMSA and the use Role and RoleBinding: two of each per identity.
    let children = [
        ("GMSACredentialSpec", "gmsacredentialspecs", 1),
        ("Role", "roles", 2),
        ("RoleBinding", "rolebindings", 2),
        ("ConfigMap", "configmaps", 1),
    ];
    for (kind, resource, per_identity) in children {
        assert_eq!(
            writes(kind, "apply"),
            per_identity * n,
            "one apply per {kind} ({per_identity} per identity)\n{metrics}"
        );
        assert_eq!(
            audited.count("patch", resource),
            per_identity * n,
            "the API server recorded one apply per {kind}"
        );
    }
    let child_count: u64 = children.iter().map(|(_, _, per_identity)| per_identity).sum();
    let mut built = with_worker_account(&names[0], 0);
    built.metadata.namespace = Some(env.namespace.clone());
    assert_eq!(
        child_count as usize,
        winflow::build::children_for(&built).unwrap().count(),
        "every child (not the service account, which these identities do not create)"
    );
    assert_eq!(
        writes("WindowsTaskIdentity", "patch"),
        n,
        "one finalizer patch each\n{metrics}"
    );
    assert_eq!(
        writes("WindowsTaskIdentity", "apply-status"),
        n,
        "one status write each\n{metrics}"
    );
    assert_eq!(writes("Event", "create"), n, "one Ready Event each\n{metrics}");
    for (verb, resource) in [
        ("patch", "windowstaskidentities"),
        ("patch", "windowstaskidentities/status"),
        ("create", "events"),
    ] {
        assert_eq!(
            audited.count(verb, resource),
            n,
            "the API server recorded one {verb} of {resource} per identity"
        );
    }
    let expected_writes = n * (child_count + 3);
    assert_eq!(
        operator.total_writes(),
        expected_writes,
        "nothing else was written\n{metrics}"
    );
    assert_eq!(
        audited.writes.len() as u64,
        expected_writes,
        "nor did the API server record anything else"
    );

    let reconciled = count("winflow_reconciles_total{controller=\"identity\"");
    let succeeded = count("winflow_reconciles_total{controller=\"identity\",result=\"success\"}");
    assert_eq!(succeeded, reconciled, "no reconcile failed\n{metrics}");
    // One each; one spare for a stray event, far below the 2n that reacting to its own
    // writes costs.
    assert!(
        (n..=n + 1).contains(&reconciled),
        "{reconciled} reconciles for {n} identities\n{metrics}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(reconciles(&operator), reconciled, "nothing reconciles once converged");
    assert_eq!(
        operator.total_writes(),
        expected_writes,
        "nothing is written once converged"
    );
    assert_eq!(
        operator.audited_writes().await.writes.len() as u64,
        expected_writes,
        "the API server agrees"
    );
    println!("economy: {n} identities, {expected_writes} writes, {reconciled} reconciles");
    operator.stop().await;
}

/// resourceVersions of the example share, its PersistentVolume and its claim.
async fn share_versions(env: &TestEnv) -> Vec<Option<String>> {
    use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
    use winflow::api::WindowsShare;
    let name = "finance-reports-share";
    vec![
        version_of(env.api::<WindowsShare>(), name).await,
        version_of(env.api::<PersistentVolumeClaim>(), name).await,
        version_of(
            Api::<PersistentVolume>::all(env.client.clone()),
            &winflow::names::persistent_volume_name(&env.namespace, name),
        )
        .await,
    ]
}

/// Names of the objects winflow manages that `api` lists.
async fn managed_names<K>(api: Api<K>) -> BTreeSet<String>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let selector = ListParams::default().labels("app.kubernetes.io/managed-by=winflow");
    api.list(&selector)
        .await
        .unwrap()
        .items
        .iter()
        .map(|o| o.name_any())
        .collect()
}

fn reconciles(operator: &support::Operator) -> u64 {
    support::metric_sum(&operator.metrics, "winflow_reconciles_total{")
}

#[tokio::test]
async fn restarting_the_operator_loses_and_duplicates_nothing() {
    let env = TestEnv::new("restart").await;
    let names: Vec<String> = (0..8).map(|i| format!("restart-{i}")).collect();
    let first = env.start_operator(RESYNC);
    for (i, name) in names.iter().enumerate() {
        create(&env, &identity(name, &format!("svc-restart-{i}")))
            .await
            .unwrap();
    }
    // Killed mid-way: as soon as the first identity has any status.
    wait_until("first status", TIMEOUT, || async {
        let list = env
            .api::<WindowsTaskIdentity>()
            .list(&ListParams::default())
            .await
            .ok()?;
        list.items.iter().any(|i| i.status.is_some()).then_some(())
    })
    .await;
    first.kill();

    let second = env.start_operator(RESYNC);
    for name in &names {
        wait_ready(&env, name).await;
    }
    // Exactly the expected children exist: nothing missing, nothing extra.
    let expected = |pattern: &dyn Fn(&str) -> String| names.iter().map(|n| pattern(n)).collect::<BTreeSet<String>>();
    assert_eq!(
        managed_names(env.api::<ConfigMap>()).await,
        expected(&winflow::names::pod_templates_config_map_name)
    );
    let roles = &expected(&winflow::names::gmsa_role_name) | &expected(&winflow::names::use_role_name);
    assert_eq!(roles.len(), 2 * names.len());
    assert_eq!(managed_names(env.api::<Role>()).await, roles);
    assert_eq!(managed_names(env.api::<RoleBinding>()).await, roles);
    assert_eq!(
        managed_names(env.api::<ServiceAccount>()).await,
        expected(&|n| n.to_owned())
    );
    let specs: BTreeSet<String> = managed_names(Api::<GMSACredentialSpec>::all(env.client.clone()))
        .await
        .into_iter()
        .filter(|n| n.starts_with(&format!("{}.", env.namespace)))
        .collect();
    assert_eq!(
        specs,
        expected(&|n| winflow::names::credential_spec_name(&env.namespace, n))
    );
    for name in &names {
        let identity = env.api::<WindowsTaskIdentity>().get(name).await.unwrap();
        assert_eq!(
            identity.finalizers(),
            ["winflow.io/cleanup"],
            "exactly one finalizer on {name}"
        );
    }

    // A restart over converged identities writes nothing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    second.stop().await;
    let third = env.start_operator(RESYNC);
    wait_until("third operator reconciled everything", TIMEOUT, || async {
        (reconciles(&third) >= names.len() as u64).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        third.total_writes(),
        0,
        "restart over converged identities\n{}",
        third.metrics.encode()
    );
    let audited = third.audited_writes().await;
    assert!(audited.writes.is_empty(), "the API server recorded writes: {audited:?}");
    third.stop().await;
}
