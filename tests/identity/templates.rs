//! The pod templates ConfigMap, read by Airflow's own pod builders.

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use serde_json::Value;

use crate::support::{self, TestEnv};
use crate::{RESYNC, create, create_example_share, example, template, wait_ready};

/// Python of a virtualenv with Airflow's cncf.kubernetes provider (see hack/airflow-venv.sh).
fn airflow_python() -> String {
    support::tools::tool("WINFLOW_AIRFLOW_PYTHON", "airflow-venv.sh")
        .display()
        .to_string()
}

#[tokio::test]
async fn pod_templates_are_pods_that_airflow_builds_from() {
    let env = TestEnv::new("templates").await;
    let operator = env.start_operator(RESYNC);
    create_example_share(&env).await;
    create(&env, &example("identity-domain-joined.yaml")).await.unwrap();
    let identity = wait_ready(&env, "finance-reports").await;
    let status = identity.status.unwrap().pod_template.unwrap();
    assert_eq!(status.config_map_name, "finance-reports-pod-templates");
    let config_map = env.api::<ConfigMap>().get(&status.config_map_name).await.unwrap();
    assert_eq!(config_map.owner_references()[0].kind, "WindowsTaskIdentity");

    let windows = template(&config_map, &status.windows_key);
    assert!(windows.metadata.name.is_some());
    let labels = windows.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["winflow.io/identity"], "finance-reports");
    assert_eq!(labels["winflow.io/role"], "windows-task");
    let spec = windows.spec.as_ref().unwrap();
    assert_eq!(spec.containers[0].name, "base");
    assert_eq!(
        spec.containers[0].image.as_deref(),
        Some("registry.example.com/finance/reports-win:1.4")
    );
    assert_eq!(spec.os.as_ref().unwrap().name, "windows");
    assert_eq!(spec.node_selector.as_ref().unwrap()["kubernetes.io/os"], "windows");
    assert_eq!(spec.service_account_name.as_deref(), Some("finance-reports"));
    assert_eq!(spec.tolerations.as_ref().unwrap().len(), 1);
    let options = spec
        .security_context
        .as_ref()
        .unwrap()
        .windows_options
        .as_ref()
        .unwrap();
    assert_eq!(
        options.gmsa_credential_spec_name,
        Some(format!("{}.finance-reports", env.namespace))
    );
    assert_eq!(options.run_as_user_name.as_deref(), Some("ContainerUser"));

    let executor = template(&config_map, &status.executor_key);
    assert!(executor.metadata.name.is_some());
    assert_eq!(
        executor.metadata.labels.as_ref().unwrap()["winflow.io/role"],
        "executor"
    );
    let spec = executor.spec.as_ref().unwrap();
    assert_eq!(spec.containers[0].name, "base");
    let env_names: Vec<&str> = spec.containers[0]
        .env
        .as_ref()
        .unwrap()
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    for name in ["WINFLOW_IDENTITY", "WINFLOW_GMSA_ACCOUNT", "WINFLOW_DOMAIN"] {
        assert!(env_names.contains(&name), "executor template lacks {name}");
    }

    // Airflow's own pod builders (KubernetesPodOperator and KubernetesExecutor) read the files.
    let dir = tempfile::tempdir().unwrap();
    let windows_path = dir.path().join(&status.windows_key);
    let executor_path = dir.path().join(&status.executor_key);
    std::fs::write(&windows_path, &config_map.data.as_ref().unwrap()[&status.windows_key]).unwrap();
    std::fs::write(&executor_path, &config_map.data.as_ref().unwrap()[&status.executor_key]).unwrap();
    let out = std::process::Command::new(airflow_python())
        .arg(format!("{}/tests/airflow/build_pods.py", support::REPO))
        .arg("--windows-template")
        .arg(&windows_path)
        .arg("--executor-template")
        .arg(&executor_path)
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "Airflow refused the templates");
    let pods: Value = serde_json::from_slice(&out.stdout).unwrap();
    let kpo = &pods["kpo_pod"];
    assert_eq!(kpo["metadata"]["labels"]["winflow.io/identity"], "finance-reports");
    assert_eq!(kpo["metadata"]["labels"]["kubernetes_pod_operator"], "True");
    assert_eq!(kpo["spec"]["os"]["name"], "windows");
    assert_eq!(kpo["spec"]["serviceAccountName"], "finance-reports");
    assert_eq!(
        kpo["spec"]["securityContext"]["windowsOptions"]["gmsaCredentialSpecName"],
        format!("{}.finance-reports", env.namespace)
    );
    assert_eq!(kpo["spec"]["containers"][0]["name"], "base");
    assert_eq!(
        kpo["spec"]["containers"][0]["image"],
        "mcr.microsoft.com/windows/servercore:ltsc2022"
    );
    let executor_pod = &pods["executor_pod"];
    assert_eq!(
        executor_pod["metadata"]["labels"]["winflow.io/identity"],
        "finance-reports"
    );
    assert_eq!(executor_pod["metadata"]["labels"]["winflow.io/role"], "executor");
    assert_eq!(executor_pod["metadata"]["annotations"]["dag_id"], "finance_reports");
    assert_eq!(executor_pod["spec"]["serviceAccountName"], "finance-reports");
    operator.stop().await;
}
