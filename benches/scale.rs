//! Scale benchmark (issue 7): convergence time of N identities against the API server's raw
//! write rate, the operator's writes per identity, after a restart and under a burst of pod
//! status updates, and its memory with many identities and task pods. The operator runs as a
//! separate release process (`winflow run --namespace <ns>`) on a local control plane.
//! Prints a table and writes target/bench/scale.json; nothing is asserted but the setup.
//! Run: `cargo bench --bench scale`. Sizes can be made smaller for a quick run:
//! `WINFLOW_BENCH_IDENTITIES=100` (comma-separated list, default `100,1000`),
//! `WINFLOW_BENCH_CONCURRENCY=4,16` (operator `--concurrency` per row; the first is the
//! default), `WINFLOW_BENCH_RAW_WRITES=1000`, `WINFLOW_BENCH_BURST_PODS=100`,
//! `WINFLOW_BENCH_BURST_UPDATES=1000`, `WINFLOW_BENCH_SUSTAINED_SECONDS=20`, `WINFLOW_BENCH_PODS=10000`,
//! `WINFLOW_BENCH_LOG_LEVEL=info` (the operators' logs go to target/bench/scale-logs/).
//! `WINFLOW_BENCH_PROFILE_SECONDS=20` also takes a CPU profile of the API server while the
//! identities converge (target/bench/apiserver-<row>.pprof) and, where Go is installed,
//! prints the share of its time each code path took.

#[path = "scale/ideal.rs"]
mod ideal;
#[path = "scale/profile.rs"]
mod profile;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, ServiceAccount};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use support::TestEnv;
use support::process::{OperatorProcess, sum_samples};
use winflow::api::WindowsTaskIdentity;
use winflow::names::{FINALIZER, IDENTITY_LABEL};

const TEMPLATE: &str = "examples/identity-azure-key-vault.yaml";
/// Requests in flight when the benchmark itself creates identities and pods.
const CLIENT_CONCURRENCY: usize = 32;
/// The operator counts as settled once its write and reconcile counters stood still this long.
const QUIET: Duration = Duration::from_secs(3);
const MIB: f64 = 1024.0 * 1024.0;

struct Settings {
    identities: Vec<usize>,
    concurrency: Vec<u16>,
    raw_writes: usize,
    burst_pods: usize,
    burst_updates: usize,
    pods: usize,
    /// Time the same number of status updates is spread over after the burst.
    sustained_seconds: Duration,
    log_level: String,
    /// Seconds of API server CPU profile per convergence run; 0: none.
    profile_seconds: u64,
}

fn env_list<T: std::str::FromStr>(name: &str, default: &str) -> Vec<T> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .map(|item| {
            item.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{name}: {item:?} is not a number"))
        })
        .collect()
}

fn env_number(name: &str, default: usize) -> usize {
    env_list(name, &default.to_string())[0]
}

impl Settings {
    fn from_env() -> Self {
        Settings {
            identities: env_list("WINFLOW_BENCH_IDENTITIES", "100,1000"),
            concurrency: env_list("WINFLOW_BENCH_CONCURRENCY", "4,16"),
            raw_writes: env_number("WINFLOW_BENCH_RAW_WRITES", 1000),
            burst_pods: env_number("WINFLOW_BENCH_BURST_PODS", 100),
            burst_updates: env_number("WINFLOW_BENCH_BURST_UPDATES", 1000),
            pods: env_number("WINFLOW_BENCH_PODS", 10_000),
            sustained_seconds: Duration::from_secs(env_number("WINFLOW_BENCH_SUSTAINED_SECONDS", 20) as u64),
            log_level: std::env::var("WINFLOW_BENCH_LOG_LEVEL").unwrap_or_else(|_| "info".to_owned()),
            profile_seconds: env_number("WINFLOW_BENCH_PROFILE_SECONDS", 0) as u64,
        }
    }
}

fn bench_dir() -> PathBuf {
    Path::new(support::REPO).join("target/bench")
}

/// Starts the release operator for one namespace, logging to target/bench/scale-logs/<log>.log.
async fn start_operator(namespace: &str, concurrency: u16, settings: &Settings, log: &str) -> OperatorProcess {
    let dir = bench_dir().join("scale-logs");
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join(format!("{log}.log"));
    let _ = std::fs::remove_file(&log);
    let concurrency = concurrency.to_string();
    let args = [
        "--namespace",
        namespace,
        "--concurrency",
        &concurrency,
        "--log-level",
        &settings.log_level,
    ];
    let operator = OperatorProcess::start(&support::kubeconfig_path(), &args, Some(&log));
    operator.wait_ready().await;
    operator
}

/// A memory figure of the operator from /proc/<pid>/status (`VmHWM`: peak resident memory;
/// `RssAnon`: its heap and stacks; `RssFile`: pages of the binary and libraries), in MiB.
fn status_mib(operator: &OperatorProcess, field: &str) -> f64 {
    operator.status_kib(field) as f64 / 1024.0
}

/// CPU time (clock ticks) of this process and everything it started, by command name, and
/// of the whole machine: who spent the CPU during a measurement, and how much went to
/// processes outside the benchmark (other builds and tests on the machine disturb it).
struct CpuSample {
    by_command: BTreeMap<String, u64>,
    machine_busy: u64,
    at: Instant,
}

/// The kernel's clock ticks per second (USER_HZ), 100 on Linux.
const TICKS_PER_SECOND: f64 = 100.0;

fn cpu_sample() -> CpuSample {
    // pid -> (parent, command, utime + stime)
    let mut processes = BTreeMap::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let command = stat[open + 1..close].to_owned();
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let number = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        // After the command: state, ppid, ... utime is the 12th, stime the 13th.
        processes.insert(pid, (number(1) as u32, command, number(11) + number(12)));
    }
    let me = std::process::id();
    let mut by_command = BTreeMap::new();
    for (pid, (_, command, ticks)) in &processes {
        let mut ancestor = *pid;
        let mine = loop {
            if ancestor == me {
                break true;
            }
            match processes.get(&ancestor) {
                Some((parent, _, _)) if *parent != 0 && *parent != ancestor => ancestor = *parent,
                _ => break false,
            }
        };
        if mine {
            let name = if *pid == me {
                "bench".to_owned()
            } else {
                command.clone()
            };
            *by_command.entry(name).or_default() += ticks;
        }
    }
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let cpu: Vec<u64> = stat
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...: busy is all but idle and iowait.
    let machine_busy = cpu.iter().sum::<u64>() - cpu[3] - cpu.get(4).copied().unwrap_or(0);
    CpuSample {
        by_command,
        machine_busy,
        at: Instant::now(),
    }
}

/// CPU seconds between two samples: `kube-apiserver`, `etcd`, `kube-controller`, `winflow`,
/// `bench`, and `other` (the rest of the machine); `wall` and `api_server_and_etcd` besides.
fn cpu_between(before: &CpuSample, after: &CpuSample) -> Value {
    let seconds = |ticks: u64| ticks as f64 / TICKS_PER_SECOND;
    let mut used = serde_json::Map::new();
    let mut mine = 0;
    for (command, ticks) in &after.by_command {
        let ticks = ticks.saturating_sub(before.by_command.get(command).copied().unwrap_or(0));
        mine += ticks;
        if ticks > 0 {
            used.insert(command.clone(), json!(seconds(ticks)));
        }
    }
    let busy = after.machine_busy.saturating_sub(before.machine_busy);
    let component = |name: &str| used.get(name).and_then(Value::as_f64).unwrap_or(0.0);
    let server = component("kube-apiserver") + component("etcd");
    used.insert("other".to_owned(), json!(seconds(busy.saturating_sub(mine))));
    used.insert("api_server_and_etcd".to_owned(), json!(server));
    used.insert(
        "wall".to_owned(),
        json!(after.at.duration_since(before.at).as_secs_f64()),
    );
    Value::Object(used)
}

/// The samples of one metric in Prometheus text: its labels and value.
fn samples<'a>(text: &'a str, metric: &str) -> Vec<(BTreeMap<&'a str, &'a str>, f64)> {
    let prefix = format!("{metric}{{");
    text.lines()
        .filter_map(|line| {
            let (labels, value) = line.strip_prefix(&prefix)?.split_once("} ")?;
            let labels = labels
                .split(',')
                .filter_map(|pair| {
                    let (key, value) = pair.split_once('=')?;
                    Some((key, value.trim_matches('"')))
                })
                .collect();
            Some((labels, value.trim().parse().ok()?))
        })
        .collect()
}

/// The API server's `apiserver_request_total` by "VERB resource[/subresource]".
async fn api_server_requests(client: &kube::Client) -> BTreeMap<String, u64> {
    let request = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client.request_text(request).await.expect("the API server's /metrics");
    let mut requests = BTreeMap::new();
    for (labels, count) in samples(&text, "apiserver_request_total") {
        let label = |key| labels.get(key).copied().unwrap_or_default();
        let resource = match label("subresource") {
            "" => label("resource").to_owned(),
            subresource => format!("{}/{subresource}", label("resource")),
        };
        *requests.entry(format!("{} {resource}", label("verb"))).or_default() += count as u64;
    }
    requests
}

/// Requests between two snapshots, leaving out watches (long-running, not load per object).
fn requests_between(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter(|(key, _)| !key.starts_with("WATCH"))
        .map(|(key, n)| (key.clone(), n - before.get(key).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

fn requests_with_verb(requests: &BTreeMap<String, u64>, verbs: &[&str]) -> u64 {
    requests
        .iter()
        .filter(|(key, _)| verbs.iter().any(|v| key.split(' ').next() == Some(v)))
        .map(|(_, n)| n)
        .sum()
}

const WRITE_VERBS: [&str; 5] = ["POST", "PUT", "PATCH", "APPLY", "DELETE"];

/// Mean identity reconcile duration, in milliseconds.
fn mean_reconcile_ms(metrics: &str) -> f64 {
    let identity = |metric| {
        samples(metrics, metric)
            .into_iter()
            .find(|(labels, _)| labels.get("controller") == Some(&"identity"))
            .map_or(0.0, |(_, value)| value)
    };
    identity("winflow_reconcile_duration_seconds_sum") / identity("winflow_reconcile_duration_seconds_count") * 1000.0
}

/// `winflow_api_writes_total` by (kind, verb).
type Writes = BTreeMap<(String, String), u64>;

fn writes_of(metrics: &str) -> Writes {
    let mut writes = Writes::new();
    for (labels, count) in samples(metrics, "winflow_api_writes_total") {
        let label = |key| labels.get(key).copied().unwrap_or_default().to_owned();
        *writes.entry((label("kind"), label("verb"))).or_default() += count as u64;
    }
    writes
}

/// `after - before`, leaving out what did not change.
fn writes_between(before: &Writes, after: &Writes) -> Writes {
    after
        .iter()
        .map(|(key, n)| (key.clone(), n - before.get(key).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

fn is_event(key: &(String, String)) -> bool {
    key.0 == "Event"
}

fn total(writes: &Writes, events: bool) -> u64 {
    writes
        .iter()
        .filter(|(key, _)| is_event(key) == events)
        .map(|(_, n)| n)
        .sum()
}

fn writes_json(writes: &Writes) -> Value {
    writes
        .iter()
        .map(|((kind, verb), n)| json!({"kind": kind, "verb": verb, "writes": n}))
        .collect()
}

async fn metrics_text(operator: &OperatorProcess) -> String {
    for _ in 0..50 {
        if let Some(text) = operator.metrics().await {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the operator's /metrics does not answer");
}

async fn writes_now(operator: &OperatorProcess) -> Writes {
    writes_of(&metrics_text(operator).await)
}

async fn identity_reconciles(operator: &OperatorProcess) -> u64 {
    sum_samples(
        &metrics_text(operator).await,
        "winflow_reconciles_total{controller=\"identity\"",
    )
}

/// Identity reconciles that ended in an error.
async fn reconcile_errors(operator: &OperatorProcess) -> u64 {
    let text = metrics_text(operator).await;
    let failed = samples(&text, "winflow_reconciles_total")
        .into_iter()
        .filter(|(labels, _)| {
            labels.get("controller") == Some(&"identity") && labels.get("result") != Some(&"success")
        });
    failed.map(|(_, n)| n as u64).sum()
}

/// Waits until the operator's writes and reconciles have stood still for `QUIET`; returns
/// how long that took (the quiet time not included).
async fn settle(operator: &OperatorProcess, timeout: Duration) -> Duration {
    let started = Instant::now();
    let mut last = (u64::MAX, u64::MAX);
    let mut still_since = Instant::now();
    loop {
        let text = metrics_text(operator).await;
        let now = (
            sum_samples(&text, "winflow_api_writes_total{"),
            sum_samples(&text, "winflow_reconciles_total{"),
        );
        if now != last {
            last = now;
            still_since = Instant::now();
        } else if still_since.elapsed() >= QUIET {
            return still_since.duration_since(started);
        }
        assert!(
            started.elapsed() < timeout,
            "the operator did not settle within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `count` requests with `in_flight` at a time; panics on the first failure.
async fn run_all<F, Fut>(count: usize, in_flight: usize, request: F)
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<(), kube::Error>>,
{
    futures::stream::iter(0..count)
        .map(|i| {
            let call = request(i);
            async move { call.await.map_err(|e| format!("request {i}: {e}")) }
        })
        .buffer_unordered(in_flight)
        .try_collect::<Vec<()>>()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

fn template_identity() -> WindowsTaskIdentity {
    let text = std::fs::read_to_string(Path::new(support::REPO).join(TEMPLATE)).unwrap();
    serde_yaml_ng::from_str(&text).unwrap()
}

fn identity_named(template: &WindowsTaskIdentity, name: &str) -> WindowsTaskIdentity {
    let mut identity = template.clone();
    identity.metadata.name = Some(name.to_owned());
    identity.spec.service_account.name = name.to_owned();
    identity
}

fn identity_name(i: usize) -> String {
    format!("task-identity-{i}")
}

/// The operator's own pod-template ConfigMap for the template identity, unlabelled and unowned:
/// a raw write of the same size as the ConfigMaps the operator writes.
fn raw_config_map(template: &WindowsTaskIdentity, namespace: &str) -> ConfigMap {
    let mut identity = identity_named(template, &identity_name(0));
    identity.metadata.namespace = Some(namespace.to_owned());
    let children = winflow::build::children_for(&identity).expect("the template identity is valid");
    let mut config_map = children.pod_templates;
    config_map.metadata = kube::api::ObjectMeta::default();
    config_map
}

/// Writes the converge of one identity needs: its finalizer, each child, one status write.
fn minimal_writes(template: &WindowsTaskIdentity, finalizer: bool) -> u64 {
    let children = winflow::build::children_for(&identity_named(template, "x")).expect("valid template");
    children.count() as u64 + 1 + u64::from(finalizer)
}

fn is_ready(identity: &WindowsTaskIdentity) -> bool {
    identity
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True" && c.observed_generation == identity.metadata.generation)
}

/// A watch on the namespace's identities, for counting the Ready ones without listing.
fn watch_identities(api: Api<WindowsTaskIdentity>) -> (Store<WindowsTaskIdentity>, tokio::task::JoinHandle<()>) {
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()).default_backoff());
    let task = tokio::spawn(stream.for_each(|_| async {}));
    (store, task)
}

fn ready_count(store: &Store<WindowsTaskIdentity>) -> usize {
    store.state().iter().filter(|i| is_ready(i)).count()
}

fn task_pod(name: &str, identity: &str) -> Pod {
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
fn pod_status(step: usize) -> Value {
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

async fn create_pods(env: &TestEnv, names: &[(String, String)]) -> Duration {
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
async fn delete_namespace(env: &TestEnv) -> Duration {
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

/// One convergence run: raw write rate, then N identities created at once.
struct Convergence {
    env: TestEnv,
    operator: OperatorProcess,
    row: Value,
    writes: Writes,
}

async fn converge(settings: &Settings, identities: usize, concurrency: u16) -> Convergence {
    let env = TestEnv::new(&format!("scale-n{identities}-c{concurrency}")).await;
    let template = template_identity();
    eprintln!(
        "scale: {identities} identities, --concurrency {concurrency}, namespace {}",
        env.namespace
    );

    // The API server's raw write rate: ConfigMaps the size of the operator's, created by as
    // many writers as the operator reconciles in parallel, before the operator runs.
    let config_maps: Api<ConfigMap> = env.api();
    let raw = raw_config_map(&template, &env.namespace);
    let (raw_cpu_before, raw_requests_before) = (cpu_sample(), api_server_requests(&env.client).await);
    let raw_started = Instant::now();
    run_all(settings.raw_writes, usize::from(concurrency), |i| {
        let config_maps = config_maps.clone();
        let mut config_map = raw.clone();
        config_map.metadata.name = Some(format!("raw-write-{i}"));
        async move {
            config_maps
                .create(&PostParams::default(), &config_map)
                .await
                .map(|_| ())
        }
    })
    .await;
    let raw_seconds = raw_started.elapsed().as_secs_f64();
    let raw_rate = settings.raw_writes as f64 / raw_seconds;
    let raw_cpu = cpu_between(&raw_cpu_before, &cpu_sample());
    let raw_requests = requests_between(&raw_requests_before, &api_server_requests(&env.client).await);
    // The same for what the operator mostly sends: server-side applies (of new objects, as on
    // a first converge) and GETs, to tell how much of the time they explain.
    let apply_started = Instant::now();
    run_all(settings.raw_writes, usize::from(concurrency), |i| {
        let config_maps = config_maps.clone();
        let mut config_map = raw.clone();
        let name = format!("raw-apply-{i}");
        config_map.metadata.name = Some(name.clone());
        async move {
            let params = PatchParams::apply("winflow-bench").force();
            config_maps
                .patch(&name, &params, &Patch::Apply(&config_map))
                .await
                .map(|_| ())
        }
    })
    .await;
    let apply_rate = settings.raw_writes as f64 / apply_started.elapsed().as_secs_f64();
    let get_started = Instant::now();
    run_all(settings.raw_writes, usize::from(concurrency), |i| {
        let config_maps = config_maps.clone();
        async move { config_maps.get(&format!("raw-write-{i}")).await.map(|_| ()) }
    })
    .await;
    let get_rate = settings.raw_writes as f64 / get_started.elapsed().as_secs_f64();

    let operator = start_operator(
        &env.namespace,
        concurrency,
        settings,
        &format!("n{identities}-c{concurrency}"),
    )
    .await;
    let api: Api<WindowsTaskIdentity> = env.api();
    let (store, watch) = watch_identities(api.clone());
    wait_for("the identity watch", Duration::from_secs(30), || async {
        store.wait_until_ready().await.ok()
    })
    .await;

    let (cpu_before, requests_before) = (cpu_sample(), api_server_requests(&env.client).await);
    let profile = (settings.profile_seconds > 0)
        .then(|| tokio::spawn(profile::take(env.client.clone(), settings.profile_seconds)));
    let started = Instant::now();
    run_all(identities, CLIENT_CONCURRENCY, |i| {
        let api = api.clone();
        let identity = identity_named(&template, &identity_name(i));
        async move { api.create(&PostParams::default(), &identity).await.map(|_| ()) }
    })
    .await;
    let created = started.elapsed();
    let mut last_progress = Instant::now();
    loop {
        let ready = ready_count(&store);
        if ready == identities {
            break;
        }
        if last_progress.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "scale:   {ready}/{identities} Ready after {:.0} s",
                started.elapsed().as_secs_f64()
            );
            last_progress = Instant::now();
        }
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "only {ready} of {identities} identities became Ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let converged = started.elapsed();
    let at_ready = metrics_text(&operator).await;
    let cpu_to_ready = cpu_between(&cpu_before, &cpu_sample());
    let profile = match profile {
        Some(task) => save_profile(task, &format!("n{identities}-c{concurrency}")).await,
        None => Value::Null,
    };
    let settled = settle(&operator, Duration::from_secs(600)).await;
    watch.abort();
    let cpu = cpu_between(&cpu_before, &cpu_sample());
    let requests = requests_between(&requests_before, &api_server_requests(&env.client).await);
    let final_metrics = metrics_text(&operator).await;
    let per_identity = |n: u64| n as f64 / identities as f64;
    // API server and etcd CPU per identity, in raw writes: what one converge costs the server.
    let raw_write_cpu = f(&raw_cpu["api_server_and_etcd"]) / settings.raw_writes as f64;
    let identity_cpu = f(&cpu["api_server_and_etcd"]) / identities as f64;
    // Only once winflow has settled, so that the two never share the server.
    let status = store
        .state()
        .iter()
        .find_map(|i| i.status.clone())
        .expect("a Ready identity has a status");
    let ideal = ideal::converge(identities, concurrency, &json!(status))
        .await
        .as_secs_f64();

    let finalizer = store
        .state()
        .iter()
        .all(|i| i.finalizers().iter().any(|f| f == FINALIZER));
    let minimal = minimal_writes(&template, finalizer);
    let floor = identities as f64 * minimal as f64 / raw_rate;
    let writes = writes_now(&operator).await;
    let reconciles = identity_reconciles(&operator).await;
    let row = json!({
        "identities": identities,
        "concurrency": concurrency,
        "raw_writes": settings.raw_writes,
        "raw_write_seconds": raw_seconds,
        "raw_writes_per_second": raw_rate,
        "minimal_writes_per_identity": minimal,
        "finalizer": finalizer,
        "create_seconds": created.as_secs_f64(),
        "converge_seconds": converged.as_secs_f64(),
        "floor_seconds": floor,
        "ratio": converged.as_secs_f64() / floor,
        "ideal_operator_seconds": ideal,
        "ideal_operator_ratio": ideal / floor,
        "winflow_over_ideal_operator": converged.as_secs_f64() / ideal,
        "settled_after_seconds": converged.as_secs_f64() + settled.as_secs_f64(),
        "writes": writes_json(&writes),
        "writes_per_identity": total(&writes, false) as f64 / identities as f64,
        "events_per_identity": total(&writes, true) as f64 / identities as f64,
        "reconciles_per_identity": reconciles as f64 / identities as f64,
        "rss_mib": operator.rss_bytes() as f64 / MIB,
        "peak_rss_mib": status_mib(&operator, "VmHWM"),
        "anon_rss_mib": status_mib(&operator, "RssAnon"),
        "file_rss_mib": status_mib(&operator, "RssFile"),
        "reconciles_per_identity_at_ready": per_identity(sum_samples(&at_ready, "winflow_reconciles_total{controller=\"identity\"")),
        "reconcile_errors": reconcile_errors(&operator).await,
        "mean_reconcile_ms": mean_reconcile_ms(&final_metrics),
        "raw_applies_per_second": apply_rate,
        "raw_gets_per_second": get_rate,
        "model_seconds": identities as f64 * (minimal as f64 / apply_rate + per_identity(requests_with_verb(&requests, &["GET"])) / get_rate),
        "cpu_seconds_to_ready": cpu_to_ready,
        "raw_cpu_seconds": raw_cpu,
        "raw_api_requests": raw_requests,
        "cpu_seconds": cpu,
        "api_requests": requests,
        "api_reads_per_identity": per_identity(requests_with_verb(&requests, &["GET", "LIST"])),
        "api_writes_per_identity": per_identity(requests_with_verb(&requests, &WRITE_VERBS)),
        "server_cpu_ms_per_raw_write": raw_write_cpu * 1000.0,
        "server_cpu_ms_per_identity": identity_cpu * 1000.0,
        "identity_cost_in_raw_writes": identity_cpu / raw_write_cpu,
        "api_server_profile": profile,
    });
    eprintln!(
        "scale:   Ready in {:.2} s (floor {floor:.2} s, only the minimal writes {ideal:.2} s), {} writes",
        converged.as_secs_f64(),
        total(&writes, false)
    );
    Convergence {
        env,
        operator,
        row,
        writes,
    }
}

/// Waits for the API server's CPU profile, saves it as target/bench/apiserver-<row>.pprof and
/// prints the share of its time each code path took.
async fn save_profile(task: tokio::task::JoinHandle<Result<Vec<u8>, String>>, row: &str) -> Value {
    let bytes = match task.await.expect("the profile task ends") {
        Ok(bytes) => bytes,
        Err(error) => {
            eprintln!("scale:   no API server profile: {error}");
            return Value::Null;
        }
    };
    let path = bench_dir().join(format!("apiserver-{row}.pprof"));
    std::fs::write(&path, bytes).unwrap();
    let Some(shares) = profile::shares(&path) else {
        eprintln!(
            "scale:   API server profile in {} (no `go tool pprof` here to read it)",
            path.display()
        );
        return json!({ "file": path });
    };
    eprintln!(
        "scale:   API server CPU while converging, share per code path (they overlap; {}):",
        path.display()
    );
    for (what, share) in &shares {
        eprintln!("scale:     {share:5.1} %  {what}");
    }
    let percent: serde_json::Map<String, Value> = shares
        .iter()
        .map(|(what, share)| (what.to_string(), json!(share)))
        .collect();
    json!({ "file": path, "cumulative_percent": percent })
}

/// The converged namespace the write economy and memory phases continue with.
struct Kept {
    env: TestEnv,
    identities: usize,
    concurrency: u16,
    /// The first operator's writes until it settled.
    writes: Writes,
}

/// Idle memory: an operator watching an empty namespace.
async fn idle(settings: &Settings) -> Value {
    let env = TestEnv::new("scale-idle").await;
    let operator = start_operator(&env.namespace, 4, settings, "idle").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let value = json!({
        "rss_mib": operator.rss_bytes() as f64 / MIB,
        "peak_rss_mib": status_mib(&operator, "VmHWM"),
        "anon_rss_mib": status_mib(&operator, "RssAnon"),
        "file_rss_mib": status_mib(&operator, "RssFile"),
    });
    assert!(operator.terminate().await, "the operator stops on SIGTERM");
    delete_namespace(&env).await;
    value
}

/// A second operator over converged objects: what it writes on its initial reconcile.
async fn restart(run: &Kept, settings: &Settings) -> (OperatorProcess, Value) {
    let requests_before = api_server_requests(&run.env.client).await;
    let started = Instant::now();
    let operator = start_operator(&run.env.namespace, run.concurrency, settings, "restart").await;
    let ready = started.elapsed();
    let n = run.identities as u64;
    wait_for(
        "every identity reconciled after the restart",
        Duration::from_secs(600),
        || async { (identity_reconciles(&operator).await >= n).then_some(()) },
    )
    .await;
    let reconciled = started.elapsed();
    settle(&operator, Duration::from_secs(600)).await;
    let writes = writes_now(&operator).await;
    let requests = requests_between(&requests_before, &api_server_requests(&run.env.client).await);
    let value = json!({
        "api_requests": requests,
        "api_reads_per_identity": requests_with_verb(&requests, &["GET", "LIST"]) as f64 / n as f64,
        "mean_reconcile_ms": mean_reconcile_ms(&metrics_text(&operator).await),
        "rss_mib": operator.rss_bytes() as f64 / MIB,
        "peak_rss_mib": status_mib(&operator, "VmHWM"),
        "anon_rss_mib": status_mib(&operator, "RssAnon"),
        "file_rss_mib": status_mib(&operator, "RssFile"),
        "ready_seconds": ready.as_secs_f64(),
        "all_reconciled_seconds": reconciled.as_secs_f64(),
        "reconciles": identity_reconciles(&operator).await,
        "writes": writes_json(&writes),
        "writes_total": total(&writes, false),
        "events": total(&writes, true),
    });
    (operator, value)
}

fn identity_status_writes(writes: &Writes) -> u64 {
    writes
        .get(&("WindowsTaskIdentity".to_owned(), "apply-status".to_owned()))
        .copied()
        .unwrap_or(0)
}

/// Pods of one identity, then a burst of status updates to them: the operator's writes.
async fn pod_burst(run: &Kept, operator: &OperatorProcess, settings: &Settings) -> Value {
    let env = &run.env;
    let identity = identity_name(0);
    let accounts: Api<ServiceAccount> = env.api();
    wait_for(
        "the namespace's default ServiceAccount",
        Duration::from_secs(60),
        || async { accounts.get_opt("default").await.ok().flatten() },
    )
    .await;
    let before = writes_now(operator).await;
    let reconciles_before = identity_reconciles(operator).await;
    let names: Vec<(String, String)> = (0..settings.burst_pods)
        .map(|i| (format!("burst-{i}"), identity.clone()))
        .collect();
    let created = create_pods(env, &names).await;
    settle(operator, Duration::from_secs(300)).await;
    let after_create = writes_now(operator).await;
    let reconciles_after_create = identity_reconciles(operator).await;

    let pods: Api<Pod> = env.api();
    let started = Instant::now();
    run_all(settings.burst_updates, CLIENT_CONCURRENCY, |i| {
        let pods = pods.clone();
        let (pod, _) = names[i % names.len()].clone();
        let status = pod_status(i / names.len());
        async move {
            pods.patch_status(&pod, &PatchParams::default(), &Patch::Merge(&status))
                .await
                .map(|_| ())
        }
    })
    .await;
    let burst = started.elapsed();
    let settled = settle(operator, Duration::from_secs(300)).await;
    let after_burst = writes_now(operator).await;
    let reconciles_after_burst = identity_reconciles(operator).await;
    let during_create = writes_between(&before, &after_create);
    let during_burst = writes_between(&after_create, &after_burst);
    // The same number of updates spread evenly over a longer time, as a busy Airflow would
    // send them: what a throttle of pod-triggered reconciles leaves over time.
    let sustained_started = Instant::now();
    let interval = settings.sustained_seconds / settings.burst_updates.max(1) as u32;
    for i in 0..settings.burst_updates {
        tokio::time::sleep_until((sustained_started + interval * i as u32).into()).await;
        let (pod, _) = &names[i % names.len()];
        let status = pod_status(i / names.len() + 1);
        pods.patch_status(pod, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap_or_else(|e| panic!("pod {pod} status: {e}"));
    }
    let sustained = sustained_started.elapsed();
    settle(operator, Duration::from_secs(300)).await;
    let during_sustained = writes_between(&after_burst, &writes_now(operator).await);
    let reconciles_after_sustained = identity_reconciles(operator).await;
    let status = Api::<WindowsTaskIdentity>::namespaced(env.client.clone(), &env.namespace)
        .get(&identity)
        .await
        .unwrap()
        .status
        .and_then(|s| s.pods);
    json!({
        "identity": identity,
        "pods": settings.burst_pods,
        "create_seconds": created.as_secs_f64(),
        "create_status_writes": identity_status_writes(&during_create),
        "create_writes": writes_json(&during_create),
        "create_reconciles": reconciles_after_create - reconciles_before,
        "updates": settings.burst_updates,
        "burst_seconds": burst.as_secs_f64(),
        "updates_per_second": settings.burst_updates as f64 / burst.as_secs_f64(),
        "settled_after_burst_seconds": settled.as_secs_f64(),
        "burst_status_writes": identity_status_writes(&during_burst),
        "burst_writes": writes_json(&during_burst),
        "burst_events": total(&during_burst, true),
        "burst_reconciles": reconciles_after_burst - reconciles_after_create,
        "sustained_seconds": sustained.as_secs_f64(),
        "sustained_status_writes": identity_status_writes(&during_sustained),
        "sustained_events": total(&during_sustained, true),
        "sustained_reconciles": reconciles_after_sustained - reconciles_after_burst,
        "final_pods_status": status,
        "rss_mib": operator.rss_bytes() as f64 / MIB,
        "anon_rss_mib": status_mib(operator, "RssAnon"),
    })
}

/// Many task pods spread over the identities: the operator's memory once settled.
async fn memory(run: &Kept, operator: &OperatorProcess, settings: &Settings) -> Value {
    let before = writes_now(operator).await;
    let names: Vec<(String, String)> = (0..settings.pods)
        .map(|i| (format!("task-{i}"), identity_name(i % run.identities)))
        .collect();
    let created = create_pods(&run.env, &names).await;
    let settled = settle(operator, Duration::from_secs(900)).await;
    let writes = writes_between(&before, &writes_now(operator).await);
    let pods = Api::<Pod>::namespaced(run.env.client.clone(), &run.env.namespace)
        .list_metadata(&kube::api::ListParams::default().labels(IDENTITY_LABEL))
        .await
        .unwrap()
        .items
        .len();
    json!({
        "identities": run.identities,
        "pods_created": settings.pods,
        "labelled_pods": pods,
        "create_seconds": created.as_secs_f64(),
        "settled_after_create_seconds": settled.as_secs_f64(),
        "status_writes": identity_status_writes(&writes),
        "writes": writes_json(&writes),
        "rss_mib": operator.rss_bytes() as f64 / MIB,
        "peak_rss_mib": status_mib(operator, "VmHWM"),
        "anon_rss_mib": status_mib(operator, "RssAnon"),
        "file_rss_mib": status_mib(operator, "RssFile"),
    })
}

fn print_writes(title: &str, writes: &[Value]) {
    println!("{title}");
    if writes.is_empty() {
        println!("    (none)");
    }
    for w in writes {
        println!(
            "    {:<22} {:<13} {:>7}",
            w["kind"].as_str().unwrap(),
            w["verb"].as_str().unwrap(),
            w["writes"]
        );
    }
}

fn f(value: &Value) -> f64 {
    value.as_f64().unwrap_or(f64::NAN)
}

fn print_report(report: &Value) {
    println!("\nrelease binary: {:.1} MiB", f(&report["binary_bytes"]) / MIB);
    println!("\nconvergence (N identities created at once, {CLIENT_CONCURRENCY} creates in flight)");
    println!(
        "{:>6} {:>5} {:>9} {:>7} {:>8} {:>9} {:>8} {:>7} {:>8} {:>7} {:>7} {:>7}",
        "N",
        "conc",
        "raw w/s",
        "min w",
        "create s",
        "Ready s",
        "floor s",
        "ratio",
        "writes/N",
        "evts/N",
        "recs/N",
        "RSS MiB"
    );
    for row in report["convergence"].as_array().unwrap() {
        println!(
            "{:>6} {:>5} {:>9.0} {:>7} {:>8.2} {:>9.2} {:>8.2} {:>7.2} {:>8.2} {:>7.2} {:>7.2} {:>7.1}",
            row["identities"].to_string(),
            row["concurrency"].to_string(),
            f(&row["raw_writes_per_second"]),
            row["minimal_writes_per_identity"].to_string(),
            f(&row["create_seconds"]),
            f(&row["converge_seconds"]),
            f(&row["floor_seconds"]),
            f(&row["ratio"]),
            f(&row["writes_per_identity"]),
            f(&row["events_per_identity"]),
            f(&row["reconciles_per_identity"]),
            f(&row["rss_mib"]),
        );
    }
    println!("    ratio = Ready s / floor s, floor = N x min w / raw w/s (target <= 1.3 at N = 1000)");
    println!("\nconvergence next to the minimal writes alone (the bench writes what a converge needs, nothing else)");
    println!(
        "{:>6} {:>5} {:>9} {:>9} {:>13} {:>13}",
        "N", "conc", "Ready s", "minimal s", "minimal/floor", "Ready/minimal"
    );
    for row in report["convergence"].as_array().unwrap() {
        println!(
            "{:>6} {:>5} {:>9.2} {:>9.2} {:>13.2} {:>13.2}",
            row["identities"].to_string(),
            row["concurrency"].to_string(),
            f(&row["converge_seconds"]),
            f(&row["ideal_operator_seconds"]),
            f(&row["ideal_operator_ratio"]),
            f(&row["winflow_over_ideal_operator"]),
        );
    }
    println!("\nconvergence: where the time goes (CPU seconds from first create until the operator settled)");
    println!(
        "{:>6} {:>5} {:>8} {:>8} {:>9} {:>8} {:>8} {:>9} {:>9} {:>8} {:>8} {:>8}",
        "N",
        "conc",
        "recs/N@R",
        "rec ms",
        "srv rd/N",
        "srv w/N",
        "cpu/raw",
        "cpu/ident",
        "ident=raw",
        "apisrv s",
        "etcd s",
        "op s"
    );
    for row in report["convergence"].as_array().unwrap() {
        let cpu = &row["cpu_seconds"];
        println!(
            "{:>6} {:>5} {:>8.2} {:>8.1} {:>9.1} {:>8.1} {:>8.2} {:>9.2} {:>9.1} {:>8.1} {:>8.1} {:>8.1}",
            row["identities"].to_string(),
            row["concurrency"].to_string(),
            f(&row["reconciles_per_identity_at_ready"]),
            f(&row["mean_reconcile_ms"]),
            f(&row["api_reads_per_identity"]),
            f(&row["api_writes_per_identity"]),
            f(&row["server_cpu_ms_per_raw_write"]),
            f(&row["server_cpu_ms_per_identity"]),
            f(&row["identity_cost_in_raw_writes"]),
            f(&cpu["kube-apiserver"]),
            f(&cpu["etcd"]),
            f(&cpu["winflow"]),
        );
        let to_ready = &row["cpu_seconds_to_ready"];
        let wall = f(&to_ready["wall"]);
        let busy = |c: &Value| -> f64 {
            let components = c.as_object().unwrap().iter();
            components
                .filter(|(k, _)| !matches!(k.as_str(), "wall" | "api_server_and_etcd"))
                .map(|(_, v)| f(v))
                .sum()
        };
        println!(
            "{:>12} until Ready: CPU busy {:.2} of 2 cores (API server {:.2}, etcd {:.2}, winflow {:.2}, controller-manager {:.2}, other processes {:.2}); {} reconcile errors",
            "",
            busy(to_ready) / wall,
            f(&to_ready["kube-apiserver"]) / wall,
            f(&to_ready["etcd"]) / wall,
            f(&to_ready["winflow"]) / wall,
            f(&to_ready["kube-controller"]) / wall,
            f(&to_ready["other"]) / wall,
            row["reconcile_errors"]
        );
        if let Some(teardown) = row["teardown_seconds"].as_f64() {
            println!(
                "{:>12} namespace deleted in {teardown:.1} s, {} identity reconciles failed meanwhile",
                "", row["teardown_reconcile_errors"]
            );
        }
        println!(
            "{:>12} raw rates with {} writers: create {:.0}/s, apply {:.0}/s, GET {:.0}/s; model N x (min w / apply + GETs/N / GET) = {:.1} s (other processes {:.2} cores during the raw writes)",
            "",
            row["concurrency"],
            f(&row["raw_writes_per_second"]),
            f(&row["raw_applies_per_second"]),
            f(&row["raw_gets_per_second"]),
            f(&row["model_seconds"]),
            f(&row["raw_cpu_seconds"]["other"]) / f(&row["raw_cpu_seconds"]["wall"]),
        );
    }
    println!(
        "    recs/N@R: identity reconciles per identity when all were Ready; rec ms: mean reconcile; srv rd/N, srv w/N:\n    API server reads (GET, LIST) and writes (all clients, the controller-manager included) per identity;\n    cpu/raw, cpu/ident: API server + etcd CPU ms per raw write and per identity; ident=raw: their ratio"
    );

    let economy = &report["write_economy"];
    let n = economy["identities"].as_u64().unwrap_or(1);
    println!(
        "\nwrite economy ({n} identities, --concurrency {})",
        economy["concurrency"]
    );
    print_writes(
        "  converge, by kind and verb (target: children + one status write per identity):",
        economy["converge_writes"].as_array().unwrap(),
    );
    let restart = &economy["restart"];
    println!(
        "  restart: Ready after {:.2} s, all {} reconciled after {:.2} s ({} reconciles), {} writes (target 0), {} Events",
        f(&restart["ready_seconds"]),
        n,
        f(&restart["all_reconciled_seconds"]),
        restart["reconciles"],
        restart["writes_total"],
        restart["events"]
    );
    print_writes("  restart writes:", restart["writes"].as_array().unwrap());
    println!(
        "  restart: {:.1} API server reads per identity, mean reconcile {:.1} ms, RSS {:.1} MiB (peak {:.1})",
        f(&restart["api_reads_per_identity"]),
        f(&restart["mean_reconcile_ms"]),
        f(&restart["rss_mib"]),
        f(&restart["peak_rss_mib"])
    );
    let burst = &economy["pod_burst"];
    println!(
        "  pods of {}: {} created in {:.2} s -> {} status writes ({} reconciles)",
        burst["identity"].as_str().unwrap_or_default(),
        burst["pods"],
        f(&burst["create_seconds"]),
        burst["create_status_writes"],
        burst["create_reconciles"]
    );
    println!(
        "  status burst: {} pod status updates in {:.2} s ({:.0}/s), settled {:.2} s later -> {} identity status writes (target: a handful), {} Events, {} reconciles",
        burst["updates"],
        f(&burst["burst_seconds"]),
        f(&burst["updates_per_second"]),
        f(&burst["settled_after_burst_seconds"]),
        burst["burst_status_writes"],
        burst["burst_events"],
        burst["burst_reconciles"]
    );
    print_writes("  burst writes:", burst["burst_writes"].as_array().unwrap());
    println!(
        "  sustained: {} updates spread over {:.1} s -> {} identity status writes, {} Events, {} reconciles",
        burst["updates"],
        f(&burst["sustained_seconds"]),
        burst["sustained_status_writes"],
        burst["sustained_events"],
        burst["sustained_reconciles"]
    );

    let memory = &report["memory"];
    println!("\nmemory (operator RSS; target <= 50 MiB)");
    let line = |what: &str, m: &Value| {
        println!(
            "  {what:<34} RSS {:>6.1} MiB (heap {:>5.1}, binary pages {:>4.1}), peak {:>6.1} MiB",
            f(&m["rss_mib"]),
            f(&m["anon_rss_mib"]),
            f(&m["file_rss_mib"]),
            f(&m["peak_rss_mib"])
        )
    };
    line("idle, 0 identities:", &report["idle"]);
    let economy = &report["write_economy"];
    line(
        &format!("{} identities (restarted):", economy["identities"]),
        &economy["restart"],
    );
    line(
        &format!(
            "{} identities, {} labelled pods:",
            memory["identities"], memory["labelled_pods"]
        ),
        memory,
    );
    println!(
        "  pods created in {:.1} s, settled {:.1} s later, {} identity status writes",
        f(&memory["create_seconds"]),
        f(&memory["settled_after_create_seconds"]),
        memory["status_writes"]
    );
}

#[tokio::main]
async fn main() {
    let settings = Settings::from_env();
    assert!(
        !settings.identities.is_empty() && !settings.concurrency.is_empty(),
        "no sizes"
    );
    let binary_bytes = std::fs::metadata(env!("CARGO_BIN_EXE_winflow")).unwrap().len();
    let idle = idle(&settings).await;

    // The largest N at the first (default) concurrency is kept for the later phases; every
    // other run is torn down before the next, so it does not disturb it.
    let largest = *settings.identities.iter().max().unwrap();
    let mut rows = Vec::new();
    let mut kept = None;
    for &identities in &settings.identities {
        for (index, &concurrency) in settings.concurrency.iter().enumerate() {
            let run = converge(&settings, identities, concurrency).await;
            let mut row = run.row.clone();
            if identities == largest && index == 0 && kept.is_none() {
                // SIGTERM; a fresh operator takes over the converged objects later.
                assert!(run.operator.terminate().await, "the operator stops on SIGTERM");
                kept = Some(Kept {
                    env: run.env,
                    identities,
                    concurrency,
                    writes: run.writes,
                });
            } else {
                let errors_before = reconcile_errors(&run.operator).await;
                let teardown = delete_namespace(&run.env).await;
                row["teardown_seconds"] = json!(teardown.as_secs_f64());
                row["teardown_reconcile_errors"] = json!(reconcile_errors(&run.operator).await - errors_before);
                assert!(run.operator.terminate().await, "the operator stops on SIGTERM");
            }
            rows.push(row);
        }
    }
    let run = kept.expect("one run kept");
    let converge_writes = writes_json(&run.writes);
    let (operator, restart) = restart(&run, &settings).await;
    let burst = pod_burst(&run, &operator, &settings).await;
    let memory = memory(&run, &operator, &settings).await;
    assert!(operator.terminate().await, "the operator stops on SIGTERM");

    let report = json!({
        "binary_bytes": binary_bytes,
        "idle": idle,
        "convergence": rows,
        "write_economy": {
            "identities": run.identities,
            "concurrency": run.concurrency,
            "converge_writes": converge_writes,
            "restart": restart,
            "pod_burst": burst,
        },
        "memory": memory,
    });
    print_report(&report);
    std::fs::create_dir_all(bench_dir()).unwrap();
    std::fs::write(
        bench_dir().join("scale.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .unwrap();
    println!("\nwritten: target/bench/scale.json (operator logs in target/bench/scale-logs/)");
}
