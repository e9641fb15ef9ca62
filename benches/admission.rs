//! Admission benchmark: webhook latency at fixed request rates, and pod-create latency through
//! the API server with and without the webhook, measured in one run on a local control plane,
//! next to pods reviewed by one call of a webhook that allows at once (what a webhook call
//! costs the API server by itself).
//! Prints a table and writes target/bench/admission.json. Run: `cargo bench --bench admission`.

#[path = "admission/no_op.rs"]
mod no_op;
#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use kube::{Api, ResourceExt};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use serde_json::{Value, json};
use support::TestEnv;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use winflow::api::WindowsTaskIdentity;

const RATES: [u32; 2] = [100, 500];
const SECONDS_PER_RATE: u32 = 5;
const PODS_PER_SIDE: usize = 100;
/// Connections the load spreads over, as an API server keeps several open.
const CONNECTIONS: usize = 8;

fn review_body() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "4d3c2b1a-0000-4000-8000-000000000001",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "bench", "namespace": "bench", "operation": "CREATE", "userInfo": {},
            "object": {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "bench", "labels": {"winflow.io/identity": "payroll-export", "dag_id": "payroll_export", "task_id": "upload"}},
                "spec": {"containers": [{"name": "base", "image": "registry.example.com/payroll/export-win:2.0"}]}}}
    }))
    .unwrap()
}

type TlsStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn connect(addr: std::net::SocketAddr, ca_pem: &str) -> BufReader<TlsStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config));
    BufReader::new(
        tls.connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
            .unwrap(),
    )
}

/// One keep-alive request; returns the HTTP status.
async fn post(stream: &mut BufReader<TlsStream>, path: &str, body: &[u8]) -> u16 {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    stream.get_mut().write_all(&request).await.unwrap();
    // rustls may hold encrypted bytes until flushed.
    stream.get_mut().flush().await.unwrap();
    let mut status_line = String::new();
    stream.read_line(&mut status_line).await.unwrap();
    let mut length = 0;
    loop {
        let mut line = String::new();
        stream.read_line(&mut line).await.unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().unwrap();
        }
    }
    let mut response = vec![0; length];
    stream.read_exact(&mut response).await.unwrap();
    status_line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Sends `rate` requests per second for a few seconds over keep-alive connections; latencies.
async fn admission_at(rate: u32, addr: std::net::SocketAddr, ca_pem: &str) -> (Vec<Duration>, usize) {
    let total = (rate * SECONDS_PER_RATE) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now();
    let body = Arc::new(review_body());
    let mut workers = Vec::new();
    for worker in 0..CONNECTIONS {
        let body = body.clone();
        let mut stream = connect(addr, ca_pem).await;
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = 0;
            for i in (worker..total).step_by(CONNECTIONS) {
                tokio::time::sleep_until((start + interval * i as u32).into()).await;
                let sent = Instant::now();
                if post(&mut stream, "/validate-pods", &body).await == 200 {
                    latencies.push(sent.elapsed());
                } else {
                    failures += 1;
                }
            }
            (latencies, failures)
        }));
    }
    let mut latencies = Vec::new();
    let mut failures = 0;
    for worker in workers {
        let (l, f) = worker.await.unwrap();
        latencies.extend(l);
        failures += f;
    }
    latencies.sort();
    (latencies, failures)
}

/// A task pod of the identity's DAG, as Airflow would create it.
fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"winflow.io/identity": "payroll-export", "dag_id": "payroll_export", "task_id": "upload"}},
        "spec": {"automountServiceAccountToken": false, "serviceAccountName": "payroll-export",
                 "containers": [{"name": "base", "image": "registry.example.com/payroll/export-win:2.0"}]}
    }))
    .unwrap()
}

/// The pod the webhook admitted, under another name and without winflow's label, so that
/// no webhook reviews it.
fn unreviewed_copy(admitted: &Pod, name: &str) -> Pod {
    let mut labels = admitted.metadata.labels.clone().unwrap_or_default();
    labels.remove("winflow.io/identity");
    Pod {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(labels),
            annotations: admitted.metadata.annotations.clone(),
            ..Default::default()
        },
        spec: admitted.spec.clone(),
        status: None,
    }
}

/// Creates pods until the no-op webhook has reviewed one (its registration takes effect
/// once the API server has seen it).
async fn wait_until_reviewed(pods: &Api<Pod>, no_op: &no_op::NoOpWebhook, pod: impl Fn(&str) -> Pod) {
    let deadline = Instant::now() + Duration::from_secs(60);
    for attempt in 0.. {
        pods.create(&PostParams::default(), &pod(&format!("no-op-warmup-{attempt}")))
            .await
            .unwrap();
        if no_op.reviews.load(std::sync::atomic::Ordering::Relaxed) > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the no-op webhook was never called");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::main]
async fn main() {
    let env = TestEnv::new("bench-admission").await;
    let operator = env.start_operator(Duration::from_secs(300));
    support::apply_file(&env, "examples/identity-azure-key-vault.yaml").await;
    let _: WindowsTaskIdentity = support::wait_for_condition(&env, "payroll-export", "Ready", "True", None).await;
    let webhook = support::webhook::start_webhook(&env).await;

    let mut rows = Vec::new();
    for rate in RATES {
        let (latencies, failures) = admission_at(rate, webhook.addr, &webhook.ca_pem).await;
        rows.push(
            json!({"rate_per_second": rate, "requests": latencies.len(), "failed": failures,
            "p50_ms": ms(percentile(&latencies, 0.50)), "p99_ms": ms(percentile(&latencies, 0.99))}),
        );
    }

    // Pod creation through the API server, alternating pods the webhook reviews and pods it
    // never sees, so both sides share the same conditions. The pods it never sees are the
    // webhook's own result (the admitted warm-up pod without winflow's label), so both sides
    // store the same object and differ only in the admission calls.
    let pods: Api<Pod> = env.api();
    let probe_deadline = Instant::now() + Duration::from_secs(60);
    let admitted = loop {
        match pods.create(&PostParams::default(), &pod("warmup")).await {
            Ok(admitted) => break admitted,
            Err(_) => {
                assert!(Instant::now() < probe_deadline, "the webhook never admitted a pod");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    // A third side: the same stored pod through one call of a webhook that allows at once,
    // which is what one call costs the API server with a webhook that costs nothing.
    let no_op = no_op::start(&env).await;
    let no_op_pod = |name: &str| {
        let mut pod = unreviewed_copy(&admitted, name);
        pod.labels_mut().insert(no_op::LABEL.to_owned(), "true".to_owned());
        pod
    };
    wait_until_reviewed(&pods, &no_op, no_op_pod).await;
    let (mut with, mut without, mut one_no_op_call) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..PODS_PER_SIDE {
        let sides = [
            (pod(&format!("with-{i}")), &mut with),
            (unreviewed_copy(&admitted, &format!("without-{i}")), &mut without),
            (no_op_pod(&format!("no-op-{i}")), &mut one_no_op_call),
        ];
        for (object, sink) in sides {
            let started = Instant::now();
            pods.create(&PostParams::default(), &object).await.unwrap();
            sink.push(started.elapsed());
        }
    }
    with.sort();
    without.sort();
    one_no_op_call.sort();
    let ratio = percentile(&with, 0.5).as_secs_f64() / percentile(&without, 0.5).as_secs_f64();
    let no_op_ratio = percentile(&one_no_op_call, 0.5).as_secs_f64() / percentile(&without, 0.5).as_secs_f64();

    println!("\nadmission webhook latency ({CONNECTIONS} keep-alive connections, {SECONDS_PER_RATE} s per rate)");
    println!(
        "{:>10} {:>9} {:>7} {:>9} {:>9}",
        "rate/s", "requests", "failed", "p50 ms", "p99 ms"
    );
    for row in &rows {
        println!(
            "{:>10} {:>9} {:>7} {:>9.3} {:>9.3}",
            row["rate_per_second"],
            row["requests"],
            row["failed"],
            row["p50_ms"].as_f64().unwrap(),
            row["p99_ms"].as_f64().unwrap()
        );
    }
    println!("\npod create through the API server ({PODS_PER_SIDE} pods each, alternating)");
    println!("{:>16} {:>9} {:>9}", "", "p50 ms", "p99 ms");
    let sides = [
        ("with webhook", &with, ""),
        ("without webhook", &without, ""),
        (
            "one no-op call",
            &one_no_op_call,
            "   (one call of a webhook that allows at once)",
        ),
    ];
    for (side, latencies, remark) in sides {
        let (p50, p99) = (ms(percentile(latencies, 0.5)), ms(percentile(latencies, 0.99)));
        println!("{side:>16} {p50:>9.2} {p99:>9.2}{remark}");
    }
    println!("{:>16} {:>9.2}   (target <= 1.10)", "p50 ratio", ratio);
    println!(
        "{:>16} {:>9.2}   (one no-op call: the least any webhook adds here)",
        "p50 ratio", no_op_ratio
    );

    let report: Value = json!({
        "admission": rows,
        "pod_create": {
            "pods_per_side": PODS_PER_SIDE,
            "with_webhook_p50_ms": ms(percentile(&with, 0.5)), "with_webhook_p99_ms": ms(percentile(&with, 0.99)),
            "without_webhook_p50_ms": ms(percentile(&without, 0.5)), "without_webhook_p99_ms": ms(percentile(&without, 0.99)),
            "p50_ratio": ratio,
            "one_no_op_webhook_call_p50_ms": ms(percentile(&one_no_op_call, 0.5)),
            "one_no_op_webhook_call_p99_ms": ms(percentile(&one_no_op_call, 0.99)),
            "one_no_op_webhook_call_p50_ratio": no_op_ratio
        }
    });
    let dir = std::path::Path::new(support::REPO).join("target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("admission.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .unwrap();
    println!("\nwritten: target/bench/admission.json");
    drop(webhook);
    operator.stop().await;
}
