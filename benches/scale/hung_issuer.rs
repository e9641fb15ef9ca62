//! Plain identities (no `spec.token`) next to identities whose OIDC issuer accepts connections
//! and never answers, in one operator: N plain identities created alone; then H identities on
//! the hung issuer, and once it holds its connections N plain identities more; then, with the
//! hung identities deleted, N plain identities alone again. The ratio is taken against the
//! faster alone batch, so that the order of the batches cannot hide a cost: it says what the
//! hung issuer costs everyone else (target: nothing), rather over than under.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::PostParams;
use kube::runtime::reflector::Store;
use serde_json::{Value, json};
use winflow::api::WindowsTaskIdentity;

use crate::support::TestEnv;
use crate::workload::{delete_namespace, identity_named, is_ready, template_identity, watch_identities};
use crate::{CLIENT_CONCURRENCY, Settings, run_all, start_operator_with, wait_for};

/// The operator's defaults, given explicitly so that the report can name them.
const TOKEN_CONCURRENCY: usize = 8;
const PER_ISSUER: usize = 4;
const DEADLINE: &str = "20s";

/// A loopback address that accepts connections and holds them, unread and unanswered;
/// returns its URL and the number of connections it accepted.
async fn hung_issuer() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((connection, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            held.push(connection);
        }
    });
    (url, accepted)
}

/// The identities named `<prefix>-<i>` that `holds`.
fn count_of(store: &Store<WindowsTaskIdentity>, prefix: &str, holds: impl Fn(&WindowsTaskIdentity) -> bool) -> usize {
    let ours = |i: &WindowsTaskIdentity| i.metadata.name.as_deref().is_some_and(|n| n.starts_with(prefix));
    store.state().iter().filter(|i| ours(i) && holds(i)).count()
}

/// Whether the identity's TokenReady says `reason`.
fn token_reason_is(identity: &WindowsTaskIdentity, reason: &str) -> bool {
    let conditions = identity
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    conditions.iter().any(|c| c.type_ == "TokenReady" && c.reason == reason)
}

/// Creates `count` plain identities `<prefix>-<i>` and returns how long until all were Ready.
async fn plain_until_ready(
    api: &Api<WindowsTaskIdentity>,
    store: &Store<WindowsTaskIdentity>,
    prefix: &str,
    count: usize,
) -> Duration {
    let template = template_identity();
    let started = Instant::now();
    run_all(count, CLIENT_CONCURRENCY, |i| {
        let api = api.clone();
        let identity = identity_named(&template, &format!("{prefix}-{i}"));
        async move { api.create(&PostParams::default(), &identity).await.map(|_| ()) }
    })
    .await;
    wait_for(
        &format!("{count} {prefix} identities Ready"),
        Duration::from_secs(1800),
        || async { (count_of(store, prefix, is_ready) == count).then_some(()) },
    )
    .await;
    started.elapsed()
}

/// The plain identities' times to Ready alone and beside the hung issuer's identities.
pub async fn hung_issuer_phase(settings: &Settings) -> Value {
    let (plain, hung) = (settings.hung_plain, settings.hung_identities);
    let concurrency = settings.concurrency[0];
    let env = TestEnv::new("scale-hung-issuer").await;
    eprintln!(
        "scale: {plain} plain identities alone, then beside {hung} identities on a hung issuer, namespace {}",
        env.namespace
    );
    let (issuer, accepted) = hung_issuer().await;
    let (token_concurrency, per_issuer) = (TOKEN_CONCURRENCY.to_string(), PER_ISSUER.to_string());
    let extra = [
        "--allow-insecure-loopback-issuers",
        "--token-concurrency",
        &token_concurrency,
        "--token-concurrency-per-issuer",
        &per_issuer,
        "--token-attempt-deadline",
        DEADLINE,
    ];
    let operator = start_operator_with(&env.namespace, concurrency, settings, "hung-issuer", &extra).await;
    let api: Api<WindowsTaskIdentity> = env.api();
    let (store, watch) = watch_identities(api.clone());
    wait_for("the identity watch", Duration::from_secs(30), || async {
        store.wait_until_ready().await.ok()
    })
    .await;

    let alone = plain_until_ready(&api, &store, "plain-alone", plain).await;

    let client_secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("hung-oidc".to_owned()),
            ..Default::default()
        },
        string_data: Some([("client-secret".to_owned(), "hung-bench-client-secret".to_owned())].into()),
        ..Default::default()
    };
    env.api::<Secret>()
        .create(&PostParams::default(), &client_secret)
        .await
        .unwrap();
    let template = template_identity();
    run_all(hung, CLIENT_CONCURRENCY, |i| {
        let api = api.clone();
        let mut identity = identity_named(&template, &format!("hung-{i}"));
        let token = json!({"issuerUrl": issuer, "clientId": format!("hung-{i}"),
            "clientSecretRef": {"name": "hung-oidc", "key": "client-secret"}});
        identity.spec.token = Some(serde_json::from_value(token).unwrap());
        async move { api.create(&PostParams::default(), &identity).await.map(|_| ()) }
    })
    .await;
    // Reconciled as far as they go, their first attempts hanging on the issuer.
    wait_for(
        "the hung identities pending, the issuer holding its connections",
        Duration::from_secs(600),
        || async {
            let settled = count_of(&store, "hung-", |i| token_reason_is(i, "TokenPending")) == hung;
            (settled && accepted.load(Ordering::SeqCst) >= hung.min(PER_ISSUER)).then_some(())
        },
    )
    .await;
    let connections_before = accepted.load(Ordering::SeqCst);

    let beside = plain_until_ready(&api, &store, "plain-beside", plain).await;
    let connections = accepted.load(Ordering::SeqCst);
    let outcomes = hung - count_of(&store, "hung-", |i| token_reason_is(i, "TokenPending"));

    run_all(hung, CLIENT_CONCURRENCY, |i| {
        let api = api.clone();
        async move { api.delete(&format!("hung-{i}"), &Default::default()).await.map(|_| ()) }
    })
    .await;
    wait_for("the hung identities gone", Duration::from_secs(600), || async {
        (count_of(&store, "hung-", |_| true) == 0).then_some(())
    })
    .await;
    let alone_again = plain_until_ready(&api, &store, "plain-again", plain).await;
    watch.abort();
    let ratio = beside.as_secs_f64() / alone.min(alone_again).as_secs_f64();
    eprintln!(
        "scale:   {plain} plain identities Ready in {:.2} s alone, {:.2} s beside {hung} on a hung issuer, {:.2} s alone again ({ratio:.2}x); the issuer held {connections} connections, {outcomes} of its identities had an outcome",
        alone.as_secs_f64(),
        beside.as_secs_f64(),
        alone_again.as_secs_f64()
    );
    delete_namespace(&env).await;
    assert!(operator.terminate().await, "the operator stops on SIGTERM");
    json!({
        "plain_identities": plain,
        "hung_identities": hung,
        "concurrency": concurrency,
        "token_concurrency": TOKEN_CONCURRENCY,
        "token_concurrency_per_issuer": PER_ISSUER,
        "token_attempt_deadline": DEADLINE,
        "alone_ready_seconds": alone.as_secs_f64(),
        "beside_hung_ready_seconds": beside.as_secs_f64(),
        "alone_again_ready_seconds": alone_again.as_secs_f64(),
        "ratio": ratio,
        "hung_connections_before": connections_before,
        "hung_connections_at_ready": connections,
        "hung_outcomes_at_ready": outcomes,
    })
}
