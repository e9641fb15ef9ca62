//! The `winflow` binary as users run it: `render` and `crds`, offline, and what `run` refuses
//! before it needs a cluster.

use std::process::{Command, Output};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn winflow(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_winflow"))
        .args(args)
        .current_dir(REPO)
        .output()
        .expect("winflow runs")
}

fn kinds_and_names(yaml: &str) -> Vec<String> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|document| {
            let value: serde_json::Value = serde::Deserialize::deserialize(document).unwrap();
            format!(
                "{}/{}",
                value["kind"].as_str().unwrap(),
                value["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn render_prints_every_object_for_identities_and_shares() {
    let out = winflow(&[
        "render",
        "-f",
        "examples/identity-domain-joined.yaml",
        "-f",
        "examples/share-reports.yaml",
        "-n",
        "airflow",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        kinds_and_names(&String::from_utf8(out.stdout).unwrap()),
        [
            "GMSACredentialSpec/airflow.finance-reports",
            "Role/winflow-finance-reports-gmsa",
            "RoleBinding/winflow-finance-reports-gmsa",
            "Role/winflow-finance-reports-use",
            "RoleBinding/winflow-finance-reports-use",
            "ServiceAccount/finance-reports",
            "ConfigMap/finance-reports-pod-templates",
            "PersistentVolume/airflow.finance-reports-share",
            "PersistentVolumeClaim/finance-reports-share",
        ]
    );
}

#[test]
fn render_refuses_an_invalid_identity_with_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("admin.yaml");
    let text = std::fs::read_to_string(format!("{REPO}/examples/identity-domain-joined.yaml")).unwrap();
    std::fs::write(
        &path,
        text.replace("runAsUserName: ContainerUser", "runAsUserName: ContainerAdministrator"),
    )
    .unwrap();
    let out = winflow(&["render", "-f", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("WindowsTaskIdentity default/finance-reports"),
        "{stderr}"
    );
    assert!(
        stderr.contains("spec.pod.runAsUserName") && stderr.contains("allowAdministrator"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "nothing is printed for a refused input");
}

#[test]
fn render_says_which_file_it_cannot_read() {
    let out = winflow(&["render", "-f", "examples/does-not-exist.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("examples/does-not-exist.yaml"));
}

#[test]
fn crds_prints_what_crds_holds() {
    let out = winflow(&["crds"]);
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    let mut expected = Vec::new();
    for crd in winflow::crdgen::winflow_crds() {
        expected
            .push(std::fs::read_to_string(format!("{REPO}/crds/{}", winflow::crdgen::crd_file_name(&crd))).unwrap());
    }
    assert_eq!(printed, expected.join("---\n"));
    let with_gmsa = String::from_utf8(winflow(&["crds", "--with-gmsa"]).stdout).unwrap();
    assert!(
        kinds_and_names(&with_gmsa).contains(&"CustomResourceDefinition/gmsacredentialspecs.windows.k8s.io".to_owned())
    );
}

#[test]
fn run_refuses_a_webhook_client_ca_it_cannot_use_before_it_needs_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("ca.crt");
    std::fs::write(&key, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let path = key.display().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_winflow"))
        .args([
            "run",
            "--cert-dir",
            "/nonexistent",
            "--webhook-client-ca",
            &path,
            "--log-format",
            "json",
        ])
        .env("KUBECONFIG", dir.path().join("no-kubeconfig"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .expect("winflow runs");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line: serde_json::Value = serde_json::from_str(stderr.lines().last().unwrap_or_default())
        .unwrap_or_else(|_| panic!("a JSON log line: {stderr}"));
    assert_eq!(
        line["error"],
        format!(
            "--webhook-client-ca {path}: it holds a private key (PEM section 1); a CA bundle holds certificates only, never a key; expected a PEM file of one or more CA certificates (-----BEGIN CERTIFICATE-----) to trust for the API server's client certificate"
        ),
        "{stderr}"
    );
}

#[test]
fn run_refuses_an_oidc_ca_file_it_cannot_use_before_it_needs_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let no_certificate = dir.path().join("ca.crt");
    std::fs::write(&no_certificate, "# the corporate CA goes here\n").unwrap();
    for (path, problem) in [
        ("/nonexistent".to_owned(), "cannot read it: No such file or directory"),
        (no_certificate.display().to_string(), "it holds no certificate"),
    ] {
        // No kubeconfig at all: the file is checked first, so this is the error a user sees.
        let out = Command::new(env!("CARGO_BIN_EXE_winflow"))
            .args(["run", "--oidc-ca-file", &path, "--log-format", "json"])
            .env("KUBECONFIG", dir.path().join("no-kubeconfig"))
            .env_remove("KUBERNETES_SERVICE_HOST")
            .output()
            .expect("winflow runs");
        assert_eq!(out.status.code(), Some(1), "{path}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let line: serde_json::Value = serde_json::from_str(stderr.lines().last().unwrap_or_default())
            .unwrap_or_else(|_| panic!("a JSON log line: {stderr}"));
        assert_eq!(line["level"], "ERROR", "{stderr}");
        assert_eq!(
            line["error"],
            format!(
                "--oidc-ca-file {path}: {problem}{}; expected a PEM file of one or more CA certificates (-----BEGIN CERTIFICATE-----) to trust for OIDC issuers",
                if path == "/nonexistent" { " (os error 2)" } else { "" }
            ),
            "{stderr}"
        );
    }
}
