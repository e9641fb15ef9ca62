//! What the bench creates: identities from the template example, task pods and their
//! statuses, and the namespace it tears down.

use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::Api;
use kube::api::PostParams;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use winflow::api::WindowsTaskIdentity;
use winflow::names::IDENTITY_LABEL;

use crate::support::{self, TestEnv};
use crate::{CLIENT_CONCURRENCY, run_all, wait_for};

pub const TEMPLATE: &str = "examples/identity-azure-key-vault.yaml";

pub fn template_identity() -> WindowsTaskIdentity {
    let text = std::fs::read_to_string(Path::new(support::REPO).join(TEMPLATE)).unwrap();
    serde_yaml_ng::from_str(&text).unwrap()
}

pub fn identity_named(template: &WindowsTaskIdentity, name: &str) -> WindowsTaskIdentity {
    let mut identity = template.clone();
    identity.metadata.name = Some(name.to_owned());
    identity.spec.service_account.name = name.to_owned();
    identity
}

pub fn identity_name(i: usize) -> String {
    format!("task-identity-{i}")
}

/// The operator's own pod-template ConfigMap for the template identity, unlabelled and unowned:
/// a raw write of the same size as the ConfigMaps the operator writes.
pub fn raw_config_map(template: &WindowsTaskIdentity, namespace: &str) -> ConfigMap {
    let mut identity = identity_named(template, &identity_name(0));
    identity.metadata.namespace = Some(namespace.to_owned());
    let children = winflow::build::children_for(&identity).expect("the template identity is valid");
    let mut config_map = children.pod_templates;
    config_map.metadata = kube::api::ObjectMeta::default();
    config_map
}

/// Writes the converge of one identity needs: its finalizer, each child, one status write.
pub fn minimal_writes(template: &WindowsTaskIdentity, finalizer: bool) -> u64 {
    let children = winflow::build::children_for(&identity_named(template, "x")).expect("valid template");
    children.count() as u64 + 1 + u64::from(finalizer)
}

pub fn is_ready(identity: &WindowsTaskIdentity) -> bool {
    identity
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True" && c.observed_generation == identity.metadata.generation)
}

/// A watch on the namespace's identities, for counting the Ready ones without listing.
pub fn watch_identities(api: Api<WindowsTaskIdentity>) -> (Store<WindowsTaskIdentity>, tokio::task::JoinHandle<()>) {
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()).default_backoff());
    let task = tokio::spawn(stream.for_each(|_| async {}));
    (store, task)
}

pub fn ready_count(store: &Store<WindowsTaskIdentity>) -> usize {
    store.state().iter().filter(|i| is_ready(i)).count()
}

pub fn task_pod(name: &str, identity: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {IDENTITY_LABEL: identity, "dag_id": "payroll_export", "task_id": "upload",
                                              "winflow.io/role": "windows-task"}},
        "spec": {"automountServiceAccountToken": false, "serviceAccountName": identity,
                 "containers": [{"name": "base", "image": "registry.example.com/payroll/export-win:2.0"}]}
    }))
    .unwrap()
}

/// The `step`-th status a kubelet could report for a task pod: running, failed with a logon
/// failure, running again (a retry), succeeded.
pub fn pod_status(step: usize) -> Value {
    let now = jiff::Timestamp::now().to_string();
    let container = |state: Value, ready: bool| {
        json!([{"name": "base", "image": "registry.example.com/payroll/export-win:2.0", "imageID": "",
                "ready": ready, "restartCount": step / 4, "state": state}])
    };
    let (phase, containers) = match step % 4 {
        0 | 2 => ("Running", container(json!({"running": {"startedAt": now}}), true)),
        1 => (
            "Failed",
            container(
                json!({"terminated": {"exitCode": 1, "reason": "Error", "finishedAt": now,
                "message": "Logon failure: the user name or password is incorrect (0x8007052e)"}}),
                false,
            ),
        ),
        _ => (
            "Succeeded",
            container(
                json!({"terminated": {"exitCode": 0, "reason": "Completed", "finishedAt": now}}),
                false,
            ),
        ),
    };
    json!({"status": {"phase": phase, "containerStatuses": containers}})
}

pub async fn create_pods(env: &TestEnv, names: &[(String, String)]) -> Duration {
    let pods: Api<Pod> = env.api();
    let started = Instant::now();
    run_all(names.len(), CLIENT_CONCURRENCY, |i| {
        let pods = pods.clone();
        let (pod, identity) = names[i].clone();
        async move {
            pods.create(&PostParams::default(), &task_pod(&pod, &identity))
                .await
                .map(|_| ())
        }
    })
    .await;
    started.elapsed()
}

/// Deletes the namespace (with the operator still running, so it releases its finalizers)
/// and waits until it is gone; returns how long that took.
pub async fn delete_namespace(env: &TestEnv) -> Duration {
    let namespaces: Api<Namespace> = Api::all(env.client.clone());
    let started = Instant::now();
    namespaces
        .delete(&env.namespace, &Default::default())
        .await
        .expect("namespace deleted");
    wait_for(
        &format!("namespace {} gone", env.namespace),
        Duration::from_secs(1800),
        || async { namespaces.get_opt(&env.namespace).await.ok()?.is_none().then_some(()) },
    )
    .await;
    started.elapsed()
}
