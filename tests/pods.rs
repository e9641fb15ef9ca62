//! Task pods back on their identity: counts by phase, the last failure with its category,
//! and TasksHealthy. There is no kubelet: the test writes pod status as a kubelet would.

use winflow_test_support as support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use support::{TestEnv, wait_until};
use winflow::api::WindowsTaskIdentity;

const TIMEOUT: Duration = Duration::from_secs(60);

/// A task pod as Airflow's executor labels and annotates it.
async fn create_task_pod(env: &TestEnv, name: &str, task_id: &str) {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "labels": {"winflow.io/identity": "payroll-export", "dag_id": "payroll_export", "task_id": task_id, "kubernetes_executor": "True"},
            "annotations": {"dag_id": "payroll_export", "task_id": task_id}
        },
        "spec": {"automountServiceAccountToken": false, "containers": [{"name": "base", "image": "registry.example.com/payroll/export-win:2.0"}]}
    }))
    .unwrap();
    // The namespace's default service account appears shortly after the namespace.
    wait_until("pod created", TIMEOUT, || async {
        env.api::<Pod>().create(&PostParams::default(), &pod).await.ok()
    })
    .await;
}

/// Writes the pod's status through the pods/status subresource, as the kubelet does.
async fn set_phase(env: &TestEnv, name: &str, phase: &str, terminated: Option<(&str, &str)>) {
    let mut status = json!({"phase": phase});
    if let Some((reason, message)) = terminated {
        status["containerStatuses"] = json!([{
            "name": "base", "image": "registry.example.com/payroll/export-win:2.0", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 1, "reason": reason, "message": message,
                                     "startedAt": jiff::Timestamp::now().to_string(), "finishedAt": jiff::Timestamp::now().to_string()}}
        }]);
    }
    env.api::<Pod>()
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .unwrap();
}

async fn wait_pods(env: &TestEnv, check: impl Fn(&WindowsTaskIdentity) -> bool) -> WindowsTaskIdentity {
    let api = env.api::<WindowsTaskIdentity>();
    wait_until("pod status on the identity", TIMEOUT, || async {
        let identity = api.get("payroll-export").await.ok()?;
        check(&identity).then_some(identity)
    })
    .await
}

#[tokio::test]
async fn task_pods_are_counted_and_failures_explained() {
    let env = TestEnv::new("pods").await;
    let operator = env.start_operator(Duration::from_secs(300));
    support::apply_file(&env, "examples/identity-azure-key-vault.yaml").await;
    let _: WindowsTaskIdentity = support::wait_for_condition(&env, "payroll-export", "Ready", "True", None).await;

    create_task_pod(&env, "export-1", "export_ledger").await;
    create_task_pod(&env, "export-2", "export_ledger").await;
    create_task_pod(&env, "upload-1", "upload").await;
    set_phase(&env, "export-1", "Running", None).await;
    set_phase(&env, "export-2", "Succeeded", None).await;
    let identity = wait_pods(&env, |i| {
        let pods = i.status.as_ref().and_then(|s| s.pods.as_ref());
        pods.is_some_and(|p| (p.running, p.pending, p.succeeded, p.failed) == (1, 1, 1, 0))
    })
    .await;
    assert_eq!(support::condition(&identity, "TasksHealthy").unwrap().status, "True");

    // A logon failure: counted, explained, and TasksHealthy turns false; Ready does not.
    set_phase(
        &env,
        "upload-1",
        "Failed",
        Some((
            "Error",
            "Logon failure: unknown user name or bad password. (0x8007052E)",
        )),
    )
    .await;
    let identity = wait_pods(&env, |i| {
        i.status
            .as_ref()
            .and_then(|s| s.pods.as_ref())
            .is_some_and(|p| p.failed == 1)
    })
    .await;
    let pods = identity.status.as_ref().unwrap().pods.clone().unwrap();
    assert_eq!((pods.running, pods.pending, pods.succeeded, pods.failed), (1, 0, 1, 1));
    let failure = pods.last_failure.unwrap();
    assert_eq!(failure.pod, "upload-1");
    assert_eq!(
        (failure.dag_id.as_deref(), failure.task_id.as_deref()),
        (Some("payroll_export"), Some("upload"))
    );
    assert_eq!(failure.category, "LogonFailure");
    assert_eq!(failure.reason.as_deref(), Some("Error"));
    assert!(failure.message.unwrap().contains("0x8007052E"));
    let healthy: WindowsTaskIdentity = support::wait_for_condition(
        &env,
        "payroll-export",
        "TasksHealthy",
        "False",
        Some("AuthenticationFailures"),
    )
    .await;
    assert!(
        support::condition(&healthy, "TasksHealthy")
            .unwrap()
            .message
            .contains("upload-1")
    );
    assert_eq!(
        support::condition(&healthy, "Ready").unwrap().status,
        "True",
        "Ready summarises configuration only"
    );

    // A failure of the task's own code is reported but is not an identity problem.
    // The API server keeps times to the second; "after" must be a later second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    create_task_pod(&env, "export-3", "export_ledger").await;
    set_phase(&env, "export-3", "Failed", Some(("Error", "KeyError: 'ledger_date'"))).await;
    let identity = wait_pods(&env, |i| {
        i.status
            .as_ref()
            .and_then(|s| s.pods.as_ref())
            .and_then(|p| p.last_failure.as_ref())
            .is_some_and(|f| f.pod == "export-3")
    })
    .await;
    let failure = identity.status.unwrap().pods.unwrap().last_failure.unwrap();
    assert_eq!(failure.category, "Other");
    let still: WindowsTaskIdentity =
        support::wait_for_condition(&env, "payroll-export", "TasksHealthy", "False", None).await;
    assert!(
        support::condition(&still, "TasksHealthy")
            .unwrap()
            .message
            .contains("upload-1"),
        "a code failure does not heal"
    );

    // A task that succeeds after the logon failure turns TasksHealthy true again.
    // The API server keeps times to the second; "after" must be a later second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    create_task_pod(&env, "upload-2", "upload").await;
    let finished = jiff::Timestamp::now().to_string();
    let succeeded = json!({"status": {"phase": "Succeeded", "containerStatuses": [{
        "name": "base", "image": "registry.example.com/payroll/export-win:2.0", "imageID": "", "ready": false, "restartCount": 0,
        "state": {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": finished, "finishedAt": finished}}}]}});
    env.api::<Pod>()
        .patch_status("upload-2", &PatchParams::default(), &Patch::Merge(&succeeded))
        .await
        .unwrap();
    let _: WindowsTaskIdentity =
        support::wait_for_condition(&env, "payroll-export", "TasksHealthy", "True", None).await;
    operator.stop().await;
}
