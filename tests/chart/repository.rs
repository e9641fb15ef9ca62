//! What the chart renders of what the repository defines elsewhere is equal to it: the CRDs
//! (crds/), the RBAC and its reasons (deploy/rbac.yaml), the webhooks (registration.rs).

use std::path::Path;

use k8s_openapi::api::admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration};
use k8s_openapi::api::rbac::v1::PolicyRule;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::{Value, json};
use winflow::webhook::registration::{self, Endpoint, Registration};

use crate::support::REPO;
use crate::{CHART, documents, find, kinds, template};

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
    // matchConditions from Kubernetes 1.28 on (.Capabilities), as --register-webhooks asks the server.
    let servers = [("1.20.2", false), ("1.27.0", false), ("1.28.0", true), ("1.33.1", true)];
    let cases = cases
        .into_iter()
        .flat_map(|case| servers.map(|server| (case.clone(), server)));
    for ((args, failure_policy, selector), (kube_version, match_conditions)) in cases {
        let args = [args, &["--kube-version", kube_version]].concat();
        let args = args.as_slice();
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
            match_conditions,
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
