//! A provider that accepts connections and never answers holds back nothing but its own
//! identities: against a real control plane, identities without a token, and one on a working
//! provider (npm `oidc-provider` on loopback), converge while every attempt at the hung issuer
//! is still open; the hung identities say they are pending, then end with the deadline.

use winflow_test_support as support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, PostParams};
use serde_json::{Value, json};
use support::oidc::{ClientConfig, OidcProvider, ProviderConfig};
use support::{TestEnv, wait_until};
use tokio::io::AsyncReadExt;
use winflow::api::WindowsTaskIdentity;
use winflow::token::{OidcSettings, TokenConfig};

/// More identities on the hung issuer than token attempts may be in flight at all.
const HUNG: usize = 4;
const PLAIN: usize = 4;
const CONCURRENCY: usize = 3;
const PER_ISSUER: usize = 2;
const DEADLINE: Duration = Duration::from_secs(12);
const CLIENT_SECRET: &str = "hung-test-client-secret-value";

/// A loopback TCP listener that accepts every connection, reads what comes and never
/// answers: counts the connections accepted, those still open, and the most open at once.
struct HungIssuer {
    url: String,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    most_open: Arc<AtomicUsize>,
}

impl HungIssuer {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let most_open = Arc::new(AtomicUsize::new(0));
        let counters = (accepted.clone(), open.clone(), most_open.clone());
        tokio::spawn(async move {
            let (accepted, open, most_open) = counters;
            while let Ok((mut connection, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let now_open = open.fetch_add(1, Ordering::SeqCst) + 1;
                most_open.fetch_max(now_open, Ordering::SeqCst);
                let open = open.clone();
                tokio::spawn(async move {
                    let mut request = [0u8; 4096];
                    // Until the client gives up and closes the connection.
                    while connection.read(&mut request).await.is_ok_and(|n| n > 0) {}
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Self {
            url,
            accepted,
            open,
            most_open,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

/// A copy of `example` (the Key Vault example) named `name` with `token` as its token
/// settings (none for `Value::Null`).
fn named(example: &WindowsTaskIdentity, name: &str, token: Value) -> WindowsTaskIdentity {
    let mut identity = example.clone();
    identity.metadata.name = Some(name.to_owned());
    identity.spec.service_account.name = name.to_owned();
    identity.spec.token = serde_json::from_value(token).unwrap();
    identity
}

fn token_spec(issuer: &str, client_id: &str) -> Value {
    json!({
        "issuerUrl": issuer, "clientId": client_id,
        "clientSecretRef": {"name": "reports-oidc", "key": "client-secret"},
        "scopes": ["reports.read"], "minValidity": "1m"
    })
}

async fn create(env: &TestEnv, identity: &WindowsTaskIdentity) {
    env.api::<WindowsTaskIdentity>()
        .create(&PostParams::default(), identity)
        .await
        .unwrap();
}

/// `TokenReady`'s reason, if the identity has one yet.
async fn token_reason(env: &TestEnv, name: &str) -> Option<String> {
    let identity = env.api::<WindowsTaskIdentity>().get(name).await.unwrap();
    support::condition(&identity, "TokenReady").map(|c| c.reason.clone())
}

#[tokio::test]
async fn a_hung_issuer_holds_back_neither_plain_identities_nor_a_working_provider() {
    support::capture_logs();
    let env = TestEnv::new("token-hung").await;
    let hung = HungIssuer::start().await;
    let working_client = ClientConfig {
        client_id: "working".to_owned(),
        client_secret: CLIENT_SECRET.to_owned(),
        scope: "reports.read".to_owned(),
    };
    let provider = OidcProvider::start(ProviderConfig {
        access_token_ttl_seconds: 600,
        clients: vec![working_client],
        ..Default::default()
    })
    .await;
    support::create_client_secret(&env, "reports-oidc", CLIENT_SECRET).await;
    let token = TokenConfig {
        oidc: OidcSettings {
            attempt_deadline: DEADLINE,
            concurrency: CONCURRENCY,
            concurrency_per_issuer: PER_ISSUER,
            ..support::test_token_config().oidc
        },
        retry: support::test_token_config().retry,
    };
    let operator = env.start_operator_with(env.config.clone(), Duration::from_secs(300), token);
    let example_file = format!("{}/examples/identity-azure-key-vault.yaml", support::REPO);
    let example: WindowsTaskIdentity =
        serde_yaml_ng::from_str(&std::fs::read_to_string(example_file).unwrap()).unwrap();

    // The hung issuer's identities first, until it holds as many connections as it may.
    let hung_names: Vec<String> = (0..HUNG).map(|i| format!("hung-{i}")).collect();
    for name in &hung_names {
        create(&env, &named(&example, name, token_spec(&hung.url, name))).await;
    }
    wait_until("the hung issuer holds its slots", Duration::from_secs(60), || async {
        (hung.open() == PER_ISSUER).then_some(())
    })
    .await;

    // Then identities without a token, and one on a working provider.
    let started = Instant::now();
    let plain_names: Vec<String> = (0..PLAIN).map(|i| format!("plain-{i}")).collect();
    for name in &plain_names {
        create(&env, &named(&example, name, Value::Null)).await;
    }
    create(
        &env,
        &named(&example, "working", token_spec(provider.issuer(), "working")),
    )
    .await;
    for name in &plain_names {
        let _: WindowsTaskIdentity = support::wait_for_condition(&env, name, "Ready", "True", None).await;
    }
    let plain_ready = started.elapsed();
    let working: WindowsTaskIdentity =
        support::wait_for_condition(&env, "working", "TokenReady", "True", Some("TokenIssued")).await;
    let working_issued = started.elapsed();

    // At this moment no attempt at the hung issuer has ended: each connection it accepted is
    // still open, unanswered, and none of its identities has an outcome.
    let (accepted, open) = (hung.accepted(), hung.open());
    let mut hung_reasons = Vec::new();
    for name in &hung_names {
        hung_reasons.push(token_reason(&env, name).await);
    }
    let (accepted_after, open_after) = (hung.accepted(), hung.open());
    println!(
        "with {HUNG} identities on a hung issuer: {PLAIN} plain identities Ready after {plain_ready:?}, the working provider's token after {working_issued:?}; the hung issuer holds {open} of {accepted} connections; their TokenReady: {hung_reasons:?}"
    );
    assert_eq!(support::condition(&working, "Ready").unwrap().status, "True");
    assert_eq!(
        (accepted, open, accepted_after, open_after),
        (PER_ISSUER, PER_ISSUER, PER_ISSUER, PER_ISSUER),
        "the first attempts at the hung issuer were all still waiting for it"
    );
    for (name, reason) in hung_names.iter().zip(&hung_reasons) {
        assert!(
            reason.is_none() || reason.as_deref() == Some("TokenPending"),
            "{name} has no outcome yet: {reason:?}"
        );
    }
    // Meanwhile they say so (the identities queued for the issuer's slots for longest).
    let message = wait_until(
        "a hung identity reports TokenPending",
        Duration::from_secs(60),
        || async {
            for name in &hung_names {
                let identity = env.api::<WindowsTaskIdentity>().get(name).await.ok()?;
                let condition = support::condition(&identity, "TokenReady")?;
                if (condition.status.as_str(), condition.reason.as_str()) == ("False", "TokenPending") {
                    return Some(condition.message.clone());
                }
            }
            None
        },
    )
    .await;
    assert!(
        message.starts_with(&format!("no token yet: requesting a token from issuer {:?}", hung.url))
            && message.contains("an attempt is given 12s"),
        "{message}"
    );

    // Each hung identity ends with the deadline, named with its issuer.
    for name in &hung_names {
        let ended: WindowsTaskIdentity =
            support::wait_for_condition(&env, name, "TokenReady", "False", Some("DeadlineExceeded")).await;
        let message = &support::condition(&ended, "TokenReady").unwrap().message;
        let expected = format!(
            "the token attempt for issuer {:?} did not finish within its deadline of 12s (--token-attempt-deadline): it was still waiting for the discovery document; next attempt at ",
            hung.url
        );
        assert!(message.starts_with(&expected), "{name}: {message}");
        let status = ended.status.as_ref().unwrap().token.clone().unwrap();
        assert_eq!(status.last_failure_reason.as_deref(), Some("DeadlineExceeded"));
        assert_eq!(support::condition(&ended, "Ready").unwrap().reason, "DeadlineExceeded");
    }
    let most_open = hung.most_open.load(Ordering::SeqCst);
    println!(
        "the hung issuer accepted {} connections, at most {most_open} open at once",
        hung.accepted()
    );
    assert_eq!(
        most_open, PER_ISSUER,
        "never more attempts at one issuer than it may have"
    );

    // The working token, and the client secret, in no log line, Event or status.
    let data = env.api::<Secret>().get("working-token").await.unwrap().data.unwrap();
    let access_token = String::from_utf8(data["access_token"].0.clone()).unwrap();
    assert!(!access_token.is_empty());
    let logs = support::captured_logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("token refresh failed") && l.contains("DeadlineExceeded")),
        "the deadline is logged with its reason"
    );
    let events = serde_json::to_string(&env.api::<Event>().list(&ListParams::default()).await.unwrap().items).unwrap();
    let identities = env
        .api::<WindowsTaskIdentity>()
        .list(&ListParams::default())
        .await
        .unwrap();
    let statuses = serde_json::to_string(&identities.items.iter().map(|i| &i.status).collect::<Vec<_>>()).unwrap();
    for value in [access_token.as_str(), CLIENT_SECRET] {
        assert!(!logs.contains(value), "a token or secret is in the logs");
        assert!(!events.contains(value), "a token or secret is in an Event");
        assert!(!statuses.contains(value), "a token or secret is in a status");
    }
    operator.stop().await;
}
