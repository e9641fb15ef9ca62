//! Fault: `kill -9` of the operator process while 500 identities converge. The next process
//! finishes the job from what it finds: every identity Ready with exactly one of each child,
//! nothing orphaned, and deleting them all leaves no credential spec behind.

use winflow_test_support as support;

use std::time::{Duration, Instant};

use kube::api::{DeleteParams, ListParams};
use support::process::OperatorProcess;
use support::{TestEnv, fleet, wait_until};
use winflow::api::WindowsTaskIdentity;

const IDENTITIES: usize = 500;

#[tokio::test]
async fn killed_mid_convergence_the_next_operator_finishes_without_duplicates_or_orphans() {
    let env = TestEnv::new("fault-kill").await;
    let kubeconfig = support::kubeconfig_path();
    let operator_args = ["--namespace", env.namespace.as_str()];
    let first = OperatorProcess::start(&kubeconfig, &operator_args, None);
    first.wait_ready().await;

    let started = Instant::now();
    fleet::create_identities(&env, &fleet::names("kill", IDENTITIES), 16).await;
    // Killed once it has done some of the work and much is left.
    let ready_at_kill = wait_until("some identities Ready", Duration::from_secs(300), || async {
        let ready = fleet::ready_count(&env).await;
        (ready >= IDENTITIES / 10).then_some(ready)
    })
    .await;
    let writes_before_kill = first.metric_sum("winflow_api_writes_total{").await;
    first.kill_9();
    println!(
        "killed with {ready_at_kill}/{IDENTITIES} Ready after {:.1} s and {writes_before_kill} writes",
        started.elapsed().as_secs_f64()
    );
    assert!(
        ready_at_kill < IDENTITIES,
        "the kill came too late to interrupt anything"
    );

    let second = OperatorProcess::start(&kubeconfig, &operator_args, None);
    fleet::wait_all_ready(&env, IDENTITIES, Duration::from_secs(600)).await;
    println!(
        "all {IDENTITIES} Ready {:.1} s after the first create; the second operator wrote {} times",
        started.elapsed().as_secs_f64(),
        second.metric_sum("winflow_api_writes_total{").await
    );
    let problems = fleet::child_problems(&env).await;
    assert!(
        problems.is_empty(),
        "{} problems: {:#?}",
        problems.len(),
        &problems[..problems.len().min(20)]
    );
    assert_eq!(fleet::credential_specs(&env).await.len(), IDENTITIES);

    // Deleting them all: the finalizer removes each credential spec (cluster scoped, so no
    // garbage collection would), then the identity goes.
    env.api::<WindowsTaskIdentity>()
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .unwrap();
    wait_until("every identity deleted", Duration::from_secs(600), || async {
        let left = env
            .api::<WindowsTaskIdentity>()
            .list(&ListParams::default())
            .await
            .ok()?;
        left.items.is_empty().then_some(())
    })
    .await;
    let left = fleet::credential_specs(&env).await;
    assert!(left.is_empty(), "{} credential specs left behind", left.len());
    assert!(second.terminate().await, "the second operator stops cleanly");
}
