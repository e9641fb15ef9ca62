//! The operator's own RBAC (deploy/rbac.yaml) is enough for its work and no more: the
//! operator runs as a service account bound to exactly that ClusterRole (API server
//! impersonation) and must bring the examples to Ready and clean them up. Without one of its
//! rules, it says what it cannot do: in conditions, and for a watch in the log, the metrics
//! and `/readyz`.

use winflow_test_support as support;

use std::time::Duration;

use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PersistentVolume, Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Config};
use support::oidc::{ClientConfig, FederatedCredential, OidcProvider, ProviderConfig};
use support::process::http_get;
use support::{TestEnv, wait_until};
use winflow::admin::Readiness;
use winflow::api::{GMSACredentialSpec, WindowsShare, WindowsTaskIdentity};
use winflow::metrics::Metrics;

const TIMEOUT: Duration = Duration::from_secs(90);

/// deploy/rbac.yaml with the service account in the test's namespace, the cluster-scoped
/// names made unique per test, and the rules passed through `edit_rules`. Returns the
/// configuration of a client acting as that service account.
async fn install_operator_rbac(env: &TestEnv, edit_rules: impl FnOnce(&mut Vec<PolicyRule>)) -> Config {
    let text = std::fs::read_to_string(format!("{}/deploy/rbac.yaml", support::REPO)).unwrap();
    let mut documents = serde_yaml_ng::Deserializer::from_str(&text);
    let mut account: ServiceAccount = serde::Deserialize::deserialize(documents.next().unwrap()).unwrap();
    let mut role: ClusterRole = serde::Deserialize::deserialize(documents.next().unwrap()).unwrap();
    let mut binding: ClusterRoleBinding = serde::Deserialize::deserialize(documents.next().unwrap()).unwrap();
    account.metadata.namespace = Some(env.namespace.clone());
    let cluster_name = format!("winflow-{}", env.namespace);
    role.metadata.name = Some(cluster_name.clone());
    edit_rules(role.rules.as_mut().unwrap());
    binding.metadata.name = Some(cluster_name.clone());
    binding.role_ref.name = cluster_name.clone();
    binding.subjects.as_mut().unwrap()[0].namespace = Some(env.namespace.clone());
    let apply = PatchParams::apply("winflow-tests").force();
    env.api::<ServiceAccount>()
        .patch("winflow", &apply, &Patch::Apply(&account))
        .await
        .unwrap();
    let roles = Api::<ClusterRole>::all(env.client.clone());
    roles.patch(&cluster_name, &apply, &Patch::Apply(&role)).await.unwrap();
    let bindings = Api::<ClusterRoleBinding>::all(env.client.clone());
    bindings
        .patch(&cluster_name, &apply, &Patch::Apply(&binding))
        .await
        .unwrap();
    env.config_as_service_account("winflow")
}

/// An operator under deploy/rbac.yaml's rules as `edit_rules` leaves them, and the Key Vault
/// example (`payroll-export`) created for it.
async fn key_vault_example_under(
    test: &str,
    edit_rules: impl FnOnce(&mut Vec<PolicyRule>),
) -> (TestEnv, support::Operator) {
    let env = TestEnv::new(test).await;
    let operator_config = install_operator_rbac(&env, edit_rules).await;
    let operator = env.start_operator_as(operator_config, Duration::from_secs(300));
    support::apply_file(&env, "examples/identity-azure-key-vault.yaml").await;
    (env, operator)
}

fn is_forbidden(result: Result<impl Sized, kube::Error>) -> bool {
    matches!(result, Err(kube::Error::Api(status)) if status.code == 403)
}

#[tokio::test]
async fn the_operator_works_under_its_own_rbac_and_no_more() {
    let env = TestEnv::new("rbac").await;
    let operator_config = install_operator_rbac(&env, |_| {}).await;
    let operator = env.start_operator_as(operator_config.clone(), Duration::from_secs(300));
    let operator_client = Client::try_from(operator_config).unwrap();

    support::apply_file(&env, "examples/share-reports.yaml").await;
    support::apply_file(&env, "examples/identity-domain-joined.yaml").await;
    support::apply_file(&env, "examples/identity-azure-key-vault.yaml").await;
    for name in ["finance-reports", "payroll-export"] {
        let _: WindowsTaskIdentity = support::wait_for_condition(&env, name, "Ready", "True", None).await;
    }
    // Enforced reads the namespace's label through the namespace watch.
    support::set_enforce_label(&env, Some("true")).await;
    for name in ["finance-reports", "payroll-export"] {
        let identity: WindowsTaskIdentity =
            support::wait_for_condition(&env, name, "Enforced", "True", Some("NamespaceEnforced")).await;
        let conditions = identity.status.unwrap().conditions;
        assert!(conditions.iter().all(|c| c.status == "True"), "{name}: {conditions:?}");
    }
    // The webhook's question to the API server: may this pod's creator use the identity?
    let review: SubjectAccessReview = serde_json::from_value(serde_json::json!({
        "spec": {
            "user": format!("system:serviceaccount:{}:airflow-scheduler", env.namespace),
            "resourceAttributes": {"namespace": env.namespace, "group": "winflow.io",
                "resource": "windowstaskidentities", "name": "payroll-export", "verb": "use"}
        }
    }))
    .unwrap();
    let answer = Api::<SubjectAccessReview>::all(operator_client.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("the operator may ask SubjectAccessReviews");
    assert!(
        answer.status.unwrap().allowed,
        "examples/identity-azure-key-vault.yaml's creators may use it"
    );
    let _: WindowsShare =
        support::wait_for_condition(&env, "finance-reports-share", "Ready", "True", Some("Bound")).await;

    // Cleanup needs its delete rights too: credential specs and volumes go, the namespace stays.
    env.api::<WindowsTaskIdentity>()
        .delete("finance-reports", &DeleteParams::default())
        .await
        .unwrap();
    env.api::<WindowsShare>()
        .delete("finance-reports-share", &DeleteParams::default())
        .await
        .unwrap();
    let specs: Api<GMSACredentialSpec> = Api::all(env.client.clone());
    let volumes: Api<PersistentVolume> = Api::all(env.client.clone());
    wait_until("finalizers done", TIMEOUT, || async {
        let spec_gone = specs
            .get_opt(&format!("{}.finance-reports", env.namespace))
            .await
            .unwrap()
            .is_none();
        let volume_gone = volumes
            .get_opt(&format!("{}.finance-reports-share", env.namespace))
            .await
            .unwrap()
            .is_none();
        let identity_gone = env
            .api::<WindowsTaskIdentity>()
            .get_opt("finance-reports")
            .await
            .unwrap()
            .is_none();
        (spec_gone && volume_gone && identity_gone).then_some(())
    })
    .await;

    // Outside its duties, the same identity is refused.
    let ns = env.namespace.as_str();
    assert!(is_forbidden(
        Api::<Namespace>::all(operator_client.clone())
            .delete(ns, &DeleteParams::default())
            .await
    ));
    // It reads namespaces' labels; it may not set them.
    assert!(is_forbidden(
        Api::<Namespace>::all(operator_client.clone())
            .patch(
                ns,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"metadata": {"labels": {"winflow.io/enforce": null}}}))
            )
            .await
    ));
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "probe"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}
    }))
    .unwrap();
    assert!(is_forbidden(
        Api::<Pod>::namespaced(operator_client.clone(), ns)
            .create(&PostParams::default(), &pod)
            .await
    ));
    assert!(is_forbidden(
        Api::<ConfigMap>::namespaced(operator_client.clone(), ns)
            .delete("payroll-export-pod-templates", &DeleteParams::default())
            .await
    ));
    // It writes token Secrets one by one; it may not wipe a namespace's Secrets.
    assert!(is_forbidden(
        Api::<Secret>::namespaced(operator_client.clone(), ns)
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await
            .map(|_| ())
    ));
    assert!(is_forbidden(
        Api::<ClusterRole>::all(operator_client.clone())
            .list(&ListParams::default())
            .await
    ));
    operator.stop().await;
}

/// deploy/rbac.yaml's rules without verb `use` on `resource`.
fn without_use_on(resource: &'static str) -> impl FnOnce(&mut Vec<PolicyRule>) {
    without_verb_on(resource, "use")
}

/// deploy/rbac.yaml's rules without `verb` on `resource`.
fn without_verb_on(resource: &'static str, verb: &'static str) -> impl FnOnce(&mut Vec<PolicyRule>) {
    move |rules| {
        let mut found = false;
        for rule in rules.iter_mut() {
            if rule.resources.iter().flatten().any(|r| r == resource) && rule.verbs.iter().any(|v| v == verb) {
                rule.verbs.retain(|v| v != verb);
                found = true;
            }
        }
        assert!(found, "deploy/rbac.yaml grants {verb} on {resource}");
        rules.retain(|rule| !rule.verbs.is_empty());
    }
}

/// deploy/rbac.yaml's rules without the rule on `resource`.
fn without_rule_on(resource: &'static str) -> impl FnOnce(&mut Vec<PolicyRule>) {
    move |rules| {
        let before = rules.len();
        rules.retain(|rule| !rule.resources.iter().flatten().any(|r| r == resource));
        assert_eq!(rules.len(), before - 1, "deploy/rbac.yaml has one rule on {resource}");
    }
}

/// A task pod of the payroll example, for DAG `payroll_export`.
fn payroll_pod(name: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"winflow.io/identity": "payroll-export",
            "dag_id": "payroll_export", "task_id": "export_ledger"}},
        "spec": {"automountServiceAccountToken": false,
                 "containers": [{"name": "base", "image": "registry.example.com/payroll/export-win:2.0"}]}
    }))
    .unwrap()
}

#[tokio::test]
async fn the_webhook_works_under_the_operators_rbac_and_fails_closed_without_subject_access_reviews() {
    let env = TestEnv::new("rbac-webhook").await;
    let operator_config = install_operator_rbac(&env, |_| {}).await;
    let operator = env.start_operator_as(operator_config.clone(), Duration::from_secs(300));
    support::apply_file(&env, "examples/identity-azure-key-vault.yaml").await;
    let _: WindowsTaskIdentity = support::wait_for_condition(&env, "payroll-export", "Ready", "True", None).await;
    let webhook = support::webhook::start_webhook_as(&env, operator_config).await;
    let pods: Api<Pod> = env.api();
    // The webhook's caches, its SubjectAccessReview and its pod lookup all under winflow's RBAC.
    let admitted = wait_until("the webhook mutates", TIMEOUT, || async {
        let pod = pods
            .create(&PostParams::default(), &payroll_pod("export-1"))
            .await
            .ok()?;
        let named = pod
            .spec
            .as_ref()?
            .security_context
            .as_ref()?
            .windows_options
            .as_ref()?
            .gmsa_credential_spec_name
            .clone();
        if named.is_none() {
            let _ = pods.delete("export-1", &DeleteParams::default()).await;
        }
        named
    })
    .await;
    assert_eq!(admitted, format!("{}.payroll-export", env.namespace));
    support::add_ephemeral_container(&env.client, &env.namespace, "export-1", "debug", serde_json::json!({}))
        .await
        .expect("the webhook reads the pod's labels and asks about the adder");
    assert_eq!(
        support::metric_sum(
            &webhook.metrics,
            "winflow_admission_decisions_total{webhook=\"validate-ephemeral\",decision=\"allowed\""
        ),
        1
    );

    // Without `get pods`, winflow cannot tell whose pod it is: the ephemeral container is denied.
    install_operator_rbac(&env, without_verb_on("pods", "get")).await;
    let err = support::add_ephemeral_container(
        &env.client,
        &env.namespace,
        "export-1",
        "debug-2",
        serde_json::json!({}),
    )
    .await
    .unwrap_err();
    assert!(err.contains("winflow could not read pod \"export-1\""), "{err}");

    // Without the right to ask, nobody is let in: a creator the webhook has not asked about yet
    // (an admin impersonating another user) is denied with the reason.
    install_operator_rbac(&env, without_rule_on("subjectaccessreviews")).await;
    let other_admin = env.client_as("other-admin", &["system:masters".to_owned()]).await;
    let err = Api::<Pod>::namespaced(other_admin, &env.namespace)
        .create(&PostParams::default(), &payroll_pod("export-2"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("could not check whether user \"other-admin\" may use identity \"payroll-export\""),
        "{err}"
    );
    assert!(
        err.contains("forbidden") || err.contains("403"),
        "the API server's refusal is named: {err}"
    );
    operator.stop().await;
}

/// The operator without verb `use` on `resource`: the Role `refused_role` that would grant
/// `use` is refused by RBAC escalation prevention, and the identity says so (`AccessGranted`
/// and `Ready` false, `PrerequisiteMissing`, saying what to grant) while its other objects are in
/// place.
async fn without_use_the_role_is_refused(test: &str, resource: &'static str, refused_role: &str, kept_role: &str) {
    let (env, operator) = key_vault_example_under(test, without_use_on(resource)).await;
    let identity: WindowsTaskIdentity = support::wait_for_condition(
        &env,
        "payroll-export",
        "AccessGranted",
        "False",
        Some("PrerequisiteMissing"),
    )
    .await;
    let access = support::condition(&identity, "AccessGranted").unwrap();
    assert!(
        access.message.contains(&format!("Role {refused_role}"))
            && (access.message.contains("escalat") || access.message.contains("not currently held"))
            && access.message.contains("grant it as deploy/rbac.yaml"),
        "{}",
        access.message
    );
    let ready = support::condition(&identity, "Ready").unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "PrerequisiteMissing")
    );
    for condition in ["CredentialSpecReady", "PodTemplateReady"] {
        assert_eq!(
            support::condition(&identity, condition).unwrap().status,
            "True",
            "{condition}"
        );
    }
    let roles = env.api::<Role>();
    assert!(
        roles.get_opt(kept_role).await.unwrap().is_some(),
        "{kept_role} is in place"
    );
    assert!(
        roles.get_opt(refused_role).await.unwrap().is_none(),
        "{refused_role} was refused"
    );
    operator.stop().await;
}

#[tokio::test]
async fn without_use_on_credential_specs_the_role_is_refused_and_the_identity_says_why() {
    without_use_the_role_is_refused(
        "rbac-no-use",
        "gmsacredentialspecs",
        "winflow-payroll-export-gmsa",
        "winflow-payroll-export-use",
    )
    .await;
}

#[tokio::test]
async fn without_use_on_identities_the_use_role_is_refused_and_the_identity_says_why() {
    without_use_the_role_is_refused(
        "rbac-no-use-identity",
        "windowstaskidentities",
        "winflow-payroll-export-use",
        "winflow-payroll-export-gmsa",
    )
    .await;
}

#[tokio::test]
async fn without_namespace_rights_identities_still_converge_and_say_what_they_cannot_tell() {
    let (env, operator) = key_vault_example_under("rbac-no-namespaces", without_rule_on("namespaces")).await;
    let identity: WindowsTaskIdentity =
        support::wait_for_condition(&env, "payroll-export", "Enforced", "False", Some("NamespaceUnknown")).await;
    let enforced = support::condition(&identity, "Enforced").unwrap();
    assert!(
        enforced.message.contains("list and watch on namespaces"),
        "{}",
        enforced.message
    );
    assert_eq!(support::condition(&identity, "Ready").unwrap().status, "True");
    operator.stop().await;
}

#[tokio::test]
async fn without_list_on_pods_identities_still_converge_and_say_they_cannot_count_their_tasks() {
    let (env, operator) = key_vault_example_under("rbac-no-list-pods-identity", without_verb_on("pods", "list")).await;
    let identity: WindowsTaskIdentity =
        support::wait_for_condition(&env, "payroll-export", "TasksHealthy", "False", Some("PodsUnknown")).await;
    let tasks = support::condition(&identity, "TasksHealthy").unwrap();
    assert!(
        tasks.message.contains("winflow cannot list pods") && tasks.message.contains("list and watch on pods"),
        "{}",
        tasks.message
    );
    assert_eq!(support::condition(&identity, "Ready").unwrap().status, "True");
    assert!(
        identity.status.unwrap().pods.is_none(),
        "no pod counts it could not make"
    );

    // With the rule back, the identity counts its task pods again by itself.
    install_operator_rbac(&env, |_| {}).await;
    let identity: WindowsTaskIdentity =
        support::wait_for_condition(&env, "payroll-export", "TasksHealthy", "True", Some("NoRecentFailures")).await;
    assert!(identity.status.unwrap().pods.is_some());
    operator.stop().await;
}

#[tokio::test]
async fn tokens_are_issued_and_removed_under_the_operators_rbac() {
    let env = TestEnv::new("rbac-token").await;
    let (issuer, jwks) = support::service_account_issuer(&env.client).await;
    let provider = OidcProvider::start(ProviderConfig {
        access_token_ttl_seconds: 600,
        clients: vec![ClientConfig {
            client_id: "reports".to_owned(),
            client_secret: "rbac-test-secret".to_owned(),
            scope: String::new(),
        }],
        federated: vec![FederatedCredential {
            client_id: "payroll".to_owned(),
            issuer,
            subject: format!("system:serviceaccount:{}:payroll-export", env.namespace),
            audience: "api://AzureADTokenExchange".to_owned(),
            jwks,
        }],
        ..Default::default()
    })
    .await;
    let secret: Secret = serde_json::from_value(
        serde_json::json!({"metadata": {"name": "reports-oidc"}, "stringData": {"key": "rbac-test-secret"}}),
    )
    .unwrap();
    env.api::<Secret>()
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let operator_config = install_operator_rbac(&env, |_| {}).await;
    let operator = env.start_operator_as(operator_config, Duration::from_secs(300));

    // Workload identity needs serviceaccounts/token; both kinds need to write Secrets.
    for (file, token) in [
        (
            "examples/identity-azure-key-vault.yaml",
            serde_json::json!({"issuerUrl": provider.issuer(), "clientId": "payroll", "workloadIdentity": {}}),
        ),
        (
            "examples/identity-domain-joined.yaml",
            serde_json::json!({"issuerUrl": provider.issuer(), "clientId": "reports",
                "clientSecretRef": {"name": "reports-oidc", "key": "key"}}),
        ),
    ] {
        let text = std::fs::read_to_string(format!("{}/{file}", support::REPO)).unwrap();
        let mut identity: WindowsTaskIdentity = serde_yaml_ng::from_str(&text).unwrap();
        identity.spec.token = Some(serde_json::from_value(token).unwrap());
        env.api::<WindowsTaskIdentity>()
            .create(&PostParams::default(), &identity)
            .await
            .unwrap();
    }
    for name in ["payroll-export", "finance-reports"] {
        let _: WindowsTaskIdentity =
            support::wait_for_condition(&env, name, "TokenReady", "True", Some("TokenIssued")).await;
        assert!(
            env.api::<Secret>()
                .get_opt(&format!("{name}-token"))
                .await
                .unwrap()
                .is_some()
        );
    }

    // Turning the token off removes winflow's Secret (and only that one).
    env.api::<WindowsTaskIdentity>()
        .patch(
            "payroll-export",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"token": null}})),
        )
        .await
        .unwrap();
    let _: WindowsTaskIdentity =
        support::wait_for_condition(&env, "payroll-export", "TokenReady", "True", Some("NotRequested")).await;
    wait_until("the unused token Secret is deleted", TIMEOUT, || async {
        env.api::<Secret>()
            .get_opt("payroll-export-token")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    assert!(env.api::<Secret>().get_opt("reports-oidc").await.unwrap().is_some());
    assert!(
        env.api::<Secret>()
            .get_opt("finance-reports-token")
            .await
            .unwrap()
            .is_some()
    );
    let identity = env.api::<WindowsTaskIdentity>().get("payroll-export").await.unwrap();
    assert!(identity.status.unwrap().token.is_none());
    operator.stop().await;
}

/// deploy/rbac.yaml's rules without `verb` on `resource` alone: the other resources of its
/// rule keep the verb.
fn without_verb_on_only(resource: &'static str, verb: &'static str) -> impl FnOnce(&mut Vec<PolicyRule>) {
    move |rules| {
        let mut alone = Vec::new();
        for rule in rules.iter_mut() {
            let Some(resources) = rule.resources.as_mut() else {
                continue;
            };
            if resources.iter().any(|r| r == resource) && rule.verbs.iter().any(|v| v == verb) {
                resources.retain(|r| r != resource);
                let mut verbs = rule.verbs.clone();
                verbs.retain(|v| v != verb);
                alone.push(PolicyRule {
                    resources: Some(vec![resource.to_owned()]),
                    verbs,
                    ..rule.clone()
                });
            }
        }
        assert!(!alone.is_empty(), "deploy/rbac.yaml grants {verb} on {resource}");
        rules.retain(|rule| rule.resources.as_ref().is_none_or(|r| !r.is_empty()));
        rules.extend(alone.into_iter().filter(|rule| !rule.verbs.is_empty()));
    }
}

/// The admin server (`/readyz`, `/metrics`) of an in-process operator or webhook, on a free
/// loopback port; it answers once this returns.
async fn serve_admin(metrics: &Metrics, readiness: &Readiness) -> String {
    let addr = support::process::free_address();
    tokio::spawn(winflow::admin::serve(
        addr.parse().unwrap(),
        metrics.clone(),
        readiness.clone(),
        std::future::pending(),
    ));
    wait_until("the admin server answers", TIMEOUT, || http_get(&addr, "/livez")).await;
    addr
}

/// The captured log lines (JSON) of the watches of `kind` in `namespace`.
fn watch_log_lines(namespace: &str, kind: &str) -> Vec<serde_json::Value> {
    support::captured_logs()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["fields"]["namespace"] == namespace && line["fields"]["kind"] == kind)
        .collect()
}

/// The operator without `verb` on pods: the pod watch fails, says so once in the log, counts
/// its failures, and `/readyz` names it while staying 200; with the rule back it says it
/// recovered and nothing is failing any more.
async fn a_forbidden_pod_watch_is_reported_until_the_rule_is_back(test: &str, verb: &'static str) {
    const FAILURES: &str = r#"winflow_watch_failures_total{watcher="identity",kind="Pod",reason="Forbidden"}"#;
    const SINCE: &str = r#"winflow_watch_failing_since_timestamp_seconds{watcher="identity",kind="Pod"}"#;
    support::capture_logs();
    let env = TestEnv::new(test).await;
    let ns = env.namespace.clone();
    let started = jiff::Timestamp::now().as_second();
    let operator_config = install_operator_rbac(&env, without_verb_on("pods", verb)).await;
    let operator = env.start_operator_as(operator_config, Duration::from_secs(300));
    let admin = serve_admin(&operator.metrics, &operator.readiness).await;

    // Retried several times (250 ms, 500 ms, 1 s, ...), and said once.
    wait_until("three failures of the pod watch", TIMEOUT, || async {
        (support::metric_sum(&operator.metrics, FAILURES) >= 3).then_some(())
    })
    .await;
    let cause = format!("Forbidden: the operator's RBAC lacks {verb} on pods");
    let failing = format!("watch of pods in namespace {ns} (identity controller) failing: {cause}");
    // The identity controller watches pods twice (its task pods, and every unfinished pod for
    // those that expose an identity): each watch says it fails, once.
    let of_watcher = |lines: Vec<serde_json::Value>, watcher: &str| -> Vec<serde_json::Value> {
        lines
            .into_iter()
            .filter(|l| l["fields"]["watcher"] == watcher)
            .collect()
    };
    let exposure = of_watcher(watch_log_lines(&ns, "Pod"), "exposure");
    assert_eq!(exposure.len(), 1, "one line for all the retries: {exposure:#?}");
    let lines = of_watcher(watch_log_lines(&ns, "Pod"), "identity");
    assert_eq!(lines.len(), 1, "one line for all the retries: {lines:#?}");
    assert_eq!(lines[0]["level"], "WARN");
    assert_eq!(lines[0]["fields"]["message"], failing.as_str());
    assert_eq!(lines[0]["fields"]["watcher"], "identity");
    assert_eq!(lines[0]["fields"]["reason"], "Forbidden");
    let since = support::metric_sum(&operator.metrics, SINCE) as i64;
    assert!(
        (started..=jiff::Timestamp::now().as_second()).contains(&since),
        "failing since {since}, the test started at {started}"
    );

    // Ready (the webhook does not read task pods), and /readyz says which watch fails.
    let (status, body) = wait_until("/readyz 200", TIMEOUT, || async {
        let (status, body) = http_get(&admin, "/readyz").await?;
        (status == 200).then_some((status, body))
    })
    .await;
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), 3, "{body}");
    assert_eq!(lines[0], "ok");
    let suffix = format!("s: {cause}");
    for who in [
        "identity controller",
        "identity controller, pods that may expose identities",
    ] {
        let prefix = format!("watch pods in namespace {ns} ({who}) failing for ");
        assert!(
            lines[1..]
                .iter()
                .any(|l| l.starts_with(&prefix) && l.ends_with(&suffix)),
            "{who}: {body}"
        );
    }
    let (status_live, _) = http_get(&admin, "/livez").await.unwrap();
    assert_eq!((status, status_live), (200, 200));

    // The rule back: the watch says it recovered, and nothing fails any more.
    install_operator_rbac(&env, |_| {}).await;
    wait_until("both pod watches recover", TIMEOUT, || async {
        (watch_log_lines(&ns, "Pod").len() >= 4).then_some(())
    })
    .await;
    let recovered = of_watcher(watch_log_lines(&ns, "Pod"), "identity");
    assert_eq!(recovered.len(), 2, "{recovered:#?}");
    assert_eq!(recovered[1]["level"], "WARN");
    let message = recovered[1]["fields"]["message"].as_str().unwrap();
    let recovered_after = format!("watch of pods in namespace {ns} (identity controller) recovered after ");
    assert!(
        message.starts_with(&recovered_after) && message.ends_with(&format!("(it failed with {cause})")),
        "{message}"
    );
    assert_eq!(http_get(&admin, "/readyz").await.unwrap(), (200, "ok".to_owned()));
    let failures = support::metric_sum(&operator.metrics, FAILURES);
    assert!(
        !operator.metrics.encode().contains(SINCE),
        "no failing-since series once recovered"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        support::metric_sum(&operator.metrics, FAILURES),
        failures,
        "no failures since"
    );
    operator.stop().await;
}

#[tokio::test]
async fn without_list_on_pods_the_pod_watch_is_logged_once_counted_and_named_on_readyz_while_ready() {
    a_forbidden_pod_watch_is_reported_until_the_rule_is_back("rbac-no-list-pods", "list").await;
}

/// The list works, the watch request does not; once it does, the watch waits quietly for
/// changes, and that quiet is what tells it recovered.
#[tokio::test]
async fn without_watch_on_pods_the_pod_watch_is_reported_and_recovers_once_the_watch_works() {
    a_forbidden_pod_watch_is_reported_until_the_rule_is_back("rbac-no-watch-pods", "watch").await;
}

#[tokio::test]
async fn without_list_on_shares_the_webhook_is_not_ready_and_readyz_names_the_watch() {
    let env = TestEnv::new("rbac-webhook-no-shares").await;
    let ns = env.namespace.clone();
    let config = install_operator_rbac(&env, without_verb_on_only("windowsshares", "list")).await;
    let certs = tempfile::tempdir().unwrap();
    support::webhook::write_certificates(certs.path());
    let settings = winflow::webhook::WebhookSettings {
        addr: "127.0.0.1:0".parse().unwrap(),
        cert_dir: certs.path().to_owned(),
        reload_interval: Duration::from_secs(1),
        namespace: Some(ns.clone()),
        instance: "test".to_owned(),
        client_ca: None,
    };
    let (metrics, readiness) = (Metrics::default(), Readiness::expecting(1));
    let (client, _) = support::counted_client(config, &metrics);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (_, webhook) = winflow::webhook::start(client, settings, metrics.clone(), readiness.clone(), async move {
        let _ = stopped.await;
    })
    .await
    .unwrap();
    let admin = serve_admin(&metrics, &readiness).await;

    // The webhook cannot decide without its cache of shares: not ready, and /readyz says why.
    let body = wait_until("/readyz names the share watch", TIMEOUT, || async {
        let (status, body) = http_get(&admin, "/readyz").await?;
        assert_eq!(status, 503, "{body}");
        body.contains("windowsshares").then_some(body)
    })
    .await;
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), 2, "{body}");
    assert_eq!(lines[0], "caches not synced");
    let prefix = format!("watch windowsshares.winflow.io in namespace {ns} (webhook) failing for ");
    let suffix = "s: Forbidden: the operator's RBAC lacks list on windowsshares.winflow.io";
    assert!(lines[1].starts_with(&prefix) && lines[1].ends_with(suffix), "{body}");
    let failures = r#"winflow_watch_failures_total{watcher="webhook",kind="WindowsShare",reason="Forbidden"}"#;
    assert!(support::metric_sum(&metrics, failures) >= 1);

    // Allowed again, it syncs and is ready with nothing to report.
    install_operator_rbac(&env, |_| {}).await;
    wait_until("/readyz ok", TIMEOUT, || async {
        (http_get(&admin, "/readyz").await? == (200, "ok".to_owned())).then_some(())
    })
    .await;
    let _ = stop.send(());
    webhook.await.unwrap();
}

/// A reconcile the API server fails says which step failed on which object: in its log line
/// and as the `result` of the reconcile metric. Without `get` on service accounts the identity
/// cannot check its own; with the rule back it converges.
#[tokio::test]
async fn a_child_winflow_may_not_read_is_said_on_the_identity_with_what_to_grant() {
    const APPLY_ERRORS: &str = r#"winflow_reconciles_total{controller="identity",result="apply_error"}"#;
    let (env, operator) = key_vault_example_under(
        "rbac-no-get-serviceaccounts",
        without_verb_on_only("serviceaccounts", "get"),
    )
    .await;
    // Not a reconcile that fails and retries unseen: a condition, with the refusal and the
    // remedy, and the other children in place.
    let identity: WindowsTaskIdentity =
        support::wait_for_condition(&env, "payroll-export", "Ready", "False", Some("PrerequisiteMissing")).await;
    let ready = support::condition(&identity, "Ready").unwrap();
    assert!(
        ready
            .message
            .contains("winflow may not read ServiceAccount payroll-export: ")
            && ready.message.contains("forbidden")
            && ready.message.contains("grant it as deploy/rbac.yaml"),
        "{}",
        ready.message
    );
    assert_eq!(support::metric_sum(&operator.metrics, APPLY_ERRORS), 0);
    assert!(
        !operator.metrics.encode().contains(r#"result="api_error""#),
        "no reconcile result is the unspecific api_error any more"
    );
    install_operator_rbac(&env, |_| {}).await;
    support::wait_for_condition::<WindowsTaskIdentity>(&env, "payroll-export", "Ready", "True", None).await;
    operator.stop().await;
}
