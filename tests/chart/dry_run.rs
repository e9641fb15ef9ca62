//! Every object the chart renders, with each optional feature, is accepted by the API server
//! as it was rendered (server-side dry run).

use std::path::Path;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::core::{DynamicObject, GroupVersionKind};
use kube::discovery::Scope;
use kube::{Api, Client};
use serde_json::Value;

use crate::support::helm::helm_async;
use crate::support::{self, REPO, TestEnv, wait_until};
use crate::{CHART, FEATURES, documents, kinds};

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

    // The chart's CRDs (they exist already, from the test support: an unchanged apply), in
    // the form this server takes (no CEL rules before 1.25). Not through `helm template
    // --include-crds`, which would refuse to render a release that adopts existing CRDs.
    let crds = Path::new(REPO).join(CHART).join("crds");
    for entry in std::fs::read_dir(crds).unwrap() {
        for crd in documents(&std::fs::read_to_string(entry.unwrap().path()).unwrap()) {
            let crd = serde_json::to_value(support::crd_for_server(&env.client, crd).await).unwrap();
            dry_run_apply(&env.client, &env.namespace, &crd, "crds/").await;
        }
    }

    // What the server serves decides the PodDisruptionBudget's version (policy/v1 from 1.21).
    let pdb_version = if env.client.list_api_group_resources("policy/v1").await.is_ok() {
        "policy/v1"
    } else {
        "policy/v1beta1"
    };
    let mut summary = Vec::new();
    for (feature, args) in FEATURES {
        // Rendered with the server's capabilities, as `helm install` does.
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
            assert_eq!(pdb["apiVersion"], pdb_version, "the version the server serves");
        }
        let expected: &[&str] = match *feature {
            "cert-manager" => &["Issuer", "Certificate"],
            "cert-manager with an issuerRef" => &["Certificate"],
            "serviceMonitor" => &["ServiceMonitor"],
            "networkPolicy" => &["NetworkPolicy"],
            "gmsa.installCRD" => &["CustomResourceDefinition"],
            "token.caBundle" | "webhook.clientCA" => &["ConfigMap", "Deployment"],
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
