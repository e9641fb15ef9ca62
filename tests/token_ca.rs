//! OIDC tokens from an issuer behind a private CA (the test provider on HTTPS with a throwaway
//! CA) against a real control plane: refused with a reason a user can act on while the
//! operator does not trust the CA, issued once it runs with the CA (`--oidc-ca-file`).

use winflow_test_support as support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;
use serde_json::json;
use support::TestEnv;
use support::oidc::{OidcProvider, ProviderConfig};
use winflow::api::WindowsTaskIdentity;
use winflow::token::{CaBundle, OidcSettings, TokenConfig};

const CLIENT_SECRET: &str = "s3cret-c1ient-value-for-ca-tests";

/// The Key Vault example as `name`, requesting a token from `issuer` with a client secret.
fn identity(name: &str, issuer: &str) -> WindowsTaskIdentity {
    support::identities::identity_with_token(
        name,
        json!({
            "issuerUrl": issuer, "clientId": "reports",
            "clientSecretRef": {"name": "reports-oidc", "key": "client-secret"},
            "scopes": ["reports.read"], "minValidity": "2s"
        }),
    )
}

/// Token settings as `winflow run` builds them without --allow-insecure-loopback-issuers (the
/// issuer is https), retrying after 1 s so that the tests see attempts within seconds.
fn token_config(ca_bundle: Option<CaBundle>) -> TokenConfig {
    TokenConfig {
        oidc: OidcSettings {
            ca_bundle,
            ..OidcSettings::default()
        },
        retry: support::test_token_config().retry,
    }
}

#[tokio::test]
async fn an_issuer_on_a_private_ca_is_refused_with_how_to_trust_it_and_issues_once_trusted() {
    support::capture_logs();
    let env = TestEnv::new("token-ca").await;
    let provider = OidcProvider::start_https(ProviderConfig::with_client(
        60,
        "reports",
        CLIENT_SECRET,
        "reports.read",
    ))
    .await;
    assert!(provider.issuer().starts_with("https://127.0.0.1:"));
    support::create_client_secret(&env, "reports-oidc", CLIENT_SECRET).await;

    // The operator trusts only the public roots: the handshake refuses the certificate.
    let operator = env.start_operator_with(env.config.clone(), Duration::from_secs(300), token_config(None));
    env.api::<WindowsTaskIdentity>()
        .create(&PostParams::default(), &identity("reports", provider.issuer()))
        .await
        .unwrap();
    let refused: WindowsTaskIdentity =
        support::wait_for_condition(&env, "reports", "TokenReady", "False", Some("CertificateNotTrusted")).await;
    let condition = support::condition(&refused, "TokenReady").unwrap();
    let issuer = provider.issuer();
    let expected = format!(
        "OIDC discovery for issuer {issuer:?} failed: the TLS certificate of {issuer} is not trusted: it is not signed by a CA that winflow trusts (the public web roots); if the issuer uses a private CA, give winflow that CA's certificate (PEM) with winflow run --oidc-ca-file, or the Helm value token.caBundle"
    );
    assert!(
        condition.message.starts_with(&format!("{expected}; next attempt at ")),
        "{}",
        condition.message
    );
    let ready = support::condition(&refused, "Ready").unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "CertificateNotTrusted")
    );
    let status = refused.status.as_ref().unwrap().token.clone().unwrap();
    assert_eq!(status.last_failure_reason.as_deref(), Some("CertificateNotTrusted"));
    assert!(status.failed_attempts >= 1, "{status:?}");
    // The client secret never went to a server whose certificate was refused.
    assert!(provider.token_requests().await.is_empty());
    let secrets = env.api::<Secret>();
    assert!(secrets.get_opt("reports-token").await.unwrap().is_none());
    let logs = support::captured_logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("token refresh failed") && l.contains("CertificateNotTrusted")),
        "the failure is logged with its reason"
    );
    assert!(!logs.contains(CLIENT_SECRET), "the client secret is in the logs");
    operator.stop().await;

    // Restarted with the provider's CA (as with --oidc-ca-file), it gets the token.
    let ca = CaBundle::from_pem(provider.ca_pem().unwrap().as_bytes()).unwrap();
    let _operator = env.start_operator_with(env.config.clone(), Duration::from_secs(300), token_config(Some(ca)));
    let issued: WindowsTaskIdentity =
        support::wait_for_condition(&env, "reports", "TokenReady", "True", Some("TokenIssued")).await;
    assert_eq!(support::condition(&issued, "Ready").unwrap().status, "True");
    let status = issued.status.as_ref().unwrap().token.clone().unwrap();
    assert_eq!(status.last_failure_reason, None);
    let data = secrets.get("reports-token").await.unwrap().data.unwrap();
    let token = String::from_utf8(data["access_token"].0.clone()).unwrap();
    let introspection = provider.introspect("reports", CLIENT_SECRET, &token).await;
    assert_eq!(introspection["active"], true, "{introspection}");
    assert_eq!(introspection["client_id"], "reports");
    let requests = provider.token_requests().await;
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].status, 200);
}
