//! winflow as users run it: `helm install` of charts/winflow on the local cluster with a real
//! node (`hack/control-plane.sh --node`), the operator serving from two pods of its own image
//! (hack/image.sh, imported into the node's containerd), nothing but the image changed.
//!
//! One story, in order, because the release is cluster-wide (its webhooks see every pod):
//! both replicas Ready under the restricted security context; the managed certificates in
//! the Secret, the node's emptyDir and every webhook configuration; a pod created with
//! kubectl mutated through the Service and a denial that reaches kubectl with winflow's
//! message; a Windows task pod Pending with the scheduler's reason and counted; the leader
//! pod deleted under a stream of pod creates; `helm upgrade` under the same stream; an
//! executor pod of winflow's template running on the node; `helm uninstall` leaving nothing
//! that blocks pod creation. The figures (takeover time, creates and failed admissions) are
//! printed and written to target/in-cluster-figures.txt.

use winflow_test_support as support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::{Api, Client};
use serde_json::{Value, json};
use support::figures::Figures;
use support::helm::helm_async;
use support::oidc::{ClientConfig, OidcProvider, ProviderConfig};
use support::{REPO, TestEnv, wait_until};
use winflow::api::WindowsTaskIdentity;

const RELEASE: &str = "winflow";
/// The chart's full name for release `winflow` (the release name contains the chart's).
const FULLNAME: &str = "winflow";
const TEST_IMAGE: &str = "winflow.local/busybox:test";
/// What the node's containerd gets (hack/image.sh): the chart runs the operator's image, the
/// task pods `TEST_IMAGE`.
const NODE_IMAGES: &[&str] = &["operator", "busybox"];
/// The host's address on the pod bridge (hack/node.sh): what pods reach the host by.
const NODE_BRIDGE_ADDRESS: &str = "10.244.0.1";
const CLIENT_SECRET: &str = "payroll-client-secret-for-tests";
const IDENTITY: &str = "payroll-export";
/// The identity of the stream of pod creates; it has no token, so its pods are admitted
/// whatever happens to `IDENTITY`'s.
const STREAM_IDENTITY: &str = "nightly-export";
/// The Airflow service accounts `spec.access.creators` names (as examples/airflow/ does).
const SCHEDULER: &str = "airflow-scheduler";
const WORKER: &str = "airflow-worker";
/// Another team's worker in the same namespace: it may create pods, but not as `IDENTITY`.
const OTHER_WORKER: &str = "reports-worker";

#[tokio::test]
async fn the_chart_runs_the_operator_on_a_real_node() {
    let system = TestEnv::on_node("winflow-system", NODE_IMAGES).await;
    let tasks = TestEnv::on_node("airflow", NODE_IMAGES).await;
    let mut figures = Figures::new("in-cluster");
    let story = Instant::now();
    // The identity's OpenID provider, on a private CA, where the operator's pods reach it.
    let provider = OidcProvider::start_https(ProviderConfig {
        access_token_ttl_seconds: 3600,
        clients: vec![ClientConfig {
            client_id: "payroll".to_owned(),
            client_secret: CLIENT_SECRET.to_owned(),
            scope: String::new(),
        }],
        host: Some(NODE_BRIDGE_ADDRESS.to_owned()),
        ..Default::default()
    })
    .await;

    let (repository, tag) = operator_image();
    let started = Instant::now();
    install(&system, &repository, &tag).await;
    let operators = replicas_ready(&system, &format!("{repository}:{tag}")).await;
    figures.add(format!(
        "helm install to 2 Ready replicas: {:.1} s ({})",
        started.elapsed().as_secs_f64(),
        operators.join(", ")
    ));
    managed_certificates(&system, &operators).await;

    let mut phase = Instant::now();
    let mut lap = |figures: &mut Figures, what: &str| {
        figures.add(format!("{what}: {:.1} s", phase.elapsed().as_secs_f64()));
        phase = Instant::now();
    };
    lap(&mut figures, "phase: certificates checked");
    // This Airflow's accounts and another team's worker may create pods here.
    support::grant_pod_launcher(&tasks, &[SCHEDULER, WORKER, OTHER_WORKER]).await;
    create_identity(&tasks, IDENTITY, &[]).await;
    create_identity(&tasks, STREAM_IDENTITY, &[]).await;
    lap(&mut figures, "phase: identities Ready");
    webhook_through_the_service(&tasks, &mut figures).await;
    windows_pod_waits_for_a_windows_node(&tasks).await;
    lap(&mut figures, "phase: webhook through the Service, Windows pod Pending");
    leader_failover(&system, &tasks, &mut figures).await;
    lap(&mut figures, "phase: leader failover");
    token_from_an_untrusted_issuer(&tasks, &provider).await;
    upgrade_under_load(&system, &tasks, provider.ca_pem().unwrap(), &mut figures).await;
    token_issued_once_trusted(&tasks).await;
    lap(&mut figures, "phase: helm upgrade with the issuer's CA");
    executor_pod_runs_on_the_node(&tasks, &mut figures).await;
    lap(&mut figures, "phase: executor pod");
    uninstall(&system, &tasks).await;
    lap(&mut figures, "phase: helm uninstall");

    figures.add(format!("whole story: {:.0} s", story.elapsed().as_secs_f64()));
}

// ---------------------------------------------------------------------------------------------
// install and the replicas

/// Installs the release with the local image.
async fn install(system: &TestEnv, repository: &str, tag: &str) {
    let args = [
        "install",
        RELEASE,
        "charts/winflow",
        "--namespace",
        &system.namespace,
        "--set",
        &format!("image.repository={repository}"),
        "--set",
        &format!("image.tag={tag}"),
        // Imported into the node's containerd, never pulled.
        "--set",
        "image.pullPolicy=Never",
        "--wait",
        "--timeout",
        "3m",
    ];
    let mut args = strings(&args);
    // Helm 4 installs crds/ by server-side apply, which servers before 1.25 refuse for the
    // CEL rules they do not know; created the classic way, they drop them (charts/winflow/README.md).
    if !support::knows_cel_rules(&system.client).await {
        args.push("--server-side=false".to_owned());
    }
    helm_async(args, Some(support::kubeconfig_path())).await;
}

/// The operator image's repository and tag, as hack/image.sh names it.
fn operator_image() -> (String, String) {
    let output = Command::new("bash")
        .arg(Path::new(REPO).join("hack/image.sh"))
        .arg("operator")
        .stderr(Stdio::inherit())
        .output()
        .expect("hack/image.sh runs");
    assert!(output.status.success(), "hack/image.sh operator failed");
    let line = String::from_utf8(output.stdout).unwrap();
    let reference = line
        .trim()
        .strip_prefix("operator=")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("hack/image.sh printed {line:?}"));
    let (repository, tag) = reference.rsplit_once(':').unwrap();
    (repository.to_owned(), tag.to_owned())
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

fn operator_selector() -> ListParams {
    ListParams::default().labels(&format!(
        "app.kubernetes.io/name=winflow,app.kubernetes.io/instance={RELEASE}"
    ))
}

fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Both replicas Ready (their probes pass) on the node, from the image, under the chart's
/// restricted security context, and never restarted; their names.
async fn replicas_ready(system: &TestEnv, image: &str) -> Vec<String> {
    let pods: Api<Pod> = system.api();
    let ready = wait_until("two Ready operator pods", Duration::from_secs(120), || async {
        let list = pods.list(&operator_selector()).await.ok()?;
        let ready: Vec<Pod> = list.items.into_iter().filter(is_ready).collect();
        (ready.len() == 2).then_some(ready)
    })
    .await;
    for pod in &ready {
        let name = pod.metadata.name.clone().unwrap();
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("winflow-node"), "{name}");
        let container = &spec.containers[0];
        assert_eq!(container.image.as_deref(), Some(image), "{name}");
        let security = container.security_context.as_ref().unwrap();
        assert_eq!(security.read_only_root_filesystem, Some(true), "{name}");
        assert_eq!(security.run_as_non_root, Some(true), "{name}");
        assert_eq!(security.allow_privilege_escalation, Some(false), "{name}");
        let status = &pod.status.as_ref().unwrap().container_statuses.as_ref().unwrap()[0];
        assert_eq!(status.restart_count, 0, "{name} restarted: {status:?}");
        assert!(status.ready, "{name}: {status:?}");
    }
    ready.into_iter().map(|p| p.metadata.name.unwrap()).collect()
}

/// The operator's own CA and serving certificate: in the Secret, written by each replica to
/// the certificate directory the chart mounts (a memory-backed emptyDir, read here from the
/// node's kubelet directory), and the CA in every webhook configuration of the release.
async fn managed_certificates(system: &TestEnv, operators: &[String]) {
    let secrets: Api<Secret> = system.api();
    let secret = secrets.get(&format!("{FULLNAME}-webhook-certs")).await.unwrap();
    let data = secret.data.unwrap();
    let ca = &data["ca.crt"].0;
    let certificate = &data["tls.crt"].0;
    assert!(String::from_utf8_lossy(ca).contains("BEGIN CERTIFICATE"));
    assert!(data.contains_key("tls.key"));

    let pods: Api<Pod> = system.api();
    for name in operators {
        let pod = pods.get(name).await.unwrap();
        let uid = pod.metadata.uid.unwrap();
        let dir = support::state_dir()
            .join("node/kubelet/pods")
            .join(&uid)
            .join("volumes/kubernetes.io~empty-dir/webhook-certs");
        let written = std::fs::read(dir.join("tls.crt"))
            .unwrap_or_else(|e| panic!("{name} wrote no certificate to {}: {e}", dir.display()));
        assert_eq!(&written, certificate, "{name}: the served certificate is the Secret's");
        assert!(dir.join("tls.key").exists(), "{name}: no key in {}", dir.display());
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
        let mount = mounts
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(dir.to_str().unwrap()))
            .unwrap_or_else(|| panic!("{} is not a mount", dir.display()));
        assert!(mount.starts_with("tmpfs "), "the key stays in memory: {mount}");
    }

    let (mutating, validating) = release_webhooks(&system.client).await;
    let mut bundles = Vec::new();
    for configuration in &mutating {
        for hook in configuration.webhooks.iter().flatten() {
            bundles.push((hook.name.clone(), hook.client_config.ca_bundle.clone()));
        }
    }
    for configuration in &validating {
        for hook in configuration.webhooks.iter().flatten() {
            bundles.push((hook.name.clone(), hook.client_config.ca_bundle.clone()));
        }
    }
    assert!(bundles.len() >= 4, "the release's webhooks: {bundles:?}");
    for (name, bundle) in bundles {
        assert_eq!(
            bundle.map(|b| b.0).as_ref(),
            Some(ca),
            "{name} trusts the operator's CA"
        );
    }
}

/// The release's webhook configurations (by the chart's instance label).
async fn release_webhooks(client: &Client) -> (Vec<MutatingWebhookConfiguration>, Vec<ValidatingWebhookConfiguration>) {
    let selector = ListParams::default().labels(&format!("app.kubernetes.io/instance={RELEASE}"));
    let mutating = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .list(&selector)
        .await
        .unwrap();
    let validating = Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .list(&selector)
        .await
        .unwrap();
    (mutating.items, validating.items)
}

// ---------------------------------------------------------------------------------------------
// identities and pods

/// An identity of the domain-joined kind whose Airflow service accounts may use it, with
/// the test image as its worker image; `extra` is merged into its spec.
async fn create_identity(tasks: &TestEnv, name: &str, extra: &[(&str, Value)]) -> WindowsTaskIdentity {
    let mut identity = json!({
        "apiVersion": "winflow.io/v1alpha1", "kind": "WindowsTaskIdentity",
        "metadata": {"name": name},
        "spec": {
            "domain": {"dnsName": "corp.example.com", "netbiosName": "CORP",
                       "sid": "S-1-5-21-3623811015-3361044348-30300820",
                       "guid": "244818ae-87ca-4fcd-92ec-e79e5252348a"},
            "gmsa": {"account": "svc-payroll"},
            "serviceAccount": {"name": name},
            "airflow": {"dagIds": ["payroll_export"], "taskIds": ["export_*", "upload"],
                        "image": "registry.example.com/payroll/export-win:2.0",
                        "workerImage": TEST_IMAGE},
            "access": {"creators": [{"kind": "ServiceAccount", "name": SCHEDULER},
                                    {"kind": "ServiceAccount", "name": WORKER}]}
        }
    });
    for (key, value) in extra {
        identity["spec"][key] = value.clone();
    }
    let identity: WindowsTaskIdentity = serde_json::from_value(identity).unwrap();
    tasks
        .api::<WindowsTaskIdentity>()
        .create(&PostParams::default(), &identity)
        .await
        .unwrap();
    support::wait_for_condition(tasks, name, "Ready", "True", None).await
}

/// A Windows task pod of `identity`, as the KubernetesPodOperator builds it.
fn windows_task_pod(name: &str, identity: &str) -> Value {
    support::task_pod(name, identity, "payroll_export", "export_ledger")
}

/// kubectl (Debian's kubernetes-client) against the cluster, `stdin` on its standard input.
async fn kubectl(args: &[&str], stdin: &str) -> std::process::Output {
    let args = strings(args);
    let stdin = stdin.to_owned();
    let kubeconfig = support::kubeconfig_path();
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new("kubectl")
            .args(&args)
            .env("KUBECONFIG", kubeconfig)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl runs (Debian's kubernetes-client; .ci/run installs it)");
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), stdin.as_bytes()).unwrap();
        drop(child.stdin.take());
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap()
}

/// The API server calls the webhook through its Service (the operator's pods, by their
/// ClusterIP): a pod created with kubectl comes back mutated, and a creator without `use`
/// gets winflow's denial in kubectl's error.
async fn webhook_through_the_service(tasks: &TestEnv, figures: &mut Figures) {
    let ns = &tasks.namespace;
    let pod = windows_task_pod("export-ledger-1", IDENTITY);
    let output = kubectl(
        &["create", "--namespace", ns, "-f", "-", "-o", "json"],
        &pod.to_string(),
    )
    .await;
    assert!(
        output.status.success(),
        "kubectl create: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let created: Value = serde_json::from_slice(&output.stdout).unwrap();
    let spec = &created["spec"];
    assert_eq!(
        spec["securityContext"]["windowsOptions"]["gmsaCredentialSpecName"],
        format!("{ns}.{IDENTITY}"),
        "{spec}"
    );
    assert_eq!(spec["serviceAccountName"], IDENTITY);
    assert_eq!(spec["nodeSelector"]["kubernetes.io/os"], "windows");

    let intruder = format!("system:serviceaccount:{ns}:{OTHER_WORKER}");
    let output = kubectl(
        &["create", "--namespace", ns, "--as", &intruder, "-f", "-"],
        &windows_task_pod("export-ledger-intruder", IDENTITY).to_string(),
    )
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the intruder's pod was admitted");
    assert!(
        stderr.contains("admission webhook \"pods.winflow.io\" denied the request")
            && stderr.contains(&intruder)
            && stderr.contains("spec.access.creators")
            && stderr.contains(&format!("winflow-{IDENTITY}-use")),
        "kubectl shows winflow's denial: {stderr}"
    );
    figures.add(format!(
        "kubectl create as {intruder}: {}",
        stderr.lines().next().unwrap_or_default()
    ));
}

/// There is no Windows node: the admitted Windows pod stays Pending with the scheduler's
/// reason, and the identity counts it.
async fn windows_pod_waits_for_a_windows_node(tasks: &TestEnv) {
    let pods: Api<Pod> = tasks.api();
    let message = wait_until(
        "the scheduler's reason on the Windows pod",
        Duration::from_secs(60),
        || async {
            let pod = pods.get("export-ledger-1").await.ok()?;
            let status = pod.status?;
            assert_eq!(status.phase.as_deref(), Some("Pending"));
            let scheduled = status.conditions?.into_iter().find(|c| c.type_ == "PodScheduled")?;
            (scheduled.status == "False" && scheduled.reason.as_deref() == Some("Unschedulable"))
                .then_some(scheduled.message.unwrap_or_default())
        },
    )
    .await;
    // Kubernetes 1.20 words a nodeSelector miss as "node affinity", later ones as "node selector".
    assert!(
        message.contains("1 node(s) didn't match")
            && (message.contains("node affinity") || message.contains("node selector")),
        "{message}"
    );
    wait_until(
        "status.pods.pending counts the Windows pod",
        Duration::from_secs(60),
        || async {
            let identity = tasks.api::<WindowsTaskIdentity>().get(IDENTITY).await.ok()?;
            let pending = identity.status?.pods?.pending;
            (pending >= 1).then_some(())
        },
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// a stream of pod creates

/// Pod creates at a steady rate (server-side dry runs, so that nothing piles up; the API
/// server still calls every webhook), as Airflow's worker, each of which must be admitted.
struct CreateStream {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(u32, Vec<String>)>,
}

impl CreateStream {
    async fn start(tasks: &TestEnv) -> CreateStream {
        let client = tasks.client_as_service_account(WORKER).await;
        let pods: Api<Pod> = Api::namespaced(client, &tasks.namespace);
        let pod: Pod = serde_json::from_value(windows_task_pod("stream", STREAM_IDENTITY)).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let (mut creates, mut failures) = (0, Vec::new());
                let params = PostParams {
                    dry_run: true,
                    ..PostParams::default()
                };
                while !stop.load(Ordering::Relaxed) {
                    creates += 1;
                    if let Err(e) = pods.create(&params, &pod).await {
                        failures.push(e.to_string());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                (creates, failures)
            }
        });
        CreateStream { stop, task }
    }

    /// Creates made and the errors of those that failed.
    async fn stop(self) -> (u32, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

// ---------------------------------------------------------------------------------------------
// leader election

async fn lease_holder(system: &TestEnv) -> Option<String> {
    let lease = system.api::<Lease>().get(FULLNAME).await.ok()?;
    lease.spec?.holder_identity
}

/// The leader's pod deleted: the other replica takes over and converges an identity created
/// right after, while every pod create of the stream is admitted.
async fn leader_failover(system: &TestEnv, tasks: &TestEnv, figures: &mut Figures) {
    let leader = wait_until("a Lease holder", Duration::from_secs(60), || lease_holder(system)).await;
    let stream = CreateStream::start(tasks).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let deleted = Instant::now();
    system
        .api::<Pod>()
        .delete(&leader, &DeleteParams::default())
        .await
        .unwrap();
    let successor = wait_until("another replica to take the Lease", Duration::from_secs(60), || async {
        lease_holder(system).await.filter(|holder| *holder != leader)
    })
    .await;
    let takeover = deleted.elapsed();
    create_identity(tasks, "after-failover", &[]).await;
    let converged = deleted.elapsed();
    wait_until(
        "the Deployment back at 2 Ready replicas",
        Duration::from_secs(120),
        || async {
            let pods = system.api::<Pod>().list(&operator_selector()).await.ok()?;
            (pods.items.iter().filter(|p| is_ready(p)).count() == 2).then_some(())
        },
    )
    .await;
    let (creates, failures) = stream.stop().await;

    figures.add(format!(
        "leader {leader} deleted: {successor} took the Lease after {:.1} s, an identity created then was Ready after {:.1} s; {creates} pod creates, {} failed admissions",
        takeover.as_secs_f64(),
        converged.as_secs_f64(),
        failures.len()
    ));
    assert_ne!(successor, leader);
    assert!(creates > 20, "the stream ran: {creates} creates");
    assert!(
        failures.is_empty(),
        "admissions failed while the leader changed: {failures:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// helm upgrade

/// A changed value that rolls the Deployment (the OIDC issuer's CA, which the operator reads
/// at start), under the stream: no admission fails, and the Service keeps the Ready replicas
/// the PodDisruptionBudget asks for.
async fn upgrade_under_load(system: &TestEnv, tasks: &TestEnv, ca_pem: &str, figures: &mut Figures) {
    let ca_file = Path::new(env!("CARGO_TARGET_TMPDIR")).join("in-cluster-oidc-ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let deployments: Api<Deployment> = system.api();
    let before = deployments.get(FULLNAME).await.unwrap().metadata.generation;
    let pdb = pod_disruption_budget(system).await;
    let max_unavailable = pdb["spec"]["maxUnavailable"].as_i64().unwrap();

    let stream = CreateStream::start(tasks).await;
    let watching = Arc::new(AtomicBool::new(true));
    let fewest_ready = tokio::spawn({
        let (pods, watching) = (system.api::<Pod>(), watching.clone());
        async move {
            let mut fewest = usize::MAX;
            while watching.load(Ordering::Relaxed) {
                if let Ok(list) = pods.list(&operator_selector()).await {
                    fewest = fewest.min(list.items.iter().filter(|p| is_ready(p)).count());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            fewest
        }
    });
    let started = Instant::now();
    let args = [
        "upgrade",
        RELEASE,
        "charts/winflow",
        "--namespace",
        &system.namespace,
        "--reuse-values",
        "--set-file",
        &format!("token.caBundle={}", ca_file.display()),
        "--wait",
        "--timeout",
        "5m",
    ];
    helm_async(strings(&args), Some(support::kubeconfig_path())).await;
    let rolled = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    watching.store(false, Ordering::Relaxed);
    let fewest = fewest_ready.await.unwrap();
    let (creates, failures) = stream.stop().await;

    let after = deployments.get(FULLNAME).await.unwrap();
    figures.add(format!(
        "helm upgrade rolled the Deployment in {:.1} s; at least {fewest} of 2 replicas Ready throughout (PodDisruptionBudget {} maxUnavailable {max_unavailable}); {creates} pod creates, {} failed admissions",
        rolled.as_secs_f64(),
        pdb["apiVersion"].as_str().unwrap(),
        failures.len()
    ));
    assert!(
        after.metadata.generation > before,
        "the upgrade changed the pod template"
    );
    let status = after.status.unwrap();
    assert_eq!(status.updated_replicas, Some(2));
    assert_eq!(status.ready_replicas, Some(2));
    assert!(
        fewest as i64 >= 2 - max_unavailable,
        "{fewest} Ready replicas at one time, below what the PodDisruptionBudget allows"
    );
    assert!(creates > 20, "the stream ran: {creates} creates");
    assert!(
        failures.is_empty(),
        "admissions failed during helm upgrade: {failures:#?}"
    );
}

/// The release's PodDisruptionBudget, in the API version the server serves (policy/v1 from
/// Kubernetes 1.21, policy/v1beta1 before: the chart asked helm for the server's capabilities).
async fn pod_disruption_budget(system: &TestEnv) -> Value {
    let (group, version) = if system.client.list_api_group_resources("policy/v1").await.is_ok() {
        ("policy", "v1")
    } else {
        ("policy", "v1beta1")
    };
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, "PodDisruptionBudget"));
    let api: Api<DynamicObject> = Api::namespaced_with(system.client.clone(), &system.namespace, &resource);
    let pdb = api.get(FULLNAME).await.unwrap();
    let mut value = serde_json::to_value(pdb).unwrap();
    value["apiVersion"] = json!(format!("{group}/{version}"));
    value
}

// ---------------------------------------------------------------------------------------------
// the identity's token

/// The identity gets a token from the provider; the operator does not trust its CA yet.
async fn token_from_an_untrusted_issuer(tasks: &TestEnv, provider: &OidcProvider) {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "payroll-oidc"},
        "stringData": {"client-secret": CLIENT_SECRET}
    }))
    .unwrap();
    tasks
        .api::<Secret>()
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let token = json!({"spec": {"token": {
        "issuerUrl": provider.issuer(), "clientId": "payroll",
        "clientSecretRef": {"name": "payroll-oidc", "key": "client-secret"}
    }}});
    tasks
        .api::<WindowsTaskIdentity>()
        .patch(IDENTITY, &PatchParams::default(), &Patch::Merge(token))
        .await
        .unwrap();
    let _: WindowsTaskIdentity =
        support::wait_for_condition(tasks, IDENTITY, "TokenReady", "False", Some("CertificateNotTrusted")).await;
}

/// Once the operator's new pods trust the CA, the token is issued into its Secret.
async fn token_issued_once_trusted(tasks: &TestEnv) {
    let identity: WindowsTaskIdentity =
        support::wait_for_condition(tasks, IDENTITY, "TokenReady", "True", Some("TokenIssued")).await;
    let token = identity.status.unwrap().token.unwrap();
    assert!(token.expires_at.is_some(), "{token:?}");
}

// ---------------------------------------------------------------------------------------------
// an executor pod on the node

/// The command of the test executor: what a task needs from its identity, printed without
/// any token (only whether the token file is there and matches the environment, and the
/// service account's name read from the claims of its token).
const EXECUTOR_CHECK: &str = r#"
echo "identity=$WINFLOW_IDENTITY"
echo "account=$WINFLOW_GMSA_ACCOUNT"
echo "domain=$WINFLOW_DOMAIN"
sa=/var/run/secrets/kubernetes.io/serviceaccount
echo "namespace=$(cat $sa/namespace)"
claims=$(cut -d. -f2 < $sa/token | tr '_-' '/+')
while [ $(( ${#claims} % 4 )) -ne 0 ]; do claims="$claims="; done
echo "$claims" | base64 -d 2>/dev/null | grep -o '"kubernetes.io/serviceaccount/service-account.name":"[^"]*"' | sed 's/.*:"\(.*\)"/service_account=\1/'
if [ -n "$WINFLOW_TOKEN_FILE" ]; then
  test -s "$WINFLOW_TOKEN_FILE" && echo "token_file=present"
  [ "$(cat "$WINFLOW_TOKEN_FILE")" = "$WINFLOW_ACCESS_TOKEN" ] && echo "token_env=same"
  echo "expires_at=$WINFLOW_TOKEN_EXPIRES_AT"
fi
"#;

/// The executor pod of winflow's template, as Airflow's KubernetesExecutor builds it (the
/// template's fields, its own name and the task's labels), created by the scheduler's
/// service account: it runs on the node, sees what winflow gave it, and its outcome reaches
/// `status.pods` without any test writing pod status.
async fn executor_pod_runs_on_the_node(tasks: &TestEnv, figures: &mut Figures) {
    let templates = tasks
        .api::<ConfigMap>()
        .get(&format!("{IDENTITY}-pod-templates"))
        .await
        .unwrap();
    let mut pod: Value = serde_yaml_ng::from_str(&templates.data.unwrap()["executor-pod-template.yaml"]).unwrap();
    pod["metadata"]["name"] = json!("payroll-export-upload-1");
    for (key, value) in [
        ("dag_id", "payroll_export"),
        ("task_id", "upload"),
        ("kubernetes_executor", "True"),
        ("try_number", "1"),
    ] {
        pod["metadata"]["labels"][key] = json!(value);
    }
    pod["spec"]["containers"][0]["command"] = json!(["sh", "-c", EXECUTOR_CHECK]);

    let scheduler = tasks.client_as_service_account(SCHEDULER).await;
    let started = Instant::now();
    let created = support::create_pod(&scheduler, &tasks.namespace, pod)
        .await
        .unwrap_or_else(|e| panic!("the scheduler's executor pod was refused: {e}"));
    let name = created.metadata.name.unwrap();
    let pods: Api<Pod> = tasks.api();
    let phase = wait_until("the executor pod to finish", Duration::from_secs(120), || async {
        let phase = pods.get(&name).await.ok()?.status?.phase?;
        matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase)
    })
    .await;
    let log = pods.logs(&name, &Default::default()).await.unwrap();
    assert_eq!(phase, "Succeeded", "the executor pod failed; its output:\n{log}");
    let seen = |key: &str| {
        log.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(str::to_owned)
    };
    assert_eq!(seen("identity").as_deref(), Some(IDENTITY), "{log}");
    assert_eq!(seen("account").as_deref(), Some("svc-payroll"), "{log}");
    assert_eq!(seen("domain").as_deref(), Some("corp.example.com"), "{log}");
    assert_eq!(seen("namespace").as_deref(), Some(tasks.namespace.as_str()), "{log}");
    assert_eq!(seen("service_account").as_deref(), Some(IDENTITY), "{log}");
    assert_eq!(seen("token_file").as_deref(), Some("present"), "{log}");
    assert_eq!(seen("token_env").as_deref(), Some("same"), "{log}");
    let expires_at = seen("expires_at").unwrap_or_default();
    let identity = tasks.api::<WindowsTaskIdentity>().get(IDENTITY).await.unwrap();
    let status_expiry = identity.status.unwrap().token.unwrap().expires_at.unwrap();
    let parse = |text: &str| -> jiff::Timestamp {
        text.parse()
            .unwrap_or_else(|e| panic!("expiry {text:?} is no RFC 3339 time: {e}"))
    };
    let seen_expiry = parse(&expires_at);
    assert_eq!(
        seen_expiry,
        parse(&status_expiry),
        "the pod's token is the one status.token describes"
    );
    assert!(
        seen_expiry > jiff::Timestamp::now(),
        "the pod's token expired at {seen_expiry}"
    );

    let succeeded = wait_until(
        "status.pods.succeeded counts the executor pod",
        Duration::from_secs(60),
        || async {
            let identity = tasks.api::<WindowsTaskIdentity>().get(IDENTITY).await.ok()?;
            let succeeded = identity.status?.pods?.succeeded;
            (succeeded >= 1).then_some(succeeded)
        },
    )
    .await;
    figures.add(format!(
        "executor pod {name} ran on the node and Succeeded in {:.1} s; status.pods.succeeded={succeeded}",
        started.elapsed().as_secs_f64()
    ));
}

// ---------------------------------------------------------------------------------------------
// helm uninstall

/// Nothing of the release is left that the API server would call: labelled pods are
/// created again (the webhooks went with the release, not left failing closed).
async fn uninstall(system: &TestEnv, tasks: &TestEnv) {
    let args = ["uninstall", RELEASE, "--namespace", &system.namespace, "--wait"];
    helm_async(strings(&args), Some(support::kubeconfig_path())).await;
    let (mutating, validating) = release_webhooks(&system.client).await;
    assert!(mutating.is_empty() && validating.is_empty());
    let all_hooks: Vec<String> = Api::<ValidatingWebhookConfiguration>::all(system.client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .chain(
            Api::<MutatingWebhookConfiguration>::all(system.client.clone())
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .into_iter()
                .map(|m| ValidatingWebhookConfiguration {
                    metadata: m.metadata,
                    webhooks: None,
                }),
        )
        .filter_map(|c| c.metadata.name)
        .collect();
    assert!(
        !all_hooks.iter().any(|name| name.contains(FULLNAME)),
        "webhook configurations left: {all_hooks:?}"
    );

    let worker: Client = tasks.client_as_service_account(WORKER).await;
    support::create_pod(&worker, &tasks.namespace, windows_task_pod("after-uninstall", IDENTITY))
        .await
        .unwrap_or_else(|e| panic!("a labelled pod is still blocked after helm uninstall: {e}"));
    // The Deployment's pods go by garbage collection, after their shutdown delay.
    let pods = system.api::<Pod>();
    wait_until("the operator pods to be gone", Duration::from_secs(90), || async {
        pods.list(&operator_selector())
            .await
            .ok()
            .filter(|left| left.items.is_empty())
            .map(|_| ())
    })
    .await;
}
