//! WindowsShare, and identities that mount shares, against a real kube-apiserver whose
//! kube-controller-manager binds the static volumes to their claims.

use winflow_test_support as support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use support::{TestEnv, wait_until};
use winflow::api::identity::ShareMount;
use winflow::api::share::{LocalSecretReference, WindowsShareSpec};
use winflow::api::{WindowsShare, WindowsTaskIdentity};

const TIMEOUT: Duration = Duration::from_secs(90);
const RESYNC: Duration = Duration::from_secs(300);

fn share(name: &str, secret: &str, sub_dir: Option<&str>, read_only: bool) -> WindowsShare {
    WindowsShare::new(
        name,
        WindowsShareSpec {
            server: "fs01.corp.example.com".into(),
            share: "reports".into(),
            sub_dir: sub_dir.map(Into::into),
            credentials_secret_ref: LocalSecretReference { name: secret.into() },
            capacity: "100Gi".into(),
            read_only,
        },
    )
}

async fn create_secret(env: &TestEnv, name: &str, keys: &[&str]) {
    let data = keys.iter().map(|k| (k.to_string(), format!("{k}-value"))).collect();
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        string_data: Some(data),
        ..Default::default()
    };
    env.api::<Secret>()
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
}

fn ready_of(share: &WindowsShare) -> Option<&Condition> {
    support::condition(share, "Ready")
}

async fn wait_share(env: &TestEnv, name: &str, status: &str, reason: &str) -> WindowsShare {
    support::wait_for_condition(env, name, "Ready", status, Some(reason)).await
}

async fn wait_identity(env: &TestEnv, name: &str, type_: &str, status: &str) -> WindowsTaskIdentity {
    support::wait_for_condition(env, name, type_, status, None).await
}

fn identity_with_shares(name: &str, shares: Vec<ShareMount>) -> WindowsTaskIdentity {
    let text = std::fs::read_to_string(format!("{}/examples/identity-domain-joined.yaml", support::REPO)).unwrap();
    let mut identity: WindowsTaskIdentity = serde_yaml_ng::from_str(&text).unwrap();
    identity.metadata.name = Some(name.into());
    identity.spec.service_account.name = name.into();
    identity.spec.shares = shares;
    identity
}

fn mount(name: &str, path: &str, read_only: bool) -> ShareMount {
    ShareMount {
        name: name.into(),
        mount_path: path.into(),
        read_only,
    }
}

async fn windows_template(env: &TestEnv, identity: &str) -> Pod {
    let config_map = env
        .api::<ConfigMap>()
        .get(&winflow::names::pod_templates_config_map_name(identity))
        .await
        .unwrap();
    serde_yaml_ng::from_str(&config_map.data.unwrap()["windows-pod-template.yaml"]).unwrap()
}

#[tokio::test]
async fn share_binds_with_exact_csi_fields_and_deletion_keeps_data() {
    support::capture_logs();
    let env = TestEnv::new("share-bound").await;
    let operator = env.start_operator(RESYNC);
    support::apply_file(&env, "examples/share-reports.yaml").await;
    let share = wait_share(&env, "finance-reports-share", "True", "Bound").await;
    let status = share.status.unwrap();
    let pv_name = format!("{}.finance-reports-share", env.namespace);
    assert_eq!(
        status.source.as_deref(),
        Some("//fs01.corp.example.com/reports/finance")
    );
    assert_eq!(status.persistent_volume_name.as_deref(), Some(pv_name.as_str()));
    assert_eq!(
        status.persistent_volume_claim_name.as_deref(),
        Some("finance-reports-share")
    );

    let volumes: Api<PersistentVolume> = Api::all(env.client.clone());
    let pv = volumes.get(&pv_name).await.unwrap();
    assert_eq!(pv.status.as_ref().unwrap().phase.as_deref(), Some("Bound"));
    let spec = pv.spec.unwrap();
    let csi = spec.csi.unwrap();
    assert_eq!(csi.driver, "smb.csi.k8s.io");
    assert_eq!(csi.volume_handle, format!("fs01.corp.example.com/reports##{pv_name}"));
    assert_eq!(
        csi.volume_attributes.unwrap(),
        [(
            "source".to_owned(),
            "//fs01.corp.example.com/reports/finance".to_owned()
        )]
        .into()
    );
    let stage = csi.node_stage_secret_ref.unwrap();
    assert_eq!(
        (stage.name.as_deref(), stage.namespace.as_deref()),
        (Some("smb-finance"), Some(env.namespace.as_str()))
    );
    assert_eq!(csi.read_only, None);
    assert_eq!(spec.persistent_volume_reclaim_policy.as_deref(), Some("Retain"));
    // An empty storage class: the API server stores a PersistentVolume's "" as absent.
    assert_eq!(spec.storage_class_name.as_deref().unwrap_or_default(), "");
    assert_eq!(spec.access_modes.unwrap(), ["ReadWriteMany"]);
    let claim_ref = spec.claim_ref.unwrap();
    assert_eq!(
        (claim_ref.namespace.as_deref(), claim_ref.name.as_deref()),
        (Some(env.namespace.as_str()), Some("finance-reports-share"))
    );
    let pvc = env
        .api::<PersistentVolumeClaim>()
        .get("finance-reports-share")
        .await
        .unwrap();
    let pvc_spec = pvc.spec.unwrap();
    assert_eq!(pvc_spec.volume_name.as_deref(), Some(pv_name.as_str()));
    // On a claim "" is kept, and means "no class": no default StorageClass may provision it.
    assert_eq!(pvc_spec.storage_class_name.as_deref(), Some(""));
    assert_eq!(pvc.status.unwrap().phase.as_deref(), Some("Bound"));
    let requested = pvc_spec.resources.unwrap().requests.unwrap()["storage"].clone();

    // A new capacity reaches the volume; the bound claim of a static volume cannot be resized
    // (the API server refuses), so it keeps its request and the share stays Ready.
    let patch = serde_json::json!({"spec": {"capacity": "200Gi"}});
    env.api::<WindowsShare>()
        .patch("finance-reports-share", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    wait_until("the volume's new capacity", Duration::from_secs(60), || async {
        let pv = Api::<PersistentVolume>::all(env.client.clone())
            .get(&pv_name)
            .await
            .ok()?;
        (pv.spec?.capacity?.get("storage")?.0 == "200Gi").then_some(())
    })
    .await;
    let share: WindowsShare = support::wait_for_condition(&env, "finance-reports-share", "Ready", "True", None).await;
    assert_eq!(share.metadata.generation, Some(2));
    let pvc = env
        .api::<PersistentVolumeClaim>()
        .get("finance-reports-share")
        .await
        .unwrap();
    assert_eq!(
        pvc.spec.unwrap().resources.unwrap().requests.unwrap()["storage"],
        requested
    );

    env.api::<WindowsShare>()
        .delete("finance-reports-share", &DeleteParams::default())
        .await
        .unwrap();
    wait_until("PVC and PV removed", TIMEOUT, || async {
        let pvc_gone = env
            .api::<PersistentVolumeClaim>()
            .get_opt("finance-reports-share")
            .await
            .unwrap()
            .is_none();
        let pv_gone = volumes.get_opt(&pv_name).await.unwrap().is_none();
        (pvc_gone && pv_gone).then_some(())
    })
    .await;
    let logs = support::captured_logs();
    let line = logs
        .lines()
        .find(|l| l.contains(&pv_name) && l.contains("data on the share was retained"));
    assert!(
        line.is_some_and(|l| l.contains("//fs01.corp.example.com/reports/finance")),
        "log line about retained data"
    );
    // The Secret (user data) is untouched.
    assert!(env.api::<Secret>().get_opt("smb-finance").await.unwrap().is_some());
    operator.stop().await;
}

#[tokio::test]
async fn missing_secret_is_reported_until_it_appears() {
    let env = TestEnv::new("share-secret").await;
    let operator = env.start_operator(RESYNC);
    env.api::<WindowsShare>()
        .create(&PostParams::default(), &share("data", "smb-data", None, false))
        .await
        .unwrap();
    let share = wait_share(&env, "data", "False", "SecretMissing").await;
    assert!(
        ready_of(&share)
            .unwrap()
            .message
            .contains("Secret smb-data does not exist")
    );
    let generation = share.metadata.generation;

    // A Secret without a password is still missing something, and says what.
    create_secret(&env, "smb-data", &["username"]).await;
    let share = wait_until("lacking key reported", TIMEOUT, || async {
        let share = env.api::<WindowsShare>().get("data").await.ok()?;
        ready_of(&share)?
            .message
            .contains("lacks the key(s) password")
            .then_some(share)
    })
    .await;
    assert_eq!(ready_of(&share).unwrap().reason, "SecretMissing");

    // Completing the Secret makes the share Ready without anyone touching the share; with no
    // domain, the condition says what the driver will do.
    env.api::<Secret>()
        .patch(
            "smb-data",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"password": "p"}})),
        )
        .await
        .unwrap();
    let share = wait_share(&env, "data", "True", "Bound").await;
    assert_eq!(
        share.metadata.generation, generation,
        "the share's spec was not touched"
    );
    assert!(
        ready_of(&share).unwrap().message.contains("has no domain"),
        "{}",
        ready_of(&share).unwrap().message
    );
    operator.stop().await;
}

#[tokio::test]
async fn identity_mounts_its_shares_and_follows_their_readiness() {
    let env = TestEnv::new("share-identity").await;
    let operator = env.start_operator(RESYNC);
    create_secret(&env, "smb", &["username", "password", "domain"]).await;
    env.api::<WindowsShare>()
        .create(&PostParams::default(), &share("reports", "smb", None, false))
        .await
        .unwrap();

    // One share exists, the other not yet: not Ready, and the message names the missing one.
    let identity = identity_with_shares(
        "mounts",
        vec![
            mount("reports", "C:\\reports", true),
            mount("scratch", "C:\\scratch", false),
        ],
    );
    env.api::<WindowsTaskIdentity>()
        .create(&PostParams::default(), &identity)
        .await
        .unwrap();
    let identity = wait_identity(&env, "mounts", "SharesReady", "False").await;
    let shares_ready = support::condition(&identity, "SharesReady").unwrap();
    assert_eq!(shares_ready.reason, "ShareNotReady");
    assert!(
        shares_ready.message.contains("WindowsShare scratch does not exist"),
        "{}",
        shares_ready.message
    );
    assert_eq!(support::condition(&identity, "Ready").unwrap().status, "False");

    // Both volumes are in the template, with the read-only flags of the entries.
    let template = windows_template(&env, "mounts").await;
    let spec = template.spec.unwrap();
    let claims: Vec<(String, Option<bool>)> = spec
        .volumes
        .unwrap()
        .iter()
        .map(|v| {
            let claim = v.persistent_volume_claim.as_ref().unwrap();
            (claim.claim_name.clone(), claim.read_only)
        })
        .collect();
    assert_eq!(
        claims,
        [("reports".to_owned(), Some(true)), ("scratch".to_owned(), Some(false))]
    );
    let mounts: Vec<(String, Option<bool>)> = spec.containers[0]
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| (m.mount_path.clone(), m.read_only))
        .collect();
    assert_eq!(
        mounts,
        [
            ("C:\\reports".to_owned(), Some(true)),
            ("C:\\scratch".to_owned(), Some(false))
        ]
    );

    // Creating the missing share makes the identity Ready without touching the identity.
    env.api::<WindowsShare>()
        .create(&PostParams::default(), &share("scratch", "smb", Some("tmp"), false))
        .await
        .unwrap();
    let identity = wait_identity(&env, "mounts", "Ready", "True").await;
    assert_eq!(identity.metadata.generation, Some(1));
    assert!(
        support::condition(&identity, "SharesReady")
            .unwrap()
            .message
            .contains("reports, scratch")
    );

    // Removing a share from the spec removes it from the template.
    env.api::<WindowsTaskIdentity>()
        .patch(
            "mounts",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"shares": [{"name": "reports", "mountPath": "C:\\reports"}]}})),
        )
        .await
        .unwrap();
    wait_identity(&env, "mounts", "Ready", "True").await;
    let spec = windows_template(&env, "mounts").await.spec.unwrap();
    let volumes: Vec<String> = spec.volumes.unwrap().iter().map(|v| v.name.clone()).collect();
    assert_eq!(volumes, ["share-reports"]);
    assert_eq!(spec.containers[0].volume_mounts.as_ref().unwrap().len(), 1);

    // A share that stops being Ready takes the identity with it.
    env.api::<Secret>()
        .delete("smb", &DeleteParams::default())
        .await
        .unwrap();
    let identity = wait_identity(&env, "mounts", "SharesReady", "False").await;
    assert!(
        support::condition(&identity, "SharesReady")
            .unwrap()
            .message
            .contains("SecretMissing")
    );
    operator.stop().await;
}

#[tokio::test]
async fn shares_of_one_server_share_get_distinct_volume_handles() {
    let env = TestEnv::new("share-handles").await;
    let operator = env.start_operator(RESYNC);
    create_secret(&env, "smb", &["username", "password", "domain"]).await;
    let api = env.api::<WindowsShare>();
    api.create(&PostParams::default(), &share("finance", "smb", Some("finance"), false))
        .await
        .unwrap();
    api.create(&PostParams::default(), &share("payroll", "smb", Some("payroll"), true))
        .await
        .unwrap();
    wait_share(&env, "finance", "True", "Bound").await;
    wait_share(&env, "payroll", "True", "Bound").await;
    let volumes: Api<PersistentVolume> = Api::all(env.client.clone());
    let csi = |pv: PersistentVolume| pv.spec.unwrap().csi.unwrap();
    let finance = csi(volumes.get(&format!("{}.finance", env.namespace)).await.unwrap());
    let payroll = csi(volumes.get(&format!("{}.payroll", env.namespace)).await.unwrap());
    assert_ne!(finance.volume_handle, payroll.volume_handle);
    assert_eq!(
        finance.volume_attributes.unwrap()["source"],
        "//fs01.corp.example.com/reports/finance"
    );
    assert_eq!(
        payroll.volume_attributes.unwrap()["source"],
        "//fs01.corp.example.com/reports/payroll"
    );
    assert_eq!(payroll.read_only, Some(true));
    operator.stop().await;
}

#[tokio::test]
async fn bad_servers_and_foreign_volumes_are_reported() {
    let env = TestEnv::new("share-invalid").await;
    let operator = env.start_operator(RESYNC);
    create_secret(&env, "smb", &["username", "password", "domain"]).await;
    let api = env.api::<WindowsShare>();
    let mut internal = share("internal", "smb", None, false);
    internal.spec.server = "samba.storage.svc.cluster.local".into();
    api.create(&PostParams::default(), &internal).await.unwrap();
    let internal = wait_share(&env, "internal", "False", "InvalidSpec").await;
    assert!(ready_of(&internal).unwrap().message.contains("spec.server"));

    // A PersistentVolume of that name that winflow does not manage is never touched.
    let volumes: Api<PersistentVolume> = Api::all(env.client.clone());
    let foreign_name = format!("{}.taken", env.namespace);
    let foreign: PersistentVolume = serde_json::from_value(json!({
        "metadata": {"name": foreign_name},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"], "hostPath": {"path": "/tmp/x"}, "storageClassName": "manual"}
    }))
    .unwrap();
    let foreign = volumes.create(&PostParams::default(), &foreign).await.unwrap();
    api.create(&PostParams::default(), &share("taken", "smb", None, false))
        .await
        .unwrap();
    let taken = wait_share(&env, "taken", "False", "Conflict").await;
    assert!(ready_of(&taken).unwrap().message.contains(&foreign_name));
    api.delete("taken", &DeleteParams::default()).await.unwrap();
    wait_until("share gone", TIMEOUT, || async {
        api.get_opt("taken").await.unwrap().is_none().then_some(())
    })
    .await;
    // Its status is kube-controller-manager's to write; winflow never wrote any of it.
    let after = volumes.get(&foreign_name).await.unwrap();
    assert_eq!(after.labels(), foreign.labels());
    let managers: Vec<String> = after
        .managed_fields()
        .iter()
        .filter_map(|f| f.manager.clone())
        .collect();
    assert!(
        !managers.iter().any(|m| m == "winflow"),
        "managers of the foreign volume: {managers:?}"
    );
    assert_eq!(after.spec, foreign.spec);
    volumes.delete(&foreign_name, &DeleteParams::default()).await.unwrap();
    operator.stop().await;
}
