//! Admission benchmark: webhook latency at fixed request rates, and pod-create latency through
//! the API server with and without the webhook, measured in one run on a local control plane,
//! next to pods reviewed by one call of a webhook that allows at once (what a webhook call
//! costs the API server by itself).
//! The webhook rows send, at each rate, reviews that need no SubjectAccessReview next to pod
//! creates whose creator the webhook asks the API server about: one user every time (cache
//! hits) and a new user every time (misses, allowed through a group's RoleBinding and denied).
//! First, what one review costs as the cluster grows (`review_cost`: a pod of 100 containers
//! at 10 and at 5,000 identities, `WINFLOW_BENCH_REVIEW_IDENTITIES`, and the largest review
//! the webhook accepts).
//! Prints a table and writes target/bench/admission.json. Run (KUBEBUILDER_ASSETS names the
//! control-plane binaries, see hack/bench.sh): `cargo bench --bench admission`.

mod no_op;
mod review_cost;
mod reviews;
mod sar;

use winflow_test_support as support;

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

/// One keep-alive request; returns the HTTP status and the body.
async fn post(stream: &mut BufReader<TlsStream>, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
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
    (
        status_line.split_whitespace().nth(1).unwrap().parse().unwrap(),
        response,
    )
}

/// Whether the webhook answered as the row expects (the reason of its audit annotations).
fn verdict(status: u16, response: &[u8], expect: &str) -> Result<(), String> {
    let review: Value = serde_json::from_slice(response).unwrap_or_default();
    let answer = &review["response"];
    let reason = answer["auditAnnotations"]["reason"].as_str().unwrap_or_default();
    if status == 200 && reason == expect {
        return Ok(());
    }
    let message = answer["status"]["message"].as_str().unwrap_or_default();
    Err(format!(
        "HTTP {status}, reason {reason:?} (expected {expect:?}) {message}"
    ))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One row of the webhook-latency table.
struct Run {
    latencies: Vec<Duration>,
    failed: usize,
    /// The first failure, to show what went wrong.
    first_failure: Option<String>,
    /// Requests per second actually sent (below the rate when the connections fall behind).
    achieved: f64,
    /// The size of one review.
    body_bytes: usize,
}

impl Run {
    fn ms(&self, p: f64) -> Option<f64> {
        (!self.latencies.is_empty()).then(|| ms(percentile(&self.latencies, p)))
    }
}

/// One review of `case`, outside the figures (for a cache hit row, the answer to keep).
async fn warm_up(addr: std::net::SocketAddr, ca_pem: &str, case: &reviews::Case) {
    let mut stream = connect(addr, ca_pem).await;
    let (status, response) = post(&mut stream, "/validate-pods", &case.body(0, 0)).await;
    verdict(status, &response, case.expect).expect("the warm-up review");
}

/// Sends `rate` reviews of `case` per second for a few seconds over keep-alive connections.
async fn admission_at(rate: u32, addr: std::net::SocketAddr, ca_pem: &str, case: &reviews::Case) -> Run {
    let total = (rate * SECONDS_PER_RATE) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    // Every body made before the clock starts (a new user each for misses).
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new((0..total).map(|i| case.body(rate, i)).collect());
    let mut streams = Vec::new();
    for _ in 0..CONNECTIONS {
        streams.push(connect(addr, ca_pem).await);
    }
    let start = Instant::now();
    let mut workers = Vec::new();
    for (worker, mut stream) in streams.into_iter().enumerate() {
        let (bodies, expect) = (bodies.clone(), case.expect);
        workers.push(tokio::spawn(async move {
            let (mut latencies, mut failed, mut first_failure) = (Vec::new(), 0, None);
            for i in (worker..total).step_by(CONNECTIONS) {
                tokio::time::sleep_until((start + interval * i as u32).into()).await;
                let sent = Instant::now();
                let (status, response) = post(&mut stream, "/validate-pods", &bodies[i]).await;
                let took = sent.elapsed();
                match verdict(status, &response, expect) {
                    Ok(()) => latencies.push(took),
                    Err(why) => {
                        failed += 1;
                        first_failure.get_or_insert(why);
                    }
                }
            }
            (latencies, failed, first_failure)
        }));
    }
    let mut run = Run {
        latencies: Vec::new(),
        failed: 0,
        first_failure: None,
        achieved: 0.0,
        body_bytes: bodies[0].len(),
    };
    for worker in workers {
        let (latencies, failed, first_failure) = worker.await.unwrap();
        run.latencies.extend(latencies);
        run.failed += failed;
        run.first_failure = run.first_failure.or(first_failure);
    }
    run.achieved = total as f64 / start.elapsed().as_secs_f64();
    run.latencies.sort();
    run
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
    // Before anything else runs: its identities live in namespaces of their own, which
    // nothing but its webhook watches.
    let review_cost = review_cost::measure().await;

    let env = TestEnv::new("bench-admission").await;
    let operator = env.start_operator(Duration::from_secs(300));
    support::apply_file(&env, "examples/identity-azure-key-vault.yaml").await;
    let _: WindowsTaskIdentity = support::wait_for_condition(&env, "payroll-export", "Ready", "True", None).await;
    let webhook = support::webhook::start_webhook(&env).await;
    sar::grant_use_to_group(&env, "payroll-export", reviews::CREATORS_GROUP).await;

    // The first pod through the API server: the webhook's result is what the reviews below
    // create, and (without winflow's label) what the pods no webhook sees store.
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

    // At each rate, every kind of review in turn: the first needs no SubjectAccessReview and is
    // the baseline of the rate's ratios.
    let cases = reviews::cases(&env.namespace, &admitted);
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for rate in RATES {
        let mut baseline = None;
        for case in &cases {
            if case.warm_up {
                warm_up(webhook.addr, &webhook.ca_pem, case).await;
            }
            let asked_before = sar::answered(&env.client).await;
            let run = admission_at(rate, webhook.addr, &webhook.ca_pem, case).await;
            let asked = sar::answered(&env.client).await - asked_before;
            let (p50, p99) = (run.ms(0.50), run.ms(0.99));
            baseline = baseline.or(p50);
            let over_baseline = p50.zip(baseline).map(|(p50, baseline)| p50 / baseline);
            if let Some(why) = &run.first_failure {
                failures.push(format!(
                    "{rate}/s {}: {} failed, the first: {why}",
                    case.name, run.failed
                ));
            }
            rows.push(
                json!({"rate_per_second": rate, "review": case.name, "body_bytes": run.body_bytes, "requests": run.latencies.len(),
                "failed": run.failed, "achieved_per_second": run.achieved, "subject_access_reviews": asked,
                "p50_ms": p50, "p99_ms": p99, "p50_over_no_sar": over_baseline}),
            );
        }
    }

    // Pod creation through the API server, alternating pods the webhook reviews and pods it
    // never sees, so both sides share the same conditions. The pods it never sees are the
    // webhook's own result (the admitted warm-up pod without winflow's label), so both sides
    // store the same object and differ only in the admission calls. The webhook asks whether
    // the admin may use the identity: an answer it keeps for 10 s, for the mutating and the
    // validating call alike.
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
    let asked_before = sar::answered(&env.client).await;
    let creating = Instant::now();
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
    let creating = creating.elapsed();
    let pod_create_sars = sar::answered(&env.client).await - asked_before;
    with.sort();
    without.sort();
    one_no_op_call.sort();
    let ratio = percentile(&with, 0.5).as_secs_f64() / percentile(&without, 0.5).as_secs_f64();
    let no_op_ratio = percentile(&one_no_op_call, 0.5).as_secs_f64() / percentile(&without, 0.5).as_secs_f64();

    println!(
        "\nadmission webhook latency (/validate-pods, {CONNECTIONS} keep-alive connections, {SECONDS_PER_RATE} s per row)"
    );
    println!(
        "  SARs: SubjectAccessReviews the API server answered during the row; failed: an error or another answer than the row's;"
    );
    println!("  ratio: p50 over the rate's first row (no SAR)");
    let name_width = cases.iter().map(|case| case.name.len()).max().unwrap_or(0);
    let line = |cells: [String; 10]| {
        let [rate, review, rest @ ..] = cells;
        let rest: Vec<String> = rest.iter().map(|cell| format!("{cell:>9}")).collect();
        println!("{rate:>6}  {review:<name_width$}{}", rest.join(""));
    };
    let header = [
        "rate/s", "review", "body B", "requests", "failed", "sent/s", "SARs", "p50 ms", "p99 ms", "ratio",
    ];
    line(header.map(str::to_owned));
    let number = |value: &Value, digits: usize| value.as_f64().map_or("n/a".to_owned(), |v| format!("{v:.digits$}"));
    for row in &rows {
        line([
            number(&row["rate_per_second"], 0),
            row["review"].as_str().unwrap().to_owned(),
            number(&row["body_bytes"], 0),
            number(&row["requests"], 0),
            number(&row["failed"], 0),
            number(&row["achieved_per_second"], 0),
            number(&row["subject_access_reviews"], 0),
            number(&row["p50_ms"], 3),
            number(&row["p99_ms"], 3),
            number(&row["p50_over_no_sar"], 2),
        ]);
    }
    for failure in &failures {
        println!("  {failure}");
    }
    println!(
        "\npod create through the API server ({PODS_PER_SIDE} pods each, alternating; {pod_create_sars} SubjectAccessReview(s) in {:.1} s, the admin's allow is kept 10 s)",
        creating.as_secs_f64()
    );
    println!("{:>16} {:>9} {:>9}", "", "p50 ms", "p99 ms");
    let sides = [
        ("with webhook", &with, "   (SAR path in: cache hits after the first)"),
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
        "review_cost": review_cost,
        "admission": rows,
        "pod_create": {
            "pods_per_side": PODS_PER_SIDE,
            "with_webhook_p50_ms": ms(percentile(&with, 0.5)), "with_webhook_p99_ms": ms(percentile(&with, 0.99)),
            "without_webhook_p50_ms": ms(percentile(&without, 0.5)), "without_webhook_p99_ms": ms(percentile(&without, 0.99)),
            "p50_ratio": ratio,
            "subject_access_reviews": pod_create_sars,
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
