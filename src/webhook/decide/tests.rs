//! Decisions on pods built as Airflow builds them, against identities from the fixtures.

use super::airflow_ids::looks_shortened;
use super::*;
use crate::build::credential_spec_document;
use crate::fixtures;
use crate::webhook::server::ReviewKind;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionReview};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};

pub(super) struct View(
    HashMap<(String, String), Arc<WindowsTaskIdentity>>,
    Vec<Arc<WindowsShare>>,
);

impl ResourceView for View {
    fn identity(&self, namespace: &str, name: &str) -> Option<Arc<WindowsTaskIdentity>> {
        self.0.get(&(namespace.to_owned(), name.to_owned())).cloned()
    }
    fn each_identity(&self, namespace: Option<&str>, visit: &mut dyn FnMut(&WindowsTaskIdentity)) {
        let mut found: Vec<_> = self
            .0
            .iter()
            .filter(|((ns, _), _)| namespace.is_none_or(|n| n == ns))
            .collect();
        found.sort_by_key(|(key, _)| (*key).clone());
        for (_, identity) in found {
            visit(identity);
        }
    }
    fn each_share(&self, namespace: &str, visit: &mut dyn FnMut(&WindowsShare)) {
        for share in &self.1 {
            if share.metadata.namespace.as_deref() == Some(namespace) {
                visit(share);
            }
        }
    }
    fn identities_with_account(&self, account: &str) -> Vec<Arc<WindowsTaskIdentity>> {
        self.identities_where(|identity| account_keys(&identity.spec).any(|key| key == account))
    }
    fn identities_with_plugin_input(&self, input: &str) -> Vec<Arc<WindowsTaskIdentity>> {
        self.identities_where(|identity| plugin_input(identity).as_deref() == Some(input))
    }
    fn protected(&self, namespace: &str) -> Arc<Protected> {
        Arc::new(Protected::of_namespace(self, namespace))
    }
    fn identities_created_by(&self, namespace: &str, name: &str) -> Vec<(String, String)> {
        let mut found: Vec<_> = self
            .0
            .iter()
            .filter(|(_, identity)| crate::api::creators::is_creator_account(identity, namespace, name))
            .map(|(key, _)| key.clone())
            .collect();
        found.sort();
        found
    }
}

impl View {
    fn identities_where(&self, wanted: impl Fn(&WindowsTaskIdentity) -> bool) -> Vec<Arc<WindowsTaskIdentity>> {
        let mut found: Vec<_> = self.0.iter().filter(|(_, i)| wanted(i)).collect();
        found.sort_by_key(|(key, _)| (*key).clone());
        found.into_iter().map(|(_, identity)| identity.clone()).collect()
    }
}

/// The creator is allowed to use the identity (the handler asked the authorizer before).
/// One answer for every identity asked (`None`: nothing was asked).
impl Authorizations for Option<&Access> {
    fn answer(&self, _namespace: &str, _name: &str) -> Option<&Access> {
        *self
    }
}

pub(super) fn mutate(request: &AdmissionRequest<DynamicObject>, view: &dyn ResourceView) -> Decision {
    super::mutate(request, view, &Some(&Access::Allowed))
}

pub(super) fn validate(request: &AdmissionRequest<DynamicObject>, view: &dyn ResourceView) -> Decision {
    super::validate(request, view, &Some(&Access::Allowed))
}

pub(super) fn ready(mut identity: WindowsTaskIdentity, ready: bool) -> WindowsTaskIdentity {
    let condition = Condition {
        type_: "Ready".into(),
        status: if ready { "True" } else { "False" }.into(),
        reason: if ready { "Reconciled" } else { "Conflict" }.into(),
        message: "m".into(),
        observed_generation: None,
        last_transition_time: Time("2026-11-28T00:00:00Z".parse().unwrap()),
    };
    identity.status = Some(crate::api::WindowsTaskIdentityStatus {
        conditions: vec![condition],
        ..Default::default()
    });
    identity
}

pub(super) fn view() -> View {
    let mut map = HashMap::new();
    for (identity, is_ready) in [(fixtures::domain_joined(), true), (fixtures::key_vault(), false)] {
        let identity = ready(identity, is_ready);
        let key = (
            identity.metadata.namespace.clone().unwrap(),
            identity.metadata.name.clone().unwrap(),
        );
        map.insert(key, Arc::new(identity));
    }
    View(map, Vec::new())
}

/// A KubernetesPodOperator-style pod of `finance_daily`.
pub(super) fn pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "copy-reports-x1", "namespace": "airflow",
            "labels": {"winflow.io/identity": "finance-reports", "dag_id": "finance_daily", "task_id": "copy", "kubernetes_pod_operator": "True"}},
        "spec": {"containers": [{"name": "base", "image": "registry.example.com/finance/reports-win:1.4"}]}
    })
}

pub(super) fn request(operation: &str, object: Value, old: Option<Value>) -> AdmissionRequest<DynamicObject> {
    request_as(operation, object, old, None)
}

/// A review as the API server sends it for `pods` or one of its subresources.
/// A token that lasts another hour in the identity's status.
fn with_fresh_token(mut identity: WindowsTaskIdentity) -> WindowsTaskIdentity {
    let name = identity.metadata.name.clone().unwrap();
    let in_an_hour = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(3600))
        .unwrap();
    identity.status.as_mut().unwrap().token = Some(crate::api::identity::TokenStatus {
        secret_name: Some(format!("{name}-token")),
        expires_at: Some(in_an_hour.to_string()),
        renewal_time: Some(in_an_hour.to_string()),
        ..Default::default()
    });
    identity
}

pub(super) fn request_as(
    operation: &str,
    object: Value,
    old: Option<Value>,
    subresource: Option<&str>,
) -> AdmissionRequest<DynamicObject> {
    let review: AdmissionReview<DynamicObject> = serde_json::from_value(json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "4d3c2b1a-0000-4000-8000-000000000001",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"}, "subResource": subresource,
            "name": object["metadata"]["name"], "namespace": "airflow", "operation": operation,
            "userInfo": {"username": "system:serviceaccount:airflow:airflow-worker"},
            "object": object, "oldObject": old}
    }))
    .unwrap();
    review.try_into().unwrap()
}

/// Applies a mutation's patch, as the API server would.
pub(super) fn apply(object: &Value, decision: &Decision) -> Value {
    let mut patched = object.clone();
    if let Some(patch) = &decision.response.patch {
        let patch: json_patch::Patch = serde_json::from_slice(patch).unwrap();
        json_patch::patch(&mut patched, &patch).unwrap();
    }
    patched
}

pub(super) fn denial(decision: &Decision) -> (&'static str, &str) {
    assert!(!decision.response.allowed, "expected a denial");
    (
        decision.audit.reason.as_str(),
        decision.response.result.message.as_str(),
    )
}

#[test]
fn mutation_injects_the_identity_and_is_idempotent() {
    let view = view();
    let first = mutate(&request("CREATE", pod(), None), &view);
    assert!(first.response.allowed);
    assert_eq!(first.audit.reason.as_str(), "Mutated");
    let mutated = apply(&pod(), &first);
    let spec = &mutated["spec"];
    assert_eq!(spec["serviceAccountName"], "finance-reports");
    assert_eq!(spec["os"]["name"], "windows");
    assert_eq!(spec["nodeSelector"]["kubernetes.io/os"], "windows");
    assert_eq!(spec["nodeSelector"]["node.kubernetes.io/windows-build"], "10.0.20348");
    assert_eq!(spec["tolerations"][0]["key"], "os");
    let options = &spec["securityContext"]["windowsOptions"];
    assert_eq!(options["gmsaCredentialSpecName"], "airflow.finance-reports");
    assert_eq!(options["runAsUserName"], "ContainerUser");
    let inlined = options["gmsaCredentialSpec"].as_str().unwrap();
    let expected =
        serde_json::to_string(&credential_spec_document("airflow", &fixtures::domain_joined_spec())).unwrap();
    assert_eq!(inlined, expected);
    assert!(
        !inlined.contains(' ') && inlined.starts_with(r#"{"ActiveDirectoryConfig":"#),
        "compact, sorted keys"
    );
    let hostname = spec["hostname"].as_str().unwrap();
    assert!(hostname.len() <= 15, "{hostname}");
    assert_eq!(
        spec["volumes"][0]["persistentVolumeClaim"]["claimName"],
        "finance-reports-share"
    );
    assert_eq!(spec["containers"][0]["volumeMounts"][0]["mountPath"], "C:\\reports");
    let env: Vec<&str> = spec["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(env, ["WINFLOW_IDENTITY", "WINFLOW_GMSA_ACCOUNT", "WINFLOW_DOMAIN"]);

    let second = mutate(&request("CREATE", mutated.clone(), None), &view);
    assert!(second.response.allowed);
    assert_eq!(apply(&mutated, &second), mutated, "a second pass changes nothing");
    assert_eq!(second.audit.reason.as_str(), "Allowed");
    // And the mutated pod passes validation.
    assert!(validate(&request("CREATE", mutated, None), &view).response.allowed);
}

#[test]
fn conflicting_values_are_denied_not_replaced() {
    let view = view();
    let cases: [(&str, Value, &str); 5] = [
        (
            "/spec/serviceAccountName",
            json!("payroll-export"),
            "ServiceAccountMismatch",
        ),
        (
            "/spec/nodeSelector",
            json!({"kubernetes.io/os": "linux"}),
            "FieldConflict",
        ),
        (
            "/spec/securityContext",
            json!({"windowsOptions": {"gmsaCredentialSpecName": "airflow.payroll-export"}}),
            "FieldConflict",
        ),
        (
            "/spec/securityContext",
            json!({"windowsOptions": {"gmsaCredentialSpec": "{\"CmsPlugins\":[]}"}}),
            "GmsaConflict",
        ),
        (
            "/spec/securityContext",
            json!({"windowsOptions": {"runAsUserName": "ContainerAdministrator"}}),
            "FieldConflict",
        ),
    ];
    for (path, value, reason) in cases {
        let mut object = pod();
        *object
            .pointer_mut("/spec")
            .unwrap()
            .as_object_mut()
            .unwrap()
            .entry(path.trim_start_matches("/spec/"))
            .or_insert(Value::Null) = value;
        let decision = mutate(&request("CREATE", object, None), &view);
        let (got, message) = denial(&decision);
        assert_eq!(got, reason, "{path}: {message}");
        assert!(message.contains("\"finance-reports\""), "names the identity: {message}");
    }
}

#[test]
fn unknown_or_unready_identities_are_denied_with_the_reason() {
    let view = view();
    let mut object = pod();
    object["metadata"]["labels"]["winflow.io/identity"] = json!("nobody");
    let decision = mutate(&request("CREATE", object, None), &view);
    assert_eq!(denial(&decision).0, "UnknownIdentity");
    let mut object = pod();
    object["metadata"]["labels"]["winflow.io/identity"] = json!("payroll-export");
    let decision = validate(&request("CREATE", object, None), &view);
    let (reason, message) = denial(&decision);
    assert_eq!(reason, "IdentityNotReady");
    assert!(message.contains("Conflict"), "{message}");
}

pub(super) fn mutated_pod(view: &View, object: Value) -> Value {
    let decision = mutate(&request("CREATE", object.clone(), None), view);
    assert!(decision.response.allowed, "{}", decision.response.result.message);
    apply(&object, &decision)
}

#[test]
fn dags_and_tasks_outside_the_patterns_are_denied() {
    let view = view();
    let mut object = pod();
    object["metadata"]["labels"]["dag_id"] = json!("payroll");
    let decision = validate(&request("CREATE", mutated_pod(&view, object), None), &view);
    let (reason, message) = denial(&decision);
    assert_eq!(reason, "DagNotAllowed");
    assert_eq!(
        message,
        "dag \"payroll\" may not use identity \"finance-reports\" (allowed dag ids: finance_*)"
    );

    // The exact annotation wins over the label (KubernetesExecutor pods carry both).
    let mut object = pod();
    object["metadata"]["labels"]["dag_id"] = json!("finance_daily");
    object["metadata"]["annotations"] = json!({"dag_id": "payroll"});
    let decision = validate(&request("CREATE", mutated_pod(&view, object), None), &view);
    assert_eq!(denial(&decision).0, "DagNotAllowed");
}

/// `view()` with finance-reports allowing exactly `dag_ids`.
fn view_with_dag_ids(dag_ids: &[&str]) -> View {
    let mut view = view();
    let key = ("airflow".to_owned(), "finance-reports".to_owned());
    let mut identity = (*view.0[&key]).clone();
    identity.spec.airflow.dag_ids = dag_ids.iter().map(|d| d.to_string()).collect();
    view.0.insert(key, Arc::new(identity));
    view
}

#[test]
fn a_shortened_label_never_lets_a_pod_through() {
    let long = "finance_quarterly_close_with_a_name_longer_than_sixty_three_characters";
    let view = view_with_dag_ids(&[long]);
    let mut object = pod();
    // What Airflow makes of a long dag id: a prefix and a hash; no pattern matches it literally.
    object["metadata"]["labels"]["dag_id"] = json!("finance_quarterly_close_with_a_name_longer_than_sixty-3f2a1b9c0");
    let decision = validate(&request("CREATE", mutated_pod(&view, object.clone()), None), &view);
    let (reason, message) = denial(&decision);
    assert_eq!(reason, "DagNotAllowed");
    assert!(
        message.contains("looks shortened") && message.contains("annotation"),
        "{message}"
    );
    object["metadata"]["annotations"] = json!({ "dag_id": long });
    assert!(
        validate(&request("CREATE", mutated_pod(&view, object), None), &view)
            .response
            .allowed
    );
}

#[test]
fn an_exact_dag_id_that_ends_like_a_hash_is_matched_literally() {
    let view = view_with_dag_ids(&["x_load-202401011", "reports_*"]);
    for label in ["x_load-202401011", "reports_eu-202401011"] {
        let mut object = pod();
        object["metadata"]["labels"]["dag_id"] = json!(label);
        let decision = validate(&request("CREATE", mutated_pod(&view, object), None), &view);
        assert!(
            decision.response.allowed,
            "{label}: {}",
            decision.response.result.message
        );
    }
    // Only when no pattern matches is it taken for shortened.
    let mut object = pod();
    object["metadata"]["labels"]["dag_id"] = json!("y_load-202401011");
    let decision = validate(&request("CREATE", mutated_pod(&view, object), None), &view);
    let (reason, message) = denial(&decision);
    assert_eq!(reason, "DagNotAllowed");
    assert!(message.contains("looks shortened"), "{message}");
}

#[test]
fn administrator_host_process_and_privileged_containers_are_denied() {
    let view = view();
    let base = mutated_pod(&view, pod());
    let mut admin = base.clone();
    admin["spec"]["containers"][0]["securityContext"] =
        json!({"windowsOptions": {"runAsUserName": "ContainerAdministrator"}});
    assert_eq!(
        denial(&validate(&request("CREATE", admin, None), &view)).0,
        "AdministratorNotAllowed"
    );
    let mut host = base.clone();
    host["spec"]["securityContext"]["windowsOptions"]["hostProcess"] = json!(true);
    assert_eq!(
        denial(&validate(&request("CREATE", host, None), &view)).0,
        "PrivilegedNotAllowed"
    );
    let mut privileged = base.clone();
    privileged["spec"]["containers"][0]["securityContext"] = json!({"privileged": true});
    assert_eq!(
        denial(&validate(&request("CREATE", privileged, None), &view)).0,
        "PrivilegedNotAllowed"
    );
    let mut other_spec = base;
    other_spec["spec"]["containers"][0]["securityContext"] =
        json!({"windowsOptions": {"gmsaCredentialSpecName": "airflow.payroll-export"}});
    assert_eq!(
        denial(&validate(&request("CREATE", other_spec, None), &view)).0,
        "GmsaConflict"
    );
}

#[test]
fn gmsa_fields_cannot_change_on_update() {
    let view = view();
    let old = mutated_pod(&view, pod());
    let mut new = old.clone();
    new["spec"]["securityContext"]["windowsOptions"]["gmsaCredentialSpec"] = json!("{}");
    let (reason, _) = denial(&validate(&request("UPDATE", new, Some(old.clone())), &view));
    assert_eq!(reason, "GmsaChanged");
    let mut relabelled = old.clone();
    relabelled["metadata"]["labels"]["winflow.io/identity"] = json!("payroll-export");
    assert_eq!(
        denial(&validate(&request("UPDATE", relabelled, Some(old.clone())), &view)).0,
        "IdentityLabelChanged"
    );
    let mut annotated = old.clone();
    annotated["metadata"]["annotations"] = json!({"note": "fine"});
    assert!(
        validate(&request("UPDATE", annotated, Some(old)), &view)
            .response
            .allowed
    );
}

#[test]
fn unlabelled_pods_may_not_reach_for_a_winflow_credential_spec() {
    let view = view();
    let mut object = pod();
    object["metadata"]["labels"] = json!({"app": "sneaky"});
    object["spec"]["securityContext"] =
        json!({"windowsOptions": {"gmsaCredentialSpecName": "airflow.finance-reports"}});
    let decision = validate(&request("CREATE", object.clone(), None), &view);
    let (reason, message) = denial(&decision);
    assert_eq!(reason, "UnlabelledGmsaUse");
    assert!(message.contains("winflow.io/identity=finance-reports"), "{message}");
    // A credential spec winflow does not manage is none of its business.
    object["spec"]["securityContext"] = json!({"windowsOptions": {"gmsaCredentialSpecName": "webapp-gmsa"}});
    assert!(validate(&request("CREATE", object, None), &view).response.allowed);
}

#[test]
fn executor_pods_get_the_service_account_and_identity_env_but_stay_linux() {
    let view = view();
    let mut object = pod();
    object["metadata"]["labels"]["winflow.io/role"] = json!("executor");
    let mutated = mutated_pod(&view, object);
    assert_eq!(mutated["spec"]["serviceAccountName"], "finance-reports");
    assert!(mutated["spec"].get("os").is_none() && mutated["spec"].get("securityContext").is_none());
    assert_eq!(mutated["spec"]["containers"][0]["env"][0]["name"], "WINFLOW_IDENTITY");
    let mut unknown = pod();
    unknown["metadata"]["labels"]["winflow.io/role"] = json!("sidecar");
    assert_eq!(
        denial(&mutate(&request("CREATE", unknown, None), &view)).0,
        "UnknownRole"
    );
}

#[test]
fn shortened_labels_are_recognised() {
    assert!(looks_shortened("manual__2026-11-28T0000000000-1d0036463"));
    assert!(!looks_shortened("finance_daily"));
    assert!(!looks_shortened("-1d0036463"));
}

/// The domain-joined identity with a token that expires `expires_in` seconds from now.
fn view_with_token(expires_in: i64) -> View {
    let mut identity = ready(fixtures::domain_joined(), true);
    identity.spec.token = Some(fixtures::token_settings());
    let now = jiff::Timestamp::now();
    identity.status.as_mut().unwrap().token = Some(crate::api::identity::TokenStatus {
        secret_name: Some("finance-reports-token".into()),
        expires_at: Some(
            now.checked_add(jiff::SignedDuration::from_secs(expires_in))
                .unwrap()
                .to_string(),
        ),
        renewal_time: Some(
            now.checked_add(jiff::SignedDuration::from_secs(90))
                .unwrap()
                .to_string(),
        ),
        ..Default::default()
    });
    let key = ("airflow".to_owned(), "finance-reports".to_owned());
    View(HashMap::from([(key, Arc::new(identity))]), Vec::new())
}

#[test]
fn pods_of_an_identity_with_a_token_get_it_as_env_and_file_and_stay_idempotent() {
    let view = view_with_token(3600);
    let first = mutate(&request("CREATE", pod(), None), &view);
    assert!(first.response.allowed, "{}", first.response.result.message);
    let mutated = apply(&pod(), &first);
    let base = &mutated["spec"]["containers"][0];
    let token = base["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "WINFLOW_ACCESS_TOKEN")
        .unwrap();
    assert_eq!(token["valueFrom"]["secretKeyRef"]["name"], "finance-reports-token");
    assert_eq!(token["valueFrom"]["secretKeyRef"]["key"], "access_token");
    let volumes = mutated["spec"]["volumes"].as_array().unwrap();
    let volume = volumes.iter().find(|v| v["name"] == "winflow-token").unwrap();
    assert_eq!(volume["secret"]["secretName"], "finance-reports-token");
    let mounts = base["volumeMounts"].as_array().unwrap();
    assert!(
        mounts
            .iter()
            .any(|m| m["mountPath"] == "C:\\var\\run\\secrets\\winflow.io\\token")
    );
    let second = mutate(&request("CREATE", mutated.clone(), None), &view);
    assert_eq!(apply(&mutated, &second), mutated, "a second pass changes nothing");

    // A pod built from the identity's template reaches the webhook with the API server's
    // defaults filled in (a Secret volume's defaultMode): the same volume, admitted.
    let with_mode = |mode: i64| {
        let mut pod = mutated.clone();
        for volume in pod["spec"]["volumes"].as_array_mut().unwrap() {
            if volume["name"] == "winflow-token" {
                volume["secret"]["defaultMode"] = json!(mode);
            }
        }
        pod
    };
    let defaulted = mutate(&request("CREATE", with_mode(0o644), None), &view);
    assert!(defaulted.response.allowed, "{:?}", defaulted.response.result);
    let (reason, _) = denial(&mutate(&request("CREATE", with_mode(0o600), None), &view));
    assert_eq!(reason, "FieldConflict", "another mode is another volume");
    assert!(validate(&request("CREATE", mutated, None), &view).response.allowed);

    // A pod that maps the variable to something else is denied, not rewritten.
    let mut own = pod();
    own["spec"]["containers"][0]["env"] = json!([{"name": "WINFLOW_ACCESS_TOKEN", "value": "mine"}]);
    let decision = mutate(&request("CREATE", own, None), &view);
    let (reason, message) = denial(&decision);
    assert_eq!(reason, "FieldConflict");
    assert!(
        message.contains("Secret finance-reports-token key access_token"),
        "{message}"
    );
}

#[test]
fn pods_are_denied_when_the_token_would_not_last_and_updates_are_not_checked() {
    let expiring = view_with_token(120);
    let decision = mutate(&request("CREATE", pod(), None), &expiring);
    let (reason, message) = denial(&decision);
    assert_eq!(reason, "TokenExpiring");
    assert!(message.contains("a fresh token is due at"), "{message}");
    let mut patient = pod();
    patient["metadata"]["annotations"] = json!({"winflow.io/min-token-validity": "1m"});
    let (reason, _) = denial(&mutate(&request("CREATE", patient, None), &expiring));
    assert_eq!(reason, "TokenExpiring", "the identity's 5m floor still applies");

    let expired = view_with_token(-1);
    let decision = validate(&request("CREATE", pod(), None), &expired);
    let (reason, message) = denial(&decision);
    assert_eq!(reason, "TokenExpired");
    assert!(message.contains("retry the task then"), "{message}");
    // A running pod's update is not refused because the token has since expired.
    let running = apply(&pod(), &mutate(&request("CREATE", pod(), None), &view_with_token(3600)));
    let update = validate(&request("UPDATE", running.clone(), Some(running)), &expired);
    assert!(update.response.allowed, "{}", update.response.result.message);
}

// ---------------------------------------------------------------------------------------
// Least privilege: the creator is the principal, and every credential has one way in.

/// Two Ready identities with tokens (finance-reports lists the share, payroll-export keeps its
/// host account in a Kubernetes Secret) and the share of the examples.
pub(super) fn guarded_view() -> View {
    let mut finance = ready(fixtures::domain_joined(), true);
    finance.spec.token = Some(fixtures::token_settings());
    finance
        .spec
        .token
        .as_mut()
        .unwrap()
        .client_secret_ref
        .as_mut()
        .unwrap()
        .name = "finance-oidc".into();
    let mut payroll = ready(fixtures::key_vault(), true);
    payroll.spec.token = Some(fixtures::token_settings());
    let host = payroll.spec.host_account.as_mut().unwrap();
    host.azure_key_vault = None;
    host.kubernetes_secret = Some(crate::api::identity::KubernetesSecretHostAccount {
        name: "payroll-host".into(),
    });
    let map = [finance, payroll]
        .into_iter()
        .map(with_fresh_token)
        .map(|i| {
            let key = (i.metadata.namespace.clone().unwrap(), i.metadata.name.clone().unwrap());
            (key, Arc::new(i))
        })
        .collect();
    View(map, vec![Arc::new(fixtures::share())])
}

pub(super) fn unlabelled(spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "plain", "namespace": "airflow", "labels": {"app": "reports"}},
        "spec": spec})
}

pub(super) fn base_with(extra: Value) -> Value {
    let mut spec = json!({"containers": [{"name": "base", "image": "registry.example.com/tools:1"}]});
    for (key, value) in extra.as_object().unwrap() {
        if key == "env" || key == "envFrom" {
            spec["containers"][0][key] = value.clone();
        } else {
            spec[key] = value.clone();
        }
    }
    spec
}

/// The four ways a pod reaches a Secret, and the other volume kinds that take one.
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
        (
            "csi nodePublishSecretRef",
            json!({"volumes": [{"name": "v", "csi": {"driver": "smb.csi.k8s.io", "nodePublishSecretRef": {"name": secret}}}]}),
        ),
    ]
}

#[test]
fn a_creator_who_may_not_use_the_identity_gets_nothing_injected_and_is_denied() {
    let view = guarded_view();
    let denied = Access::Denied("no RBAC policy matched".into());
    for decision in [
        super::mutate(&request("CREATE", pod(), None), &view, &Some(&denied)),
        super::validate(
            &request("CREATE", mutated_pod(&view, pod()), None),
            &view,
            &Some(&denied),
        ),
    ] {
        let (reason, message) = denial(&decision);
        assert_eq!(reason, "CreatorNotAllowed");
        assert!(decision.response.patch.is_none(), "nothing injected");
        for part in [
            "system:serviceaccount:airflow:airflow-worker",
            "identity \"finance-reports\"",
            "winflow-finance-reports-use",
            "spec.access.creators",
            "no RBAC policy matched",
        ] {
            assert!(message.contains(part), "{part}: {message}");
        }
    }
    // An authorizer that cannot answer, or no answer at all, is a denial too.
    let unavailable = Access::Unavailable("the API server did not answer".into());
    let decision = super::mutate(&request("CREATE", pod(), None), &view, &Some(&unavailable));
    assert_eq!(denial(&decision).0, "AuthorizationUnavailable");
    let decision = super::validate(&request("CREATE", mutated_pod(&view, pod()), None), &view, &None);
    assert_eq!(denial(&decision).0, "AuthorizationUnavailable");
}

#[test]
fn only_creates_spec_changes_and_ephemeral_containers_ask_about_the_creator() {
    let create = request("CREATE", pod(), None);
    let view = guarded_view();
    let asked = |kind, request: &AdmissionRequest<DynamicObject>| identities_to_authorize(kind, request, &view);
    let expected = vec![("airflow".to_owned(), "finance-reports".to_owned())];
    let none: Vec<(String, String)> = Vec::new();
    assert_eq!(asked(ReviewKind::Mutate, &create), expected);
    assert_eq!(asked(ReviewKind::Validate, &create), expected);
    let running = mutated_pod(&guarded_view(), pod());
    let mut annotated = running.clone();
    annotated["metadata"]["annotations"] = json!({"note": "x"});
    assert_eq!(
        asked(
            ReviewKind::Validate,
            &request("UPDATE", annotated, Some(running.clone()))
        ),
        none
    );
    let mut new_image = running.clone();
    new_image["spec"]["containers"][0]["image"] = json!("registry.example.com/other:1");
    assert_eq!(
        asked(
            ReviewKind::Validate,
            &request("UPDATE", new_image, Some(running.clone()))
        ),
        expected
    );
    let debug = request_as("UPDATE", running.clone(), Some(running), Some("ephemeralcontainers"));
    assert_eq!(asked(ReviewKind::ValidateEphemeral, &debug), expected);
    assert_eq!(
        asked(ReviewKind::Validate, &debug),
        none,
        "the enforcement webhook does not ask"
    );
    assert_eq!(
        asked(
            ReviewKind::Validate,
            &request("CREATE", unlabelled(base_with(json!({}))), None)
        ),
        none
    );
}

#[test]
fn a_pod_of_another_identity_or_none_may_not_reach_a_token_secret_in_any_way() {
    let view = guarded_view();
    for (way, extra) in secret_references("payroll-export-token") {
        let decision = validate(&request("CREATE", unlabelled(base_with(extra.clone())), None), &view);
        let (reason, message) = denial(&decision);
        assert_eq!(reason, "TokenSecretNotOwn", "{way}: {message}");
        assert!(
            message.contains("payroll-export-token") && message.contains("identity \"payroll-export\""),
            "{message}"
        );
        assert_eq!(decision.audit.identity_concerned(), Some("payroll-export"), "{way}");

        let mut labelled = pod();
        labelled["spec"] = base_with(extra);
        let decision = validate(&request("CREATE", mutated_pod(&view, labelled), None), &view);
        assert_eq!(
            denial(&decision).0,
            "TokenSecretNotOwn",
            "{way} from a pod of finance-reports"
        );
    }
    // Its own token, as winflow injects it and in any other form, is the pod's to use.
    let mut own = pod();
    own["spec"] = base_with(json!({"envFrom": [{"secretRef": {"name": "finance-reports-token"}}]}));
    let decision = validate(&request("CREATE", mutated_pod(&view, own), None), &view);
    assert!(decision.response.allowed, "{}", decision.response.result.message);
}

#[test]
fn secrets_for_winflow_and_the_node_are_no_pods_business() {
    let view = guarded_view();
    let cases = [
        ("payroll-oidc", "ClientSecretReference"),
        ("payroll-host", "HostAccountSecretReference"),
        ("smb-finance", "ShareCredentialsReference"),
    ];
    for (secret, reason) in cases {
        for (way, extra) in secret_references(secret) {
            let decision = validate(&request("CREATE", unlabelled(base_with(extra.clone())), None), &view);
            let (got, message) = denial(&decision);
            assert_eq!(got, reason, "{secret} by {way}: {message}");
            assert!(message.contains(secret), "{message}");
            // Not even the pods of the identity that names it.
            let mut labelled = pod();
            labelled["spec"] = base_with(extra);
            let decision = validate(&request("CREATE", mutated_pod(&view, labelled), None), &view);
            assert_eq!(denial(&decision).0, reason, "{secret} by {way} from a labelled pod");
        }
    }
    // A Secret no winflow resource names is none of winflow's business.
    let decision = validate(
        &request(
            "CREATE",
            unlabelled(base_with(secret_references("app-config")[0].1.clone())),
            None,
        ),
        &view,
    );
    assert!(decision.response.allowed);
}

#[test]
fn a_share_claim_is_mounted_only_by_pods_of_an_identity_that_lists_it() {
    let view = guarded_view();
    let claim = json!({"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "finance-reports-share"}}]});
    let decision = validate(&request("CREATE", unlabelled(base_with(claim.clone())), None), &view);
    let (reason, message) = denial(&decision);
    assert_eq!(reason, "ShareNotListed");
    assert!(
        message.contains("volume \"data\"") && message.contains("finance-reports-share"),
        "{message}"
    );
    let mut payroll = pod();
    payroll["metadata"]["labels"]["winflow.io/identity"] = json!("payroll-export");
    payroll["metadata"]["labels"]["dag_id"] = json!("payroll_export");
    payroll["metadata"]["labels"]["task_id"] = json!("export_ledger");
    payroll["spec"] = base_with(claim);
    let decision = validate(&request("CREATE", mutated_pod(&view, payroll), None), &view);
    let (reason, message) = denial(&decision);
    assert_eq!(reason, "ShareNotListed");
    assert!(
        message.contains("identity \"payroll-export\" lists no shares"),
        "{message}"
    );
    // finance-reports lists it: winflow mounts it, and the pod passes.
    let decision = validate(&request("CREATE", mutated_pod(&view, pod()), None), &view);
    assert!(decision.response.allowed, "{}", decision.response.result.message);
}

#[test]
fn unlabelled_pods_may_not_run_as_an_identity_or_forge_its_credential_spec() {
    let view = guarded_view();
    let decision = validate(
        &request(
            "CREATE",
            unlabelled(base_with(json!({"serviceAccountName": "payroll-export"}))),
            None,
        ),
        &view,
    );
    let (reason, message) = denial(&decision);
    assert_eq!(reason, "ServiceAccountOfIdentity");
    assert!(message.contains("winflow.io/identity=payroll-export"), "{message}");

    let finance = view.identity("airflow", "finance-reports").unwrap();
    let forged = inline_credential_spec(&finance);
    let content_only = json!({"securityContext": {"windowsOptions": {"gmsaCredentialSpec": forged}}});
    let decision = validate(&request("CREATE", unlabelled(base_with(content_only)), None), &view);
    assert_eq!(denial(&decision).0, "GmsaContentWithoutName");
    let renamed = json!({"securityContext": {"windowsOptions": {"gmsaCredentialSpecName": "webapp-gmsa", "gmsaCredentialSpec": forged}}});
    let decision = validate(&request("CREATE", unlabelled(base_with(renamed)), None), &view);
    let (reason, message) = denial(&decision);
    assert_eq!(reason, "GmsaAccountOfIdentity");
    assert!(message.contains("identity \"finance-reports\""), "{message}");
    // At container level too, and in a labelled pod: contents without a name are refused.
    let mut labelled = pod();
    labelled["spec"]["containers"][0]["securityContext"] = json!({"windowsOptions": {"gmsaCredentialSpec": "{}"}});
    let decision = validate(&request("CREATE", mutated_pod(&view, labelled), None), &view);
    assert_eq!(denial(&decision).0, "GmsaContentWithoutName");
    // Another gMSA under its own name stays the business of the upstream gMSA webhook.
    let other = json!({"securityContext": {"windowsOptions": {"gmsaCredentialSpecName": "webapp-gmsa",
        "gmsaCredentialSpec": "{\"ActiveDirectoryConfig\":{\"GroupManagedServiceAccounts\":[{\"Name\":\"webapp\",\"Scope\":\"CORP\"}]}}"}}});
    assert!(
        validate(&request("CREATE", unlabelled(base_with(other)), None), &view)
            .response
            .allowed
    );
}

#[test]
fn the_identity_label_is_never_added_or_removed_on_update() {
    let view = guarded_view();
    let plain = unlabelled(base_with(json!({})));
    let mut added = plain.clone();
    added["metadata"]["labels"]["winflow.io/identity"] = json!("finance-reports");
    let decision = validate(&request("UPDATE", added, Some(plain.clone())), &view);
    let (reason, message) = denial(&decision);
    assert_eq!(reason, "IdentityLabelChanged");
    assert!(
        message.contains("no label") && message.contains("\"finance-reports\""),
        "{message}"
    );
    let running = mutated_pod(&view, pod());
    let mut removed = running.clone();
    removed["metadata"]["labels"]
        .as_object_mut()
        .unwrap()
        .remove("winflow.io/identity");
    assert_eq!(
        denial(&validate(&request("UPDATE", removed, Some(running)), &view)).0,
        "IdentityLabelChanged"
    );
}

/// `pods/ephemeralcontainers` as Kubernetes 1.20 sends it: the pod's metadata and the list.
pub(super) fn ephemeral_containers(metadata: &Value, containers: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "EphemeralContainers", "metadata": metadata, "ephemeralContainers": containers})
}

#[test]
fn ephemeral_containers_need_the_creators_use_and_reach_no_other_credentials() {
    let view = guarded_view();
    let running = mutated_pod(&view, pod());
    // As Kubernetes 1.20 sends it: no labels; the handler looks them up and puts them in.
    let mut bare = running["metadata"].clone();
    bare.as_object_mut().unwrap().remove("labels");
    let before = ephemeral_containers(&bare, json!([]));
    let debug = json!([{"name": "debug", "image": "busybox", "targetContainerName": "base"}]);
    let review = request_as(
        "UPDATE",
        ephemeral_containers(&bare, debug),
        Some(before),
        Some("ephemeralcontainers"),
    );
    assert_eq!(
        pod_to_look_up(&review),
        Some(("airflow".to_owned(), "copy-reports-x1".to_owned()))
    );
    let labels: BTreeMap<String, String> = serde_json::from_value(running["metadata"]["labels"].clone()).unwrap();
    let review = with_pod_labels(&review, labels);
    assert_eq!(pod_to_look_up(&request("CREATE", pod(), None)), None);

    let denied = Access::Denied(String::new());
    let decision = super::validate_ephemeral(&review, &view, &Some(&denied));
    let (reason, message) = denial(&decision);
    assert_eq!(reason, "CreatorNotAllowed");
    assert!(
        message.contains("add ephemeral containers to pods of identity \"finance-reports\""),
        "{message}"
    );
    let allowed = super::validate_ephemeral(&review, &view, &Some(&Access::Allowed));
    assert!(
        allowed.response.allowed,
        "a creator who may use the identity may debug its pod"
    );
    // Not with a privileged debug container: no identity allows those.
    let privileged = json!([{"name": "debug", "image": "busybox", "securityContext": {"privileged": true}}]);
    let review_privileged = request_as(
        "UPDATE",
        ephemeral_containers(&running["metadata"], privileged),
        Some(ephemeral_containers(&running["metadata"], json!([]))),
        Some("ephemeralcontainers"),
    );
    let decision = super::validate_ephemeral(&review_privileged, &view, &Some(&Access::Allowed));
    let (reason, message) = denial(&decision);
    assert_eq!(reason, "PrivilegedNotAllowed");
    assert!(message.contains("ephemeral container \"debug\""), "{message}");
    // The enforcement webhook leaves an identity's pods to the ephemeral-containers webhook.
    assert!(validate(&review, &view).response.allowed);

    let stealing = json!([{"name": "debug", "image": "busybox",
        "env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "payroll-export-token", "key": "access_token"}}}]}]);
    let before = ephemeral_containers(&running["metadata"], json!([]));
    let review = request_as(
        "UPDATE",
        ephemeral_containers(&running["metadata"], stealing.clone()),
        Some(before.clone()),
        Some("ephemeralcontainers"),
    );
    let decision = super::validate_ephemeral(&review, &view, &Some(&Access::Allowed));
    let (reason, message) = denial(&decision);
    assert_eq!(reason, "TokenSecretNotOwn");
    assert!(message.contains("ephemeral container \"debug\""), "{message}");
    // In an unlabelled pod of an enforcement namespace, the enforcement webhook denies it.
    let plain = unlabelled(base_with(json!({})));
    let review = request_as(
        "UPDATE",
        ephemeral_containers(&plain["metadata"], stealing),
        Some(ephemeral_containers(&plain["metadata"], json!([]))),
        Some("ephemeralcontainers"),
    );
    assert_eq!(denial(&validate(&review, &view)).0, "TokenSecretNotOwn");
    assert!(
        super::validate_ephemeral(&review, &view, &None).response.allowed,
        "not an identity's pod"
    );
}

#[test]
fn every_final_answer_carries_the_audit_annotations() {
    let view = guarded_view();
    let mut executor = pod();
    executor["metadata"]["annotations"] = json!({"dag_id": "finance_daily", "task_id": "copy",
        "run_id": "scheduled__2026-12-01T00:00:00+00:00", "try_number": "2"});
    let mutated = mutate(&request("CREATE", executor.clone(), None), &view);
    assert!(mutated.response.allowed);
    assert!(
        mutated.response.audit_annotations.is_empty(),
        "the validating answer has the final word"
    );
    let allowed = validate(&request("CREATE", apply(&executor, &mutated), None), &view);
    let annotations = &allowed.response.audit_annotations;
    assert_eq!(annotations["identity"], "finance-reports");
    assert_eq!(annotations["dag_id"], "finance_daily");
    assert_eq!(annotations["task_id"], "copy");
    assert_eq!(annotations["run_id"], "scheduled__2026-12-01T00:00:00+00:00");
    assert_eq!(annotations["try_number"], "2");
    assert_eq!(annotations["creator"], "system:serviceaccount:airflow:airflow-worker");
    assert_eq!(annotations["decision"], "allowed");
    assert_eq!(annotations["reason"], "Allowed");
    let denied = super::mutate(
        &request("CREATE", executor, None),
        &view,
        &Some(&Access::Denied(String::new())),
    );
    assert_eq!(denied.response.audit_annotations["decision"], "denied");
    assert_eq!(denied.response.audit_annotations["reason"], "CreatorNotAllowed");
    // The creator writes the annotations: their values are bounded in the audit log.
    let mut long = pod();
    long["metadata"]["annotations"] = json!({"run_id": "r".repeat(5000)});
    let decision = validate(&request("CREATE", mutated_pod(&view, long), None), &view);
    assert!(decision.response.audit_annotations["run_id"].chars().count() <= 254);
}

// ---------------------------------------------------------------------------------------
// exec, attach and port-forward; creators' service accounts; the node.

/// A review recorded from a Kubernetes 1.36 API server, decoded as the server decodes it.
fn recorded(file: &str) -> Value {
    let path = format!("{}/tests/data/k8s-1.36-reviews/{file}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn decoded(review: Value) -> AdmissionRequest<DynamicObject> {
    let review: AdmissionReview<DynamicObject> = serde_json::from_value(review).unwrap();
    review.try_into().unwrap()
}

/// `kubectl port-forward`, in the shape of the recorded attach (1.36 refuses to forward to a
/// pod that is not running before admission, so none was recorded).
fn port_forward_review() -> Value {
    let mut review = recorded("06-validate-connect-attach.json");
    let request = &mut review["request"];
    for key in ["kind", "requestKind"] {
        request[key]["kind"] = json!("PodPortForwardOptions");
    }
    request["object"] = json!({"apiVersion": "v1", "kind": "PodPortForwardOptions", "ports": [8080]});
    request["subResource"] = json!("portforward");
    request["requestSubResource"] = json!("portforward");
    review
}

#[test]
fn exec_attach_and_port_forward_into_an_identitys_pod_need_its_use() {
    let view = guarded_view();
    let reviews = [
        (recorded("04-validate-connect-exec.json"), "exec into pods of"),
        (recorded("06-validate-connect-attach.json"), "attach to pods of"),
        (port_forward_review(), "port-forward to pods of"),
    ];
    for (review, doing) in reviews {
        let review = decoded(review);
        assert_eq!(pod_to_look_up(&review), Some(("rec".to_owned(), "task".to_owned())));
        // Without the pod's labels its identity is unknown: denied, whatever the authorizer says.
        let unread = validate_connect(&review, &Some(&Access::Allowed));
        assert_eq!(denial(&unread).0, "PodLookupFailed", "{doing}");

        let plain = with_pod_labels(&review, BTreeMap::from([("app".to_owned(), "reports".to_owned())]));
        assert!(identities_to_authorize(ReviewKind::ValidateConnect, &plain, &view).is_empty());
        assert!(
            validate_connect(&plain, &None).response.allowed,
            "{doing}: not an identity's pod"
        );

        let labelled = with_pod_labels(
            &review,
            BTreeMap::from([("winflow.io/identity".to_owned(), "payroll-export".to_owned())]),
        );
        assert_eq!(
            identities_to_authorize(ReviewKind::ValidateConnect, &labelled, &view),
            [("rec".to_owned(), "payroll-export".to_owned())]
        );
        let denied = Access::Denied("no RBAC policy matched".into());
        let decision = validate_connect(&labelled, &Some(&denied));
        let (reason, message) = denial(&decision);
        assert_eq!(reason, "CreatorNotAllowed");
        for part in [
            format!("user \"admin\" may not {doing} identity \"payroll-export\""),
            "verb use on windowstaskidentities.winflow.io \"payroll-export\" in namespace \"rec\"".to_owned(),
            "winflow-payroll-export-use".to_owned(),
        ] {
            assert!(message.contains(&part), "{part}: {message}");
        }
        assert_eq!(decision.audit.identity_concerned(), Some("payroll-export"));
        assert_eq!(
            (decision.audit.namespace.as_str(), decision.audit.pod.as_str()),
            ("rec", "task")
        );
        assert_eq!(decision.response.audit_annotations["reason"], "CreatorNotAllowed");
        assert!(validate_connect(&labelled, &Some(&Access::Allowed)).response.allowed);
        let unavailable = Access::Unavailable("timeout".into());
        assert_eq!(
            denial(&validate_connect(&labelled, &Some(&unavailable))).0,
            "AuthorizationUnavailable"
        );
        assert_eq!(
            denial(&validate_connect(&labelled, &None)).0,
            "AuthorizationUnavailable"
        );
    }
    // Only CONNECT to those three subresources is judged here.
    let mut other = recorded("04-validate-connect-exec.json");
    other["request"]["subResource"] = json!("proxy");
    let other = with_pod_labels(&decoded(other), BTreeMap::new());
    assert_eq!(
        denial(&validate_connect(&other, &Some(&Access::Allowed))).0,
        "InvalidPod"
    );
    assert_eq!(
        denial(&validate_connect(
            &request("CREATE", pod(), None),
            &Some(&Access::Allowed)
        ))
        .0,
        "InvalidPod"
    );
}

/// `pod` running as service account `account`.
fn running_as(mut pod: Value, account: &str) -> Value {
    pod["spec"]["serviceAccountName"] = json!(account);
    pod
}

#[test]
fn a_pod_that_runs_as_a_creators_service_account_needs_its_creator_to_use_the_identities() {
    let view = guarded_view();
    // payroll-export's creators are the scheduler's and the worker's service accounts.
    let worker = running_as(unlabelled(base_with(json!({}))), "airflow-worker");
    let review = request("CREATE", worker.clone(), None);
    let payroll = ("airflow".to_owned(), "payroll-export".to_owned());
    assert_eq!(
        identities_to_authorize(ReviewKind::Validate, &review, &view),
        std::slice::from_ref(&payroll)
    );
    assert!(
        identities_to_authorize(ReviewKind::Mutate, &review, &view).is_empty(),
        "validation decides"
    );
    let denied = Access::Denied(String::new());
    let decision = super::validate(&review, &view, &Some(&denied));
    let (reason, message) = denial(&decision);
    assert_eq!(reason, "CreatorServiceAccount");
    for part in [
        "service account \"airflow-worker\"",
        "identities \"payroll-export\"",
        "only users that may use those identities may start pods or workloads that run as it",
        "user \"system:serviceaccount:airflow:airflow-worker\" may not use \"payroll-export\"",
    ] {
        assert!(message.contains(part), "{part}: {message}");
    }
    assert_eq!(decision.audit.identity_concerned(), Some("payroll-export"));
    assert!(validate(&review, &view).response.allowed, "its creator may use it");
    assert_eq!(
        denial(&super::validate(&review, &view, &None)).0,
        "AuthorizationUnavailable"
    );
    // An unrelated service account is not a creator.
    let other = request("CREATE", running_as(unlabelled(base_with(json!({}))), "reports"), None);
    assert!(identities_to_authorize(ReviewKind::Validate, &other, &view).is_empty());
    assert!(super::validate(&other, &view, &None).response.allowed);
    // Updates of a running pod do not ask again (its service account cannot change).
    let update = request("UPDATE", worker.clone(), Some(worker));
    assert!(identities_to_authorize(ReviewKind::Validate, &update, &view).is_empty());
}

#[test]
fn creators_across_namespaces_and_labelled_pods_are_checked_too() {
    let mut view = guarded_view();
    // finance-reports of namespace "finance" names the worker of "airflow", and the service
    // account of payroll-export, as creators.
    let mut finance = (*view.identity("airflow", "finance-reports").unwrap()).clone();
    finance.metadata.namespace = Some("finance".into());
    finance.spec.access = Some(
        serde_json::from_value(json!({"creators": [
            {"kind": "ServiceAccount", "name": "airflow-worker", "namespace": "airflow"},
            {"kind": "ServiceAccount", "name": "payroll-export", "namespace": "airflow"}]}))
        .unwrap(),
    );
    view.0
        .insert(("finance".into(), "finance-reports".into()), Arc::new(finance));
    let payroll = ("airflow".to_owned(), "payroll-export".to_owned());
    let finance = ("finance".to_owned(), "finance-reports".to_owned());
    let worker = request(
        "CREATE",
        running_as(unlabelled(base_with(json!({}))), "airflow-worker"),
        None,
    );
    assert_eq!(
        identities_to_authorize(ReviewKind::Validate, &worker, &view),
        [payroll.clone(), finance.clone()]
    );
    let answers = BTreeMap::from([
        (payroll.clone(), Access::Allowed),
        (finance.clone(), Access::Denied(String::new())),
    ]);
    let decision = super::validate(&worker, &view, &answers);
    let (reason, message) = denial(&decision);
    assert_eq!(reason, "CreatorServiceAccount");
    assert!(
        message.contains("identities \"payroll-export\", \"finance-reports\"")
            && message.contains("may not use \"finance-reports\"")
            && !message.contains("\"finance\""),
        "names only: {message}"
    );
    // A pod of payroll-export runs as its service account, a creator of finance-reports: its
    // creator must be allowed both.
    let mut labelled = pod();
    labelled["metadata"]["labels"] =
        json!({"winflow.io/identity": "payroll-export", "dag_id": "payroll_export", "task_id": "export_ledger"});
    let labelled = mutated_pod(&view, labelled);
    let review = request("CREATE", labelled, None);
    assert_eq!(
        identities_to_authorize(ReviewKind::Validate, &review, &view),
        [payroll.clone(), finance.clone()]
    );
    let decision = super::validate(&review, &view, &answers);
    assert_eq!(denial(&decision).0, "CreatorServiceAccount");
    let both = BTreeMap::from([(payroll, Access::Allowed), (finance, Access::Allowed)]);
    let decision = super::validate(&review, &view, &both);
    assert!(decision.response.allowed, "{}", decision.response.result.message);
}

#[test]
fn unlabelled_pods_in_an_enforcement_namespace_do_not_reach_the_node() {
    let view = guarded_view();
    let host_process = json!({"windowsOptions": {"hostProcess": true, "runAsUserName": "NT AUTHORITY\\SYSTEM"}});
    let mut cases = Vec::new();
    let mut pod_level = unlabelled(base_with(json!({"hostNetwork": true})));
    pod_level["spec"]["securityContext"] = host_process.clone();
    cases.push((pod_level, "the pod asks for a HostProcess container"));
    let mut container = unlabelled(base_with(json!({})));
    container["spec"]["containers"][0]["securityContext"] = host_process.clone();
    cases.push((container, "container \"base\" asks for a HostProcess container"));
    let mut init = unlabelled(base_with(json!({})));
    init["spec"]["initContainers"] = json!([{"name": "setup", "image": "x", "securityContext": host_process}]);
    cases.push((init, "container \"setup\" asks for a HostProcess container"));
    let mut privileged = unlabelled(base_with(json!({})));
    privileged["spec"]["containers"][0]["securityContext"] = json!({"privileged": true});
    cases.push((privileged, "container \"base\" is privileged"));
    for (object, found) in cases {
        let decision = validate(&request("CREATE", object, None), &view);
        let (reason, message) = denial(&decision);
        assert_eq!(reason, "PrivilegedNotAllowed");
        for part in [found, "winflow.io/enforce=true", "Pod Security baseline"] {
            assert!(message.contains(part), "{part}: {message}");
        }
    }
    // Through an ephemeral container too.
    let plain = unlabelled(base_with(json!({})));
    let debug = json!([{"name": "debug", "image": "busybox", "securityContext": {"privileged": true}}]);
    let review = request_as(
        "UPDATE",
        ephemeral_containers(&plain["metadata"], debug),
        Some(ephemeral_containers(&plain["metadata"], json!([]))),
        Some("ephemeralcontainers"),
    );
    let decision = validate(&review, &view);
    let (reason, message) = denial(&decision);
    assert_eq!(reason, "PrivilegedNotAllowed");
    assert!(message.contains("ephemeral container \"debug\""), "{message}");
    // A plain pod, and one that says so explicitly, are admitted.
    let mut explicit = unlabelled(base_with(json!({})));
    explicit["spec"]["containers"][0]["securityContext"] =
        json!({"privileged": false, "windowsOptions": {"hostProcess": false}});
    for object in [unlabelled(base_with(json!({}))), explicit] {
        assert!(validate(&request("CREATE", object, None), &view).response.allowed);
    }
}

/// A review of a workload (`resource` of `group`) as the API server sends it, by `user`.
fn workload_review(
    operation: &str,
    (group, resource, kind): (&str, &str, &str),
    object: Value,
    old: Option<Value>,
    user: &str,
) -> AdmissionRequest<DynamicObject> {
    let review: AdmissionReview<DynamicObject> = serde_json::from_value(json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "4d3c2b1a-0000-4000-8000-000000000002",
            "kind": {"group": group, "version": "v1", "kind": kind},
            "resource": {"group": group, "version": "v1", "resource": resource},
            "name": object["metadata"]["name"], "namespace": "airflow", "operation": operation,
            "userInfo": {"username": user},
            "object": object, "oldObject": old}
    }))
    .unwrap();
    review.try_into().unwrap()
}

#[test]
fn workloads_whose_pods_run_as_a_creators_service_account_need_their_writer_to_use_the_identities() {
    let view = guarded_view();
    let deployments = ("apps", "deployments", "Deployment");
    let deployment = |replicas: u32, image: &str| {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "airflow-worker", "namespace": "airflow"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "w"}},
                "template": {"metadata": {"labels": {"app": "w"}},
                    "spec": {"serviceAccountName": "airflow-worker",
                        "containers": [{"name": "worker", "image": image}]}}}})
    };
    let payroll = ("airflow".to_owned(), "payroll-export".to_owned());
    let created = workload_review("CREATE", deployments, deployment(1, "airflow:2.10"), None, "alice");
    assert_eq!(
        identities_to_authorize(ReviewKind::ValidateWorkload, &created, &view),
        std::slice::from_ref(&payroll)
    );
    let denied = Access::Denied(String::new());
    let decision = validate_workload(&created, &view, &Some(&denied));
    let (reason, message) = denial(&decision);
    assert_eq!(reason, "CreatorServiceAccount");
    assert!(
        message
            .starts_with("Deployment \"airflow-worker\": its pod template runs as service account \"airflow-worker\"")
            && message.contains("user \"alice\" may not use \"payroll-export\""),
        "{message}"
    );
    assert_eq!(
        (decision.audit.kind.as_str(), decision.audit.identity_concerned()),
        ("Deployment", Some("payroll-export"))
    );
    assert!(
        validate_workload(&created, &view, &Some(&Access::Allowed))
            .response
            .allowed
    );
    assert_eq!(
        denial(&validate_workload(&created, &view, &None)).0,
        "AuthorizationUnavailable"
    );

    // A new image is a new template: checked again. Scaling is not.
    let upgraded = workload_review(
        "UPDATE",
        deployments,
        deployment(1, "airflow:3.0"),
        Some(deployment(1, "airflow:2.10")),
        "alice",
    );
    assert_eq!(
        denial(&validate_workload(&upgraded, &view, &Some(&denied))).0,
        "CreatorServiceAccount"
    );
    let scaled = workload_review(
        "UPDATE",
        deployments,
        deployment(3, "airflow:2.10"),
        Some(deployment(1, "airflow:2.10")),
        "alice",
    );
    assert!(identities_to_authorize(ReviewKind::ValidateWorkload, &scaled, &view).is_empty());
    assert!(validate_workload(&scaled, &view, &None).response.allowed);

    // The ReplicaSet the Deployment controller makes, and a CronJob's template.
    let mut replica_set = deployment(1, "airflow:2.10");
    replica_set["kind"] = json!("ReplicaSet");
    replica_set["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "Deployment",
        "name": "airflow-worker", "uid": "u1", "controller": true}]);
    let by_controller = workload_review(
        "CREATE",
        ("apps", "replicasets", "ReplicaSet"),
        replica_set.clone(),
        None,
        "system:serviceaccount:kube-system:deployment-controller",
    );
    assert!(identities_to_authorize(ReviewKind::ValidateWorkload, &by_controller, &view).is_empty());
    assert!(validate_workload(&by_controller, &view, &None).response.allowed);
    let by_alice = workload_review(
        "CREATE",
        ("apps", "replicasets", "ReplicaSet"),
        replica_set,
        None,
        "alice",
    );
    assert_eq!(
        denial(&validate_workload(&by_alice, &view, &Some(&denied))).0,
        "CreatorServiceAccount"
    );
    let cron_job = json!({"apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": "nightly", "namespace": "airflow"},
        "spec": {"schedule": "0 1 * * *", "jobTemplate": {"spec": {"template": {"spec": {
            "serviceAccountName": "airflow-worker", "restartPolicy": "Never",
            "containers": [{"name": "c", "image": "i"}]}}}}}});
    let cron = workload_review("CREATE", ("batch", "cronjobs", "CronJob"), cron_job, None, "alice");
    assert_eq!(
        denial(&validate_workload(&cron, &view, &Some(&denied))).0,
        "CreatorServiceAccount"
    );
}

#[test]
fn pods_that_workload_controllers_make_for_their_owner_are_not_asked_again() {
    let view = guarded_view();
    let mut pod = running_as(unlabelled(base_with(json!({}))), "airflow-worker");
    pod["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "name": "airflow-worker-5d8f", "uid": "u1", "controller": true}]);
    let mut review = request("CREATE", pod, None);
    review.user_info.username = Some("system:serviceaccount:kube-system:replicaset-controller".into());
    assert!(identities_to_authorize(ReviewKind::Validate, &review, &view).is_empty());
    assert!(super::validate(&review, &view, &None).response.allowed);
    // Someone else creating the same pod is asked.
    review.user_info.username = Some("alice".into());
    assert_eq!(
        denial(&super::validate(&review, &view, &None)).0,
        "AuthorizationUnavailable"
    );
}
