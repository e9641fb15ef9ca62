//! Test harness: one real control plane (etcd, kube-apiserver, kube-controller-manager) per
//! test binary, started by `hack/control-plane.sh` (with `--node`, a worker node too, for the
//! tests that run pods); one namespace and one in-process operator per test.

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use winflow::controller::{Context, ControllerConfig};
use winflow::metrics::Metrics;
use winflow::token::TokenConfig;

pub mod audit;
pub mod figures;
pub mod fleet;
pub mod helm;
pub mod identities;
pub mod kubeconfig;
pub mod oidc;
pub mod process;
pub mod target;
pub mod tools;
pub mod webhook;

/// The repository: this crate is `test-support/` in it.
pub const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

struct ControlPlane {
    kubeconfig: PathBuf,
    /// Started with `--node` (a kubelet runs the pods): the images its containerd got
    /// besides pause.
    node_images: Option<Vec<String>>,
    // Holding the pipe to the script's stdin keeps the control plane up; it stops when this
    // process exits and the pipe closes.
    _process: Child,
}

static CONTROL_PLANE: OnceLock<ControlPlane> = OnceLock::new();

fn control_plane() -> &'static ControlPlane {
    started_control_plane(None)
}

/// The control plane of this test binary, started by the first test to ask; with
/// `node_images`, one with a worker node whose containerd has those images.
fn started_control_plane(node_images: Option<&[&str]>) -> &'static ControlPlane {
    let plane = CONTROL_PLANE.get_or_init(|| {
        let images = node_images.map(|images| images.iter().map(|i| i.to_string()).collect());
        // Started on a plain thread: tests run inside a tokio runtime, which may not block.
        std::thread::spawn(move || start_control_plane(images))
            .join()
            .expect("control plane start")
    });
    if let Some(wanted) = node_images {
        let imported = plane.node_images.as_ref().expect(
            "this test binary's control plane was started without a node: every test of a binary that runs pods must use TestEnv::on_node",
        );
        let missing: Vec<&&str> = wanted.iter().filter(|w| !imported.iter().any(|i| i == *w)).collect();
        assert!(
            missing.is_empty(),
            "this test binary's node was started with the images {imported:?}, without {missing:?}: every test of the binary must ask TestEnv::on_node for the same images"
        );
    }
    plane
}

fn start_control_plane(node_images: Option<Vec<String>>) -> ControlPlane {
    let mut command = Command::new(Path::new(REPO).join("hack/control-plane.sh"));
    if let Some(images) = &node_images {
        command.arg("--node").env("WINFLOW_NODE_IMAGES", images.join(" "));
    }
    let mut process = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("hack/control-plane.sh starts");
    let stdout = process.stdout.take().expect("stdout piped");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read control plane output");
    let kubeconfig = PathBuf::from(
        line.trim()
            .strip_prefix("kubeconfig=")
            .unwrap_or_else(|| panic!("control plane did not start (printed {line:?}); see its log above")),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(install_crds(&kubeconfig));
    ControlPlane {
        kubeconfig,
        node_images,
        _process: process,
    }
}

async fn config_for(kubeconfig: &Path) -> Config {
    let kubeconfig = Kubeconfig::read_from(kubeconfig).expect("kubeconfig readable");
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig valid")
}

async fn client_for(kubeconfig: &Path) -> Client {
    Client::try_from(config_for(kubeconfig).await).expect("client")
}

/// A client as the operator builds its own (`winflow::cluster::api_writes::client`), its writes
/// counted in `metrics`, with a User-Agent of its own: the audit log of the control plane the
/// tests share tells its writes from every other client's by that. Returns the User-Agent.
pub fn counted_client(mut config: Config, metrics: &Metrics) -> (Client, String) {
    static CLIENTS: AtomicUsize = AtomicUsize::new(0);
    let user_agent = format!(
        "winflow-test/{}-{}",
        std::process::id(),
        CLIENTS.fetch_add(1, Ordering::Relaxed)
    );
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_str(&user_agent).unwrap(),
    ));
    let client = winflow::cluster::api_writes::client(config, metrics).expect("client");
    (client, user_agent)
}

/// Installs every CRD in `crds/` as a user would (in the form the server takes, see
/// [`crd_for_server`]) and waits until they are served.
async fn install_crds(kubeconfig: &Path) {
    let client = client_for(kubeconfig).await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut names = Vec::new();
    for entry in std::fs::read_dir(Path::new(REPO).join("crds")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let crd: serde_json::Value = serde::Deserialize::deserialize(document).unwrap();
            let crd = crd_for_server(&client, crd).await;
            let name = crd.metadata.name.clone().unwrap();
            crds.patch(&name, &PatchParams::apply("winflow-tests").force(), &Patch::Apply(&crd))
                .await
                .unwrap();
            names.push(name);
        }
    }
    for name in names {
        wait_until(&format!("CRD {name} established"), Duration::from_secs(30), || {
            let crds = crds.clone();
            let name = name.clone();
            async move {
                let crd = crds.get(&name).await.ok()?;
                let established = crd
                    .status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                established.then_some(())
            }
        })
        .await;
    }
}

/// `crd` (as JSON) in the form this API server takes by server-side apply: servers before
/// 1.25 do not know CEL rules (`x-kubernetes-validations`) and refuse the field, so they are
/// left out there (such a server would not enforce them anyway).
pub async fn crd_for_server(client: &Client, mut crd: serde_json::Value) -> CustomResourceDefinition {
    if !knows_cel_rules(client).await {
        without_cel_rules(&mut crd);
    }
    serde_json::from_value(crd).expect("a CustomResourceDefinition")
}

/// Whether the API server knows CRD validation rules (`x-kubernetes-validations`, from 1.25):
/// older ones refuse the field by server-side apply (and drop it on create or update).
pub async fn knows_cel_rules(client: &Client) -> bool {
    let version = client.apiserver_version().await.expect("the API server's version");
    let minor: u32 = version
        .minor
        .trim_end_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .unwrap_or_else(|_| panic!("server minor version {:?}", version.minor));
    version.major != "1" || minor >= 25
}

/// Removes every `x-kubernetes-validations` from a CRD's schemas.
pub fn without_cel_rules(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.remove("x-kubernetes-validations");
            map.values_mut().for_each(without_cel_rules);
        }
        serde_json::Value::Array(list) => list.iter_mut().for_each(without_cel_rules),
        _ => {}
    }
}

/// The admin kubeconfig of the shared control plane, for processes the tests start.
pub fn kubeconfig_path() -> PathBuf {
    control_plane().kubeconfig.clone()
}

/// The node's containerd socket (`hack/control-plane.sh --node`).
pub fn containerd_socket() -> PathBuf {
    control_plane().kubeconfig.with_file_name("containerd.sock")
}

/// The node's state: the kubelet's root directory is `node/kubelet` under it.
pub fn state_dir() -> PathBuf {
    control_plane().kubeconfig.parent().unwrap().to_path_buf()
}

/// The API server's audit log of write requests (see `hack/control-plane.sh`).
pub fn audit_log_path() -> PathBuf {
    control_plane().kubeconfig.with_file_name("audit.log")
}

/// Kills the shared control plane's API server (etcd and the controller-manager stay up) and
/// waits until it refuses connections. Every test of the binary sees the outage, so only a
/// test binary of its own may call this.
pub async fn stop_api_server(client: &Client) {
    signal_control_plane("USR1");
    wait_until("the API server to stop", Duration::from_secs(30), || async {
        client.apiserver_version().await.is_err().then_some(())
    })
    .await;
}

/// Starts the API server again after `stop_api_server` and waits until it answers.
pub async fn start_api_server(client: &Client) {
    signal_control_plane("USR2");
    wait_until("the API server to answer again", Duration::from_secs(90), || async {
        client.apiserver_version().await.ok().map(|_| ())
    })
    .await;
}

fn signal_control_plane(signal: &str) {
    let pid = control_plane()._process.id().to_string();
    let sent = Command::new("kill")
        .args([&format!("-{signal}"), &pid])
        .status()
        .unwrap();
    assert!(sent.success(), "kill -{signal} {pid}");
}

/// A namespace of its own, an admin client and (once started) an operator for it.
pub struct TestEnv {
    pub client: Client,
    /// The admin client's configuration.
    pub config: Config,
    pub namespace: String,
}

impl TestEnv {
    pub async fn new(test: &str) -> Self {
        Self::in_control_plane(control_plane(), test).await
    }

    /// As `new`, on a control plane with a worker node (one per test binary: every test of
    /// the binary calls this instead of `new`) whose containerd has `images` besides pause:
    /// names hack/image.sh builds (`operator` is a release build of winflow, `busybox` a
    /// small userland for test pods).
    pub async fn on_node(test: &str, images: &[&str]) -> Self {
        Self::in_control_plane(started_control_plane(Some(images)), test).await
    }

    async fn in_control_plane(plane: &ControlPlane, test: &str) -> Self {
        let config = config_for(&plane.kubeconfig).await;
        let client = Client::try_from(config.clone()).expect("client");
        let suffix: String = format!(
            "{:x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        );
        let namespace = format!("{test}-{suffix}").replace('_', "-");
        let ns = Namespace {
            metadata: kube::api::ObjectMeta {
                name: Some(namespace.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("namespace created");
        Self {
            client,
            config,
            namespace,
        }
    }

    /// The configuration of a client that acts as `user` in `groups` (API server
    /// impersonation), to run code under exactly the RBAC rules that user has.
    pub fn config_as(&self, user: &str, groups: &[String]) -> Config {
        let mut config = self.config.clone();
        config.auth_info.impersonate = Some(user.to_owned());
        config.auth_info.impersonate_groups = Some(groups.to_vec());
        config
    }

    /// A client that acts as `user` in `groups` (see `config_as`).
    pub async fn client_as(&self, user: &str, groups: &[String]) -> Client {
        Client::try_from(self.config_as(user, groups)).expect("client")
    }

    /// The configuration of a client that acts as service account `name` of this namespace,
    /// with the groups the API server gives service accounts.
    pub fn config_as_service_account(&self, name: &str) -> Config {
        let ns = &self.namespace;
        let groups = [
            "system:serviceaccounts".to_owned(),
            format!("system:serviceaccounts:{ns}"),
            "system:authenticated".to_owned(),
        ];
        self.config_as(&format!("system:serviceaccount:{ns}:{name}"), &groups)
    }

    /// A client that acts as service account `name` of this namespace.
    pub async fn client_as_service_account(&self, name: &str) -> Client {
        Client::try_from(self.config_as_service_account(name)).expect("client")
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Starts an operator that watches only this test's namespace.
    pub fn start_operator(&self, resync: Duration) -> Operator {
        self.start_operator_as(self.config.clone(), resync)
    }

    /// Starts an operator for this namespace whose client is made from `config` (as the
    /// operator makes its own: every write counted).
    pub fn start_operator_as(&self, config: Config, resync: Duration) -> Operator {
        self.start_operator_with(config, resync, test_token_config())
    }

    /// Starts an operator for this namespace with the given token settings.
    pub fn start_operator_with(&self, client_config: Config, resync: Duration, token: TokenConfig) -> Operator {
        let config = ControllerConfig {
            namespace: Some(self.namespace.clone()),
            resync_period: resync,
            retry_period: Duration::from_secs(2),
            concurrency: 4,
            instance: format!("test-{}", self.namespace),
            token,
        };
        let metrics = Metrics::default();
        let (client, user_agent) = counted_client(client_config, &metrics);
        let ctx = Arc::new(Context::new(client, metrics.clone(), config));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let readiness = winflow::admin::Readiness::expecting(winflow::controller::READINESS_PARTS);
        let task = tokio::spawn(winflow::controller::run_all(ctx, readiness.clone(), async move {
            let _ = stopped.await;
        }));
        Operator {
            metrics,
            user_agent,
            readiness,
            stop: Some(stop),
            task,
        }
    }
}

/// The API server's service-account token issuer and its signing keys (JWKS): what an OpenID
/// provider is configured to trust for workload identity federation.
pub async fn service_account_issuer(client: &Client) -> (String, serde_json::Value) {
    let get = |path: &str| http::Request::get(path).body(Vec::new()).unwrap();
    let discovery = client
        .request_text(get("/.well-known/openid-configuration"))
        .await
        .unwrap();
    let discovery: serde_json::Value = serde_json::from_str(&discovery).unwrap();
    let jwks = client.request_text(get("/openid/v1/jwks")).await.unwrap();
    let issuer = discovery["issuer"].as_str().unwrap().to_owned();
    (issuer, serde_json::from_str(&jwks).unwrap())
}

/// Token settings for tests: the OIDC provider runs on loopback over plain http, and failed
/// refreshes are retried after 1 s, doubling up to 8 s, so backoff shows within seconds.
pub fn test_token_config() -> TokenConfig {
    TokenConfig {
        oidc: winflow::token::OidcSettings {
            allow_insecure_loopback: true,
            ..Default::default()
        },
        retry: winflow::token::RetryPolicy {
            first: Duration::from_secs(1),
            max: Duration::from_secs(8),
        },
    }
}

/// An operator running inside the test process.
pub struct Operator {
    pub metrics: Metrics,
    /// Its client's User-Agent, by which the audit log tells its writes apart.
    pub user_agent: String,
    /// What `/readyz` reports.
    pub readiness: winflow::admin::Readiness,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Operator {
    /// Gracefully stops it and waits until it has.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .expect("operator stops")
            .unwrap();
    }

    /// Stops it at once, mid-reconcile, as a crash would.
    pub fn kill(self) {
        self.task.abort();
    }

    /// Writes counted by the operator's own metrics, for all kinds and verbs.
    pub fn total_writes(&self) -> u64 {
        metric_sum(&self.metrics, "winflow_api_writes_total{")
    }

    /// The writes the API server recorded from this operator, once they agree with its own
    /// count (see `audit::agreeing`).
    pub async fn audited_writes(&self) -> audit::Agreed {
        audit::agreeing(&audit_log_path(), &self.metrics, &self.user_agent).await
    }
}

/// The sum of the samples whose line starts with `prefix` (a name, or a name and labels).
pub fn metric_sum(metrics: &Metrics, prefix: &str) -> u64 {
    process::sum_samples(&metrics.encode(), prefix)
}

static LOGS: OnceLock<Arc<std::sync::Mutex<Vec<u8>>>> = OnceLock::new();

/// Everything the in-process operators logged so far (JSON lines), captured once per binary.
pub fn captured_logs() -> String {
    let buffer = LOGS.get().expect("capture_logs() was called");
    String::from_utf8_lossy(&buffer.lock().unwrap()).into_owned()
}

/// Routes the operators' logs into a buffer that tests can read.
pub fn capture_logs() {
    LOGS.get_or_init(|| {
        let buffer = Arc::new(std::sync::Mutex::new(Vec::new()));
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_env_filter(tracing_subscriber::EnvFilter::new("winflow=info"))
            .with_writer(move || BufferWriter(writer.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("no other subscriber");
        buffer
    });
}

struct BufferWriter(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for BufferWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Creates Secret `name` in the test's namespace holding an OIDC client secret under key
/// `client-secret`, as the tests' `spec.token.clientSecretRef` names it.
pub async fn create_client_secret(env: &TestEnv, name: &str, value: &str) {
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "stringData": {"client-secret": value}
    }))
    .unwrap();
    env.api::<k8s_openapi::api::core::v1::Secret>()
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
}

/// Creates every object of a YAML file of the repository (as `kubectl create -f` would) in
/// the test's namespace.
pub async fn apply_file(env: &TestEnv, path: &str) {
    use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
    let text = std::fs::read_to_string(Path::new(REPO).join(path)).unwrap();
    for document in serde_yaml_ng::Deserializer::from_str(&text) {
        let object: DynamicObject = serde::Deserialize::deserialize(document).unwrap();
        let types = object.types.clone().expect("apiVersion and kind");
        let (group, version) = types.api_version.split_once('/').unwrap_or(("", &types.api_version));
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, &types.kind));
        let api: Api<DynamicObject> = Api::namespaced_with(env.client.clone(), &env.namespace, &resource);
        api.create(&PostParams::default(), &object)
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
    }
}

/// Resources whose status carries Kubernetes conditions.
pub trait Conditioned:
    kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
{
    fn conditions(&self) -> &[Condition];
}

impl Conditioned for winflow::api::WindowsTaskIdentity {
    fn conditions(&self) -> &[Condition] {
        self.status
            .as_ref()
            .map(|s| s.conditions.as_slice())
            .unwrap_or_default()
    }
}

impl Conditioned for winflow::api::WindowsShare {
    fn conditions(&self) -> &[Condition] {
        self.status
            .as_ref()
            .map(|s| s.conditions.as_slice())
            .unwrap_or_default()
    }
}

pub fn condition<'a, K: Conditioned>(object: &'a K, type_: &str) -> Option<&'a Condition> {
    object.conditions().iter().find(|c| c.type_ == type_)
}

/// Waits until the object's condition `type_` has `status` (and `reason`, when given) for the
/// object's current generation, and returns the object.
pub async fn wait_for_condition<K: Conditioned>(
    env: &TestEnv,
    name: &str,
    type_: &str,
    status: &str,
    reason: Option<&str>,
) -> K {
    let api = env.api::<K>();
    let what = format!(
        "{} {name} {type_}={status} {}",
        K::kind(&()),
        reason.unwrap_or_default()
    );
    wait_until(&what, Duration::from_secs(90), || async {
        let object = api.get(name).await.ok()?;
        let c = condition(&object, type_)?;
        let matches = c.status == status && reason.is_none_or(|r| c.reason == r);
        (matches && c.observed_generation == object.meta().generation).then_some(object)
    })
    .await
}

/// Polls `probe` until it returns `Some`, panicking with `what` after `timeout`.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sets the test namespace's `winflow.io/enforce` label to `value` (removes it with `None`).
pub async fn set_enforce_label(env: &TestEnv, value: Option<&str>) {
    let label = serde_json::json!({"metadata": {"labels": {"winflow.io/enforce": value}}});
    Api::<Namespace>::all(env.client.clone())
        .patch(&env.namespace, &PatchParams::default(), &Patch::Merge(label))
        .await
        .unwrap();
}

/// Creates the pod `pod` (JSON) in `namespace`; a refusal comes back as the API server's text.
pub async fn create_pod(
    client: &Client,
    namespace: &str,
    pod: serde_json::Value,
) -> Result<k8s_openapi::api::core::v1::Pod, String> {
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(pod).unwrap();
    Api::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &pod)
        .await
        .map_err(|e| e.to_string())
}

/// A task pod of `identity` for `dag_id` and `task_id`, as the KubernetesPodOperator builds it.
pub fn task_pod(name: &str, identity: &str, dag_id: &str, task_id: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {
            "winflow.io/identity": identity, "dag_id": dag_id, "task_id": task_id, "kubernetes_pod_operator": "True"}},
        "spec": {"automountServiceAccountToken": false, "restartPolicy": "Never",
                 "containers": [{"name": "base", "image": "registry.example.com/payroll/export-win:2.0"}]}
    })
}

/// Adds the ephemeral container `name` (image busybox, with `extra` fields) to `pod` through
/// `PUT pods/<pod>/ephemeralcontainers`, in the shape the server says it takes there (its
/// discovery's kind for the subresource): an `EphemeralContainers` object up to Kubernetes
/// 1.21, the whole `Pod` from 1.22.
pub async fn add_ephemeral_container(
    client: &Client,
    namespace: &str,
    pod: &str,
    name: &str,
    extra: serde_json::Value,
) -> Result<(), String> {
    let kind = ephemeral_containers_kind(client).await?;
    let path = format!("/api/v1/namespaces/{namespace}/pods/{pod}/ephemeralcontainers");
    let current: serde_json::Value = client
        .request(http::Request::get(&path).body(Vec::new()).unwrap())
        .await
        .map_err(|e| e.to_string())?;
    let mut container = serde_json::json!({"name": name, "image": "busybox",
        "imagePullPolicy": "IfNotPresent", "terminationMessagePolicy": "File"});
    for (key, value) in extra.as_object().unwrap() {
        container[key] = value.clone();
    }
    let body = with_ephemeral_container(&kind, current, container)?;
    let request = http::Request::put(&path)
        .header("Content-Type", "application/json")
        .body(serde_json::to_vec(&body).unwrap())
        .unwrap();
    client
        .request::<serde_json::Value>(request)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The kind the server takes at `pods/ephemeralcontainers`, from its discovery of `/api/v1`.
async fn ephemeral_containers_kind(client: &Client) -> Result<String, String> {
    let resources = client.list_core_api_resources("v1").await.map_err(|e| e.to_string())?;
    resources
        .resources
        .into_iter()
        .find(|r| r.name == "pods/ephemeralcontainers")
        .map(|r| r.kind)
        .ok_or_else(|| "the server serves no pods/ephemeralcontainers".to_string())
}

/// `current` (what GET on the subresource returned) with `container` appended to its
/// ephemeral containers, where a subresource of `kind` keeps them.
pub fn with_ephemeral_container(
    kind: &str,
    mut current: serde_json::Value,
    container: serde_json::Value,
) -> Result<serde_json::Value, String> {
    let list = match kind {
        "EphemeralContainers" => &mut current["ephemeralContainers"],
        "Pod" => &mut current["spec"]["ephemeralContainers"],
        other => return Err(format!("pods/ephemeralcontainers of kind {other} is not known here")),
    };
    let mut containers = list.as_array().cloned().unwrap_or_default();
    containers.push(container);
    *list = serde_json::Value::Array(containers);
    Ok(current)
}

/// What the Airflow chart grants its scheduler and workers in their namespace (its
/// pod-launcher Role: create and watch pods, read their logs and events), bound to the
/// service accounts `accounts` of the test's namespace. `use` on an identity comes from its
/// `spec.access.creators`, never from this.
pub async fn grant_pod_launcher(env: &TestEnv, accounts: &[&str]) {
    let role: k8s_openapi::api::rbac::v1::Role = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "airflow-pod-launcher"},
        "rules": [
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "get", "list", "watch", "delete", "patch"]},
            {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
            {"apiGroups": [""], "resources": ["events"], "verbs": ["list"]}
        ]
    }))
    .unwrap();
    env.api().create(&PostParams::default(), &role).await.unwrap();
    let subjects: Vec<serde_json::Value> = accounts
        .iter()
        .map(|name| serde_json::json!({"kind": "ServiceAccount", "name": name, "namespace": env.namespace}))
        .collect();
    let binding: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "airflow-pod-launcher"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "airflow-pod-launcher"},
        "subjects": subjects
    }))
    .unwrap();
    env.api().create(&PostParams::default(), &binding).await.unwrap();
}
