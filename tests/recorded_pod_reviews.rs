//! The mutate and validate decisions on pod reviews recorded from a Kubernetes 1.36.2 API
//! server (tests/data/k8s-1.36-reviews/, see its README): a pod with a sidecar (an init
//! container with `restartPolicy: Always`), `spec.os` and a projected volume holding its
//! identity's token Secret and a service-account token, created and then relabelled. Pure:
//! no control plane.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionReview};
use serde_json::{Value, json};
use winflow::api::{WindowsShare, WindowsTaskIdentity};
use winflow::webhook::access::Access;
use winflow::webhook::decide::{Authorizations, Decision, Protected, ResourceView, mutate, validate};
use winflow::webhook::reason::AdmissionReason;

/// The namespace the reviews were recorded in.
const NAMESPACE: &str = "rec";

struct View(HashMap<String, Arc<WindowsTaskIdentity>>);

impl ResourceView for View {
    fn identity(&self, namespace: &str, name: &str) -> Option<Arc<WindowsTaskIdentity>> {
        (namespace == NAMESPACE).then(|| self.0.get(name).cloned()).flatten()
    }
    fn each_identity(&self, namespace: Option<&str>, visit: &mut dyn FnMut(&WindowsTaskIdentity)) {
        if namespace.is_none_or(|n| n == NAMESPACE) {
            let mut names: Vec<_> = self.0.keys().collect();
            names.sort();
            for name in names {
                visit(&self.0[name]);
            }
        }
    }
    fn each_share(&self, _namespace: &str, _visit: &mut dyn FnMut(&WindowsShare)) {}
    // The recorded pods set no gMSA contents and run as their identity's service account, which
    // creates no pods: these lookups have nothing to find.
    fn identities_with_account(&self, _account: &str) -> Vec<Arc<WindowsTaskIdentity>> {
        Vec::new()
    }
    fn identities_with_plugin_input(&self, _input: &str) -> Vec<Arc<WindowsTaskIdentity>> {
        Vec::new()
    }
    fn identities_created_by(&self, _namespace: &str, _name: &str) -> Vec<(String, String)> {
        Vec::new()
    }
    fn protected(&self, namespace: &str) -> Arc<Protected> {
        Arc::new(Protected::of_namespace(self, namespace))
    }
}

/// The authorizer's answer for the recordings' user: may use every identity.
struct AllowedToUseAll;

impl Authorizations for AllowedToUseAll {
    fn answer(&self, _namespace: &str, _name: &str) -> Option<&Access> {
        Some(&Access::Allowed)
    }
}

/// An identity from examples/ in the recording's namespace, Ready, with an OIDC token (its
/// Secret `<name>-token`) that lasts another hour.
fn identity(example: &str) -> WindowsTaskIdentity {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(example)).unwrap();
    let mut value: Value = serde_yaml_ng::from_str(&text).unwrap();
    let name = value["metadata"]["name"].as_str().unwrap().to_owned();
    value["metadata"]["namespace"] = json!(NAMESPACE);
    value["metadata"]["uid"] = json!(format!("uid-{name}"));
    value["spec"]["token"] = json!({
        "issuerUrl": "https://login.microsoftonline.com/6f1c2b1e-0000-4000-8000-000000000001/v2.0",
        "clientId": "3c9a7e55-0000-4000-8000-000000000002",
        "clientSecretRef": {"name": format!("{name}-oidc"), "key": "client-secret"},
        "scopes": ["api://payroll/.default"]
    });
    let in_an_hour = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(3600))
        .unwrap()
        .to_string();
    value["status"] = json!({
        "conditions": [{"type": "Ready", "status": "True", "reason": "Reconciled", "message": "m",
            "lastTransitionTime": "2026-12-05T08:00:00Z"}],
        "token": {"secretName": format!("{name}-token"), "expiresAt": in_an_hour, "renewalTime": in_an_hour}
    });
    serde_json::from_value(value).unwrap()
}

/// `payroll-export`, the identity the recorded pod names, and `finance-reports` beside it.
fn view() -> View {
    let mut identities = HashMap::new();
    for example in ["identity-azure-key-vault.yaml", "identity-domain-joined.yaml"] {
        let identity = identity(example);
        identities.insert(identity.metadata.name.clone().unwrap(), Arc::new(identity));
    }
    assert!(identities.contains_key("payroll-export"));
    View(identities)
}

fn recorded(file: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/k8s-1.36-reviews")
        .join(file);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn request(review: Value) -> AdmissionRequest<DynamicObject> {
    let review: AdmissionReview<DynamicObject> = serde_json::from_value(review).unwrap();
    review.try_into().unwrap()
}

/// The creator may use the identity (the handler asked the authorizer before).
fn mutated(review: Value) -> Decision {
    mutate(&request(review), &view(), &AllowedToUseAll)
}

fn validated(review: Value) -> Decision {
    validate(&request(review), &view(), &AllowedToUseAll)
}

fn denied(decision: &Decision, reason: AdmissionReason) -> String {
    assert!(!decision.response.allowed, "allowed: {:?}", decision.audit);
    assert_eq!(decision.audit.reason, reason, "{}", decision.audit.message);
    decision.audit.message.clone()
}

/// The recorded pod without the credential spec name the recording set by hand (for its own
/// namespace `airflow`), as a task pod of winflow's templates reaches the webhook.
fn without_hand_set_gmsa(mut review: Value) -> Value {
    let options = review["request"]["object"]["spec"]["securityContext"]["windowsOptions"]
        .as_object_mut()
        .unwrap();
    options.remove("gmsaCredentialSpecName");
    review
}

/// The pod after winflow's mutation of 01 (the patch applied as the API server would).
fn mutated_pod() -> Value {
    let review = without_hand_set_gmsa(recorded("01-mutate-create-pod.json"));
    let decision = mutated(review.clone());
    assert!(decision.response.allowed, "{}", decision.audit.message);
    let patch: json_patch::Patch = serde_json::from_slice(decision.response.patch.as_ref().unwrap()).unwrap();
    let mut pod = review["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch).unwrap();
    pod
}

/// 02 (the validating review of the same create) carrying `pod`.
fn validating_review_of(pod: Value) -> Value {
    let mut review = recorded("02-validate-create-pod.json");
    review["request"]["object"] = pod;
    review
}

#[test]
fn mutate_fills_in_the_identity_and_keeps_the_sidecar_os_and_projected_volume() {
    let original = recorded("01-mutate-create-pod.json")["request"]["object"].clone();
    let pod = mutated_pod();
    let spec = &pod["spec"];
    assert_eq!(spec["serviceAccountName"], "payroll-export");
    assert_eq!(spec["os"], json!({"name": "windows"}));
    assert_eq!(spec["nodeSelector"]["kubernetes.io/os"], "windows");
    assert_eq!(
        spec["securityContext"]["windowsOptions"]["gmsaCredentialSpecName"],
        "rec.payroll-export"
    );
    assert!(spec["securityContext"]["windowsOptions"]["gmsaCredentialSpec"].is_string());
    // The sidecar is an init container that keeps running: left as it was, never treated as
    // the task container (the identity's env and token go to the first app container).
    assert_eq!(spec["initContainers"], original["spec"]["initContainers"]);
    assert_eq!(spec["initContainers"][0]["restartPolicy"], "Always");
    let env: Vec<&str> = spec["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(env.contains(&"WINFLOW_ACCESS_TOKEN"), "{env:?}");
    // The pod's own projected volume (its identity's token Secret and a service-account token
    // for workload identity federation) is kept as it came.
    assert_eq!(spec["volumes"][0], original["spec"]["volumes"][0]);
}

#[test]
fn mutate_as_recorded_names_the_credential_spec_name_the_pod_set() {
    // The recording set gmsaCredentialSpecName for namespace `airflow`; in `rec` that is
    // another identity's name: a conflict, never replaced.
    let message = denied(
        &mutated(recorded("01-mutate-create-pod.json")),
        AdmissionReason::FieldConflict,
    );
    assert!(
        message.contains("securityContext.windowsOptions.gmsaCredentialSpecName")
            && message.contains("\"airflow.payroll-export\"")
            && message.contains("\"rec.payroll-export\""),
        "{message}"
    );
}

#[test]
fn mutate_refuses_a_pod_whose_spec_os_is_not_windows() {
    let mut review = without_hand_set_gmsa(recorded("01-mutate-create-pod.json"));
    review["request"]["object"]["spec"]["os"]["name"] = json!("linux");
    let message = denied(&mutated(review), AdmissionReason::FieldConflict);
    assert!(
        message.contains("spec.os.name") && message.contains("\"windows\""),
        "{message}"
    );
}

#[test]
fn validate_admits_the_mutated_pod_with_its_sidecar() {
    let decision = validated(validating_review_of(mutated_pod()));
    assert!(decision.response.allowed, "{}", decision.audit.message);
    assert_eq!(decision.audit.reason, AdmissionReason::Allowed);
    assert_eq!(decision.audit.identity.as_deref(), Some("payroll-export"));
}

#[test]
fn validate_as_recorded_refuses_the_default_service_account() {
    // The recording's mutating webhook changed nothing: the pod still runs as `default`.
    let message = denied(
        &validated(recorded("02-validate-create-pod.json")),
        AdmissionReason::ServiceAccountMismatch,
    );
    assert!(
        message.contains("\"default\"") && message.contains("\"payroll-export\""),
        "{message}"
    );
}

#[test]
fn validate_refuses_a_sidecar_running_as_administrator() {
    let mut pod = mutated_pod();
    pod["spec"]["initContainers"][0]["securityContext"] =
        json!({"windowsOptions": {"runAsUserName": "ContainerAdministrator"}});
    let message = denied(
        &validated(validating_review_of(pod)),
        AdmissionReason::AdministratorNotAllowed,
    );
    assert!(message.contains("sidecar"), "{message}");
}

#[test]
fn validate_refuses_another_identitys_token_in_a_projected_volume() {
    let mut pod = mutated_pod();
    pod["spec"]["volumes"][0]["projected"]["sources"][0]["secret"]["name"] = json!("finance-reports-token");
    let message = denied(
        &validated(validating_review_of(pod)),
        AdmissionReason::TokenSecretNotOwn,
    );
    assert!(message.contains("finance-reports-token"), "{message}");
}

#[test]
fn validate_admits_a_metadata_only_update() {
    // `kubectl label`: the spec is unchanged, so nothing that reaches a credential changed;
    // admitted even as recorded (service account `default`) and without the identity.
    let review = recorded("08-validate-update-pod.json");
    assert_eq!(
        review["request"]["object"]["spec"],
        review["request"]["oldObject"]["spec"]
    );
    let decision = validated(review.clone());
    assert!(decision.response.allowed, "{}", decision.audit.message);
    assert_eq!(decision.audit.reason, AdmissionReason::Allowed);
    let without_identity = validate(&request(review), &View(HashMap::new()), &AllowedToUseAll);
    assert!(without_identity.response.allowed, "{}", without_identity.audit.message);
}
