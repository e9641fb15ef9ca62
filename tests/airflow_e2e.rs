//! A real Apache Airflow 3 runs real DAGs through winflow on the local cluster with a node:
//! PostgreSQL, the API server, the scheduler with the KubernetesExecutor and the DAG processor
//! (hack/airflow.sh), worker pods from the Airflow image (hack/image.sh airflow) on the node,
//! and winflow's webhook admitting or denying what the scheduler creates as its own service
//! account. Every outcome is read from Airflow's own records (task instance state, try
//! number, task log, through its REST API) and from the identity's status.
//!
//! The DAGs are tests/airflow/e2e/dags/payroll_e2e.py:
//! 1. `payroll_export.upload` runs as the identity, sees `WINFLOW_*` and its token, succeeds;
//! 2. `payroll_cleanup.upload`: a DAG id the identity does not allow; the task fails, nothing
//!    ran as the identity, and the scheduler logged winflow's denial;
//! 3. `payroll_backfill_token.upload` asks for more token validity than is left: the first
//!    try is denied with the time a fresh token is due, a later try succeeds;
//! 4. `payroll_export.export_ledger`: a chart worker creates the identity's Windows pod with
//!    the KubernetesPodOperator; it is admitted with the gMSA and waits for a Windows node
//!    until `startup_timeout_seconds` fails the task.

use winflow_test_support as support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use kube::api::{ListParams, PostParams};
use serde_json::{Value, json};
use support::figures::Figures;
use support::oidc::{OidcProvider, ProviderConfig};
use support::{REPO, TestEnv, wait_until};
use winflow::api::WindowsTaskIdentity;

const IDENTITY: &str = "payroll-export";
const SCHEDULER: &str = "airflow-scheduler";
const WORKER: &str = "airflow-worker";
const CLIENT_SECRET: &str = "payroll-client-secret-for-tests";
/// Lifetime of the provider's tokens and the identity's renewal margin: a token is renewed
/// 15 s before it expires, so one that is 30 s old has less than the 60 s that
/// `payroll_backfill_token` asks for until the renewal (scenario 3).
const TOKEN_SECONDS: u64 = 90;
const RENEW_BEFORE: &str = "15s";

#[tokio::test]
async fn a_real_airflow_runs_its_dags_through_winflow() {
    let mut figures = Figures::new("airflow-e2e");
    // The operator runs in this process and the worker pods run the Airflow image imported
    // below: the node needs no other image (it always gets pause).
    let env = TestEnv::on_node("airflow-e2e", &[]).await;
    let ns = env.namespace.clone();
    let image = import_airflow_image().await;

    let provider = OidcProvider::start(ProviderConfig::with_client(TOKEN_SECONDS, "payroll", CLIENT_SECRET, "")).await;
    let _webhook = support::webhook::start_webhook(&env).await;
    let _operator = env.start_operator(Duration::from_secs(300));
    airflow_accounts(&env).await;
    create_identity(&env, provider.issuer()).await;

    let scheduler_kubeconfig = support::kubeconfig::service_account_kubeconfig(&env, SCHEDULER).await;
    let airflow = Airflow::start(&ns, &scheduler_kubeconfig, &image).await;
    let api = airflow.api().await;

    // 1 and 4: the allowed DAG.
    let started = Instant::now();
    let run = api.trigger("payroll_export").await;
    let upload = api.wait_for_task(&run, "upload", &["success", "failed"]).await;
    let log = api.log(&run, "upload", 1).await;
    assert_eq!(upload["state"], "success", "upload failed; its log:\n{log}");
    assert_eq!(upload["try_number"], 1);
    let seen = e2e_report(&log);
    assert_eq!(seen["identity"], IDENTITY, "{log}");
    assert_eq!(seen["service_account"], IDENTITY, "{log}");
    assert_eq!(seen["gmsa_account"], "svc-payroll", "{log}");
    assert!(seen["token_valid_seconds"].as_i64().unwrap() > 0, "{log}");
    assert!(!log.contains(&provider_token(&env).await), "a task log holds the token");
    let pod = task_pod(&env, "payroll_export", "upload").await;
    assert_eq!(
        pod.spec.as_ref().unwrap().service_account_name.as_deref(),
        Some(IDENTITY)
    );
    wait_until(
        "status.pods.succeeded counts upload",
        Duration::from_secs(60),
        || async {
            let identity = env.api::<WindowsTaskIdentity>().get(IDENTITY).await.ok()?;
            (identity.status?.pods?.succeeded >= 1).then_some(())
        },
    )
    .await;
    figures.add(format!(
        "1. run {run}: upload success on try 1 in {:.0} s as {}, token valid for {} s more",
        started.elapsed().as_secs_f64(),
        seen["service_account"],
        seen["token_valid_seconds"]
    ));

    let ledger = api.wait_for_task(&run, "export_ledger", &["success", "failed"]).await;
    let ledger_log = api.log(&run, "export_ledger", 1).await;
    assert_eq!(ledger["state"], "failed", "{ledger_log}");
    let windows = task_pod(&env, "payroll_export", "export_ledger").await;
    let windows_spec = windows.spec.as_ref().unwrap();
    assert_eq!(
        windows_spec.node_selector.as_ref().unwrap()["kubernetes.io/os"],
        "windows"
    );
    assert_eq!(
        windows_spec
            .security_context
            .as_ref()
            .and_then(|s| s.windows_options.as_ref())
            .and_then(|w| w.gmsa_credential_spec_name.as_deref()),
        Some(format!("{ns}.{IDENTITY}").as_str())
    );
    assert_eq!(windows.status.as_ref().unwrap().phase.as_deref(), Some("Pending"));
    let waited = ledger_log
        .lines()
        .find(|l| l.contains("0/1 nodes are available") && l.contains("didn't match"))
        .unwrap_or_else(|| panic!("the task log does not say why the pod waited:\n{ledger_log}"));
    assert!(
        ledger_log.contains("Waiting up to 30s to get the POD scheduled"),
        "{ledger_log}"
    );
    figures.add(format!(
        "4. run {run}: export_ledger failed on try 1 after its Windows pod {} (gMSA {ns}.{IDENTITY}) stayed Pending; log: {}",
        windows.metadata.name.as_deref().unwrap_or_default(),
        waited.trim()
    ));

    // 2: a DAG the identity does not allow.
    let started = Instant::now();
    let run = api.trigger("payroll_cleanup").await;
    let cleanup = api.wait_for_task(&run, "upload", &["failed"]).await;
    assert_eq!(cleanup["try_number"], 1);
    let pods = env
        .api::<Pod>()
        .list(&ListParams::default().labels("dag_id=payroll_cleanup"))
        .await
        .unwrap();
    assert!(pods.items.is_empty(), "a pod of payroll_cleanup exists");
    let denial = airflow
        .scheduler_line("winflow's denial", |l| {
            l.contains("payroll_cleanup") && l.contains("may not use identity")
        })
        .await;
    figures.add(format!(
        "2. run {run}: upload failed on try 1 in {:.0} s, no pod made; scheduler: {}",
        started.elapsed().as_secs_f64(),
        denial_message(&denial)
    ));

    // 3: a token that would not last as long as the task asks.
    let renewal = token_too_short_for_a_minute(&env).await;
    let started = Instant::now();
    let run = api.trigger("payroll_backfill_token").await;
    let backfill = api.wait_for_task(&run, "upload", &["success", "failed"]).await;
    let tries = backfill["try_number"].as_i64().unwrap();
    let log = api.log(&run, "upload", tries).await;
    assert_eq!(backfill["state"], "success", "try {tries}: {log}");
    assert!(tries > 1, "the first try was admitted although the token was too short");
    let first = airflow
        .scheduler_line("the token denial", |l| {
            l.contains("sooner than the 1m this pod needs") && l.contains("a fresh token is due at")
        })
        .await;
    figures.add(format!(
        "3. run {run}: upload success on try {tries} in {:.0} s (token renewed at {renewal}); try 1: {}",
        started.elapsed().as_secs_f64(),
        denial_message(&first)
    ));
}

/// winflow's message in a scheduler log line (the API server's answer is quoted in it).
fn denial_message(line: &str) -> String {
    line.split_once("denied the request: ")
        .map(|(_, rest)| rest.split("\\\",\\\"code").next().unwrap_or(rest))
        .map(|m| m.split("\",\"code").next().unwrap_or(m).replace("\\\"", "\""))
        .unwrap_or_else(|| line.to_owned())
}

/// `hack/image.sh --import` of the Airflow worker image into the node's containerd.
async fn import_airflow_image() -> String {
    let socket = support::containerd_socket();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("bash")
            .arg(Path::new(REPO).join("hack/image.sh"))
            .arg("--import")
            .arg(socket)
            .arg("airflow")
            .stderr(Stdio::inherit())
            .output()
            .expect("hack/image.sh runs")
    })
    .await
    .unwrap();
    assert!(output.status.success(), "hack/image.sh --import airflow failed");
    let line = String::from_utf8(output.stdout).unwrap();
    line.trim()
        .strip_prefix("airflow=")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("hack/image.sh printed {line:?}"))
        .to_owned()
}

/// The Airflow chart's service accounts and what it grants them in their namespace (the
/// pod-launcher Role); `use` on the identity comes from `spec.access.creators`.
async fn airflow_accounts(env: &TestEnv) {
    for name in [SCHEDULER, WORKER] {
        let account: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        env.api().create(&PostParams::default(), &account).await.unwrap();
    }
    support::grant_pod_launcher(env, &[SCHEDULER, WORKER]).await;
}

async fn create_identity(env: &TestEnv, issuer: &str) {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "payroll-oidc"},
        "stringData": {"client-secret": CLIENT_SECRET}
    }))
    .unwrap();
    env.api().create(&PostParams::default(), &secret).await.unwrap();
    // The Key Vault example: its dag and task ids are the DAGs', its creators the scheduler
    // and the worker.
    let identity = support::identities::identity_with_token(
        IDENTITY,
        json!({"issuerUrl": issuer, "clientId": "payroll",
               "clientSecretRef": {"name": "payroll-oidc", "key": "client-secret"},
               "renewBefore": RENEW_BEFORE, "minValidity": "10s"}),
    );
    let creators = identity.spec.access.as_ref().map(|a| &a.creators);
    assert_eq!(
        serde_json::to_value(creators).unwrap(),
        json!([{"kind": "ServiceAccount", "name": SCHEDULER}, {"kind": "ServiceAccount", "name": WORKER}]),
        "the example's creators are this test's Airflow service accounts"
    );
    env.api().create(&PostParams::default(), &identity).await.unwrap();
    let _: WindowsTaskIdentity = support::wait_for_condition(env, IDENTITY, "Ready", "True", None).await;
}

/// The identity's current token (to check that no log holds it).
async fn provider_token(env: &TestEnv) -> String {
    let identity = env.api::<WindowsTaskIdentity>().get(IDENTITY).await.unwrap();
    let name = identity.status.unwrap().token.unwrap().secret_name.unwrap();
    let secret = env.api::<Secret>().get(&name).await.unwrap();
    String::from_utf8(secret.data.unwrap()["access_token"].0.clone()).unwrap()
}

/// Waits until the identity's token has less than a minute left and its renewal is at least
/// 10 s away, so that a pod asking for a minute is denied; the renewal time.
async fn token_too_short_for_a_minute(env: &TestEnv) -> String {
    wait_until(
        "a token with less than 60 s left",
        Duration::from_secs(2 * TOKEN_SECONDS),
        || async {
            let token = env
                .api::<WindowsTaskIdentity>()
                .get(IDENTITY)
                .await
                .ok()?
                .status?
                .token?;
            let now = jiff::Timestamp::now();
            let expires: jiff::Timestamp = token.expires_at.as_deref()?.parse().ok()?;
            let renewal: jiff::Timestamp = token.renewal_time.as_deref()?.parse().ok()?;
            let left = expires.duration_since(now).as_secs();
            let until_renewal = renewal.duration_since(now).as_secs();
            (left < 55 && until_renewal > 10).then(|| renewal.to_string())
        },
    )
    .await
}

/// The pod Airflow made for `task_id` of `dag_id`.
async fn task_pod(env: &TestEnv, dag_id: &str, task_id: &str) -> Pod {
    let selector = format!("dag_id={dag_id},task_id={task_id}");
    let pods = env.api::<Pod>();
    wait_until(
        &format!("a pod for {dag_id}.{task_id}"),
        Duration::from_secs(30),
        || async {
            let list = pods.list(&ListParams::default().labels(&selector)).await.ok()?;
            // The Windows pod also carries the labels of the worker that made it; pick by role.
            list.items.into_iter().max_by_key(|p| {
                p.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("winflow.io/role"))
                    .cloned()
            })
        },
    )
    .await
}

/// The JSON line the DAG's task prints (never the token itself).
fn e2e_report(log: &str) -> Value {
    let line = log
        .lines()
        .find_map(|l| l.split_once("winflow-e2e: ").map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("the task printed no report:\n{log}"));
    let end = line.rfind('}').map_or(line.len(), |i| i + 1);
    serde_json::from_str(&line[..end]).unwrap_or_else(|e| panic!("report {line:?}: {e}"))
}

/// hack/airflow.sh, stopped (with everything it started) when dropped.
struct Airflow {
    url: String,
    home: PathBuf,
    _process: Child,
}

impl Airflow {
    async fn start(namespace: &str, kubeconfig: &Path, image: &str) -> Airflow {
        let args: Vec<String> = vec![
            "--kubeconfig".into(),
            kubeconfig.display().to_string(),
            "--namespace".into(),
            namespace.into(),
            "--dags".into(),
            Path::new(REPO).join("tests/airflow/e2e/dags").display().to_string(),
            "--image".into(),
            image.into(),
        ];
        tokio::task::spawn_blocking(move || {
            let mut process = Command::new(Path::new(REPO).join("hack/airflow.sh"))
                .args(&args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("hack/airflow.sh starts");
            let mut line = String::new();
            BufReader::new(process.stdout.take().unwrap())
                .read_line(&mut line)
                .unwrap();
            let (url, home) = line
                .trim()
                .strip_prefix("airflow=")
                .and_then(|rest| rest.split_once(' '))
                .unwrap_or_else(|| panic!("Airflow did not start (printed {line:?}); see its log above"));
            Airflow {
                url: url.to_owned(),
                home: PathBuf::from(home),
                _process: process,
            }
        })
        .await
        .unwrap()
    }

    /// The first line of the scheduler's log that `wanted` accepts, once there is one.
    async fn scheduler_line(&self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        let log = self.home.with_file_name("scheduler.log");
        let wanted = &wanted;
        wait_until(
            &format!("the scheduler to log {what}"),
            Duration::from_secs(30),
            || async {
                let text = std::fs::read_to_string(&log).ok()?;
                text.lines().find(|l| wanted(l)).map(str::to_owned)
            },
        )
        .await
    }

    /// A REST client with a token of the simple auth manager (every user is an admin here).
    async fn api(&self) -> AirflowApi {
        let http = reqwest::Client::new();
        let token: Value = http
            .get(format!("{}/auth/token", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        AirflowApi {
            url: self.url.clone(),
            token: token["access_token"].as_str().unwrap().to_owned(),
            http,
        }
    }
}

struct AirflowApi {
    url: String,
    token: String,
    http: reqwest::Client,
}

impl AirflowApi {
    async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .header("Accept", "application/json")
            .send()
            .await
            .unwrap()
    }

    /// Triggers a run of `dag_id` once the DAG processor has parsed it; the run id.
    async fn trigger(&self, dag_id: &str) -> String {
        wait_until(&format!("DAG {dag_id} parsed"), Duration::from_secs(120), || async {
            self.get(&format!("/api/v2/dags/{dag_id}"))
                .await
                .status()
                .is_success()
                .then_some(())
        })
        .await;
        let response = self
            .http
            .post(format!("{}/api/v2/dags/{dag_id}/dagRuns", self.url))
            .bearer_auth(&self.token)
            .json(&json!({"logical_date": null}))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert!(status.is_success(), "trigger {dag_id}: {status} {body}");
        format!("{dag_id}/{}", body["dag_run_id"].as_str().unwrap())
    }

    /// The task instance once its state is one of `states`.
    async fn wait_for_task(&self, run: &str, task_id: &str, states: &[&str]) -> Value {
        let (dag_id, run_id) = run.split_once('/').unwrap();
        let path = format!("/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}");
        wait_until(
            &format!("{run} {task_id} in {states:?}"),
            Duration::from_secs(300),
            || async {
                let instance: Value = self.get(&path).await.json().await.ok()?;
                let state = instance["state"].as_str()?;
                states.contains(&state).then_some(instance)
            },
        )
        .await
    }

    /// The task log of try `try_number`, as Airflow shows it.
    async fn log(&self, run: &str, task_id: &str, try_number: i64) -> String {
        let (dag_id, run_id) = run.split_once('/').unwrap();
        let response = self
            .get(&format!(
                "/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}?full_content=true"
            ))
            .await;
        let body: Value = response.json().await.unwrap_or(Value::Null);
        match &body["content"] {
            Value::String(text) => text.clone(),
            Value::Array(events) => events
                .iter()
                .map(|e| e["event"].as_str().map_or_else(|| e.to_string(), str::to_owned))
                .collect::<Vec<_>>()
                .join("\n"),
            other => other.to_string(),
        }
    }
}
