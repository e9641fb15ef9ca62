//! `helm template` and `helm lint` offline: the values schema, what the Deployment runs, the
//! token CA bundle, the webhook's client CA, the NetworkPolicy, every value documented.

use std::path::Path;

use serde_json::{Value, json};

use crate::support::REPO;
use crate::support::helm::run_helm;
use crate::{CHART, FEATURES, OIDC_CA_FIXTURE, documents, find, kinds, template};

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
        (vec!["--set", "webhook.clientCA=apiserver-ca.pem"], "clientCA"),
        (vec!["--set-json", "networkPolicy.webhookFrom=[{}]"], "webhookFrom"),
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

#[test]
fn webhook_client_ca_is_a_config_map_mounted_for_webhook_client_ca_and_a_new_one_rolls_the_pods() {
    let bundle = std::fs::read_to_string(Path::new(REPO).join(OIDC_CA_FIXTURE)).unwrap();
    let set_file = format!("webhook.clientCA={OIDC_CA_FIXTURE}");
    let objects = documents(&template(&["--set-file", &set_file]));

    let config_map = find(&objects, "ConfigMap", "t-winflow-webhook-client-ca");
    assert_eq!(config_map["metadata"]["namespace"], "winflow-system");
    assert_eq!(config_map["data"], json!({"ca.crt": bundle}));
    let pod_template = &find(&objects, "Deployment", "t-winflow")["spec"]["template"];
    let pod = &pod_template["spec"];
    assert!(
        pod["volumes"].as_array().unwrap().contains(&json!({
            "name": "webhook-client-ca", "configMap": {"name": "t-winflow-webhook-client-ca"}
        })),
        "{pod}"
    );
    let container = &pod["containers"][0];
    assert!(
        container["volumeMounts"].as_array().unwrap().contains(&json!({
            "name": "webhook-client-ca", "mountPath": "/etc/winflow/webhook-client-ca", "readOnly": true
        })),
        "{container}"
    );
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        args.contains(&"--webhook-client-ca=/etc/winflow/webhook-client-ca/ca.crt"),
        "{args:?}"
    );
    let sha256 = format!("{:x}", <sha2::Sha256 as sha2::Digest>::digest(bundle.as_bytes()));
    assert_eq!(
        pod_template["metadata"]["annotations"]["checksum/webhook-client-ca"],
        json!(sha256)
    );

    let default_text = serde_json::to_string(&documents(&template(&[]))).unwrap();
    assert!(!default_text.contains("webhook-client-ca"), "in the defaults");

    let dir = tempfile::tempdir().unwrap();
    let key = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n";
    std::fs::write(dir.path().join("with-key.pem"), format!("{bundle}{key}")).unwrap();
    let with_key = format!("webhook.clientCA={}", dir.path().join("with-key.pem").display());
    let refused = run_helm(&["template", "t", CHART, "--set-file", &with_key], None);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("webhook.clientCA holds a private key"),
        "{stderr}"
    );
}

#[test]
fn the_network_policy_admits_the_webhook_port_from_webhook_from_and_metrics_from_metrics_from_only() {
    let policy = |extra: &[&str]| {
        let mut args = vec!["--set", "networkPolicy.enabled=true"];
        args.extend_from_slice(extra);
        find(&documents(&template(&args)), "NetworkPolicy", "t-winflow").clone()
    };
    let webhook_port = json!([{"port": 9443, "protocol": "TCP"}]);

    // Defaults: the webhook port from any address, nothing else (no rule for the admin port).
    let defaults = policy(&[]);
    assert_eq!(defaults["spec"]["policyTypes"], json!(["Ingress"]));
    assert_eq!(defaults["spec"]["ingress"], json!([{"ports": webhook_port}]));

    let narrowed = policy(&[
        "--set-json",
        r#"networkPolicy.webhookFrom=[{"ipBlock":{"cidr":"10.0.0.0/28"}}]"#,
        "--set-json",
        r#"networkPolicy.metricsFrom=[{"namespaceSelector":{"matchLabels":{"team":"monitoring"}}}]"#,
    ]);
    assert_eq!(
        narrowed["spec"]["ingress"],
        json!([
            {"ports": webhook_port, "from": [{"ipBlock": {"cidr": "10.0.0.0/28"}}]},
            {"ports": [{"port": 8080, "protocol": "TCP"}],
             "from": [{"namespaceSelector": {"matchLabels": {"team": "monitoring"}}}]},
        ])
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
