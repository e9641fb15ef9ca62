//! The Airflow examples in examples/airflow: the DAG, loaded by Apache Airflow 3 itself, builds
//! the pods winflow's webhook expects from the templates `winflow render` prints for the example
//! identity, and the Helm values mount those templates where the DAG reads them.
//!
//! The Airflow side (tests/airflow/dag_check.py) runs with the virtualenv's python from
//! WINFLOW_AIRFLOW_PYTHON (hack/test.sh sets it), or else from hack/airflow-venv.sh. Without
//! Airflow these tests fail, they are never skipped. No cluster is needed.

use winflow_test_support::tools;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_json::{Value, json};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const IDENTITY_EXAMPLE: &str = "examples/identity-azure-key-vault.yaml";
const DAG: &str = "examples/airflow/dags/payroll_export.py";
const VALUES: &str = "examples/airflow/values-airflow.yaml";
const IDENTITY: &str = "payroll-export";
const CONFIG_MAP: &str = "payroll-export-pod-templates";
const WINDOWS_KEY: &str = "windows-pod-template.yaml";
const EXECUTOR_KEY: &str = "executor-pod-template.yaml";

/// The python of the Airflow virtualenv; panics (never skips) when it cannot be had.
fn airflow_python() -> &'static str {
    static PYTHON: OnceLock<String> = OnceLock::new();
    PYTHON.get_or_init(|| {
        tools::tool("WINFLOW_AIRFLOW_PYTHON", "airflow-venv.sh")
            .display()
            .to_string()
    })
}

fn yaml_documents(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|document| serde::Deserialize::deserialize(document).unwrap())
        .filter(|value: &Value| !value.is_null())
        .collect()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(REPO).join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The identity example, optionally with an OIDC `spec.token` (as hack/demo.sh adds one).
fn identity(with_token: bool) -> String {
    let mut identity = yaml_documents(&read(IDENTITY_EXAMPLE)).remove(0);
    assert_eq!(identity["metadata"]["name"], IDENTITY);
    if with_token {
        identity["spec"]["token"] = json!({
            "issuerUrl": "https://login.microsoftonline.com/6e7a5f1c-2b1d-4c39-9f3e-8d2a1b0c4e5f/v2.0",
            "clientId": "3c9a7e55-0d3c-4f6b-9a51-6a4a7f0e2b11",
            "workloadIdentity": {},
            "scopes": ["api://payroll/.default"],
        });
    }
    serde_yaml_ng::to_string(&identity).unwrap()
}

/// The data of the identity's template ConfigMap, from `winflow render -n airflow`.
fn rendered_templates(identity: &str) -> BTreeMap<String, String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_winflow"))
        .args(["render", "-n", "airflow", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("winflow runs");
    child.stdin.take().unwrap().write_all(identity.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "winflow render: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let objects = yaml_documents(&String::from_utf8(out.stdout).unwrap());
    let config_map = objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == CONFIG_MAP)
        .unwrap_or_else(|| panic!("winflow render printed no ConfigMap {CONFIG_MAP}"));
    serde_json::from_value(config_map["data"].clone()).unwrap()
}

/// Runs tests/airflow/dag_check.py against the templates of `identity`, written as the mounted
/// ConfigMap would show them (`<dir>/payroll-export/<key>`), and returns its JSON summary.
fn dag_check(identity: &str) -> Value {
    let templates = rendered_templates(identity);
    let dir = tempfile::tempdir().unwrap();
    let mounted = dir.path().join(IDENTITY);
    std::fs::create_dir(&mounted).unwrap();
    for (key, text) in &templates {
        std::fs::write(mounted.join(key), text).unwrap();
    }
    let out = Command::new(airflow_python())
        .arg(Path::new(REPO).join("tests/airflow/dag_check.py"))
        .arg("--dag-file")
        .arg(Path::new(REPO).join(DAG))
        .arg("--pod-templates")
        .arg(dir.path())
        .stderr(Stdio::inherit())
        .output()
        .expect("the Airflow python runs");
    assert!(
        out.status.success(),
        "Airflow did not accept {DAG} with the rendered templates (dag_check's message is above)"
    );
    let mut summary: Value = serde_json::from_slice(&out.stdout).expect("dag_check prints JSON");
    summary["templates_dir"] = json!(mounted);
    println!("{}", serde_json::to_string_pretty(&summary).unwrap());
    summary
}

/// The summary for the example identity as it is (shared by the tests that need it).
fn example_summary() -> &'static Value {
    static SUMMARY: OnceLock<Value> = OnceLock::new();
    SUMMARY.get_or_init(|| dag_check(&identity(false)))
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect()
}

#[test]
fn the_dag_builds_the_identity_pods_in_airflow() {
    let summary = example_summary();
    let dir = PathBuf::from(summary["templates_dir"].as_str().unwrap());
    assert_eq!(summary["dag_id"], "payroll_export");
    assert_eq!(summary["schedule"], "@daily");
    assert_eq!(summary["catchup"], false);
    assert_eq!(names(&summary["tasks"]), ["export_ledger", "upload"]);

    let export = &summary["export_ledger"];
    assert_eq!(export["operator"], "KubernetesPodOperator");
    assert_eq!(export["do_xcom_push"], false);
    assert_eq!(export["get_logs"], true);
    assert_eq!(export["on_finish_action"], "delete_pod");
    assert!(
        export["retries"].as_u64().unwrap() >= 1,
        "retries let a denied pod run with a fresh token"
    );
    assert!(export["retry_delay_seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(export["pod_template_file"], json!(dir.join(WINDOWS_KEY)));
    assert_eq!(names(&export["cmds"]), ["powershell.exe", "-Command"]);
    assert_eq!(export["namespace"], "airflow");
    assert_eq!(export["container"], "base");
    assert_eq!(export["image"], "registry.example.com/payroll/export-win:2.0");
    assert_eq!(export["node_selector"]["kubernetes.io/os"], "windows");
    assert_eq!(export["os"], "windows");
    assert_eq!(export["service_account"], IDENTITY);
    assert_eq!(export["gmsa_credential_spec_name"], "airflow.payroll-export");
    let labels = &export["labels"];
    assert_eq!(labels["winflow.io/identity"], IDENTITY);
    assert_eq!(labels["winflow.io/role"], "windows-task");
    assert_eq!(labels["dag_id"], "payroll_export");
    assert_eq!(labels["task_id"], "export_ledger");
    assert_eq!(labels["kubernetes_pod_operator"], "True");

    let upload = &summary["upload"];
    assert_eq!(
        upload["executor_config"]["pod_template_file"],
        json!(dir.join(EXECUTOR_KEY))
    );
    assert_eq!(upload["container"], "base");
    assert_eq!(upload["service_account"], IDENTITY);
    assert_eq!(upload["labels"]["winflow.io/identity"], IDENTITY);
    assert_eq!(upload["labels"]["winflow.io/role"], "executor");
    assert_eq!(upload["labels"]["kubernetes_executor"], "True");
    assert_eq!(upload["annotations"]["dag_id"], "payroll_export");
    assert_eq!(upload["annotations"]["task_id"], "upload");
    for name in ["WINFLOW_IDENTITY", "WINFLOW_GMSA_ACCOUNT", "WINFLOW_DOMAIN"] {
        assert!(names(&upload["env"]).contains(&name), "the upload pod lacks {name}");
        assert!(names(&export["env"]).contains(&name), "the Windows pod lacks {name}");
    }
    // The example identity has no spec.token: no token variables, and the tasks cope.
    assert!(!names(&export["env"]).contains(&"WINFLOW_TOKEN_FILE"));
}

#[test]
fn with_a_token_both_tasks_get_the_token_file() {
    let summary = dag_check(&identity(true));
    let export = &summary["export_ledger"];
    let upload = &summary["upload"];
    for name in ["WINFLOW_ACCESS_TOKEN", "WINFLOW_TOKEN_EXPIRES_AT", "WINFLOW_TOKEN_FILE"] {
        assert!(names(&export["env"]).contains(&name), "the Windows pod lacks {name}");
        assert!(names(&upload["env"]).contains(&name), "the upload pod lacks {name}");
    }
    assert!(names(&export["volume_mounts"]).contains(&r"C:\var\run\secrets\winflow.io\token"));
    assert!(names(&upload["volume_mounts"]).contains(&"/var/run/secrets/winflow.io/token"));
    // The template's labels and the DAG's still hold with the token added.
    assert_eq!(export["labels"]["winflow.io/identity"], IDENTITY);
    assert_eq!(upload["labels"]["winflow.io/identity"], IDENTITY);
}

/// `key` of a component in the values (a list), empty when absent.
fn list<'a>(component: &'a Value, key: &str) -> Vec<&'a Value> {
    component
        .get(key)
        .and_then(Value::as_array)
        .map(|l| l.iter().collect())
        .unwrap_or_default()
}

#[test]
fn helm_values_mount_the_template_config_map_where_the_dag_reads_it() {
    let values = yaml_documents(&read(VALUES)).remove(0);
    assert_eq!(values["executor"], "KubernetesExecutor");
    assert_eq!(values["allowPodLaunching"], true);

    // Where the DAG reads the templates in a deployment (WINFLOW_POD_TEMPLATES unset), as
    // Airflow parsed it; both files in one directory, named like the ConfigMap's keys.
    let summary = example_summary();
    let windows = Path::new(summary["deployed_paths"]["windows"].as_str().unwrap());
    let executor = Path::new(summary["deployed_paths"]["executor"].as_str().unwrap());
    assert_eq!(
        windows,
        Path::new("/opt/airflow/pod-templates/payroll-export").join(WINDOWS_KEY)
    );
    assert_eq!(windows.parent(), executor.parent());
    assert_eq!(executor.file_name().unwrap(), EXECUTOR_KEY);
    let keys: Vec<String> = rendered_templates(&identity(false)).into_keys().collect();
    assert_eq!(keys, [EXECUTOR_KEY, WINDOWS_KEY]);
    let mount_path = windows.parent().unwrap().to_str().unwrap();

    // Every mount of every component names a volume of that component (or a global one).
    let components: Vec<(&String, &Value)> = values
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, v)| v.get("extraVolumeMounts").is_some())
        .collect();
    for (name, component) in &components {
        let volumes: Vec<&str> = list(component, "extraVolumes")
            .into_iter()
            .chain(list(&values, "volumes"))
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        for mount in list(component, "extraVolumeMounts") {
            let volume = mount["name"].as_str().unwrap();
            assert!(
                volumes.contains(&volume),
                "{name}.extraVolumeMounts names a volume {volume} that {name} lacks"
            );
        }
    }

    // The scheduler (KubernetesExecutor: reads the executor template) and the workers (the chart's
    // worker pod template, where the KubernetesPodOperator reads the Windows one) mount the
    // ConfigMap as a directory at that path.
    for name in ["scheduler", "workers"] {
        let component = &values[name];
        let volume = list(component, "extraVolumes")
            .into_iter()
            .find(|v| v["configMap"]["name"] == CONFIG_MAP)
            .unwrap_or_else(|| panic!("{name}.extraVolumes has no configMap {CONFIG_MAP}"));
        assert!(
            volume["configMap"].get("items").is_none(),
            "{name}: all keys of the ConfigMap, not some"
        );
        let mounts: Vec<&Value> = list(component, "extraVolumeMounts")
            .into_iter()
            .filter(|m| m["name"] == volume["name"])
            .collect();
        assert_eq!(mounts.len(), 1, "{name} mounts the ConfigMap once");
        assert_eq!(
            mounts[0]["mountPath"], mount_path,
            "{name} mounts it where the DAG reads it"
        );
        assert!(
            mounts[0].get("subPath").is_none(),
            "{name}: a subPath mount would never see template updates"
        );
        assert_eq!(mounts[0]["readOnly"], true);
    }
}
