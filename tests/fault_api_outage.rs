//! Fault: the API server goes away for 15 seconds right after changes were made, while some
//! are still pending. The same operator process (no restart) reconnects its watches, writes
//! again and applies every change. This binary has its own control plane, so the outage
//! disturbs no other test.

use winflow_test_support as support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::json;
use support::process::{OperatorProcess, sum_samples};
use support::{TestEnv, fleet, wait_until};
use winflow::api::WindowsTaskIdentity;

const OUTAGE: Duration = Duration::from_secs(15);
/// The edit made to every existing identity; its pod templates carry it once applied.
const NEW_IMAGE: &str = "registry.example.com/payroll/export-win:2.1";
/// The operator's API write counter (`Metrics::api_write`), all kinds and verbs.
const WRITES: &str = "winflow_api_writes_total{";
/// Identities reconciled at once (`winflow run --concurrency`, default 4).
const RECONCILES_IN_FLIGHT: usize = 4;

#[tokio::test]
async fn after_an_api_server_outage_the_same_operator_applies_the_pending_changes() {
    let env = TestEnv::new("fault-outage").await;
    // The operator's log stays behind when the test fails, to be read.
    let log = std::env::temp_dir().join(format!("winflow-{}.log", env.namespace));
    println!("operator log: {}", log.display());
    let operator = OperatorProcess::start(
        &support::kubeconfig_path(),
        &["--namespace", &env.namespace, "--log-level", "debug"],
        Some(&log),
    );
    operator.wait_ready().await;
    let existing = fleet::names("before", 20);
    fleet::create_identities(&env, &existing, 8).await;
    fleet::wait_all_ready(&env, existing.len(), Duration::from_secs(120)).await;

    // Changes the operator has not seen yet when the API server goes: new identities and an
    // edit of every existing one (a new task image, which its pod templates carry).
    let identities = env.api::<WindowsTaskIdentity>();
    // Twice as many new identities as edits: the operator keeps writing while the counts
    // below are read, and with 20 it once nearly caught up (27 pending against 23 writes).
    let added = fleet::names("during", 40);
    fleet::create_identities(&env, &added, 8).await;
    for name in &existing {
        let patch = json!({"spec": {"airflow": {"image": NEW_IMAGE}}});
        identities
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }
    // How much of it the operator had done when the API server went: read just before.
    let writes_at_stop = writes(&operator).await;
    let not_ready = not_ready(&env, &added).await;
    let not_applied = without_image(&env, &existing, NEW_IMAGE).await;
    support::stop_api_server(&env.client).await;
    let stopped = Instant::now();
    // No write reaches the API server any more; the operator counts each before sending it.
    let writes_once_down = writes(&operator).await;
    // Each change still needs a write of its own (a new identity its Ready status, an edit
    // its ConfigMap). Writes that could have done some of the counted ones: those sent since
    // just before the counts, and those already in flight then (one per reconcile at most).
    // With more changes than that, some were still pending when the API server went.
    let pending = not_ready + not_applied;
    let late_writes = (writes_once_down - writes_at_stop) as usize;
    assert!(
        pending > late_writes + RECONCILES_IN_FLIGHT,
        "changes were still pending at the stop ({pending} pending just before, \
         {late_writes} writes sent from then until the API server was gone)"
    );
    tokio::time::sleep(OUTAGE.saturating_sub(stopped.elapsed())).await;
    let writes_at_restart = writes(&operator).await;
    support::start_api_server(&env.client).await;
    println!("API server down for {:.1} s", stopped.elapsed().as_secs_f64());

    let back = Instant::now();
    fleet::wait_all_ready(&env, existing.len() + added.len(), Duration::from_secs(180)).await;
    println!(
        "all {} identities Ready {:.1} s after the API server came back",
        existing.len() + added.len(),
        back.elapsed().as_secs_f64()
    );
    // The edit reached the templates of every existing identity.
    let config_maps = env.api::<ConfigMap>();
    for name in &existing {
        let templates = config_maps
            .get(&winflow::names::pod_templates_config_map_name(name))
            .await
            .unwrap();
        let windows = &templates.data.unwrap()[winflow::names::WINDOWS_TEMPLATE_KEY];
        assert!(windows.contains(NEW_IMAGE), "{name}: {windows}");
    }
    assert!(fleet::child_problems(&env).await.is_empty());
    let writes_after_recovery = writes(&operator).await;
    println!(
        "pending at stop: {not_ready} of {} new identities not Ready, {not_applied} of {} edits not applied; \
         operator writes at stop {writes_at_stop} ({writes_once_down} once the API server was down, \
         {writes_at_restart} when it was started again), after recovery {writes_after_recovery}",
        added.len(),
        existing.len()
    );
    assert!(
        writes_after_recovery > writes_at_restart,
        "the operator wrote after the outage ({writes_at_restart} writes before the restart, {writes_after_recovery} after recovery)"
    );

    // The watches work again: a change made now is seen without any resync.
    fleet::create_identities(&env, &fleet::names("after", 1), 1).await;
    wait_until("a new identity Ready", Duration::from_secs(60), || async {
        let identity = identities.get("after-0000").await.ok()?;
        fleet::is_ready(&identity).then_some(())
    })
    .await;
    let mut operator = operator;
    assert!(operator.running(), "the operator never exited");
    assert!(operator.terminate().await, "and it stops cleanly");
    // Passed: the log has served its purpose.
    let _ = std::fs::remove_file(&log);
}

/// The operator's API writes so far (it counts each before sending it).
async fn writes(operator: &OperatorProcess) -> u64 {
    let metrics = operator.metrics().await.expect("the operator serves /metrics");
    sum_samples(&metrics, WRITES)
}

/// How many of `names` are not Ready (for their current generation).
async fn not_ready(env: &TestEnv, names: &[String]) -> usize {
    let identities = env
        .api::<WindowsTaskIdentity>()
        .list(&ListParams::default())
        .await
        .unwrap();
    let ready: BTreeSet<String> = identities
        .items
        .iter()
        .filter(|i| fleet::is_ready(i))
        .map(ResourceExt::name_any)
        .collect();
    names.iter().filter(|n| !ready.contains(*n)).count()
}

/// How many of `names` have no Windows pod template with `image` (yet).
async fn without_image(env: &TestEnv, names: &[String], image: &str) -> usize {
    let config_maps = env.api::<ConfigMap>().list(&ListParams::default()).await.unwrap();
    let applied: BTreeSet<String> = config_maps
        .items
        .into_iter()
        .filter(|c| {
            c.data
                .as_ref()
                .and_then(|d| d.get(winflow::names::WINDOWS_TEMPLATE_KEY))
                .is_some_and(|t| t.contains(image))
        })
        .map(|c| c.name_any())
        .collect();
    names
        .iter()
        .filter(|n| !applied.contains(&winflow::names::pod_templates_config_map_name(n)))
        .count()
}
