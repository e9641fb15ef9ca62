//! The measurements: a convergence row (raw write rates, N identities, the ideal operator),
//! idle memory, a restart over converged objects, a burst of pod status updates, and memory
//! with many task pods.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Pod, ServiceAccount};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use winflow::api::WindowsTaskIdentity;
use winflow::names::{FINALIZER, IDENTITY_LABEL};

use crate::report::f;
use crate::sampling::{
    WRITE_VERBS, Writes, api_server_requests, cpu_between, cpu_sample, identity_reconciles, identity_status_writes,
    mean_reconcile_ms, metrics_text, reconcile_errors, requests_between, requests_with_verb, settle, status_mib, total,
    writes_between, writes_json, writes_now,
};
use crate::support::TestEnv;
use crate::support::process::{OperatorProcess, sum_samples};
use crate::workload::{
    create_pods, delete_namespace, identity_name, identity_named, minimal_writes, pod_status, raw_config_map,
    ready_count, template_identity, watch_identities,
};
use crate::{CLIENT_CONCURRENCY, MIB, Settings, bench_dir, ideal, profile, run_all, start_operator, wait_for};

/// One convergence run: raw write rate, then N identities created at once.
pub struct Convergence {
    pub env: TestEnv,
    pub operator: OperatorProcess,
    pub row: Value,
    pub writes: Writes,
}

pub async fn converge(settings: &Settings, identities: usize, concurrency: u16) -> Convergence {
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
pub async fn save_profile(task: tokio::task::JoinHandle<Result<Vec<u8>, String>>, row: &str) -> Value {
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
pub struct Kept {
    pub env: TestEnv,
    pub identities: usize,
    pub concurrency: u16,
    /// The first operator's writes until it settled.
    pub writes: Writes,
}

/// Idle memory: an operator watching an empty namespace.
pub async fn idle(settings: &Settings) -> Value {
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
pub async fn restart(run: &Kept, settings: &Settings) -> (OperatorProcess, Value) {
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

/// Pods of one identity, then a burst of status updates to them: the operator's writes.
pub async fn pod_burst(run: &Kept, operator: &OperatorProcess, settings: &Settings) -> Value {
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
pub async fn memory(run: &Kept, operator: &OperatorProcess, settings: &Settings) -> Value {
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
