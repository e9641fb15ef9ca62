use super::*;
use crate::fixtures;
use serde_json::json;

/// A pod of namespace `airflow`, with the identity label when given, naming `spec`.
fn pod(name: &str, identity: Option<&str>, spec: serde_json::Value) -> ReferringPod {
    let labels = identity.map(|i| json!({"winflow.io/identity": i})).unwrap_or(json!({}));
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "airflow", "labels": labels},
        "spec": spec
    }))
    .unwrap()
}

fn secret_volume(secret: &str) -> serde_json::Value {
    json!({"containers": [{"name": "c", "image": "i"}], "volumes": [{"name": "v", "secret": {"secretName": secret}}]})
}

fn env_secret(secret: &str) -> serde_json::Value {
    json!({"containers": [{"name": "c", "image": "i",
        "env": [{"name": "S", "valueFrom": {"secretKeyRef": {"name": secret, "key": "k"}}}]}]})
}

fn claim(claim: &str) -> serde_json::Value {
    json!({"containers": [{"name": "c", "image": "i"}],
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]})
}

/// payroll-export, with a token (client secret payroll-oidc), a host account Secret and the
/// share `reports`.
fn identity() -> WindowsTaskIdentity {
    let mut identity = fixtures::key_vault_with_token();
    identity.spec.host_account = Some(serde_json::from_value(json!({"kubernetesSecret": {"name": "ccg"}})).unwrap());
    identity.spec.shares = serde_json::from_value(json!([{"name": "reports", "mountPath": "C:\\r"}])).unwrap();
    identity
}

/// Identity `finance` lists `reports`; nobody else lists anything.
fn lists(identity: &str, share: &str) -> bool {
    identity == "finance" && share == "reports"
}

fn rules(exposed: &[ExposedReference]) -> Vec<&str> {
    exposed.iter().map(|r| r.rule.as_str()).collect()
}

#[test]
fn the_token_secret_is_exposed_to_every_pod_but_the_identitys_own() {
    let identity = identity();
    let token = secret_volume("payroll-export-token");
    let unlabelled = exposed_references(&identity, &pod("p", None, token.clone()), &lists);
    assert_eq!(rules(&unlabelled), ["TokenSecretNotOwn"]);
    assert_eq!(
        (
            unlabelled[0].place.as_str(),
            unlabelled[0].kind.as_str(),
            unlabelled[0].name.as_str()
        ),
        ("volume \"v\" (secret)", "Secret", "payroll-export-token")
    );
    let other = exposed_references(&identity, &pod("p", Some("finance"), token.clone()), &lists);
    assert_eq!(rules(&other), ["TokenSecretNotOwn"]);
    let own = exposed_references(&identity, &pod("p", Some("payroll-export"), token), &lists);
    assert!(own.is_empty(), "{own:?}");
}

#[test]
fn the_client_secret_and_host_account_secret_are_exposed_to_any_pod() {
    let identity = identity();
    for (secret, rule) in [
        ("payroll-oidc", "ClientSecretReference"),
        ("ccg", "HostAccountSecretReference"),
    ] {
        for label in [None, Some("payroll-export")] {
            let exposed = exposed_references(&identity, &pod("p", label, env_secret(secret)), &lists);
            assert_eq!(rules(&exposed), [rule], "{secret} {label:?}");
            assert_eq!(exposed[0].place, "env S of container \"c\"");
        }
    }
    let unrelated = exposed_references(&identity, &pod("p", None, env_secret("app-config")), &lists);
    assert!(unrelated.is_empty());
}

#[test]
fn a_listed_shares_claim_is_exposed_unless_the_pods_identity_lists_it_too() {
    let identity = identity();
    let unlabelled = exposed_references(&identity, &pod("p", None, claim("reports")), &lists);
    assert_eq!(rules(&unlabelled), ["ShareNotListed"]);
    assert_eq!(unlabelled[0].kind, "PersistentVolumeClaim");
    let of_other_identity = exposed_references(&identity, &pod("p", Some("ops"), claim("reports")), &lists);
    assert_eq!(rules(&of_other_identity), ["ShareNotListed"]);
    let of_listing_identity = exposed_references(&identity, &pod("p", Some("finance"), claim("reports")), &lists);
    assert!(of_listing_identity.is_empty());
    let not_listed_here = exposed_references(&identity, &pod("p", None, claim("archive")), &lists);
    assert!(
        not_listed_here.is_empty(),
        "a share this identity does not list is not its to report"
    );
}

#[test]
fn the_report_counts_names_the_first_and_clears() {
    let identity = identity();
    let mut other_namespace = pod("z", None, secret_volume("payroll-export-token"));
    other_namespace.metadata.namespace = Some("elsewhere".into());
    let pods = [
        pod("web-2", None, env_secret("payroll-oidc")),
        pod("web-1", None, secret_volume("payroll-export-token")),
        pod("task", Some("payroll-export"), secret_volume("payroll-export-token")),
        pod("quiet", None, env_secret("app-config")),
        other_namespace,
    ];
    let exposed = exposed_pods(&identity, &pods, &lists);
    let names: Vec<&str> = exposed.iter().map(|p| p.pod.as_str()).collect();
    assert_eq!(names, ["web-1", "web-2"]);
    assert_eq!(token_exposed_to(&exposed), ["web-1"]);
    let (status, condition) = report(&exposed);
    let status = status.unwrap();
    assert_eq!((status.pods, status.examples.len()), (2, 2));
    assert!(!condition.status);
    assert_eq!(condition.reason, "ExposedToPods");
    assert!(
        condition.message.starts_with(
            "pod web-1: volume \"v\" (secret) names Secret payroll-export-token (TokenSecretNotOwn) and 1 more pod(s)"
        ),
        "{}",
        condition.message
    );
    let many: Vec<ReferringPod> = (0..8).map(|i| pod(&format!("p{i}"), None, env_secret("ccg"))).collect();
    let (status, _) = report(&exposed_pods(&identity, &many, &lists));
    let status = status.unwrap();
    assert_eq!((status.pods, status.examples.len()), (8, EXAMPLES));

    let (status, condition) = report(&[]);
    assert_eq!(status, None);
    assert!(condition.status);
    assert_eq!(condition.reason, "NotExposed");
}
