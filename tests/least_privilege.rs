//! Least privilege, tried as an attacker with `create pods` in an Airflow namespace would: a
//! real API server calls the webhook over TLS for pods created under impersonation, and every
//! way to an identity's credentials other than its own pods is denied with its own reason,
//! while the legitimate paths (the Airflow service accounts granted `use`, the identity's own
//! token as winflow injects it, a listed share) are admitted. One test per row of the README's
//! threat model.

use winflow_test_support as support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use support::oidc::{OidcProvider, ProviderConfig};
use support::{TestEnv, wait_until};
use winflow::api::WindowsTaskIdentity;

const TIMEOUT: Duration = Duration::from_secs(90);

fn plain_pod(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "reports"}},
        "spec": {"automountServiceAccountToken": false, "restartPolicy": "Never",
                 "containers": [{"name": "base", "image": "registry.example.com/tools:1"}]}
    })
}

/// `pod` with `extra` merged into its spec (`env` and `envFrom` into its container).
fn with(mut pod: Value, extra: &Value) -> Value {
    for (key, value) in extra.as_object().unwrap() {
        if key == "env" || key == "envFrom" {
            pod["spec"]["containers"][0][key] = value.clone();
        } else {
            pod["spec"][key] = value.clone();
        }
    }
    pod
}

/// The four ways a pod reaches a Secret.
fn secret_references(secret: &str) -> Vec<(&'static str, Value)> {
    vec![
        (
            "secret volume",
            json!({"volumes": [{"name": "v", "secret": {"secretName": secret}}]}),
        ),
        (
            "projected volume",
            json!({"volumes": [{"name": "v", "projected": {"sources": [{"secret": {"name": secret}}]}}]}),
        ),
        (
            "env secretKeyRef",
            json!({"env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": secret, "key": "access_token"}}}]}),
        ),
        (
            "envFrom secretRef",
            json!({"envFrom": [{"secretRef": {"name": secret}}]}),
        ),
    ]
}

/// The example identity `payroll-export` (Ready without a token), whose `access.creators` are
/// the Airflow scheduler's and worker's service accounts.
async fn payroll_identity(env: &TestEnv) {
    support::apply_file(env, "examples/identity-azure-key-vault.yaml").await;
    let _: WindowsTaskIdentity = support::wait_for_condition(env, "payroll-export", "Ready", "True", None).await;
}

/// Creates Role `name` with `rules` and binds it to the service accounts `accounts` of the
/// test namespace.
async fn bind_role(env: &TestEnv, name: &str, rules: Value, accounts: &[&str]) {
    let role: k8s_openapi::api::rbac::v1::Role =
        serde_json::from_value(json!({"metadata": {"name": name}, "rules": rules})).unwrap();
    env.api::<k8s_openapi::api::rbac::v1::Role>()
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let subjects: Vec<Value> = accounts
        .iter()
        .map(|a| json!({"kind": "ServiceAccount", "name": a, "namespace": env.namespace}))
        .collect();
    let binding: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": subjects
    }))
    .unwrap();
    env.api::<k8s_openapi::api::rbac::v1::RoleBinding>()
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
}

/// Lets `accounts` of the namespace create, read and delete pods and add ephemeral containers:
/// what `create pods` alone gives, without any `use` of an identity.
async fn grant_pod_rights(env: &TestEnv, accounts: &[&str]) {
    let rules = json!([
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "get", "list", "patch", "delete"]},
        {"apiGroups": [""], "resources": ["pods/ephemeralcontainers"], "verbs": ["get", "update", "patch"]}
    ]);
    bind_role(env, "pod-creator", rules, accounts).await;
    for account in accounts {
        let sa: k8s_openapi::api::core::v1::ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": account}})).unwrap();
        env.api::<k8s_openapi::api::core::v1::ServiceAccount>()
            .create(&PostParams::default(), &sa)
            .await
            .unwrap();
    }
}

/// Creates a pod, retrying while the webhook configuration is still being picked up (a
/// probe pod that winflow must deny is admitted until then).
async fn when_webhook_active(env: &TestEnv) {
    wait_until("webhook active", TIMEOUT, || async {
        let probe = support::task_pod("probe", "payroll-export", "not_allowed", "export_ledger");
        match support::create_pod(&env.client, &env.namespace, probe).await {
            Err(e) if e.contains("payroll-export") => Some(()),
            Ok(_) => {
                let _ = env.api::<Pod>().delete("probe", &Default::default()).await;
                None
            }
            Err(_) => None,
        }
    })
    .await;
}

/// Waits until unlabelled pods created by `client` reach the webhook, which they do once the
/// API server has seen the namespace's enforcement label.
async fn when_enforcement_active(env: &TestEnv, client: &Client) {
    wait_until("enforcement active", TIMEOUT, || async {
        let probe = with(
            plain_pod("probe-plain"),
            &json!({"serviceAccountName": "payroll-export"}),
        );
        match support::create_pod(client, &env.namespace, probe).await {
            Err(e) if e.contains("the service account of identity \"payroll-export\"") => Some(()),
            Ok(_) => {
                let _ = env.api::<Pod>().delete("probe-plain", &Default::default()).await;
                None
            }
            Err(_) => None,
        }
    })
    .await;
}

/// The reason of a denial in the webhook's metrics, by counting the metric before and after.
fn denied_for(webhook: &support::webhook::Webhook, reason: &str) -> u64 {
    [
        "mutate",
        "validate",
        "validate-gmsa",
        "validate-connect",
        "validate-workloads",
    ]
    .iter()
    .map(|hook| {
        support::metric_sum(
            &webhook.metrics,
            &format!(r#"winflow_admission_decisions_total{{webhook="{hook}",decision="denied",reason="{reason}"}}"#),
        )
    })
    .sum()
}

#[tokio::test]
async fn only_creators_allowed_to_use_the_identity_get_it_and_the_audit_log_says_who() {
    let env = TestEnv::new("lp-creator").await;
    let operator = env.start_operator(Duration::from_secs(300));
    payroll_identity(&env).await;
    let webhook = support::webhook::start_webhook(&env).await;
    when_webhook_active(&env).await;
    grant_pod_rights(&env, &["airflow-worker", "airflow-scheduler", "intruder"]).await;
    let ns = env.namespace.clone();

    // Row 1: create pods, a matching dag_id, the identity's label; but no `use`.
    let intruder = env.client_as_service_account("intruder").await;
    let err = support::create_pod(
        &intruder,
        &ns,
        support::task_pod("stolen", "payroll-export", "payroll_export", "export_ledger"),
    )
    .await
    .unwrap_err();
    for part in [
        format!("system:serviceaccount:{ns}:intruder"),
        "identity \"payroll-export\"".to_owned(),
        "verb use on windowstaskidentities.winflow.io".to_owned(),
        "winflow-payroll-export-use".to_owned(),
    ] {
        assert!(err.contains(&part), "{part}: {err}");
    }
    assert!(denied_for(&webhook, "CreatorNotAllowed") >= 1);

    // The worker's service account is listed in spec.access.creators: its KubernetesPodOperator
    // pod is admitted with the gMSA filled in.
    let worker = env.client_as_service_account("airflow-worker").await;
    let pod = support::create_pod(
        &worker,
        &ns,
        support::task_pod("export-1", "payroll-export", "payroll_export", "export_ledger"),
    )
    .await
    .unwrap();
    let options = pod.spec.unwrap().security_context.unwrap().windows_options.unwrap();
    assert_eq!(options.gmsa_credential_spec_name, Some(format!("{ns}.payroll-export")));
    // The scheduler's, for a KubernetesExecutor worker pod.
    let scheduler = env.client_as_service_account("airflow-scheduler").await;
    let mut executor = support::task_pod("upload-1", "payroll-export", "payroll_export", "upload");
    executor["metadata"]["labels"]["winflow.io/role"] = json!("executor");
    executor["metadata"]["annotations"] = json!({"dag_id": "payroll_export", "task_id": "upload",
        "run_id": "scheduled__2026-12-01T00:00:00+00:00", "try_number": "1"});
    support::create_pod(&scheduler, &ns, executor).await.unwrap();

    // Row 7: an ephemeral container on the identity's running pod runs as the identity too.
    let err = support::add_ephemeral_container(&intruder, &ns, "export-1", "debug", json!({}))
        .await
        .unwrap_err();
    assert!(
        err.contains("may not add ephemeral containers to pods of identity \"payroll-export\""),
        "{err}"
    );
    support::add_ephemeral_container(&worker, &ns, "export-1", "debug", json!({}))
        .await
        .unwrap();

    // Changing a running pod's spec (its image) is using the identity too; its metadata is not.
    let pods_of = |client: &Client| Api::<Pod>::namespaced(client.clone(), &ns);
    let patch = PatchParams::default();
    let new_image = Patch::Strategic(json!({"spec": {"containers": [
        {"name": "base", "image": "registry.example.com/payroll/export-win:2.1"}]}}));
    let err = pods_of(&intruder)
        .patch("export-1", &patch, &new_image)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("may not change pods of identity \"payroll-export\""),
        "{err}"
    );
    pods_of(&worker).patch("export-1", &patch, &new_image).await.unwrap();
    let annotate = Patch::Merge(json!({"metadata": {"annotations": {"reviewed-by": "on-call"}}}));
    pods_of(&intruder).patch("export-1", &patch, &annotate).await.unwrap();
    // The identity label stays, whoever asks.
    let unlabel = Patch::Merge(json!({"metadata": {"labels": {"winflow.io/identity": null}}}));
    let err = env
        .api::<Pod>()
        .patch("export-1", &patch, &unlabel)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot be added, changed or removed"), "{err}");

    // Denials are counted on the identity and told there as Events, reason the rule.
    let denied = wait_until("status.pods.denied counts the denials", TIMEOUT, || async {
        let identity = env.api::<WindowsTaskIdentity>().get("payroll-export").await.ok()?;
        let denied = identity.status?.pods?.denied;
        (denied >= 3).then_some(denied)
    })
    .await;
    assert!(denied >= 3, "probe, stolen pod and ephemeral container: {denied}");
    // The controller's own status writes (a new pod changes the counts) keep the webhook's.
    support::create_pod(
        &worker,
        &ns,
        support::task_pod("export-2", "payroll-export", "payroll_export", "export_ledger"),
    )
    .await
    .unwrap();
    let pods = wait_until("the controller counts the new pod", TIMEOUT, || async {
        let identity = env.api::<WindowsTaskIdentity>().get("payroll-export").await.ok()?;
        let pods = identity.status?.pods?;
        (pods.pending >= 3).then_some(pods)
    })
    .await;
    assert!(
        pods.denied >= denied,
        "{} denials after the controller wrote, {denied} before",
        pods.denied
    );
    // A server-side dry run is denied the same way, and changes nothing: no count.
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let probe: Pod = serde_json::from_value(support::task_pod(
        "dry-run-probe",
        "payroll-export",
        "payroll_export",
        "export_ledger",
    ))
    .unwrap();
    let err = pods_of(&intruder)
        .create(&dry_run, &probe)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("may not create pods of identity"), "{err}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = env.api::<WindowsTaskIdentity>().get("payroll-export").await.unwrap();
    assert_eq!(
        after.status.unwrap().pods.unwrap().denied,
        pods.denied,
        "a dry run was counted as a denial"
    );
    let events = wait_until("denial Event", TIMEOUT, || async {
        let events = Api::<Event>::namespaced(env.client.clone(), &ns)
            .list(&ListParams::default())
            .await
            .ok()?;
        let found: Vec<Event> = events
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("CreatorNotAllowed"))
            .collect();
        (!found.is_empty()).then_some(found)
    })
    .await;
    assert!(events[0].note.as_deref().unwrap_or_default().contains("intruder"));

    // The API server's audit log holds winflow's annotations next to both requests.
    let audit = wait_until("audit annotations in the API server's audit log", TIMEOUT, || async {
        let text = std::fs::read_to_string(support::audit_log_path()).ok()?;
        let pod_creates: Vec<Value> = text
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|e| {
                e["verb"] == "create"
                    && e["objectRef"]["resource"] == "pods"
                    && e["objectRef"]["namespace"] == ns.as_str()
                    && e["annotations"]["pods.winflow.io/decision"].is_string()
            })
            .collect();
        let find = |name: &str| pod_creates.iter().find(|e| e["objectRef"]["name"] == name).cloned();
        Some((find("stolen")?, find("export-1")?, find("upload-1")?))
    })
    .await;
    let (stolen, admitted, upload) = audit;
    let annotation = |event: &Value, key: &str| {
        event["annotations"][format!("pods.winflow.io/{key}")]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(annotation(&stolen, "decision"), "denied");
    assert_eq!(annotation(&stolen, "reason"), "CreatorNotAllowed");
    assert_eq!(
        annotation(&stolen, "creator"),
        format!("system:serviceaccount:{ns}:intruder")
    );
    assert_eq!(annotation(&stolen, "identity"), "payroll-export");
    assert_eq!(annotation(&admitted, "decision"), "allowed");
    assert_eq!(
        annotation(&admitted, "creator"),
        format!("system:serviceaccount:{ns}:airflow-worker")
    );
    assert_eq!(annotation(&admitted, "dag_id"), "payroll_export");
    assert_eq!(annotation(&admitted, "task_id"), "export_ledger");
    assert_eq!(annotation(&upload, "run_id"), "scheduled__2026-12-01T00:00:00+00:00");
    assert_eq!(annotation(&upload, "try_number"), "1");
    assert_eq!(
        annotation(&upload, "creator"),
        format!("system:serviceaccount:{ns}:airflow-scheduler")
    );
    operator.stop().await;
}

/// A second identity with an OIDC token (client secret), issued by a local provider.
async fn tokened_identity(env: &TestEnv, provider: &OidcProvider) {
    support::create_client_secret(env, "tokened-oidc", "s3cret-for-tests").await;
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/identity-azure-key-vault.yaml"
    ))
    .unwrap();
    let mut identity: WindowsTaskIdentity = serde_yaml_ng::from_str(&text).unwrap();
    identity.metadata.name = Some("tokened".into());
    identity.spec.service_account.name = "tokened".into();
    identity.spec.access = None;
    identity.spec.token = Some(
        serde_json::from_value(json!({
            "issuerUrl": provider.issuer(), "clientId": "tokened",
            "clientSecretRef": {"name": "tokened-oidc", "key": "client-secret"}, "minValidity": "1m"
        }))
        .unwrap(),
    );
    env.api::<WindowsTaskIdentity>()
        .create(&PostParams::default(), &identity)
        .await
        .unwrap();
    let _: WindowsTaskIdentity = support::wait_for_condition(env, "tokened", "Ready", "True", None).await;
}

/// An identity whose nodes get the host account from a Kubernetes Secret; it need not be Ready.
async fn host_account_identity(env: &TestEnv) {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/identity-azure-key-vault.yaml"
    ))
    .unwrap();
    let mut identity: WindowsTaskIdentity = serde_yaml_ng::from_str(&text).unwrap();
    identity.metadata.name = Some("hosted".into());
    identity.spec.service_account.name = "hosted".into();
    identity.spec.access = None;
    let host = identity.spec.host_account.as_mut().unwrap();
    host.azure_key_vault = None;
    host.kubernetes_secret = Some(serde_json::from_value(json!({"name": "hosted-ccg"})).unwrap());
    env.api::<WindowsTaskIdentity>()
        .create(&PostParams::default(), &identity)
        .await
        .unwrap();
}

#[tokio::test]
async fn no_pod_reaches_an_identitys_credentials_around_its_own_pods() {
    let env = TestEnv::new("lp-credentials").await;
    let provider = OidcProvider::start(ProviderConfig::with_client(3600, "tokened", "s3cret-for-tests", "")).await;
    let operator = env.start_operator(Duration::from_secs(300));
    payroll_identity(&env).await;
    tokened_identity(&env, &provider).await;
    host_account_identity(&env).await;
    support::apply_file(&env, "examples/share-reports.yaml").await;
    support::apply_file(&env, "examples/identity-domain-joined.yaml").await;
    let _: WindowsTaskIdentity = support::wait_for_condition(&env, "finance-reports", "Ready", "True", None).await;
    let webhook = support::webhook::start_webhook(&env).await;
    support::set_enforce_label(&env, Some("true")).await;
    when_webhook_active(&env).await;
    let ns = env.namespace.clone();
    let client = env.client.clone();
    when_enforcement_active(&env, &client).await;

    let mut n = 0;
    let hook = &webhook;
    let mut expect_denied = |pod: Value, reason: &str, found: &[&str]| {
        n += 1;
        let mut pod = pod;
        pod["metadata"]["name"] = json!(format!("p{n}"));
        let (client, ns, reason, found) = (
            client.clone(),
            ns.clone(),
            reason.to_owned(),
            found.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        );
        async move {
            let before = denied_for(hook, &reason);
            let err = support::create_pod(&client, &ns, pod).await.unwrap_err();
            for part in &found {
                assert!(err.contains(part.as_str()), "{reason}: {part} in {err}");
            }
            assert_eq!(denied_for(hook, &reason), before + 1, "{reason}: {err}");
        }
    };

    // Row 2: another identity's token Secret, in each of the four ways, from a pod of another
    // identity and from an unlabelled pod.
    for (way, reference) in secret_references("tokened-token") {
        let labelled = with(
            support::task_pod("x", "payroll-export", "payroll_export", "export_ledger"),
            &reference,
        );
        expect_denied(
            labelled,
            "TokenSecretNotOwn",
            &["Secret \"tokened-token\"", "identity \"tokened\""],
        )
        .await;
        expect_denied(
            with(plain_pod("x"), &reference),
            "TokenSecretNotOwn",
            &["tokened-token", way.split(' ').next().unwrap()],
        )
        .await;
    }
    // ... while the identity's own pod gets it, as winflow injects it.
    let own = support::create_pod(
        &env.client,
        &ns,
        support::task_pod("own-token", "tokened", "payroll_export", "export_ledger"),
    )
    .await
    .unwrap();
    let base = &own.spec.unwrap().containers[0];
    let token_env = base
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "WINFLOW_ACCESS_TOKEN")
        .unwrap();
    let key = token_env.value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap();
    assert_eq!(key.name, "tokened-token");

    // Row 3: a share's claim, from pods whose identity does not list it.
    let claim = json!({"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "finance-reports-share"}}]});
    expect_denied(
        with(plain_pod("x"), &claim),
        "ShareNotListed",
        &["volume \"data\"", "finance-reports-share"],
    )
    .await;
    let other = with(
        support::task_pod("x", "payroll-export", "payroll_export", "export_ledger"),
        &claim,
    );
    expect_denied(
        other,
        "ShareNotListed",
        &["identity \"payroll-export\" lists no shares"],
    )
    .await;
    // ... while the identity that lists it mounts it.
    let listed = support::create_pod(
        &env.client,
        &ns,
        support::task_pod("listed", "finance-reports", "finance_daily", "copy"),
    )
    .await
    .unwrap();
    let volumes = listed.spec.unwrap().volumes.unwrap();
    assert!(volumes.iter().any(|v| {
        v.persistent_volume_claim
            .as_ref()
            .is_some_and(|c| c.claim_name == "finance-reports-share")
    }));

    // Row 4: Secrets meant for the node or winflow only, in each of the four ways.
    for (secret, reason) in [
        ("smb-finance", "ShareCredentialsReference"),
        ("tokened-oidc", "ClientSecretReference"),
        ("hosted-ccg", "HostAccountSecretReference"),
    ] {
        for (_, reference) in secret_references(secret) {
            expect_denied(with(plain_pod("x"), &reference), reason, &[secret]).await;
            let labelled = with(
                support::task_pod("x", "finance-reports", "finance_daily", "copy"),
                &reference,
            );
            expect_denied(labelled, reason, &[secret]).await;
        }
    }

    // Row 5: a credential spec's contents without its name, or under another name.
    let finance = env.api::<WindowsTaskIdentity>().get("finance-reports").await.unwrap();
    let forged = winflow::webhook::decide::inline_credential_spec(&finance);
    let content_only = json!({"securityContext": {"windowsOptions": {"gmsaCredentialSpec": forged}}});
    expect_denied(
        with(plain_pod("x"), &content_only),
        "GmsaContentWithoutName",
        &["gmsaCredentialSpecName"],
    )
    .await;
    let renamed = json!({"securityContext": {"windowsOptions": {"gmsaCredentialSpecName": "webapp-gmsa", "gmsaCredentialSpec": forged}}});
    expect_denied(
        with(plain_pod("x"), &renamed),
        "GmsaAccountOfIdentity",
        &["identity \"finance-reports\""],
    )
    .await;

    // Another gMSA under its own name is the upstream gMSA webhook's business: admitted.
    let webapp = json!({"securityContext": {"windowsOptions": {"gmsaCredentialSpecName": "webapp-gmsa",
        "gmsaCredentialSpec": "{\"ActiveDirectoryConfig\":{\"GroupManagedServiceAccounts\":[{\"Name\":\"webapp\",\"Scope\":\"CORP\"}]}}"}}});
    support::create_pod(&env.client, &ns, with(plain_pod("webapp"), &webapp))
        .await
        .unwrap();
    // A pod of an identity carries its own contents only, at every level.
    let mut foreign = support::task_pod("x", "finance-reports", "finance_daily", "copy");
    foreign["spec"]["containers"][0]["securityContext"] = json!({"windowsOptions": {
        "gmsaCredentialSpecName": format!("{ns}.finance-reports"), "gmsaCredentialSpec": "{\"CmsPlugins\":[]}"}});
    expect_denied(
        foreign,
        "GmsaConflict",
        &["contents other than identity \"finance-reports\""],
    )
    .await;

    // Row 6: an identity's service account, without being its pod.
    let account = json!({"serviceAccountName": "finance-reports"});
    expect_denied(
        with(plain_pod("x"), &account),
        "ServiceAccountOfIdentity",
        &["winflow.io/identity=finance-reports"],
    )
    .await;

    // The identity label is fixed for a pod's lifetime: not added on UPDATE.
    let plain = support::create_pod(&env.client, &ns, plain_pod("plain")).await.unwrap();
    let relabel = json!({"metadata": {"labels": {"winflow.io/identity": "payroll-export"}}});
    let err = env
        .api::<Pod>()
        .patch("plain", &PatchParams::default(), &Patch::Merge(&relabel))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot be added, changed or removed"), "{err}");
    assert!(!plain.metadata.labels.unwrap().contains_key("winflow.io/identity"));
    // Nor does an ephemeral container of an unlabelled pod read a token.
    let steal = json!({"env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "tokened-token", "key": "access_token"}}}]});
    let err = support::add_ephemeral_container(&env.client, &ns, "plain", "debug", steal)
        .await
        .unwrap_err();
    assert!(
        err.contains("ephemeral container \"debug\"") && err.contains("tokened-token"),
        "{err}"
    );
    assert!(denied_for(&webhook, "IdentityLabelChanged") >= 1);
    operator.stop().await;
}

/// An unlabelled pod carrying gMSA `options` at pod level (`"pod"`), in an init container
/// (`"init"`) or in its container (`"container"`).
fn with_gmsa(name: &str, place: &str, options: Value) -> Value {
    let mut pod = plain_pod(name);
    let context = json!({"windowsOptions": options});
    match place {
        "pod" => pod["spec"]["securityContext"] = context,
        "init" => {
            pod["spec"]["initContainers"] =
                json!([{"name": "init", "image": "registry.example.com/tools:1", "securityContext": context}])
        }
        _ => pod["spec"]["containers"][0]["securityContext"] = context,
    }
    pod
}

/// Contents naming the gMSA account of the example identity `payroll-export` (svc-payroll in
/// CORP, host account plugin input of its Key Vault), spelled where and how winflow's first
/// parser did not look.
fn payroll_spellings(plugin_input: &str) -> Vec<(&'static str, String)> {
    let gmsa = |name: &str, scope: &str| {
        format!(
            r#"{{"ActiveDirectoryConfig":{{"GroupManagedServiceAccounts":[{{"Name":"{name}","Scope":"{scope}"}}]}}}}"#
        )
    };
    vec![
        (
            "MachineAccountName",
            r#"{"DomainJoinConfig":{"MachineAccountName":"svc-payroll","DnsName":"corp.example.com","NetBiosName":"CORP"}}"#.to_owned(),
        ),
        (
            "plugin input",
            format!(r#"{{"ActiveDirectoryConfig":{{"HostAccountConfig":{{"PluginGUID":"{{CCC2A336-D7F3-4818-A213-272B7924213E}}","PluginInput":"{plugin_input}"}}}}}}"#),
        ),
        (
            "key case",
            r#"{"activedirectoryconfig":{"GROUPMANAGEDSERVICEACCOUNTS":[{"name":"svc-payroll","scope":"CORP"}]}}"#.to_owned(),
        ),
        ("byte-order mark", format!("\u{feff}{}", gmsa("svc-payroll", "CORP"))),
        ("trailing dot and $", gmsa("SVC-Payroll$", "corp.example.com.")),
        (
            "key given twice",
            r#"{"ActiveDirectoryConfig":{"GroupManagedServiceAccounts":[{"Name":"svc-payroll","Scope":"CORP"}]},"activeDirectoryConfig":{}}"#
                .to_owned(),
        ),
    ]
}

/// The reason and a part of the message that each spelling of `payroll_spellings` is denied with.
fn spelling_denial(what: &str) -> (&'static str, &'static str) {
    match what {
        "byte-order mark" | "key given twice" => ("GmsaContentUnreadable", "cannot read unambiguously"),
        _ => ("GmsaAccountOfIdentity", "identity \"payroll-export\""),
    }
}

#[tokio::test]
async fn the_gmsa_gate_holds_in_every_namespace_for_every_spelling() {
    let env = TestEnv::new("lp-gmsa").await;
    let operator = env.start_operator(Duration::from_secs(300));
    payroll_identity(&env).await;
    let webhook = support::webhook::start_webhook(&env).await;
    when_webhook_active(&env).await;
    grant_pod_rights(&env, &["airflow-worker", "intruder"]).await;
    let ns = env.namespace.clone();
    let intruder = env.client_as_service_account("intruder").await;
    let payroll = env.api::<WindowsTaskIdentity>().get("payroll-export").await.unwrap();
    let own = winflow::webhook::decide::inline_credential_spec(&payroll);
    let plugin_input = "ObjectId=6e7a5f1c-2b1d-4c39-9f3e-8d2a1b0c4e5f;SecretUri=https://winflow-kv.vault.azure.net/secrets/gmsa-reader";

    // Not an enforcement namespace: the cluster-wide webhook answers once the API server has it.
    let named = |contents: &str, name: Option<&str>| match name {
        Some(name) => json!({"gmsaCredentialSpecName": name, "gmsaCredentialSpec": contents}),
        None => json!({"gmsaCredentialSpec": contents}),
    };
    wait_until("gMSA webhook active", TIMEOUT, || async {
        let probe = with_gmsa("probe-gmsa", "pod", named(&own, Some("webapp-gmsa")));
        match support::create_pod(&intruder, &ns, probe).await {
            Err(e) if e.contains("identity \"payroll-export\"") => Some(()),
            Ok(_) => {
                let _ = env.api::<Pod>().delete("probe-gmsa", &Default::default()).await;
                None
            }
            Err(_) => None,
        }
    })
    .await;

    let mut n = 0;
    let mut expect_denied = |pod: Value, reason: &'static str, found: String| {
        n += 1;
        let mut pod = pod;
        pod["metadata"]["name"] = json!(format!("p{n}"));
        let (intruder, ns, webhook) = (intruder.clone(), ns.clone(), &webhook);
        async move {
            let before = denied_for(webhook, reason);
            let err = support::create_pod(&intruder, &ns, pod).await.unwrap_err();
            assert!(err.contains(&found), "{reason}: {found} in {err}");
            assert_eq!(denied_for(webhook, reason), before + 1, "{reason}: {err}");
        }
    };

    // Row 8: the identity's contents, at pod, container and init container level, under
    // another credential spec name or none.
    for place in ["pod", "container", "init"] {
        for name in [Some("webapp-gmsa"), None] {
            expect_denied(
                with_gmsa("x", place, named(&own, name)),
                "GmsaAccountOfIdentity",
                "gMSA account of identity \"payroll-export\"".to_owned(),
            )
            .await;
        }
    }
    // ... and its credential spec name.
    expect_denied(
        with_gmsa(
            "x",
            "container",
            json!({"gmsaCredentialSpecName": format!("{ns}.payroll-export")}),
        ),
        "UnlabelledGmsaUse",
        "winflow.io/identity=payroll-export".to_owned(),
    )
    .await;
    // Row 9, here and in an enforcement namespace: every spelling, next to another name.
    let spellings = payroll_spellings(plugin_input);
    for (what, contents) in &spellings {
        let (reason, found) = spelling_denial(what);
        let pod = with_gmsa("x", "container", named(contents, Some("webapp-gmsa")));
        expect_denied(pod, reason, found.to_owned()).await;
    }
    // Contents naming an unrelated account are not winflow's business; the identity's own
    // pod, created by a creator it lists, gets its contents.
    let webapp = r#"{"ActiveDirectoryConfig":{"GroupManagedServiceAccounts":[{"Name":"svc-webapp","Scope":"CORP"}]}}"#;
    support::create_pod(
        &intruder,
        &ns,
        with_gmsa("webapp", "pod", named(webapp, Some("webapp-gmsa"))),
    )
    .await
    .unwrap();
    let worker = env.client_as_service_account("airflow-worker").await;
    let task = support::task_pod("own", "payroll-export", "payroll_export", "export_ledger");
    let created = support::create_pod(&worker, &ns, task).await.unwrap();
    let options = created.spec.unwrap().security_context.unwrap().windows_options.unwrap();
    assert_eq!(options.gmsa_credential_spec.as_deref(), Some(own.as_str()));

    // The same spellings in an enforcement namespace (seen by enforce.pods.winflow.io).
    support::set_enforce_label(&env, Some("true")).await;
    when_enforcement_active(&env, &intruder).await;
    for (what, contents) in &spellings {
        let (reason, found) = spelling_denial(what);
        let pod = with_gmsa("x", "pod", named(contents, Some("webapp-gmsa")));
        expect_denied(pod, reason, found.to_owned()).await;
    }
    let task = support::task_pod("own-enforced", "payroll-export", "payroll_export", "export_ledger");
    support::create_pod(&worker, &ns, task).await.unwrap();
    operator.stop().await;
}

/// Lets `account` exec, attach and port-forward into pods and write Deployments: what the
/// built-in `edit` role gives, without any `use` of an identity.
async fn grant_edit_rights(env: &TestEnv, account: &str) {
    let rules = json!([
        {"apiGroups": [""], "resources": ["pods/exec", "pods/attach", "pods/portforward"], "verbs": ["create", "get"]},
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["create", "get", "patch", "delete"]}
    ]);
    bind_role(env, "editor", rules, &[account]).await;
}

/// `POST pods/<pod>/<subresource>` (exec, attach, portforward) as `client`: the API server's
/// answer as text. Admission runs before the API server dials the node, so a pod without one
/// tells winflow's answer apart from the node's.
async fn connect(client: &Client, namespace: &str, pod: &str, subresource: &str) -> String {
    let query = match subresource {
        "exec" => "?command=whoami&stdout=true",
        "attach" => "?stdout=true",
        _ => "?ports=5985",
    };
    let request = http::Request::post(format!(
        "/api/v1/namespaces/{namespace}/pods/{pod}/{subresource}{query}"
    ))
    .body(Vec::new())
    .unwrap();
    match client.request_text(request).await {
        Ok(text) => text,
        Err(e) => e.to_string(),
    }
}

/// A Deployment of `replicas` pods that run as service account `account`.
fn deployment(name: &str, account: &str, image: &str) -> k8s_openapi::api::apps::v1::Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"serviceAccountName": account, "automountServiceAccountToken": false,
                    "containers": [{"name": "worker", "image": image}]}}}
    }))
    .unwrap()
}

#[tokio::test]
async fn creators_service_accounts_sessions_into_pods_and_the_node_are_doors_too() {
    let env = TestEnv::new("lp-doors").await;
    let operator = env.start_operator(Duration::from_secs(300));
    payroll_identity(&env).await;
    let webhook = support::webhook::start_webhook(&env).await;
    when_webhook_active(&env).await;
    grant_pod_rights(&env, &["airflow-worker", "airflow-scheduler", "intruder"]).await;
    grant_edit_rights(&env, "intruder").await;
    let ns = env.namespace.clone();
    let intruder = env.client_as_service_account("intruder").await;
    let worker = env.client_as_service_account("airflow-worker").await;

    // Row 11, in a namespace that is not (yet) an enforcement namespace: exec, attach and
    // port-forward into the identity's pod run as the identity, wherever it is.
    support::create_pod(
        &worker,
        &ns,
        support::task_pod("export-1", "payroll-export", "payroll_export", "export_ledger"),
    )
    .await
    .unwrap();
    for (subresource, doing) in [
        ("exec", "exec into pods of"),
        ("attach", "attach to pods of"),
        ("portforward", "port-forward to pods of"),
    ] {
        let answer = connect(&intruder, &ns, "export-1", subresource).await;
        assert!(
            answer.contains(&format!("may not {doing} identity \"payroll-export\"")),
            "{subresource}: {answer}"
        );
        // Someone who may use the identity passes winflow and reaches the node part (which
        // this pod, on no node, does not have).
        let answer = connect(&worker, &ns, "export-1", subresource).await;
        assert!(!answer.contains("winflow"), "{subresource}: {answer}");
    }
    // A pod of no identity is not winflow's business.
    support::create_pod(&intruder, &ns, plain_pod("plain")).await.unwrap();
    let answer = connect(&intruder, &ns, "plain", "exec").await;
    assert!(!answer.contains("winflow"), "{answer}");
    assert!(denied_for(&webhook, "CreatorNotAllowed") >= 3);

    support::set_enforce_label(&env, Some("true")).await;

    // Row 10: an unlabelled pod that runs as the worker's service account (a creator) would
    // create payroll-export's pods as the worker does.
    let as_worker = |name: &str| {
        let mut pod = plain_pod(name);
        pod["spec"]["serviceAccountName"] = json!("airflow-worker");
        pod
    };
    let err = wait_until("the creator rule in force", TIMEOUT, || {
        let intruder = intruder.clone();
        let ns = ns.clone();
        let pod = as_worker("wearing-the-worker");
        async move { support::create_pod(&intruder, &ns, pod).await.err() }
    })
    .await;
    for part in [
        "pod runs as service account \"airflow-worker\", a creator of identities \"payroll-export\"",
        &format!("user \"system:serviceaccount:{ns}:intruder\" may not use \"payroll-export\""),
    ] {
        assert!(err.contains(part), "{part}: {err}");
    }
    assert!(denied_for(&webhook, "CreatorServiceAccount") >= 1);
    // The worker itself (it may use the identity) starts such a pod.
    support::create_pod(&worker, &ns, as_worker("worker-helper"))
        .await
        .unwrap();

    // The same through a Deployment: refused for the intruder, whose template is checked ...
    let deployments = |client: &Client| Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), &ns);
    let err = deployments(&intruder)
        .create(
            &PostParams::default(),
            &deployment("sneaky", "airflow-worker", "registry.example.com/tools:1"),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("Deployment \"sneaky\": its pod template runs as service account \"airflow-worker\""),
        "{err}"
    );
    assert!(denied_for(&webhook, "CreatorServiceAccount") >= 2);
    // ... and admitted for whoever may use the identity (here the cluster admin); its
    // ReplicaSet and pod, made by Kubernetes' controllers, are admitted without asking again.
    deployments(&env.client)
        .create(
            &PostParams::default(),
            &deployment("airflow-worker", "airflow-worker", "registry.example.com/airflow:2.10"),
        )
        .await
        .unwrap();
    wait_until("the Deployment's pod created by its controllers", TIMEOUT, || async {
        let pods = env
            .api::<Pod>()
            .list(&ListParams::default().labels("app=airflow-worker"))
            .await
            .ok()?;
        (!pods.items.is_empty()).then_some(())
    })
    .await;
    // Scaling is not a new template; a new image is, and the intruder may not roll it out.
    let patch = PatchParams::default();
    deployments(&intruder)
        .patch(
            "airflow-worker",
            &patch,
            &Patch::Merge(json!({"spec": {"replicas": 2}})),
        )
        .await
        .unwrap();
    let new_image = Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [
        {"name": "worker", "image": "registry.example.com/intruder:1"}]}}}}));
    let err = deployments(&intruder)
        .patch("airflow-worker", &patch, &new_image)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("its pod template runs as service account \"airflow-worker\""),
        "{err}"
    );

    // Row 12: no HostProcess or privileged pod in an enforcement namespace (SYSTEM on the node
    // reads every gMSA the node may retrieve), whoever creates it.
    let host_process = with(
        plain_pod("host"),
        &json!({"securityContext": {"windowsOptions": {"hostProcess": true, "runAsUserName": "NT AUTHORITY\\SYSTEM"}},
            "hostNetwork": true}),
    );
    match support::create_pod(&env.client, &ns, host_process).await {
        Err(err) => assert!(
            err.contains("asks for a HostProcess container") && err.contains("winflow.io/enforce=true"),
            "{err}"
        ),
        // Servers before 1.22 do not know the field and drop it before admission: the pod
        // they keep is no HostProcess pod.
        Ok(pod) => {
            let minor: u32 = env
                .client
                .apiserver_version()
                .await
                .unwrap()
                .minor
                .trim_end_matches('+')
                .parse()
                .unwrap();
            let options = pod.spec.unwrap().security_context.unwrap().windows_options;
            assert!(
                minor < 22 && options.and_then(|o| o.host_process).is_none(),
                "a HostProcess pod admitted on 1.{minor}"
            );
        }
    }
    let mut privileged = plain_pod("privileged");
    privileged["spec"]["containers"][0]["securityContext"] = json!({"privileged": true});
    let err = support::create_pod(&env.client, &ns, privileged).await.unwrap_err();
    assert!(err.contains("is privileged"), "{err}");
    assert!(denied_for(&webhook, "PrivilegedNotAllowed") >= 1);

    // A creator from a namespace without the label: there any pod may wear its account
    // unchecked, and the identity says so instead of Enforced=True.
    support::wait_for_condition::<WindowsTaskIdentity>(&env, "payroll-export", "Enforced", "True", None).await;
    let elsewhere = format!("{ns}-elsewhere");
    let creators = json!({"spec": {"access": {"creators": [
        {"kind": "ServiceAccount", "name": "airflow-scheduler"},
        {"kind": "ServiceAccount", "name": "airflow-worker"},
        {"kind": "ServiceAccount", "name": "airflow-worker", "namespace": elsewhere}]}}});
    env.api::<WindowsTaskIdentity>()
        .patch("payroll-export", &patch, &Patch::Merge(creators))
        .await
        .unwrap();
    let identity: WindowsTaskIdentity = support::wait_for_condition(
        &env,
        "payroll-export",
        "Enforced",
        "False",
        Some("CreatorNamespaceNotEnforced"),
    )
    .await;
    let enforced = support::condition(&identity, "Enforced").unwrap();
    assert!(
        enforced.message.contains(&format!("live in {elsewhere:?}")),
        "{}",
        enforced.message
    );

    drop(webhook);
    operator.stop().await;
}
