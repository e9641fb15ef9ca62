use std::sync::Mutex;
use std::time::Instant;

use rustls::pki_types::ServerName;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::test_harness::*;
use super::*;

#[tokio::test]
async fn a_pod_review_reaches_the_handler_and_is_answered() {
    let (running, pki, _dir) = serve().await;
    let connector = pki.connector();

    for (path, uid) in [
        ("/mutate-pods", "mutate-1"),
        ("/validate-pods", "validate-1"),
        ("/validate-gmsa", "gmsa-1"),
    ] {
        let json_utf8 = "application/json; charset=utf-8";
        let reply = send(
            running.addr,
            &connector,
            &request("POST", path, json_utf8, &pod_review(uid)),
        )
        .await
        .unwrap();
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.content_type, "application/json");
        let review: Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(review["kind"], "AdmissionReview");
        assert_eq!(review["response"]["uid"], uid);
        assert_eq!(review["response"]["allowed"], true);
    }
    assert_eq!(
        *running.recorder.kinds.lock().unwrap(),
        [ReviewKind::Mutate, ReviewKind::Validate, ReviewKind::ValidateGmsa]
    );
}

/// A review recorded from a Kubernetes 1.36 API server (tests/data/k8s-1.36-reviews/).
fn recorded(file: &str) -> Vec<u8> {
    let path = format!("{}/tests/data/k8s-1.36-reviews/{file}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[tokio::test]
async fn exec_attach_and_port_forward_reviews_reach_only_the_connect_endpoint() {
    let (running, pki, _dir) = serve().await;
    let connector = pki.connector();
    let mut port_forward: Value = serde_json::from_slice(&recorded("06-validate-connect-attach.json")).unwrap();
    let forwarded = &mut port_forward["request"];
    for key in ["kind", "requestKind"] {
        forwarded[key]["kind"] = json!("PodPortForwardOptions");
    }
    forwarded["object"] = json!({"apiVersion": "v1", "kind": "PodPortForwardOptions", "ports": [8080]});
    forwarded["subResource"] = json!("portforward");
    forwarded["requestSubResource"] = json!("portforward");
    let reviews = [
        recorded("04-validate-connect-exec.json"),
        recorded("06-validate-connect-attach.json"),
        serde_json::to_vec(&port_forward).unwrap(),
    ];
    for review in &reviews {
        let reply = send(
            running.addr,
            &connector,
            &request("POST", "/validate-connect", "application/json", review),
        )
        .await
        .unwrap();
        assert_eq!(reply.status, 200, "{reply:?}");
        let answer: Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(answer["response"]["allowed"], true);
        // The pod endpoints take no CONNECT subresource.
        let reply = send(
            running.addr,
            &connector,
            &request("POST", "/validate-pods", "application/json", review),
        )
        .await
        .unwrap();
        assert_eq!(reply.status, 400, "{reply:?}");
        assert!(reply.body.contains("only pods are reviewed"), "{reply:?}");
    }
    // Nor does the connect endpoint take a pod.
    let reply = send(
        running.addr,
        &connector,
        &request("POST", "/validate-connect", "application/json", &pod_review("p")),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 400, "{reply:?}");
    assert!(reply.body.contains("\"portforward\""), "{reply:?}");
    assert_eq!(
        *running.recorder.kinds.lock().unwrap(),
        [ReviewKind::ValidateConnect; 3]
    );
}

#[tokio::test]
async fn bad_requests_are_refused_with_the_reason_and_the_server_keeps_serving() {
    let (running, pki, _dir) = serve().await;
    let connector = pki.connector();
    let huge = vec![b' '; 5 * 1024 * 1024];
    let config_map = review_of(
        "cm",
        "",
        "v1",
        "ConfigMap",
        "configmaps",
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}),
    );
    let pod_metrics = review_of(
        "metrics",
        "metrics.k8s.io",
        "v1beta1",
        "PodMetrics",
        "pods",
        json!({"apiVersion": "metrics.k8s.io/v1beta1", "kind": "PodMetrics", "metadata": {"name": "p"}}),
    );
    let mut pod_status: Value = serde_json::from_slice(&pod_review("status")).unwrap();
    pod_status["request"]["subResource"] = json!("status");
    let mut old_version: Value = serde_json::from_slice(&pod_review("v1beta1")).unwrap();
    old_version["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let no_request = br#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}"#;

    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "wrong content type",
            request("POST", "/mutate-pods", "text/plain", &pod_review("t")),
            415,
            "application/json",
        ),
        (
            "no content type",
            b"POST /mutate-pods HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}".to_vec(),
            415,
            "application/json",
        ),
        (
            "declared 5 MiB body",
            request("POST", "/mutate-pods", "application/json", &huge),
            413,
            "at most 4194304 bytes",
        ),
        (
            "chunked 5 MiB body",
            chunked_request("/validate-pods", &huge),
            413,
            "at most 4194304 bytes",
        ),
        (
            "garbage",
            request("POST", "/validate-pods", "application/json", b"not json"),
            400,
            "not an AdmissionReview",
        ),
        (
            "review without a request",
            request("POST", "/validate-pods", "application/json", no_request),
            400,
            "has no request",
        ),
        (
            "v1beta1 review",
            request(
                "POST",
                "/validate-pods",
                "application/json",
                &serde_json::to_vec(&old_version).unwrap(),
            ),
            400,
            "admission.k8s.io/v1",
        ),
        (
            "review of a ConfigMap",
            request("POST", "/mutate-pods", "application/json", &config_map),
            400,
            "only pods are reviewed",
        ),
        (
            "review of pods in another group",
            request("POST", "/validate-pods", "application/json", &pod_metrics),
            400,
            "only pods are reviewed",
        ),
        (
            "review of pods/status",
            request(
                "POST",
                "/validate-pods",
                "application/json",
                &serde_json::to_vec(&pod_status).unwrap(),
            ),
            400,
            "only pods are reviewed",
        ),
        (
            "GET",
            request("GET", "/mutate-pods", "application/json", b""),
            405,
            "POST",
        ),
        (
            "unknown path",
            request("POST", "/mutate-deployments", "application/json", &pod_review("t")),
            404,
            "/mutate-pods",
        ),
    ];
    for (what, raw, status, says) in cases {
        let reply = send(running.addr, &connector, &raw).await.unwrap();
        assert_eq!(reply.status, status, "{what}: {reply:?}");
        assert!(reply.content_type.starts_with("text/plain"), "{what}: {reply:?}");
        assert!(reply.body.contains(says), "{what}: {reply:?}");
    }

    assert_good(running.addr, &connector, "after").await;
    assert_eq!(*running.recorder.kinds.lock().unwrap(), [ReviewKind::Validate]);
}

#[tokio::test]
async fn silent_clients_do_not_block_others() {
    let (running, pki, _dir) = serve().await;
    let connector = pki.connector();

    // One client stops before the TLS handshake, one after it; both stay connected.
    let _before_handshake = TcpStream::connect(running.addr).await.unwrap();
    let tcp = TcpStream::connect(running.addr).await.unwrap();
    let _after_handshake = connector
        .connect(ServerName::IpAddress(LOCALHOST.into()), tcp)
        .await
        .unwrap();

    tokio::time::timeout(
        Duration::from_secs(2),
        assert_good(running.addr, &connector, "meanwhile"),
    )
    .await
    .expect("a good request is answered while silent clients are connected");
}

#[tokio::test]
async fn a_failed_handshake_ends_only_its_connection() {
    let (running, pki, _dir) = serve().await;

    let mut plain = TcpStream::connect(running.addr).await.unwrap();
    plain.write_all(&good_request("plain")).await.unwrap();
    let mut ignored = Vec::new();
    let _ = plain.read_to_end(&mut ignored).await;

    let stranger = Pki::new().connector();
    let tcp = TcpStream::connect(running.addr).await.unwrap();
    let refused = stranger.connect(ServerName::IpAddress(LOCALHOST.into()), tcp).await;
    assert!(refused.is_err(), "a client that trusts another CA must not get through");

    assert_good(running.addr, &pki.connector(), "after").await;
}

#[tokio::test]
async fn certificates_rotate_without_failed_requests() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let first = pki.issue(1);
    install(dir.path(), &first);
    let running = start(dir.path(), Duration::from_millis(100)).await;
    let connector = pki.connector();

    let generations = Arc::new(Mutex::new(vec![first.der.clone()]));
    let (stop_clients, mut clients_stopped) = watch::channel(false);
    let client = tokio::spawn({
        let (connector, addr) = (connector.clone(), running.addr);
        async move {
            let mut seen = Vec::new();
            let mut failures = Vec::new();
            let mut n = 0;
            while !*clients_stopped.borrow_and_update() {
                n += 1;
                let uid = format!("loop-{n}");
                match send(addr, &connector, &good_request(&uid)).await {
                    Ok(reply) if reply.status == 200 && reply.body.contains(&uid) => seen.push(reply.peer_cert),
                    Ok(reply) => failures.push(format!("{uid}: {reply:?}")),
                    Err(error) => failures.push(format!("{uid}: {error}")),
                }
            }
            (seen, failures)
        }
    });

    let mut latencies = Vec::new();
    for serial in 2..=11 {
        let next = pki.issue(serial);
        let installed = Instant::now();
        install(dir.path(), &next);
        generations.lock().unwrap().push(next.der.clone());
        loop {
            let reply = assert_good(running.addr, &connector, &format!("probe-{serial}")).await;
            if reply.peer_cert == next.der {
                break;
            }
            assert!(
                installed.elapsed() < Duration::from_secs(5),
                "certificate {serial} is not served"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        latencies.push(installed.elapsed());
        let reply = assert_good(running.addr, &connector, &format!("check-{serial}")).await;
        assert_eq!(reply.peer_cert, next.der, "a new connection after rotation {serial}");
    }

    stop_clients.send(true).unwrap();
    let (seen, failures) = client.await.unwrap();
    assert!(failures.is_empty(), "failed requests: {failures:#?}");
    let generations = generations.lock().unwrap();
    let order: Vec<usize> = seen
        .iter()
        .map(|der| {
            generations
                .iter()
                .position(|g| g == der)
                .expect("a certificate that was installed")
        })
        .collect();
    assert!(
        order.is_sorted(),
        "a connection got an older certificate than an earlier one: {order:?}"
    );
    assert!(seen.len() > 10, "the client loop ran only {} requests", seen.len());
    let slowest = latencies.iter().max().unwrap();
    assert!(*slowest < Duration::from_secs(2), "rotation latencies: {latencies:?}");
}

#[tokio::test]
async fn shutdown_stops_accepting_and_returns() {
    let (running, pki, _dir) = serve().await;
    let connector = pki.connector();
    assert_good(running.addr, &connector, "before").await;

    // An idle connection must not hold the shutdown for the whole grace period.
    let tcp = TcpStream::connect(running.addr).await.unwrap();
    let _idle = connector
        .connect(ServerName::IpAddress(LOCALHOST.into()), tcp)
        .await
        .unwrap();

    running.stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(2), running.task)
        .await
        .expect("run returns soon after shutdown")
        .unwrap();
    assert!(
        TcpStream::connect(running.addr).await.is_err(),
        "the listener is closed"
    );
}

#[tokio::test]
async fn bind_names_the_missing_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let err = WebhookServer::bind((LOCALHOST, 0).into(), dir.path(), Duration::from_secs(1), None)
        .await
        .err()
        .expect("no certificate, no server");
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert!(err.to_string().starts_with("webhook certificate: TLS file "), "{err}");
    assert!(err.to_string().ends_with("tls.crt is missing"), "{err}");
}

#[tokio::test]
async fn with_client_cas_only_clients_with_a_certificate_they_signed_are_answered() {
    let dir = tempfile::tempdir().unwrap();
    let server_pki = Pki::new();
    install(dir.path(), &server_pki.issue(1));
    let api_server_ca = Pki::new();
    let running = start_with(dir.path(), Duration::from_secs(60), Some(&api_server_ca.bundle())).await;

    let stranger_ca = Pki::new();
    let refused = [
        ("no client certificate", server_pki.connector()),
        (
            "a client certificate of another CA",
            server_pki.connector_presenting(Some(&stranger_ca.issue_client("kube-apiserver"))),
        ),
    ];
    for (what, connector) in refused {
        let reply = send(running.addr, &connector, &good_request(what)).await;
        assert!(reply.is_err(), "{what}: refused at the handshake, got {reply:?}");
    }
    assert!(
        running.recorder.kinds.lock().unwrap().is_empty(),
        "no review reached the handler"
    );

    let api_server = server_pki.connector_presenting(Some(&api_server_ca.issue_client("kube-apiserver")));
    assert_good(running.addr, &api_server, "with the API server's certificate").await;
    assert_eq!(*running.recorder.kinds.lock().unwrap(), [ReviewKind::Validate]);
}
