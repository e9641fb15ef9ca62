//! Operator-managed webhook TLS on a real API server: the CA and certificate kept in a Secret
//! shared by replicas, the caBundle patched into the webhook configurations, the HTTPS server
//! serving a certificate the API server's bundle trusts, and rotation of both.

use winflow_test_support as support;

use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams};
use support::{TestEnv, audit, wait_until};
use winflow::admin::Readiness;
use winflow::metrics::Metrics;
use winflow::webhook::managed_certs::{CertKeeper, ManagedCerts};
use winflow::webhook::registration::{Endpoint, Registration};

fn settings(env: &TestEnv, dir: &std::path::Path) -> ManagedCerts {
    ManagedCerts {
        namespace: env.namespace.clone(),
        secret_name: "winflow-webhook-certs".to_owned(),
        service: "winflow-webhook".to_owned(),
        configuration: format!("winflow-{}", env.namespace),
        cert_dir: dir.to_owned(),
        check_every: Duration::from_secs(1),
    }
}

async fn bundles(env: &TestEnv, name: &str) -> Vec<String> {
    let mutating = Api::<MutatingWebhookConfiguration>::all(env.client.clone())
        .get(name)
        .await
        .unwrap();
    let validating = Api::<ValidatingWebhookConfiguration>::all(env.client.clone())
        .get(name)
        .await
        .unwrap();
    let mut all: Vec<String> = mutating
        .webhooks
        .unwrap()
        .into_iter()
        .map(|w| w.client_config)
        .chain(validating.webhooks.unwrap().into_iter().map(|w| w.client_config))
        .map(|c| String::from_utf8(c.ca_bundle.map(|b| b.0).unwrap_or_default()).unwrap())
        .collect();
    all.dedup();
    all
}

/// Calls the webhook server at `addr` as the API server would: by the Service's DNS name,
/// trusting only `bundle`.
async fn handshake(addr: std::net::SocketAddr, dns_name: &str, bundle: &str) -> Result<u16, String> {
    let mut builder = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .resolve(dns_name, addr);
    for cert in reqwest::Certificate::from_pem_bundle(bundle.as_bytes()).unwrap() {
        builder = builder.add_root_certificate(cert);
    }
    let http = builder.build().unwrap();
    http.get(format!("https://{dns_name}:{}/livez", addr.port()))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| format!("{e:?}"))
}

async fn set_annotation(env: &TestEnv, key: &str, value: &str) {
    let patch = serde_json::json!({"metadata": {"annotations": {key: value}}});
    env.api::<Secret>()
        .patch("winflow-webhook-certs", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

#[tokio::test]
async fn winflow_keeps_its_own_webhook_certificate_and_ca_bundle() {
    let env = TestEnv::new("certs").await;
    let name = format!("winflow-{}", env.namespace);
    // The configurations as the chart renders them: no caBundle.
    let registration = Registration {
        name: name.clone(),
        endpoint: Endpoint::Service {
            namespace: env.namespace.clone(),
            name: "winflow-webhook".to_owned(),
            port: 443,
        },
        ca_bundle: Vec::new(),
        failure_policy: "Ignore".to_owned(),
        namespace_selector: None,
        match_conditions: winflow::webhook::registration::supports_match_conditions(&env.client)
            .await
            .unwrap(),
    };
    winflow::webhook::register(env.client.clone(), &registration)
        .await
        .unwrap();

    // Two replicas start: the first issues, the second uses what the first wrote.
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let metrics_a = Metrics::default();
    let (client_a, _) = support::counted_client(env.config.clone(), &metrics_a);
    let mut a = CertKeeper::new(client_a.clone(), settings(&env, dir_a.path()));
    a.ensure().await.unwrap();
    let metrics_b = Metrics::default();
    let (client_b, agent_b) = support::counted_client(env.config.clone(), &metrics_b);
    let mut b = CertKeeper::new(client_b, settings(&env, dir_b.path()));
    b.ensure().await.unwrap();
    assert_eq!(
        support::metric_sum(&metrics_b, "winflow_api_writes_total{kind=\"Secret\""),
        0,
        "replica b wrote no Secret"
    );
    let audited_b = audit::agreeing(&support::audit_log_path(), &metrics_b, &agent_b).await;
    assert!(
        audited_b.writes.iter().all(|w| w.resource != "secrets"),
        "nor does the API server's audit log show one: {audited_b:?}"
    );
    let read = |dir: &std::path::Path, file: &str| std::fs::read_to_string(dir.join(file)).unwrap();
    assert_eq!(read(dir_a.path(), "tls.crt"), read(dir_b.path(), "tls.crt"));
    let secret = env.api::<Secret>().get("winflow-webhook-certs").await.unwrap();
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    let ca = read(dir_a.path(), "ca.crt");
    assert_eq!(
        bundles(&env, &name).await,
        std::slice::from_ref(&ca),
        "every webhook trusts the CA"
    );

    // The server serves it, and a client trusting only the bundle accepts it by Service name.
    let (addr, _server) = winflow::webhook::start(
        client_a,
        winflow::webhook::WebhookSettings {
            addr: "127.0.0.1:0".parse().unwrap(),
            cert_dir: dir_a.path().to_owned(),
            reload_interval: Duration::from_millis(200),
            namespace: Some(env.namespace.clone()),
            instance: "a".to_owned(),
            client_ca: None,
        },
        metrics_a.clone(),
        Readiness::expecting(1),
        std::future::pending(),
    )
    .await
    .unwrap();
    let service = format!("winflow-webhook.{}.svc", env.namespace);
    let bundle = bundles(&env, &name).await.remove(0);
    let status = handshake(addr, &service, &bundle).await;
    assert!(status.is_ok(), "{status:?}");
    assert!(handshake(addr, "elsewhere.example.com", &bundle).await.is_err());

    // A certificate due for renewal is replaced under the same CA; the bundle stays.
    let first_cert = read(dir_a.path(), "tls.crt");
    // (Due: less than a third of its life left, but not expired.)
    let tomorrow = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24)).to_string();
    set_annotation(&env, "winflow.io/cert-not-after", &tomorrow).await;
    a.ensure().await.unwrap();
    assert_ne!(read(dir_a.path(), "tls.crt"), first_cert);
    assert_eq!(read(dir_a.path(), "ca.crt"), ca);
    assert_eq!(bundles(&env, &name).await, std::slice::from_ref(&ca));
    b.ensure().await.unwrap();
    assert_eq!(
        read(dir_b.path(), "tls.crt"),
        read(dir_a.path(), "tls.crt"),
        "b picks up a's renewal"
    );

    // A CA due for rotation: a new CA, and the bundle trusts both while replicas switch.
    set_annotation(&env, "winflow.io/ca-not-after", &tomorrow).await;
    b.ensure().await.unwrap();
    let new_ca = read(dir_b.path(), "ca.crt");
    assert_ne!(new_ca, ca);
    let bundle = bundles(&env, &name).await.remove(0);
    assert!(
        bundle.contains(&new_ca) && bundle.contains(&ca),
        "old and new CA in the bundle"
    );
    // Replica a still serves its old certificate: still trusted by the new bundle...
    assert!(handshake(addr, &service, &bundle).await.is_ok());
    // ...and after its next pass it serves the new one, reloaded without a restart.
    a.ensure().await.unwrap();
    let only_new = new_ca.clone();
    wait_until(
        "the server serves the certificate of the new CA",
        Duration::from_secs(10),
        || async { handshake(addr, &service, &only_new).await.ok() },
    )
    .await;

    // A Secret of that name that winflow does not manage is never overwritten.
    let other = TestEnv::new("certs-foreign").await;
    let foreign: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "winflow-webhook-certs"}, "stringData": {"note": "someone else's"}
    }))
    .unwrap();
    other
        .api::<Secret>()
        .create(&Default::default(), &foreign)
        .await
        .unwrap();
    let dir_c = tempfile::tempdir().unwrap();
    let mut c = CertKeeper::new(other.client.clone(), settings(&other, dir_c.path()));
    let error = c.ensure().await.unwrap_err().to_string();
    assert!(error.contains("not winflow's"), "{error}");
    let kept = other.api::<Secret>().get("winflow-webhook-certs").await.unwrap();
    assert!(kept.data.unwrap().contains_key("note"));
}
