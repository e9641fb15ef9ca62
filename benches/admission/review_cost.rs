//! What one review costs as the cluster grows: the webhook (its real server, handler and
//! caches, fed by the API server) reviews a pod of 100 containers in a namespace holding 10
//! identities and again in one holding thousands, and then the largest review it accepts (a
//! body of containers just under the 4 MiB limit). Every container reaches for Secrets and sets
//! gMSA contents, so every index the review reads is read per container; none of it belongs
//! to winflow, so every review is allowed after every check.

use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};
use winflow::api::WindowsTaskIdentity;

use crate::support::{self, TestEnv};
use crate::{connect, ms, percentile, post, verdict};

/// Containers of the pod reviewed at each cluster size.
const CONTAINERS: usize = 100;
/// Reviews of that pod per cluster size, one at a time on one keep-alive connection.
const REVIEWS: usize = 300;
/// Reviews sent first, outside the figures (the first connection, the caches' first reads).
const WARM_UP_REVIEWS: usize = 100;
/// Reviews of the largest pod.
const LARGEST_REVIEWS: usize = 5;
/// The webhook's body limit (src/webhook/server.rs).
const MAX_BODY: usize = 4 * 1024 * 1024;
/// Identity creates in flight.
const CREATES_IN_FLIGHT: usize = 32;

/// Cluster sizes: `WINFLOW_BENCH_REVIEW_IDENTITIES` (comma-separated), 10 and 5,000 by default.
pub fn sizes() -> Vec<usize> {
    std::env::var("WINFLOW_BENCH_REVIEW_IDENTITIES")
        .unwrap_or_else(|_| "10,5000".to_owned())
        .split(',')
        .map(|n| n.trim().parse().expect("WINFLOW_BENCH_REVIEW_IDENTITIES: numbers"))
        .collect()
}

/// One container that reaches for a Secret three ways and names a gMSA that is not winflow's.
fn container(i: usize) -> Value {
    let content = json!({
        "CmsPlugins": ["ActiveDirectory"],
        "DomainJoinConfig": {"Sid": "S-1-5-21-1-2-3", "MachineAccountName": format!("webapp-{i}"),
            "Guid": "244818ae-87ca-4fcd-92ec-e79e5252348a", "DnsTreeName": "corp.example.com",
            "DnsName": "corp.example.com", "NetBiosName": "CORP"},
        "ActiveDirectoryConfig": {"GroupManagedServiceAccounts": [
            {"Name": format!("webapp-{i}"), "Scope": "corp.example.com"},
            {"Name": format!("webapp-{i}"), "Scope": "CORP"}]}
    });
    json!({
        "name": format!("c{i}"),
        "image": "registry.example.com/tools/app:1.0",
        "env": [{"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": format!("app-secret-{i}"), "key": "password"}}}],
        "envFrom": [{"secretRef": {"name": format!("app-env-{i}")}}],
        "volumeMounts": [{"name": format!("files-{i}"), "mountPath": "C:\\files"}],
        "securityContext": {"windowsOptions": {
            "gmsaCredentialSpecName": format!("apps.webapp-{i}"),
            "gmsaCredentialSpec": content.to_string()}}
    })
}

fn review(namespace: &str, containers: usize) -> Vec<u8> {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "wide", "namespace": namespace, "labels": {"app": "wide"}},
        "spec": {
            "containers": (0..containers).map(container).collect::<Vec<_>>(),
            "volumes": (0..containers).map(|i| json!({"name": format!("files-{i}"), "secret": {"secretName": format!("app-files-{i}")}})).collect::<Vec<_>>(),
        }
    });
    serde_json::to_vec(
        &json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "7e0c3b1a-0000-4000-8000-000000000001",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "name": "wide", "namespace": namespace, "operation": "CREATE",
        "userInfo": {"username": "bench-user", "groups": ["system:authenticated"]},
        "object": pod}}),
    )
    .unwrap()
}

/// The review with the most containers whose body stays under the webhook's limit.
fn largest_review(namespace: &str) -> (usize, Vec<u8>) {
    let per_container = review(namespace, 2).len() - review(namespace, 1).len();
    let mut containers = (MAX_BODY - review(namespace, 0).len()) / per_container;
    loop {
        let body = review(namespace, containers);
        if body.len() <= MAX_BODY {
            return (containers, body);
        }
        containers -= 1;
    }
}

/// `count` identities in `env`'s namespace, each with its own gMSA account.
async fn create_identities(env: &TestEnv, count: usize) -> Duration {
    let text =
        std::fs::read_to_string(std::path::Path::new(support::REPO).join("examples/identity-azure-key-vault.yaml"))
            .unwrap();
    let template: WindowsTaskIdentity = serde_yaml_ng::from_str(&text).unwrap();
    let api: Api<WindowsTaskIdentity> = env.api();
    let started = Instant::now();
    futures::stream::iter(0..count)
        .map(|i| {
            let mut identity = template.clone();
            identity.metadata.name = Some(format!("cost-{i}"));
            identity.spec.service_account.name = format!("cost-{i}");
            identity.spec.gmsa.account = format!("svc-cost-{i}");
            let api = api.clone();
            async move { api.create(&PostParams::default(), &identity).await.map(|_| ()) }
        })
        .buffer_unordered(CREATES_IN_FLIGHT)
        .try_collect::<Vec<()>>()
        .await
        .expect("identities created");
    started.elapsed()
}

/// Sends `body` `times` times on one connection; the sorted latencies.
async fn timed(addr: std::net::SocketAddr, ca_pem: &str, body: &[u8], times: usize) -> Vec<Duration> {
    let mut stream = connect(addr, ca_pem).await;
    let mut latencies = Vec::with_capacity(times);
    for _ in 0..times {
        let sent = Instant::now();
        let (status, response) = post(&mut stream, "/validate-pods", body).await;
        let took = sent.elapsed();
        verdict(status, &response, "Allowed").expect("the review is allowed");
        latencies.push(took);
    }
    latencies.sort();
    latencies
}

/// Measures each cluster size, then the largest review at the largest size; prints the
/// table and returns the report's `review_cost` section.
pub async fn measure() -> Value {
    let mut rows = Vec::new();
    let mut largest = Value::Null;
    let sizes = sizes();
    let biggest = sizes.iter().copied().max().unwrap_or(0);
    for identities in sizes {
        let env = TestEnv::new(&format!("bench-review-cost-{identities}")).await;
        let created = create_identities(&env, identities).await;
        let certs = tempfile::tempdir().unwrap();
        let ca_pem = support::webhook::write_certificates(certs.path());
        let served = support::webhook::serve(&env, certs.path(), Duration::from_secs(60), "bench").await;

        let body = review(&env.namespace, CONTAINERS);
        timed(served.addr, &ca_pem, &body, WARM_UP_REVIEWS).await;
        let latencies = timed(served.addr, &ca_pem, &body, REVIEWS).await;
        rows.push(json!({
            "identities": identities, "containers": CONTAINERS, "reviews": REVIEWS, "body_bytes": body.len(),
            "create_seconds": created.as_secs_f64(),
            "p50_ms": ms(percentile(&latencies, 0.5)), "p99_ms": ms(percentile(&latencies, 0.99)),
        }));

        if identities == biggest {
            let (containers, body) = largest_review(&env.namespace);
            let latencies = timed(served.addr, &ca_pem, &body, LARGEST_REVIEWS).await;
            largest = json!({
                "identities": identities, "containers": containers, "body_bytes": body.len(),
                "reviews": LARGEST_REVIEWS,
                "p50_ms": ms(percentile(&latencies, 0.5)), "max_ms": ms(*latencies.last().unwrap()),
            });
        }
        let _ = served.stop.send(());
        let _ = served.task.await;
    }
    let ratio = match (rows.first(), rows.last()) {
        (Some(small), Some(large)) if rows.len() > 1 => large["p99_ms"]
            .as_f64()
            .zip(small["p99_ms"].as_f64())
            .map(|(l, s)| l / s),
        _ => None,
    };

    println!(
        "\nreview cost (/validate-pods, unlabelled pod, every container reaching for Secrets and a gMSA; one connection)"
    );
    println!(
        "{:>11} {:>11} {:>9} {:>9} {:>9} {:>13}",
        "identities", "containers", "body B", "p50 ms", "p99 ms", "created in s"
    );
    for row in &rows {
        let count = |key: &str| row[key].as_u64().unwrap();
        println!(
            "{:>11} {:>11} {:>9} {:>9.3} {:>9.3} {:>13.1}",
            count("identities"),
            count("containers"),
            count("body_bytes"),
            row["p50_ms"].as_f64().unwrap(),
            row["p99_ms"].as_f64().unwrap(),
            row["create_seconds"].as_f64().unwrap()
        );
    }
    if let Some(ratio) = ratio {
        println!(
            "{:>11} {ratio:.2}   (target: within 2x, and p99 under 5 ms)",
            "p99 ratio"
        );
    }
    if !largest.is_null() {
        println!(
            "largest accepted review: {} containers, {} bytes, at {} identities: p50 {:.1} ms, max {:.1} ms of {} reviews (deadline 5000 ms)",
            largest["containers"],
            largest["body_bytes"],
            largest["identities"],
            largest["p50_ms"].as_f64().unwrap(),
            largest["max_ms"].as_f64().unwrap(),
            largest["reviews"]
        );
    }
    json!({"rows": rows, "p99_ratio": ratio, "largest": largest})
}
