//! High availability on a real API server: replicas elect a leader on a Lease; only the leader
//! reconciles; a crashed leader is replaced within the lease duration; a stolen lease stops
//! reconciling at once; a graceful shutdown hands over without waiting; every replica serves
//! the webhook.

use winflow_test_support as support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::PostParams;
use serde_json::json;
use support::{TestEnv, wait_until};
use winflow::admin::Readiness;
use winflow::api::WindowsTaskIdentity;
use winflow::controller::{self, Context, ControllerConfig};
use winflow::leader::{self, LeaseSettings};
use winflow::metrics::Metrics;

const LEASE: &str = "winflow-test";
const DURATION: Duration = Duration::from_secs(3);

/// One operator replica: leader election around the controllers, as `winflow run --leader-elect`.
struct Replica {
    metrics: Metrics,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Replica {
    fn start(env: &TestEnv, name: &str) -> Replica {
        let metrics = Metrics::default();
        let settings = LeaseSettings {
            namespace: env.namespace.clone(),
            name: LEASE.to_owned(),
            identity: name.to_owned(),
            duration: DURATION,
        };
        let config = ControllerConfig {
            namespace: Some(env.namespace.clone()),
            instance: name.to_owned(),
            ..ControllerConfig::default()
        };
        let (client, lead_metrics) = (env.client.clone(), metrics.clone());
        let lead = move |stop: tokio::sync::oneshot::Receiver<()>| {
            let ctx = Arc::new(Context::new(client.clone(), lead_metrics.clone(), config.clone()));
            controller::run_all(ctx, Readiness::expecting(controller::READINESS_PARTS), async move {
                let _ = stop.await;
            })
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(leader::run(
            env.client.clone(),
            settings,
            metrics.clone(),
            Readiness::expecting(1),
            async move {
                let _ = stopped.await;
            },
            lead,
        ));
        Replica {
            metrics,
            stop: Some(stop),
            task,
        }
    }

    fn metric(&self, prefix: &str) -> u64 {
        support::metric_sum(&self.metrics, prefix)
    }

    fn leads(&self) -> bool {
        self.metric("winflow_leader ") == 1
    }

    fn reconciles(&self) -> u64 {
        self.metric("winflow_reconciles_total{")
    }

    /// SIGTERM: stop reconciling and release the lease.
    async fn shut_down(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the replica stops")
            .unwrap();
    }

    /// A crash: nothing is released.
    fn crash(self) {
        self.task.abort();
    }
}

async fn identity(env: &TestEnv, name: &str) {
    let text = std::fs::read_to_string(format!("{}/examples/identity-azure-key-vault.yaml", support::REPO)).unwrap();
    let mut identity: WindowsTaskIdentity = serde_yaml_ng::from_str(&text).unwrap();
    identity.metadata.name = Some(name.to_owned());
    identity.spec.service_account.name = name.to_owned();
    env.api::<WindowsTaskIdentity>()
        .create(&PostParams::default(), &identity)
        .await
        .unwrap();
}

async fn holder(env: &TestEnv) -> Option<String> {
    env.api::<Lease>()
        .get(LEASE)
        .await
        .ok()?
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

#[tokio::test]
async fn only_the_leader_reconciles_and_leadership_moves_on_crash_theft_and_shutdown() {
    let env = TestEnv::new("leader").await;
    let a = Replica::start(&env, "replica-a");
    wait_until("replica-a leads", Duration::from_secs(30), || async {
        a.leads().then_some(())
    })
    .await;
    let b = Replica::start(&env, "replica-b");
    identity(&env, "first").await;
    let _: WindowsTaskIdentity = support::wait_for_condition(&env, "first", "Ready", "True", None).await;
    // The metric is counted as the reconcile returns, just after its status write.
    wait_until("replica-a counts its reconciles", Duration::from_secs(10), || async {
        (a.reconciles() > 0).then_some(())
    })
    .await;
    assert_eq!(b.reconciles(), 0, "the follower does not reconcile");
    assert!(!b.leads());
    assert_eq!(holder(&env).await.as_deref(), Some("replica-a"));

    // A crashed leader is replaced within the lease duration, and the new leader converges.
    let crashed = Instant::now();
    a.crash();
    wait_until("replica-b takes over", Duration::from_secs(30), || async {
        b.leads().then_some(())
    })
    .await;
    let handover = crashed.elapsed();
    println!("crash handover: {handover:?} (lease duration {DURATION:?})");
    assert!(handover <= DURATION + Duration::from_secs(2), "{handover:?}");
    identity(&env, "second").await;
    let _: WindowsTaskIdentity = support::wait_for_condition(&env, "second", "Ready", "True", None).await;
    wait_until("replica-b counts its reconciles", Duration::from_secs(10), || async {
        (b.reconciles() > 0).then_some(())
    })
    .await;

    // Someone else takes the lease: the leader stops reconciling at once.
    let leases = env.api::<Lease>();
    let mut lease = leases.get(LEASE).await.unwrap();
    let spec = lease.spec.as_mut().unwrap();
    spec.holder_identity = Some("intruder".to_owned());
    spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
    leases.replace(LEASE, &PostParams::default(), &lease).await.unwrap();
    let stolen = Instant::now();
    wait_until("replica-b steps down", Duration::from_secs(10), || async {
        (!b.leads()).then_some(())
    })
    .await;
    println!("stepped down {:?} after the lease was taken", stolen.elapsed());
    let before = b.reconciles();
    identity(&env, "third").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let third = env.api::<WindowsTaskIdentity>().get("third").await.unwrap();
    assert!(
        third.status.is_none(),
        "nobody reconciles while the intruder holds the lease"
    );
    assert_eq!(b.reconciles(), before);
    // The intruder never renews: replica-b takes the lease back once it expires.
    let _: WindowsTaskIdentity = support::wait_for_condition(&env, "third", "Ready", "True", None).await;
    assert!(b.leads());

    // A graceful shutdown releases the lease: the next replica leads without waiting for expiry.
    let c = Replica::start(&env, "replica-c");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!c.leads());
    let released = Instant::now();
    b.shut_down().await;
    // Released, not left to expire: no holder, or already the next replica.
    let after = holder(&env).await;
    assert!(after.is_none() || after.as_deref() == Some("replica-c"), "{after:?}");
    wait_until("replica-c leads", Duration::from_secs(30), || async {
        c.leads().then_some(())
    })
    .await;
    let handover = released.elapsed();
    println!("graceful handover: {handover:?}");
    assert!(
        handover < DURATION,
        "a released lease is taken before it would expire: {handover:?}"
    );
    let lease = leases.get(LEASE).await.unwrap();
    assert_eq!(
        lease.spec.as_ref().unwrap().holder_identity.as_deref(),
        Some("replica-c")
    );
    assert!(
        lease.spec.unwrap().lease_transitions.unwrap() >= 3,
        "a → b → (intruder) → b → c"
    );
    c.shut_down().await;
    assert_eq!(holder(&env).await, None, "released on shutdown");
}

/// Both replicas' webhooks answer, whoever leads.
#[tokio::test]
async fn every_replica_serves_the_webhook() {
    let env = TestEnv::new("leader-webhook").await;
    let certs = tempfile::tempdir().unwrap();
    let ca = support::webhook::write_certificates(certs.path());
    let mut addresses = Vec::new();
    for instance in ["replica-a", "replica-b"] {
        let settings = winflow::webhook::WebhookSettings {
            addr: "127.0.0.1:0".parse().unwrap(),
            cert_dir: certs.path().to_owned(),
            reload_interval: Duration::from_secs(1),
            namespace: Some(env.namespace.clone()),
            instance: instance.to_owned(),
            client_ca: None,
        };
        let (addr, _task) = winflow::webhook::start(
            env.client.clone(),
            settings,
            Metrics::default(),
            Readiness::expecting(1),
            std::future::pending(),
        )
        .await
        .unwrap();
        addresses.push(addr);
    }
    let a = Replica::start(&env, "replica-a");
    let b = Replica::start(&env, "replica-b");
    identity(&env, "served").await;
    let _: WindowsTaskIdentity = support::wait_for_condition(&env, "served", "Ready", "True", None).await;
    assert_ne!(a.leads(), b.leads(), "exactly one leads");

    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .build()
        .unwrap();
    let review = |dag: &str| {
        json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "1f0e2d3c-0000-4000-8000-000000000001",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "name": "task", "namespace": env.namespace, "operation": "CREATE",
                // The Airflow worker, a creator the example identity lists in spec.access.
                "userInfo": {"username": format!("system:serviceaccount:{}:airflow-worker", env.namespace)},
                "object": {"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": "task", "namespace": env.namespace,
                        "labels": {"winflow.io/identity": "served", "dag_id": dag, "task_id": "upload"}},
                    "spec": {"serviceAccountName": "served", "containers": [{"name": "base", "image": "example/win:1"}]}}}
        })
    };
    for addr in &addresses {
        for (dag, allowed) in [("payroll_export", true), ("payroll_cleanup", false)] {
            let answer = wait_until("the webhook knows the identity", Duration::from_secs(30), || async {
                let response: serde_json::Value = http
                    .post(format!("https://{addr}/validate-pods"))
                    .json(&review(dag))
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                // The replica's identity cache follows its own watch: until that has shown the
                // identity Ready (the test saw it through the API server), it says so.
                let message = response["response"]["status"]["message"].as_str().unwrap_or_default();
                (!message.contains("does not exist") && !message.contains("is not Ready")).then_some(response)
            })
            .await;
            assert_eq!(answer["response"]["allowed"], allowed, "{addr} {dag}: {answer}");
        }
    }
    a.shut_down().await;
    b.shut_down().await;
}

/// `kill -9` of the leader process, again and again while identities converge: each time the
/// other replica takes over and a fresh one joins. In the end every identity is Ready with
/// exactly its children, and the API server's audit log shows that the replicas' writes never
/// overlapped in time: one writer at a time.
#[tokio::test]
async fn leaders_killed_repeatedly_hand_over_and_never_write_at_the_same_time() {
    use support::audit::{self, AuditedWrite};
    use support::fleet;
    use support::process::{OperatorProcess, kubeconfig_acting_as};

    const KILLS: usize = 5;
    const IDENTITIES: usize = 150;
    let env = TestEnv::new("leader-kills").await;
    let dir = tempfile::tempdir().unwrap();
    let lease = "winflow-kills";
    let start = |n: usize| {
        let user = format!("{}-replica-{n}", env.namespace);
        let kubeconfig = kubeconfig_acting_as(&support::kubeconfig_path(), dir.path(), &user);
        let args = [
            "--namespace",
            env.namespace.as_str(),
            "--leader-elect",
            "--operator-namespace",
            env.namespace.as_str(),
            "--lease-name",
            lease,
            "--lease-duration",
            "3s",
            "--instance",
            user.as_str(),
        ];
        (user.clone(), OperatorProcess::start(&kubeconfig, &args, None))
    };
    let mut replicas = vec![start(0), start(1)];
    fleet::create_identities(&env, &fleet::names("kills", IDENTITIES), 16).await;
    let leases = env.api::<Lease>();
    let mut killed = Vec::new();
    for n in 0..KILLS {
        // Wait for a leader that is not one already killed, let it work, then kill it.
        let leader = wait_until("a live leader", Duration::from_secs(30), || async {
            let holder = leases.get(lease).await.ok()?.spec?.holder_identity?;
            replicas.iter().any(|(user, _)| *user == holder).then_some(holder)
        })
        .await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let index = replicas.iter().position(|(user, _)| *user == leader).unwrap();
        let (user, process) = replicas.remove(index);
        process.kill_9();
        println!("kill {n}: {user} with {} Ready", fleet::ready_count(&env).await);
        killed.push(user);
        replicas.push(start(KILLS + n + 2));
    }
    // Work for the last leader too: the first ones may have converged everything already, and
    // a leader over converged identities (rightly) writes nothing.
    const LAST: usize = 10;
    fleet::create_identities(&env, &fleet::names("last", LAST), 4).await;
    fleet::wait_all_ready(&env, IDENTITIES + LAST, Duration::from_secs(300)).await;
    let problems = fleet::child_problems(&env).await;
    assert!(problems.is_empty(), "{problems:#?}");

    // Writes per replica, leases aside (every replica tries to take the lease).
    let mut by_replica: std::collections::BTreeMap<String, Vec<AuditedWrite>> = Default::default();
    for write in audit::writes(&support::audit_log_path()) {
        if write.user.starts_with(&format!("{}-replica-", env.namespace)) && write.resource != "leases" {
            by_replica.entry(write.user.clone()).or_default().push(write);
        }
    }
    let mut spans: Vec<(jiff::Timestamp, jiff::Timestamp, String, usize)> = by_replica
        .iter()
        .map(|(user, writes)| {
            let first = writes.iter().map(|w| w.received).min().unwrap();
            let last = writes.iter().map(|w| w.completed).max().unwrap();
            (first, last, user.clone(), writes.len())
        })
        .collect();
    spans.sort();
    for (first, last, user, count) in &spans {
        println!("{user}: {count} writes from {first} to {last}");
    }
    assert!(
        spans.len() > KILLS,
        "each killed leader and its successor wrote: {spans:?}"
    );
    for pair in spans.windows(2) {
        assert!(
            pair[0].1 <= pair[1].0,
            "{} wrote until {} but {} began at {}",
            pair[0].2,
            pair[0].1,
            pair[1].2,
            pair[1].0
        );
    }
    for (_, process) in replicas {
        assert!(process.terminate().await, "a replica stops cleanly");
    }
}
