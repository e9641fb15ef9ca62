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
//! `WINFLOW_BENCH_LOG_LEVEL=info` (the operators' logs go to target/bench/scale-logs/),
//! `WINFLOW_BENCH_HUNG_PLAIN=100` and `WINFLOW_BENCH_HUNG_IDENTITIES=20` (plain identities
//! Ready alone and beside identities on an OIDC issuer that never answers).
//! `WINFLOW_BENCH_PROFILE_SECONDS=20` also takes a CPU profile of the API server while the
//! identities converge (target/bench/apiserver-<row>.pprof) and, where Go is installed,
//! prints the share of its time each code path took.
//!
//! Layout: `workload` makes the identities and pods, `sampling` reads CPU, memory, the
//! operator's metrics and the API server's request counts, `phases` runs each measurement
//! (`hung_issuer` the one next to a hung OIDC issuer), `report` prints them; `ideal` and
//! `profile` are the convergence row's yardstick and the API server's CPU profile.

mod hung_issuer;
mod ideal;
mod phases;
mod profile;
mod report;
mod sampling;
use winflow_test_support as support;
mod workload;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use serde_json::json;
use support::process::OperatorProcess;

use hung_issuer::hung_issuer_phase;
use phases::{Kept, converge, idle, memory, pod_burst, restart};
use report::print_report;
use sampling::{reconcile_errors, writes_json};
use workload::delete_namespace;

/// Requests in flight when the benchmark itself creates identities and pods.
const CLIENT_CONCURRENCY: usize = 32;

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
    /// Plain identities created alone, and again beside the hung issuer's identities.
    hung_plain: usize,
    /// Identities on an OIDC issuer that never answers.
    hung_identities: usize,
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
            hung_plain: env_number("WINFLOW_BENCH_HUNG_PLAIN", 100),
            hung_identities: env_number("WINFLOW_BENCH_HUNG_IDENTITIES", 20),
        }
    }
}

fn bench_dir() -> PathBuf {
    Path::new(support::REPO).join("target/bench")
}

/// Starts the release operator for one namespace, logging to target/bench/scale-logs/<log>.log.
async fn start_operator(namespace: &str, concurrency: u16, settings: &Settings, log: &str) -> OperatorProcess {
    start_operator_with(namespace, concurrency, settings, log, &[]).await
}

/// As `start_operator`, with `extra` arguments to `winflow run`.
async fn start_operator_with(
    namespace: &str,
    concurrency: u16,
    settings: &Settings,
    log: &str,
    extra: &[&str],
) -> OperatorProcess {
    let dir = bench_dir().join("scale-logs");
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join(format!("{log}.log"));
    let _ = std::fs::remove_file(&log);
    let concurrency = concurrency.to_string();
    let mut args = vec![
        "--namespace",
        namespace,
        "--concurrency",
        &concurrency,
        "--log-level",
        &settings.log_level,
    ];
    args.extend_from_slice(extra);
    let operator = OperatorProcess::start(&support::kubeconfig_path(), &args, Some(&log));
    operator.wait_ready().await;
    operator
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
    let hung_issuer = hung_issuer_phase(&settings).await;

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
        "hung_issuer": hung_issuer,
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
