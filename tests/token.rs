//! OIDC tokens against a real OpenID provider (npm `oidc-provider` on loopback) and a real
//! control plane: issue, rotation, outage, bad settings, workload identity, admission.

use winflow_test_support as support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::identities::identity_with_token as identity;
use support::oidc::{ClientConfig, FederatedCredential, OidcProvider, ProviderConfig};
use support::{TestEnv, wait_until};
use winflow::api::WindowsTaskIdentity;
use winflow::api::identity::TokenStatus;

const CLIENT_SECRET: &str = "s3cret-c1ient-value-for-tests";

fn client(id: &str) -> ClientConfig {
    ClientConfig {
        client_id: id.to_owned(),
        client_secret: CLIENT_SECRET.to_owned(),
        scope: "reports.read".to_owned(),
    }
}

async fn create_identity(env: &TestEnv, identity: &WindowsTaskIdentity) {
    env.api::<WindowsTaskIdentity>()
        .create(&PostParams::default(), identity)
        .await
        .unwrap();
}

fn secret_token(issuer: &str, client_id: &str, secret: &str) -> Value {
    json!({
        "issuerUrl": issuer, "clientId": client_id,
        "clientSecretRef": {"name": secret, "key": "client-secret"},
        "scopes": ["reports.read"], "minValidity": "2s"
    })
}

fn token_status(identity: &WindowsTaskIdentity) -> TokenStatus {
    identity
        .status
        .as_ref()
        .and_then(|s| s.token.clone())
        .unwrap_or_default()
}

/// The token Secret's access token (empty when there is none) and expiry annotation.
async fn read_token(env: &TestEnv, name: &str) -> (String, Option<Timestamp>, Option<String>) {
    let secret = env.api::<Secret>().get(name).await.unwrap();
    let data = secret.data.unwrap_or_default();
    let token = data
        .get("access_token")
        .map(|t| String::from_utf8(t.0.clone()).unwrap())
        .unwrap_or_default();
    let annotations = secret.metadata.annotations.unwrap_or_default();
    let expires = annotations.get("winflow.io/expires-at").map(|t| t.parse().unwrap());
    (token, expires, secret.metadata.resource_version)
}

fn ready_reason(identity: &WindowsTaskIdentity, type_: &str) -> (String, String, String) {
    let c = support::condition(identity, type_).unwrap();
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

#[tokio::test]
async fn a_client_secret_token_is_issued_accepted_and_rotated_once_per_renewal() {
    support::capture_logs();
    let env = TestEnv::new("token-rotate").await;
    let provider = OidcProvider::start(ProviderConfig {
        access_token_ttl_seconds: 12,
        clients: vec![client("reports")],
        ..Default::default()
    })
    .await;
    support::create_client_secret(&env, "reports-oidc", CLIENT_SECRET).await;
    let operator = env.start_operator(Duration::from_secs(300));
    let mut spec = secret_token(provider.issuer(), "reports", "reports-oidc");
    spec["secretName"] = json!("reports-access");
    let secret_name = "reports-access".to_owned();
    create_identity(&env, &identity("reports", spec)).await;

    let issued: WindowsTaskIdentity =
        support::wait_for_condition(&env, "reports", "TokenReady", "True", Some("TokenIssued")).await;
    assert_eq!(ready_reason(&issued, "Ready").0, "True");
    let status = token_status(&issued);
    assert_eq!(status.secret_name.as_deref(), Some(secret_name.as_str()));
    let (token, expires, _) = read_token(&env, &secret_name).await;
    let introspection = provider.introspect("reports", CLIENT_SECRET, &token).await;
    assert_eq!(introspection["active"], true, "{introspection}");
    assert_eq!(introspection["client_id"], "reports");
    // The expiry is the lifetime the provider granted, counted from when winflow got it.
    let expires = expires.unwrap();
    let issued_at: Timestamp = status.last_refresh_time.as_deref().unwrap().parse().unwrap();
    assert_eq!(expires.duration_since(issued_at).as_secs(), 12);
    assert_eq!(status.expires_at.as_deref(), Some(expires.to_string().as_str()));
    let secret = env.api::<Secret>().get(&secret_name).await.unwrap();
    assert_eq!(secret.type_.as_deref(), Some("Opaque"));
    let data = secret.data.unwrap();
    assert_eq!(
        String::from_utf8(data["expires_at"].0.clone()).unwrap(),
        expires.to_string()
    );
    assert_eq!(data["token_type"].0, b"Bearer");
    let owner = &secret.metadata.owner_references.unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("WindowsTaskIdentity", "reports")
    );

    // Watch the Secret for 30 s (two and a half lifetimes): each rotation is one write of a
    // new token, before the old one expires, and the Secret never holds an expired token.
    let mut seen: BTreeMap<String, (String, Timestamp)> = BTreeMap::new();
    let mut expired_moments = 0;
    let writes_before = secret_writes(&operator);
    let window_start = unix_millis();
    let watch_until = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < watch_until {
        let (token, expires, version) = read_token(&env, &secret_name).await;
        let expires = expires.unwrap();
        if Timestamp::now() >= expires {
            expired_moments += 1;
        }
        seen.insert(version.unwrap(), (token, expires));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let writes = secret_writes(&operator) - writes_before;
    let window_end = unix_millis();
    let audited = operator.audited_writes().await;
    assert_eq!(
        audited.count("patch", "secrets"),
        audited.counted(SECRET_WRITES),
        "the API server recorded every Secret write winflow counted, and no other"
    );
    let tokens: BTreeSet<&String> = seen.values().map(|(token, _)| token).collect();
    let expiries: Vec<Timestamp> = seen.values().map(|(_, at)| *at).collect();
    println!(
        "rotation: {} versions, {} tokens, {writes} Secret writes in 30 s",
        seen.len(),
        tokens.len()
    );
    assert_eq!(expired_moments, 0, "the Secret held an expired token");
    assert!(
        seen.len() >= 3,
        "at least two rotations in 30 s of 12 s tokens: {seen:?}"
    );
    assert_eq!(tokens.len(), seen.len(), "every Secret version carries a new token");
    assert_eq!(writes as usize, seen.len() - 1, "one write per rotation");
    let requests = provider.token_requests().await;
    let in_window = requests
        .iter()
        .filter(|r| r.status == 200 && (window_start..window_end).contains(&r.time))
        .count();
    assert_eq!(in_window as u64, writes, "one token request per rotation");
    assert!(
        requests.iter().all(|r| r.status == 200),
        "no failed request: {requests:?}"
    );
    let mut sorted = expiries.clone();
    sorted.sort();
    for pair in sorted.windows(2) {
        let gap = pair[1].duration_since(pair[0]).as_secs();
        assert!(
            (6..=12).contains(&gap),
            "renewed a third before expiry (8 s), got {gap}s: {sorted:?}"
        );
    }

    // No token or client secret in any log line or Event.
    let events = env.api::<Event>().list(&ListParams::default()).await.unwrap();
    let events = serde_json::to_string(&events.items).unwrap();
    let logs = support::captured_logs();
    assert!(logs.contains("token refreshed"), "the refreshes are logged");
    for value in tokens.iter().map(|t| t.as_str()).chain([CLIENT_SECRET]) {
        assert!(!logs.contains(value), "a token or secret is in the logs");
        assert!(!events.contains(value), "a token or secret is in an Event");
    }
    let identity = env.api::<WindowsTaskIdentity>().get("reports").await.unwrap();
    let status = serde_json::to_string(&identity.status).unwrap();
    assert!(tokens.iter().all(|t| !status.contains(t.as_str())));
    let metrics = operator.metrics.encode();
    assert!(tokens.iter().all(|t| !metrics.contains(t.as_str())));
    assert!(
        metrics.contains("winflow_token_refreshes_total{result=\"success\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("winflow_token_expiry_timestamp_seconds{"), "{metrics}");

    // A deleted identity's expiry series goes with it (the Secret goes by garbage collection).
    env.api::<WindowsTaskIdentity>()
        .delete("reports", &Default::default())
        .await
        .unwrap();
    wait_until("the expiry series is removed", Duration::from_secs(30), || async {
        (!operator.metrics.encode().contains("identity=\"reports\"")).then_some(())
    })
    .await;
    operator.stop().await;
}

fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// winflow's count of its token Secret writes.
const SECRET_WRITES: &str = "winflow_api_writes_total{kind=\"Secret\",verb=\"apply\"}";

fn secret_writes(operator: &support::Operator) -> u64 {
    support::metric_sum(&operator.metrics, SECRET_WRITES)
}

/// A task pod of the identity as the KubernetesPodOperator builds it.
fn task_pod(name: &str, identity: &str) -> Pod {
    serde_json::from_value(support::task_pod(name, identity, "payroll_export", "export_ledger")).unwrap()
}

async fn create_pod(env: &TestEnv, pod: &Pod) -> Result<Pod, String> {
    env.api::<Pod>()
        .create(&PostParams::default(), pod)
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn an_outage_backs_off_keeps_the_token_until_expiry_and_recovers_and_admission_follows() {
    support::capture_logs();
    let env = TestEnv::new("token-outage").await;
    let mut provider = OidcProvider::start(ProviderConfig {
        access_token_ttl_seconds: 30,
        clients: vec![client("payroll")],
        ..Default::default()
    })
    .await;
    support::create_client_secret(&env, "payroll-oidc", CLIENT_SECRET).await;
    let operator = env.start_operator(Duration::from_secs(300));
    let spec = secret_token(provider.issuer(), "payroll", "payroll-oidc");
    let secret_name = "payroll-token".to_owned();
    create_identity(&env, &identity("payroll", spec)).await;
    let _: WindowsTaskIdentity =
        support::wait_for_condition(&env, "payroll", "TokenReady", "True", Some("TokenIssued")).await;
    let webhook = support::webhook::start_webhook(&env).await;

    // With a fresh token a pod is admitted and handed the token.
    let admitted = wait_until("webhook active", Duration::from_secs(60), || async {
        match create_pod(&env, &task_pod("fresh", "payroll")).await {
            Ok(pod) if pod.spec.as_ref()?.service_account_name.as_deref() == Some("payroll") => Some(pod),
            Ok(_) => {
                // Created before the webhook was active: not mutated, try again.
                let _ = env.api::<Pod>().delete("fresh", &Default::default()).await;
                None
            }
            Err(e) => {
                println!("not admitted yet: {e}");
                None
            }
        }
    })
    .await;
    let base = &admitted.spec.unwrap().containers[0];
    let env_names: Vec<&str> = base.env.iter().flatten().map(|e| e.name.as_str()).collect();
    assert!(env_names.contains(&"WINFLOW_ACCESS_TOKEN") && env_names.contains(&"WINFLOW_TOKEN_FILE"));

    provider.stop().await;
    let (kept, expires, _) = read_token(&env, &secret_name).await;
    let expires = expires.unwrap();

    // Backoff while the old token is valid: the failures are counted and the token kept.
    let mut failures_seen: Vec<(i32, std::time::Instant)> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no Expired after the outage: {failures_seen:?}"
        );
        let identity = env.api::<WindowsTaskIdentity>().get("payroll").await.unwrap();
        let status = token_status(&identity);
        if status.failed_attempts > 0 && failures_seen.last().is_none_or(|(n, _)| *n != status.failed_attempts) {
            failures_seen.push((status.failed_attempts, std::time::Instant::now()));
        }
        let (state, reason, _) = ready_reason(&identity, "TokenReady");
        if reason == "Expired" {
            break;
        }
        if status.failed_attempts > 0 && Timestamp::now() < expires {
            assert_eq!((state.as_str(), reason.as_str()), ("True", "Backoff"));
            assert_eq!(status.last_failure_reason.as_deref(), Some("ProviderUnavailable"));
        }
        let (token, _, _) = read_token(&env, &secret_name).await;
        if Timestamp::now() < expires {
            assert_eq!(token, kept, "the still-valid token is kept during the outage");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (token, _, _) = read_token(&env, &secret_name).await;
    assert_eq!(token, "", "the expired token was taken out of the Secret");
    // The failed attempts, timed by the operator's own log lines.
    let key = format!("{}/payroll", env.namespace);
    let attempts: Vec<Timestamp> = support::captured_logs()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["fields"]["identity"] == key.as_str() && l["fields"]["reason"] == "ProviderUnavailable")
        .filter_map(|l| l["timestamp"].as_str()?.parse().ok())
        .collect();
    let gaps: Vec<i64> = attempts
        .windows(2)
        .map(|w| w[1].duration_since(w[0]).as_millis() as i64)
        .collect();
    println!("failed attempts seen in status: {failures_seen:?}; gaps between attempts in the log (ms): {gaps:?}");
    assert!(failures_seen.len() >= 3, "{failures_seen:?}");
    // Doubling from 1 s at first; later attempts come closer again as the token runs out.
    assert!(
        gaps.len() >= 3 && gaps[0] < gaps[1] && gaps[1] < gaps[2],
        "intervals grow: {gaps:?}"
    );

    // A new pod is now denied with the time a fresh token is due.
    let denied = create_pod(&env, &task_pod("stale", "payroll")).await.unwrap_err();
    let current = env.api::<WindowsTaskIdentity>().get("payroll").await.unwrap();
    println!(
        "denied at {}: {denied}\nstatus: {:?}",
        Timestamp::now(),
        token_status(&current)
    );
    assert!(denied.contains("expired at"), "{denied}");
    assert!(denied.contains("a fresh token is due at"), "{denied}");

    // Provider back: a new token without restarting the operator, and pods are admitted.
    provider.start_again().await;
    let recovered: WindowsTaskIdentity =
        support::wait_for_condition(&env, "payroll", "TokenReady", "True", Some("TokenIssued")).await;
    assert_eq!(token_status(&recovered).failed_attempts, 0);
    let (token, _, _) = read_token(&env, &secret_name).await;
    assert_eq!(
        provider.introspect("payroll", CLIENT_SECRET, &token).await["active"],
        true
    );
    wait_until("pod admitted after recovery", Duration::from_secs(30), || async {
        create_pod(&env, &task_pod("after", "payroll")).await.ok()
    })
    .await;
    drop(webhook);
    operator.stop().await;
}

#[tokio::test]
async fn bad_settings_get_their_reason_and_other_identities_carry_on() {
    let env = TestEnv::new("token-bad").await;
    let provider = OidcProvider::start(ProviderConfig {
        access_token_ttl_seconds: 600,
        clients: vec![client("good"), client("wrong")],
        ..Default::default()
    })
    .await;
    support::create_client_secret(&env, "good-oidc", CLIENT_SECRET).await;
    support::create_client_secret(&env, "wrong-oidc", "not-the-secret").await;
    let operator = env.start_operator(Duration::from_secs(300));
    let issuer = provider.issuer().to_owned();
    // `localhost` reaches the same provider, whose discovery says 127.0.0.1: a mismatch.
    let mismatched = issuer.replace("127.0.0.1", "localhost");
    create_identity(&env, &identity("good", secret_token(&issuer, "good", "good-oidc"))).await;
    create_identity(&env, &identity("wrong", secret_token(&issuer, "wrong", "wrong-oidc"))).await;
    create_identity(
        &env,
        &identity("elsewhere", secret_token(&mismatched, "good", "good-oidc")),
    )
    .await;
    create_identity(&env, &identity("nosecret", secret_token(&issuer, "good", "later-oidc"))).await;

    let _: WindowsTaskIdentity =
        support::wait_for_condition(&env, "good", "TokenReady", "True", Some("TokenIssued")).await;
    let wrong: WindowsTaskIdentity =
        support::wait_for_condition(&env, "wrong", "TokenReady", "False", Some("InvalidClient")).await;
    let (_, _, message) = ready_reason(&wrong, "TokenReady");
    assert!(
        message.contains("invalid_client") && message.contains("next attempt at"),
        "{message}"
    );
    assert!(!message.contains("not-the-secret"));
    let elsewhere: WindowsTaskIdentity =
        support::wait_for_condition(&env, "elsewhere", "TokenReady", "False", Some("DiscoveryFailed")).await;
    let (_, _, message) = ready_reason(&elsewhere, "TokenReady");
    assert!(message.contains(&mismatched), "{message}");
    let missing: WindowsTaskIdentity =
        support::wait_for_condition(&env, "nosecret", "TokenReady", "False", Some("SecretMissing")).await;
    let (_, _, message) = ready_reason(&missing, "TokenReady");
    assert!(message.contains("later-oidc"), "{message}");
    for name in ["wrong", "elsewhere", "nosecret"] {
        let identity = env.api::<WindowsTaskIdentity>().get(name).await.unwrap();
        assert_eq!(ready_reason(&identity, "Ready").0, "False", "{name}");
        assert_eq!(ready_reason(&identity, "CredentialSpecReady").0, "True", "{name}");
    }

    // A token spec change gets a new token at once (the current one is good for 10 minutes).
    let successes =
        |requests: Vec<support::oidc::TokenRequestRecord>| requests.iter().filter(|r| r.status == 200).count();
    assert_eq!(
        successes(provider.token_requests().await),
        1,
        "only `good` has a token so far"
    );
    let patch = json!({"spec": {"token": {"minValidity": "3s"}}});
    env.api::<WindowsTaskIdentity>()
        .patch("good", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    wait_until("a new token after the spec change", Duration::from_secs(30), || async {
        (successes(provider.token_requests().await) == 2).then_some(())
    })
    .await;

    // A fixed client secret is tried at once, not at the next backoff retry.
    let due = wait_until("the fourth failure", Duration::from_secs(60), || async {
        let identity = env.api::<WindowsTaskIdentity>().get("wrong").await.ok()?;
        let status = token_status(&identity);
        (status.failed_attempts >= 4).then(|| status.renewal_time.unwrap().parse::<Timestamp>().unwrap())
    })
    .await;
    let fixed: Secret = serde_json::from_value(json!({"stringData": {"client-secret": CLIENT_SECRET}})).unwrap();
    env.api::<Secret>()
        .patch("wrong-oidc", &PatchParams::default(), &Patch::Merge(&fixed))
        .await
        .unwrap();
    let _: WindowsTaskIdentity =
        support::wait_for_condition(&env, "wrong", "TokenReady", "True", Some("TokenIssued")).await;
    let first_success = provider
        .token_requests()
        .await
        .into_iter()
        .find(|r| r.status == 200 && r.client_id.as_deref() == Some("wrong"))
        .unwrap();
    println!(
        "fixed secret: token at {} ms, next retry was due at {due}",
        first_success.time
    );
    assert!(
        (first_success.time as i128) < due.as_millisecond() as i128,
        "the new secret was used before the backoff retry was due"
    );

    // Creating the missing Secret issues the token at once, without touching the identity.
    let generation = missing.metadata.generation;
    support::create_client_secret(&env, "later-oidc", CLIENT_SECRET).await;
    let fixed: WindowsTaskIdentity =
        support::wait_for_condition(&env, "nosecret", "TokenReady", "True", Some("TokenIssued")).await;
    assert_eq!(fixed.metadata.generation, generation);

    // No identity's token was requested more often than its changes asked for.
    assert_eq!(
        successes(provider.token_requests().await),
        4,
        "`good` twice (spec change), `wrong` and `nosecret` once fixed"
    );
    operator.stop().await;
}

#[tokio::test]
async fn workload_identity_sends_a_fresh_service_account_token_the_provider_trusts() {
    let env = TestEnv::new("token-wi").await;
    let (cluster_issuer, jwks) = support::service_account_issuer(&env.client).await;
    let audience = "api://AzureADTokenExchange";
    let trusted_subject = format!("system:serviceaccount:{}:federated", env.namespace);
    let provider = OidcProvider::start(ProviderConfig {
        access_token_ttl_seconds: 600,
        federated: vec![FederatedCredential {
            client_id: "payroll-app".to_owned(),
            issuer: cluster_issuer.clone(),
            subject: trusted_subject.clone(),
            audience: audience.to_owned(),
            jwks,
        }],
        ..Default::default()
    })
    .await;
    let operator = env.start_operator(Duration::from_secs(300));
    let token = |client: &str| json!({"issuerUrl": provider.issuer(), "clientId": client, "workloadIdentity": {}, "minValidity": "1m"});
    create_identity(&env, &identity("federated", token("payroll-app"))).await;
    // Another service account is not trusted by the app registration.
    create_identity(&env, &identity("untrusted", token("payroll-app"))).await;

    let issued: WindowsTaskIdentity =
        support::wait_for_condition(&env, "federated", "TokenReady", "True", Some("TokenIssued")).await;
    let _: WindowsTaskIdentity =
        support::wait_for_condition(&env, "untrusted", "TokenReady", "False", Some("InvalidClient")).await;
    let (token, _, _) = read_token(&env, "federated-token").await;
    assert!(!token.is_empty());
    assert!(token_status(&issued).expires_at.is_some());

    let requests = provider.token_requests().await;
    let accepted: Vec<_> = requests.iter().filter(|r| r.status == 200).collect();
    assert_eq!(accepted.len(), 1, "{requests:?}");
    let request = accepted[0];
    assert_eq!(request.auth_method, "federated");
    assert_eq!(request.grant_type.as_deref(), Some("client_credentials"));
    // The provider verified the assertion against the API server's JWKS; its claims name the
    // identity's service account and audience, and it was minted for this request.
    let claims = request.assertion.as_ref().unwrap();
    assert_eq!(claims["iss"], cluster_issuer.as_str());
    assert_eq!(claims["sub"], trusted_subject.as_str());
    let audiences: Vec<&str> = match &claims["aud"] {
        Value::Array(list) => list.iter().filter_map(Value::as_str).collect(),
        other => other.as_str().into_iter().collect(),
    };
    assert_eq!(audiences, [audience]);
    let minted = claims["iat"].as_u64().unwrap();
    let received = request.time / 1000;
    assert!(received.abs_diff(minted) <= 5, "minted at {minted}, sent at {received}");
    assert_eq!(claims["exp"].as_u64().unwrap() - minted, 3600);
    let rejected = requests
        .iter()
        .find(|r| r.status == 401)
        .expect("the untrusted identity's request");
    assert!(
        rejected.error.as_deref().unwrap_or_default().contains("sub"),
        "{rejected:?}"
    );
    operator.stop().await;
}

/// A flapping provider (up 2 s, down 4 s, for a minute): the Secret never holds
/// an expired token, because attempts come closer as the token runs out and one of them lands
/// while the provider is up; the failures show in status as Backoff.
#[tokio::test]
async fn a_flapping_provider_never_leaves_an_expired_token_in_the_secret() {
    let env = TestEnv::new("token-flap").await;
    let mut provider = OidcProvider::start(ProviderConfig {
        access_token_ttl_seconds: 18,
        clients: vec![client("flap")],
        ..Default::default()
    })
    .await;
    support::create_client_secret(&env, "flap-oidc", CLIENT_SECRET).await;
    let operator = env.start_operator(Duration::from_secs(300));
    create_identity(
        &env,
        &identity("flap", secret_token(provider.issuer(), "flap", "flap-oidc")),
    )
    .await;
    let _: WindowsTaskIdentity =
        support::wait_for_condition(&env, "flap", "TokenReady", "True", Some("TokenIssued")).await;

    let (observations, expired, missing, backoffs) = {
        let watch = async {
            let (mut observations, mut expired, mut missing, mut backoffs) = (0, 0, 0, 0);
            loop {
                let (token, expires, _) = read_token(&env, "flap-token").await;
                let now = Timestamp::now();
                if !token.is_empty() && expires.is_some_and(|at| now >= at) {
                    expired += 1;
                }
                if token.is_empty() {
                    missing += 1;
                }
                let identity = env.api::<WindowsTaskIdentity>().get("flap").await.unwrap();
                if ready_reason(&identity, "TokenReady").1 == "Backoff" {
                    backoffs += 1;
                }
                observations += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
                if observations >= 300 {
                    return (observations, expired, missing, backoffs);
                }
            }
        };
        let flap = async {
            loop {
                // Up 2 s, down 4 s: every 6 s renew window (a third of 18 s) has the provider up.
                tokio::time::sleep(Duration::from_secs(2)).await;
                provider.stop().await;
                tokio::time::sleep(Duration::from_secs(4)).await;
                provider.start_again().await;
            }
        };
        tokio::select! {
            seen = watch => seen,
            () = flap => unreachable!("the flapping never ends"),
        }
    };
    let requests = provider.token_requests().await;
    let issued = requests.iter().filter(|r| r.status == 200).count();
    println!(
        "flapping: {observations} looks, {expired} with an expired token, {missing} without a token, {backoffs} in Backoff, {issued} tokens issued"
    );
    assert_eq!(expired, 0, "the Secret held an expired token");
    assert_eq!(missing, 0, "the token expired and was removed");
    assert!(backoffs > 0, "failed refreshes show as Backoff");
    assert!(issued >= 4, "a new token about every 12 s: {issued}");
    operator.stop().await;
}
