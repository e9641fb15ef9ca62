//! The admission webhook as the API server calls it: real kube-apiserver, real HTTPS with a
//! CA the API server trusts, webhook configurations registered like a local run does.

use winflow_test_support as support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::oidc::{OidcProvider, ProviderConfig};
use support::{TestEnv, wait_until};
use winflow::api::{GMSACredentialSpec, WindowsTaskIdentity};

const TIMEOUT: Duration = Duration::from_secs(60);
const CLIENT_SECRET: &str = "s3cret-c1ient-value-for-webhook-tests";

/// Creates a pod, retrying while the webhook configuration is still being picked up by the
/// API server (a few seconds after registration); returns the final answer.
async fn create_when_webhook_active(env: &TestEnv, pod: Value) -> Result<Pod, String> {
    wait_until("webhook active", TIMEOUT, || async {
        let probe = support::task_pod("probe", "payroll-export", "payroll", "export_ledger");
        match support::create_pod(&env.client, &env.namespace, probe).await {
            Err(e) if e.contains("payroll-export") => Some(()),
            Ok(_) => {
                let _ = Api::<Pod>::namespaced(env.client.clone(), &env.namespace)
                    .delete("probe", &Default::default())
                    .await;
                None
            }
            Err(_) => None,
        }
    })
    .await;
    support::create_pod(&env.client, &env.namespace, pod).await
}

async fn ready_example(env: &TestEnv) {
    support::apply_file(env, "examples/identity-azure-key-vault.yaml").await;
    let _: WindowsTaskIdentity = support::wait_for_condition(env, "payroll-export", "Ready", "True", None).await;
}

#[tokio::test]
async fn pods_get_their_identity_injected_and_the_credential_spec_inlined() {
    support::capture_logs();
    let env = TestEnv::new("webhook-mutate").await;
    let operator = env.start_operator(Duration::from_secs(300));
    ready_example(&env).await;
    let webhook = support::webhook::start_webhook(&env).await;

    let pod = create_when_webhook_active(
        &env,
        support::task_pod("export-1", "payroll-export", "payroll_export", "export_ledger"),
    )
    .await
    .unwrap();
    let spec = pod.spec.unwrap();
    assert_eq!(spec.service_account_name.as_deref(), Some("payroll-export"));
    assert_eq!(spec.node_selector.unwrap()["kubernetes.io/os"], "windows");
    let hostname = spec.hostname.unwrap();
    assert!(hostname.len() <= 15, "{hostname}");
    let options = spec.security_context.unwrap().windows_options.unwrap();
    let spec_name = format!("{}.payroll-export", env.namespace);
    assert_eq!(options.gmsa_credential_spec_name.as_deref(), Some(spec_name.as_str()));
    assert_eq!(options.run_as_user_name.as_deref(), Some("ContainerUser"));
    // The inlined content is the credential spec object's content, as compact sorted JSON.
    let object = Api::<GMSACredentialSpec>::all(env.client.clone())
        .get(&spec_name)
        .await
        .unwrap();
    assert_eq!(
        options.gmsa_credential_spec.as_deref(),
        Some(serde_json::to_string(&object.credspec).unwrap().as_str())
    );
    let env_names: Vec<String> = spec.containers[0]
        .env
        .clone()
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(
        env_names,
        ["WINFLOW_IDENTITY", "WINFLOW_GMSA_ACCOUNT", "WINFLOW_DOMAIN"]
    );

    // A KubernetesExecutor worker pod: labels plus exact annotations, from the executor template.
    let executor = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "payroll-export-upload-2k1d9c3a",
            "labels": {"winflow.io/identity": "payroll-export", "winflow.io/role": "executor", "dag_id": "payroll_export",
                       "task_id": "upload", "run_id": "scheduled__2026-11-28T0000000000-8d0b6a3e2", "try_number": "1",
                       "kubernetes_executor": "True", "airflow-worker": "1"},
            "annotations": {"dag_id": "payroll_export", "task_id": "upload", "run_id": "scheduled__2026-11-28T00:00:00+00:00", "try_number": "1"}},
        "spec": {"automountServiceAccountToken": false, "restartPolicy": "Never",
                 "containers": [{"name": "base", "image": "registry.example.com/airflow/worker:3.3.2"}]}
    });
    let worker = support::create_pod(&env.client, &env.namespace, executor)
        .await
        .unwrap();
    let worker_spec = worker.spec.unwrap();
    assert_eq!(worker_spec.service_account_name.as_deref(), Some("payroll-export"));
    assert!(
        worker_spec.security_context.is_none_or(|s| s.windows_options.is_none()),
        "a Linux worker gets no gMSA"
    );
    assert_eq!(
        worker_spec.containers[0].env.as_ref().unwrap()[0].name,
        "WINFLOW_IDENTITY"
    );

    // Pods without the label (and without gMSA fields) never wait on the webhook where the
    // server evaluates matchConditions (1.28 on); older servers send them to the cluster-wide
    // gMSA check only, which admits them.
    let plain = json!({"metadata": {"name": "plain"}, "spec": {"automountServiceAccountToken": false, "containers": [{"name": "c", "image": "busybox"}]}});
    let plain = support::create_pod(&env.client, &env.namespace, plain).await.unwrap();
    assert!(
        plain
            .spec
            .unwrap()
            .security_context
            .is_none_or(|s| s.windows_options.is_none())
    );
    let reviews: Vec<serde_json::Value> = support::captured_logs()
        .lines()
        .filter(|l| l.contains("\"admission\"") && l.contains("\"plain\""))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let version = env.client.apiserver_version().await.unwrap();
    let minor: u32 = version.minor.trim_end_matches('+').parse().unwrap();
    if minor >= 28 {
        assert!(reviews.is_empty(), "no review of the unlabelled pod: {reviews:#?}");
    } else {
        assert!(
            !reviews.is_empty()
                && reviews
                    .iter()
                    .all(|r| r["fields"]["webhook"] == "validate-gmsa" && r["fields"]["decision"] == "allowed"),
            "only the gMSA check, admitting: {reviews:#?}"
        );
    }

    let metrics = webhook.metrics.encode();
    assert!(
        metrics.contains(r#"winflow_admission_decisions_total{webhook="mutate",decision="allowed",reason="Mutated"}"#),
        "{metrics}"
    );
    assert!(
        metrics
            .contains(r#"winflow_admission_decisions_total{webhook="validate",decision="allowed",reason="Allowed"}"#),
        "{metrics}"
    );
    let logs = support::captured_logs();
    let audit = logs
        .lines()
        .find(|l| l.contains("\"admission\"") && l.contains("export-1") && l.contains("\"validate\""));
    let audit: Value = serde_json::from_str(audit.expect("an audit line for export-1")).unwrap();
    for (key, value) in [
        ("identity", "payroll-export"),
        ("dag_id", "payroll_export"),
        ("task_id", "export_ledger"),
        ("decision", "allowed"),
    ] {
        assert_eq!(audit["fields"][key], value, "{audit}");
    }
    operator.stop().await;
}

#[tokio::test]
async fn pods_outside_the_rules_are_denied_with_the_rule_and_an_event() {
    let env = TestEnv::new("webhook-deny").await;
    let operator = env.start_operator(Duration::from_secs(300));
    ready_example(&env).await;
    let webhook = support::webhook::start_webhook(&env).await;

    let err = create_when_webhook_active(
        &env,
        support::task_pod("payroll-1", "payroll-export", "payroll", "export_ledger"),
    )
    .await
    .unwrap_err();
    assert!(err.contains(r#"dag "payroll" may not use identity "payroll-export" (allowed dag ids: payroll_export, payroll_backfill_*)"#), "{err}");
    let err = support::create_pod(
        &env.client,
        &env.namespace,
        support::task_pod("cleanup-1", "payroll-export", "payroll_export", "cleanup"),
    )
    .await
    .unwrap_err();
    assert!(
        err.contains(r#"task "cleanup" may not use identity "payroll-export" (allowed task ids: export_*, upload)"#),
        "{err}"
    );
    // An account that exists (the API server's own admission checks that first), but is not
    // the identity's.
    let account: k8s_openapi::api::core::v1::ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "payroll-admin"}})).unwrap();
    env.api::<k8s_openapi::api::core::v1::ServiceAccount>()
        .create(&PostParams::default(), &account)
        .await
        .unwrap();
    let mut other_account = support::task_pod("sa-1", "payroll-export", "payroll_export", "upload");
    other_account["spec"]["serviceAccountName"] = json!("payroll-admin");
    let err = support::create_pod(&env.client, &env.namespace, other_account)
        .await
        .unwrap_err();
    assert!(
        err.contains(r#"service account "payroll-admin""#) && err.contains(r#"allows only "payroll-export""#),
        "{err}"
    );
    let mut admin = support::task_pod("admin-1", "payroll-export", "payroll_export", "upload");
    admin["spec"]["containers"][0]["securityContext"] =
        json!({"windowsOptions": {"runAsUserName": "ContainerAdministrator"}});
    let err = support::create_pod(&env.client, &env.namespace, admin)
        .await
        .unwrap_err();
    assert!(err.contains("ContainerAdministrator"), "{err}");
    let mut privileged = support::task_pod("priv-1", "payroll-export", "payroll_export", "upload");
    privileged["spec"]["containers"][0]["securityContext"] = json!({"privileged": true});
    let err = support::create_pod(&env.client, &env.namespace, privileged)
        .await
        .unwrap_err();
    assert!(err.contains("privileged"), "{err}");
    // The identity's own template with a pod_override-style securityContext (Airflow replaces
    // the whole field) naming another identity's credential spec.
    let templates = env
        .api::<k8s_openapi::api::core::v1::ConfigMap>()
        .get("payroll-export-pod-templates")
        .await
        .unwrap();
    let mut from_template: Value =
        serde_yaml_ng::from_str(&templates.data.unwrap()["windows-pod-template.yaml"]).unwrap();
    from_template["metadata"]["name"] = json!("override-1");
    from_template["metadata"]["labels"]["dag_id"] = json!("payroll_export");
    from_template["metadata"]["labels"]["task_id"] = json!("upload");
    let other_spec = format!("{}.finance-reports", env.namespace);
    from_template["spec"]["securityContext"] = json!({"windowsOptions": {"gmsaCredentialSpecName": other_spec}});
    let err = support::create_pod(&env.client, &env.namespace, from_template.clone())
        .await
        .unwrap_err();
    assert!(
        err.contains("gmsaCredentialSpecName") && err.contains(r#""payroll-export""#),
        "{err}"
    );
    // Without the override the same template is admitted.
    from_template["spec"]["securityContext"] = json!(null);
    support::create_pod(&env.client, &env.namespace, from_template)
        .await
        .unwrap();

    // The identity label cannot be moved to another identity afterwards.
    let relabel = json!({"metadata": {"labels": {"winflow.io/identity": "finance-reports"}}});
    let pods = Api::<Pod>::namespaced(env.client.clone(), &env.namespace);
    let err = pods
        .patch("override-1", &PatchParams::default(), &Patch::Merge(&relabel))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot be added, changed or removed") && err.contains(r#"it was "payroll-export""#),
        "{err}"
    );

    // An identity that is not Ready admits no pods, and says why.
    let text = std::fs::read_to_string(format!("{}/examples/identity-azure-key-vault.yaml", support::REPO)).unwrap();
    let mut broken: WindowsTaskIdentity = serde_yaml_ng::from_str(&text).unwrap();
    broken.metadata.name = Some("broken".into());
    broken.spec.pod.run_as_user_name = "ContainerAdministrator".into();
    env.api::<WindowsTaskIdentity>()
        .create(&PostParams::default(), &broken)
        .await
        .unwrap();
    let _: WindowsTaskIdentity =
        support::wait_for_condition(&env, "broken", "Ready", "False", Some("InvalidSpec")).await;
    let mut not_ready = support::task_pod("broken-1", "payroll-export", "payroll_export", "upload");
    not_ready["metadata"]["labels"]["winflow.io/identity"] = json!("broken");
    let err = wait_until("the webhook sees broken", TIMEOUT, || async {
        let err = support::create_pod(&env.client, &env.namespace, not_ready.clone())
            .await
            .unwrap_err();
        err.contains("is not Ready").then_some(err)
    })
    .await;
    assert!(err.contains(r#"identity "broken" is not Ready (InvalidSpec"#), "{err}");

    let mut unknown = support::task_pod("ghost-1", "payroll-export", "payroll_export", "upload");
    unknown["metadata"]["labels"]["winflow.io/identity"] = json!("ghost");
    let err = support::create_pod(&env.client, &env.namespace, unknown)
        .await
        .unwrap_err();
    assert!(err.contains(r#"identity "ghost" does not exist"#), "{err}");

    // Denials are Events on the identity.
    let events: Api<Event> = env.api();
    let denial = wait_until("TaskNotAllowed event", TIMEOUT, || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|e| {
            e.reason.as_deref() == Some("TaskNotAllowed") && e.note.as_deref().is_some_and(|n| n.contains("cleanup-1"))
        })
    })
    .await;
    assert_eq!(denial.type_.as_deref(), Some("Warning"));
    assert_eq!(denial.regarding.unwrap().name.as_deref(), Some("payroll-export"));
    let metrics = webhook.metrics.encode();
    assert!(
        metrics.contains(r#"decision="denied",reason="TaskNotAllowed"} 1"#),
        "{metrics}"
    );
    operator.stop().await;
}

/// A pod built from the template of an identity with a token brings winflow's token volume
/// itself. The API server fills in its defaults (a Secret volume's defaultMode 0644) before the
/// webhook compares it with winflow's: admitted. A volume of that name with another mode is
/// another volume: denied, naming the volume and the rule.
#[tokio::test]
async fn a_pods_own_token_volume_is_admitted_only_as_winflow_would_write_it() {
    let env = TestEnv::new("webhook-volume").await;
    let provider = OidcProvider::start(ProviderConfig::with_client(3600, "payroll", CLIENT_SECRET, "")).await;
    support::create_client_secret(&env, "payroll-oidc", CLIENT_SECRET).await;
    let operator = env.start_operator(Duration::from_secs(300));
    let identity = support::identities::identity_with_token(
        "payroll-export",
        json!({"issuerUrl": provider.issuer(), "clientId": "payroll",
               "clientSecretRef": {"name": "payroll-oidc", "key": "client-secret"}}),
    );
    env.api::<WindowsTaskIdentity>()
        .create(&PostParams::default(), &identity)
        .await
        .unwrap();
    let _: WindowsTaskIdentity = support::wait_for_condition(&env, "payroll-export", "Ready", "True", None).await;
    let webhook = support::webhook::start_webhook(&env).await;

    let templates = env
        .api::<ConfigMap>()
        .get("payroll-export-pod-templates")
        .await
        .unwrap();
    let template: Value = serde_yaml_ng::from_str(&templates.data.unwrap()["windows-pod-template.yaml"]).unwrap();
    // What Airflow's KubernetesPodOperator makes of the template: the task's labels added, and
    // the token volume's mode `mode` when the DAG sets one.
    let from_template = |name: &str, mode: Option<i32>| {
        let mut pod = template.clone();
        pod["metadata"]["name"] = json!(name);
        pod["metadata"]["labels"]["dag_id"] = json!("payroll_export");
        pod["metadata"]["labels"]["task_id"] = json!("export_ledger");
        let volumes = pod["spec"]["volumes"].as_array_mut().expect("the template's volumes");
        let token = volumes
            .iter_mut()
            .find(|v| v["name"] == "winflow-token")
            .expect("the template mounts the token");
        assert_eq!(
            token["secret"].get("defaultMode"),
            None,
            "winflow leaves the mode to the API server"
        );
        if let Some(mode) = mode {
            token["secret"]["defaultMode"] = json!(mode);
        }
        pod
    };

    let admitted = create_when_webhook_active(&env, from_template("from-template", None))
        .await
        .expect("the template's own token volume is winflow's");
    let volumes = admitted.spec.unwrap().volumes.unwrap();
    let token = volumes.iter().find(|v| v.name == "winflow-token").unwrap();
    assert_eq!(
        token.secret.as_ref().unwrap().default_mode,
        Some(0o644),
        "the webhook saw the API server's default"
    );
    assert_eq!(
        volumes.iter().filter(|v| v.name == "winflow-token").count(),
        1,
        "not added twice"
    );

    let err = support::create_pod(&env.client, &env.namespace, from_template("own-mode", Some(0o600)))
        .await
        .unwrap_err();
    assert!(
        err.contains(r#"pod has a volume named "winflow-token" that differs from identity "payroll-export"'s volume for the token Secret; rename the pod's volume"#),
        "{err}"
    );
    let metrics = webhook.metrics.encode();
    assert!(
        metrics.contains(
            r#"winflow_admission_decisions_total{webhook="mutate",decision="denied",reason="FieldConflict"} 1"#
        ),
        "{metrics}"
    );
    operator.stop().await;
}

#[tokio::test]
async fn enforcement_namespaces_refuse_unlabelled_pods_using_winflow_credential_specs() {
    let env = TestEnv::new("webhook-enforce").await;
    let operator = env.start_operator(Duration::from_secs(300));
    ready_example(&env).await;
    let _webhook = support::webhook::start_webhook(&env).await;
    support::set_enforce_label(&env, Some("true")).await;

    let sneaky = json!({
        "metadata": {"name": "sneaky", "labels": {"app": "reports"}},
        "spec": {"automountServiceAccountToken": false,
                 "securityContext": {"windowsOptions": {"gmsaCredentialSpecName": format!("{}.payroll-export", env.namespace)}},
                 "containers": [{"name": "c", "image": "busybox"}]}
    });
    let err = wait_until("enforcement active", TIMEOUT, || async {
        match support::create_pod(&env.client, &env.namespace, sneaky.clone()).await {
            Err(e) => Some(e),
            Ok(_) => {
                let _ = Api::<Pod>::namespaced(env.client.clone(), &env.namespace)
                    .delete("sneaky", &Default::default())
                    .await;
                None
            }
        }
    })
    .await;
    assert!(err.contains("winflow.io/identity=payroll-export"), "{err}");
    operator.stop().await;
}
