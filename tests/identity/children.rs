//! Children: what a Ready identity owns, how spec changes, deletion and hand edits reach them.

use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use winflow::api::identity::{AwsSecretsManagerHostAccount, CustomHostAccount, KubernetesSecretHostAccount};
use winflow::api::{GMSACredentialSpec, WindowsTaskIdentity};

use crate::support::{TestEnv, wait_until};
use crate::{RESYNC, TIMEOUT, create, create_example_share, credential_spec, example, identity, template, wait_ready};

/// Microsoft's credential spec layout, written out independently of winflow's builder.
fn microsoft_layout(accounts: &[&str], host_account: Option<Value>) -> Value {
    let mut gmsas = Vec::new();
    for account in accounts {
        gmsas.push(json!({"Name": account, "Scope": "corp.example.com"}));
        gmsas.push(json!({"Name": account, "Scope": "CORP"}));
    }
    let mut active_directory = json!({ "GroupManagedServiceAccounts": gmsas });
    if let Some(host) = host_account {
        active_directory["HostAccountConfig"] = host;
    }
    json!({
        "CmsPlugins": ["ActiveDirectory"],
        "DomainJoinConfig": {
            "Sid": "S-1-5-21-3623811015-3361044348-30300820",
            "MachineAccountName": accounts[0],
            "Guid": "244818ae-87ca-4fcd-92ec-e79e5252348a",
            "DnsTreeName": "corp.example.com",
            "DnsName": "corp.example.com",
            "NetBiosName": "CORP"
        },
        "ActiveDirectoryConfig": active_directory
    })
}

#[tokio::test]
async fn identities_become_ready_with_microsoft_credential_specs() {
    let env = TestEnv::new("ready").await;
    let operator = env.start_operator(RESYNC);

    let domain_joined = example("identity-domain-joined.yaml");
    let key_vault = example("identity-azure-key-vault.yaml");
    let mut aws = identity("aws", "svc-aws");
    aws.spec.host_account = key_vault.spec.host_account.clone().map(|mut h| {
        h.azure_key_vault = None;
        h.aws_secrets_manager = Some(AwsSecretsManagerHostAccount {
            secret_arn: "arn:aws:secretsmanager:eu-west-1:123456789012:secret:gmsa-AbCdEf".into(),
        });
        h
    });
    let mut secret = identity("k8s-secret", "svc-secret");
    secret.spec.host_account = key_vault.spec.host_account.clone().map(|mut h| {
        h.azure_key_vault = None;
        h.kubernetes_secret = Some(KubernetesSecretHostAccount {
            name: "gmsa-reader".into(),
        });
        h
    });
    let mut custom = identity("custom", "svc-custom");
    custom.spec.host_account = key_vault.spec.host_account.clone().map(|mut h| {
        h.azure_key_vault = None;
        h.custom = Some(CustomHostAccount {
            plugin_guid: "{6ecda518-2010-4437-8bc3-46e752b7b172}".into(),
            plugin_input: "vault=corp;path=gmsa".into(),
        });
        h.portable_ccg_version = "1".into();
        h
    });
    create_example_share(&env).await;
    for identity in [&domain_joined, &key_vault, &aws, &secret, &custom] {
        create(&env, identity).await.unwrap();
    }

    let expectations = [
        (
            "finance-reports",
            microsoft_layout(&["svc-reports", "svc-sql-reader"], None),
        ),
        (
            "payroll-export",
            microsoft_layout(
                &["svc-payroll"],
                Some(json!({
                    "PortableCcgVersion": "1",
                    "PluginGUID": "{CCC2A336-D7F3-4818-A213-272B7924213E}",
                    "PluginInput": "ObjectId=6e7a5f1c-2b1d-4c39-9f3e-8d2a1b0c4e5f;SecretUri=https://winflow-kv.vault.azure.net/secrets/gmsa-reader"
                })),
            ),
        ),
        (
            "aws",
            microsoft_layout(
                &["svc-aws"],
                Some(json!({
                    "PortableCcgVersion": "1",
                    "PluginGUID": "{859E1386-BDB4-49E8-85C7-3070B13920E1}",
                    "PluginInput": "{\"credentialArn\":\"arn:aws:secretsmanager:eu-west-1:123456789012:secret:gmsa-AbCdEf\"}"
                })),
            ),
        ),
        (
            "k8s-secret",
            microsoft_layout(
                &["svc-secret"],
                Some(json!({
                    "PortableCcgVersion": "1",
                    "PluginGUID": "{e4781092-f116-4b79-b55e-28eb6a224e26}",
                    "PluginInput": format!("{}:gmsa-reader", env.namespace)
                })),
            ),
        ),
        (
            "custom",
            microsoft_layout(
                &["svc-custom"],
                Some(json!({
                    "PortableCcgVersion": "1",
                    "PluginGUID": "{6ecda518-2010-4437-8bc3-46e752b7b172}",
                    "PluginInput": "vault=corp;path=gmsa"
                })),
            ),
        ),
    ];
    for (name, expected) in expectations {
        let identity = wait_ready(&env, name).await;
        let status = identity.status.unwrap();
        for type_ in [
            "CredentialSpecReady",
            "AccessGranted",
            "PodTemplateReady",
            "SharesReady",
            "TokenReady",
        ] {
            let c = status
                .conditions
                .iter()
                .find(|c| c.type_ == type_)
                .unwrap_or_else(|| panic!("{name} lacks {type_}"));
            assert_eq!(c.status, "True", "{name} {type_}: {}", c.message);
        }
        assert_eq!(status.credential_spec_name, Some(format!("{}.{name}", env.namespace)));
        let spec = credential_spec(&env, name).await.expect("credential spec exists");
        assert_eq!(spec.credspec, expected, "credential spec of {name}");
        let labels = spec.metadata.labels.unwrap();
        assert_eq!(labels["app.kubernetes.io/managed-by"], "winflow");
        assert_eq!(labels["winflow.io/identity"], name);
    }

    // A Normal event announced readiness, once.
    let events: Api<Event> = env.api();
    let ready_events = wait_until("Ready event", TIMEOUT, || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        let found: Vec<Event> = list
            .items
            .into_iter()
            .filter(|e| {
                e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("finance-reports")
                    && e.reason.as_deref() == Some("Reconciled")
            })
            .collect();
        (!found.is_empty()).then_some(found)
    })
    .await;
    assert_eq!(ready_events.len(), 1);
    assert_eq!(ready_events[0].type_.as_deref(), Some("Normal"));
    operator.stop().await;
}

#[tokio::test]
async fn spec_changes_update_children_and_deletion_removes_them() {
    let env = TestEnv::new("lifecycle").await;
    let operator = env.start_operator(RESYNC);
    create(&env, &identity("reports", "svc-reports")).await.unwrap();
    wait_ready(&env, "reports").await;

    let api = env.api::<WindowsTaskIdentity>();
    let change = json!({"spec": {"gmsa": {"additionalAccounts": ["svc-sql-reader", "svc-archive"]}, "airflow": {"image": "registry.example.com/finance/reports-win:1.5"}}});
    api.patch("reports", &PatchParams::default(), &Patch::Merge(&change))
        .await
        .unwrap();
    let identity = wait_ready(&env, "reports").await;
    assert_eq!(
        identity.status.as_ref().unwrap().observed_generation,
        identity.metadata.generation
    );
    let spec = credential_spec(&env, "reports").await.unwrap();
    assert_eq!(
        spec.credspec,
        microsoft_layout(&["svc-reports", "svc-sql-reader", "svc-archive"], None)
    );
    let config_map = env.api::<ConfigMap>().get("reports-pod-templates").await.unwrap();
    let windows = template(&config_map, "windows-pod-template.yaml");
    assert_eq!(
        windows.spec.unwrap().containers[0].image.as_deref(),
        Some("registry.example.com/finance/reports-win:1.5")
    );

    api.delete("reports", &DeleteParams::default()).await.unwrap();
    wait_until("identity gone", TIMEOUT, || async {
        api.get_opt("reports").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(
        credential_spec(&env, "reports").await.is_none(),
        "the finalizer removed the credential spec"
    );
    // Namespaced children go with their owner (kube-controller-manager's garbage collector).
    wait_until("namespaced children collected", TIMEOUT, || async {
        let gone = absent(env.api::<ConfigMap>(), "reports-pod-templates").await
            && absent(env.api::<Role>(), "winflow-reports-gmsa").await
            && absent(env.api::<RoleBinding>(), "winflow-reports-gmsa").await
            && absent(env.api::<Role>(), "winflow-reports-use").await
            && absent(env.api::<RoleBinding>(), "winflow-reports-use").await
            && absent(env.api::<ServiceAccount>(), "reports").await;
        gone.then_some(())
    })
    .await;
    operator.stop().await;
}

#[tokio::test]
async fn children_deleted_or_edited_by_hand_come_back() {
    let env = TestEnv::new("drift").await;
    let operator = env.start_operator(RESYNC);
    create(&env, &identity("reports", "svc-reports")).await.unwrap();
    wait_ready(&env, "reports").await;
    let specs: Api<GMSACredentialSpec> = Api::all(env.client.clone());
    let spec_name = format!("{}.reports", env.namespace);
    let original_spec = specs.get(&spec_name).await.unwrap().credspec;
    let original_templates = env.api::<ConfigMap>().get("reports-pod-templates").await.unwrap().data;

    env.api::<Role>()
        .delete("winflow-reports-gmsa", &DeleteParams::default())
        .await
        .unwrap();
    env.api::<ConfigMap>()
        .patch(
            "reports-pod-templates",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"windows-pod-template.yaml": "edited by hand"}})),
        )
        .await
        .unwrap();
    specs
        .patch(
            &spec_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"credspec": {"DomainJoinConfig": {"MachineAccountName": "svc-admin"}}})),
        )
        .await
        .unwrap();
    specs.delete(&spec_name, &DeleteParams::default()).await.ok();

    wait_until("Role restored", TIMEOUT, || async {
        env.api::<Role>().get_opt("winflow-reports-gmsa").await.unwrap()
    })
    .await;
    wait_until("pod templates restored", TIMEOUT, || async {
        let data = env.api::<ConfigMap>().get("reports-pod-templates").await.unwrap().data;
        (data == original_templates).then_some(())
    })
    .await;
    wait_until("credential spec restored", TIMEOUT, || async {
        let spec = specs.get_opt(&spec_name).await.unwrap()?;
        (spec.credspec == original_spec).then_some(())
    })
    .await;
    // An edit of a field that winflow sets is repaired too.
    specs
        .patch(
            &spec_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"credspec": {"DomainJoinConfig": {"MachineAccountName": "svc-admin"}}})),
        )
        .await
        .unwrap();
    wait_until("credential spec edit reverted", TIMEOUT, || async {
        let spec = specs.get_opt(&spec_name).await.unwrap()?;
        (spec.credspec == original_spec).then_some(())
    })
    .await;
    wait_ready(&env, "reports").await;
    operator.stop().await;
}

async fn absent<K>(api: Api<K>, name: &str) -> bool
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.get_opt(name).await.unwrap().is_none()
}
