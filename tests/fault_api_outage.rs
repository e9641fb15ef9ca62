//! Fault: the API server goes away for 15 seconds right after changes were made. The same
//! operator process (no restart) reconnects its watches and applies every change. This
//! binary has its own control plane, so the outage disturbs no other test.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use support::process::OperatorProcess;
use support::{TestEnv, fleet, wait_until};
use winflow::api::WindowsTaskIdentity;

const OUTAGE: Duration = Duration::from_secs(15);

#[tokio::test]
async fn after_an_api_server_outage_the_same_operator_applies_the_pending_changes() {
    let env = TestEnv::new("fault-outage").await;
    // The operator's log stays behind for a failed run to be read.
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
    let added = fleet::names("during", 20);
    fleet::create_identities(&env, &added, 8).await;
    for name in &existing {
        let patch = json!({"spec": {"airflow": {"image": "registry.example.com/payroll/export-win:2.1"}}});
        identities
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }
    support::stop_api_server(&env.client).await;
    let stopped = Instant::now();
    tokio::time::sleep(OUTAGE.saturating_sub(stopped.elapsed())).await;
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
        assert!(windows.contains("export-win:2.1"), "{name}: {windows}");
    }
    assert!(fleet::child_problems(&env).await.is_empty());

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
}
