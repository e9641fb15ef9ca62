//! The test OpenID Connect provider itself (test-support/src/oidc.rs, tests/oidc/provider.mjs):
//! discovery, client-credentials tokens with a short lifetime, introspection, the request
//! records, an outage and a restart on the same port, HTTPS with a throwaway CA, and
//! Entra-style federated credentials.

use winflow_test_support as support;

use serde_json::{Value, json};
use support::oidc::{ClientConfig, FederatedCredential, OidcProvider, ProviderConfig, sign_assertions};

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const K8S_ISSUER: &str = "https://kubernetes.default.svc";
const SUBJECT: &str = "system:serviceaccount:airflow:payroll-export";
const AUDIENCE: &str = "api://AzureADTokenExchange";

fn reports_client() -> ClientConfig {
    ClientConfig {
        client_id: "reports".into(),
        client_secret: "s3cret-value".into(),
        scope: "reports.read reports.write".into(),
    }
}

async fn discovery(http: &reqwest::Client, provider: &OidcProvider) -> Value {
    http.get(format!("{}/.well-known/openid-configuration", provider.issuer()))
        .send()
        .await
        .expect("discovery reachable")
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// POSTs a token request; returns the status and the JSON body.
async fn token_request(
    http: &reqwest::Client,
    endpoint: &str,
    form: &[(&str, &str)],
    basic: Option<(&str, &str)>,
) -> (u16, Value) {
    let mut request = http.post(endpoint).form(form);
    if let Some((id, secret)) = basic {
        request = request.basic_auth(id, Some(secret));
    }
    let response = request.send().await.expect("token endpoint reachable");
    let status = response.status().as_u16();
    (status, response.json().await.expect("token endpoint answers JSON"))
}

#[tokio::test]
async fn client_credentials_introspection_records_and_restart() {
    let client = reports_client();
    let mut provider = OidcProvider::start(ProviderConfig {
        access_token_ttl_seconds: 5,
        clients: vec![client.clone()],
        ..Default::default()
    })
    .await;
    let http = reqwest::Client::new();
    assert_eq!(provider.issuer(), format!("http://127.0.0.1:{}", provider.port()));

    // Discovery has what openidconnect's CoreProviderMetadata requires, and an RSA key.
    let metadata = discovery(&http, &provider).await;
    assert_eq!(metadata["issuer"], provider.issuer());
    for field in [
        "authorization_endpoint",
        "token_endpoint",
        "jwks_uri",
        "response_types_supported",
        "subject_types_supported",
        "id_token_signing_alg_values_supported",
        "introspection_endpoint",
    ] {
        assert!(!metadata[field].is_null(), "discovery lacks {field}: {metadata}");
    }
    // The crate winflow's token controller uses accepts it, JWKS included.
    let issuer = openidconnect::IssuerUrl::new(provider.issuer().to_owned()).unwrap();
    let parsed = openidconnect::core::CoreProviderMetadata::discover_async(issuer, &http)
        .await
        .expect("openidconnect accepts the discovery document and JWKS");
    assert_eq!(parsed.issuer().as_str(), provider.issuer());
    assert_eq!(parsed.jwks().keys().len(), 1);
    let jwks: Value = http
        .get(metadata["jwks_uri"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"][0]["kty"], "RSA", "{jwks}");
    assert!(jwks["keys"][0]["d"].is_null(), "JWKS must not publish the private key");

    // client_secret_post with a scope: a 5 s token.
    let token_endpoint = metadata["token_endpoint"].as_str().unwrap().to_owned();
    let (status, body) = token_request(
        &http,
        &token_endpoint,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", &client.client_id),
            ("client_secret", &client.client_secret),
            ("scope", "reports.read"),
        ],
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "reports.read");
    let expires_in = body["expires_in"].as_u64().unwrap();
    assert!((4..=5).contains(&expires_in), "expires_in {expires_in}");
    let token = body["access_token"].as_str().unwrap().to_owned();

    let introspection = provider
        .introspect(&client.client_id, &client.client_secret, &token)
        .await;
    assert_eq!(introspection["active"], true, "{introspection}");
    assert_eq!(introspection["client_id"], "reports");
    assert_eq!(introspection["scope"], "reports.read");

    // client_secret_basic without a scope also works.
    let (status, body) = token_request(
        &http,
        &token_endpoint,
        &[("grant_type", "client_credentials")],
        Some((&client.client_id, &client.client_secret)),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["access_token"].is_string());

    // A wrong secret.
    let (status, body) = token_request(
        &http,
        &token_endpoint,
        &[("grant_type", "client_credentials")],
        Some((&client.client_id, "wrong")),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "invalid_client", "{body}");

    // Every request recorded, in order, without secrets or tokens.
    let records = provider.token_requests().await;
    let summary: Vec<_> = records
        .iter()
        .map(|r| (r.auth_method.as_str(), r.status, r.scope.as_deref()))
        .collect();
    assert_eq!(
        summary,
        [
            ("client_secret_post", 200, Some("reports.read")),
            ("client_secret_basic", 200, None),
            ("client_secret_basic", 401, None),
        ]
    );
    for record in &records {
        assert_eq!(record.client_id.as_deref(), Some("reports"));
        assert_eq!(record.grant_type.as_deref(), Some("client_credentials"));
        assert!(record.assertion.is_none());
    }
    assert_eq!(
        records[2].error.as_deref(),
        Some("invalid_client: invalid secret provided")
    );
    // The process serves the same records; neither they nor the state file hold a credential.
    let served = served_records(&provider).await;
    assert_eq!(served.as_array().unwrap().len(), 3, "{served}");
    for raw in [
        served.to_string(),
        std::fs::read_to_string(provider.state_file()).unwrap(),
    ] {
        assert!(!raw.contains(&client.client_secret) && !raw.contains("wrong") && !raw.contains(&token));
    }

    // The token expires with its TTL.
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    let introspection = provider
        .introspect(&client.client_id, &client.client_secret, &token)
        .await;
    assert_eq!(introspection["active"], false, "{introspection}");

    // An outage: the port refuses connections, the records stay readable.
    let port = provider.port();
    provider.stop().await;
    let refused = tokio::net::TcpStream::connect(("127.0.0.1", port)).await;
    assert!(refused.is_err(), "port {port} still accepts connections");
    assert!(discovery_fails(&http, &provider).await);
    assert_eq!(provider.token_requests().await.len(), 3);

    // Back on the same port with the same issuer; older records survive, new ones append.
    provider.start_again().await;
    assert_eq!(provider.port(), port);
    let metadata = discovery(&http, &provider).await;
    assert_eq!(metadata["issuer"], provider.issuer());
    let (status, body) = token_request(
        &http,
        &token_endpoint,
        &[("grant_type", "client_credentials")],
        Some((&client.client_id, &client.client_secret)),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(provider.token_requests().await.len(), 4);
}

#[tokio::test]
async fn https_with_a_throwaway_ca_that_clients_must_trust_across_a_restart() {
    let client = reports_client();
    let mut provider = OidcProvider::start_https(ProviderConfig {
        clients: vec![client.clone()],
        ..Default::default()
    })
    .await;
    assert_eq!(provider.issuer(), format!("https://127.0.0.1:{}", provider.port()));
    assert_eq!(provider.url(), provider.issuer());
    let ca = reqwest::Certificate::from_pem(provider.ca_pem().unwrap().as_bytes()).unwrap();
    let trusting = reqwest::Client::builder().add_root_certificate(ca).build().unwrap();

    // Only a client that trusts the CA gets through; the public roots do not have it.
    let refused = reqwest::Client::new()
        .get(format!("{}/.well-known/openid-configuration", provider.issuer()))
        .send()
        .await
        .unwrap_err();
    assert!(format!("{refused:?}").contains("UnknownIssuer"), "{refused:?}");

    let metadata = discovery(&trusting, &provider).await;
    assert_eq!(metadata["issuer"], provider.issuer());
    let token_endpoint = metadata["token_endpoint"].as_str().unwrap().to_owned();
    assert!(
        token_endpoint.starts_with(&format!("{}/", provider.issuer())),
        "{token_endpoint}"
    );
    let issuer = openidconnect::IssuerUrl::new(provider.issuer().to_owned()).unwrap();
    let parsed = openidconnect::core::CoreProviderMetadata::discover_async(issuer, &trusting)
        .await
        .expect("discovery and JWKS over https");
    assert_eq!(parsed.jwks().keys().len(), 1);

    let (status, body) = token_request(
        &trusting,
        &token_endpoint,
        &[("grant_type", "client_credentials")],
        Some((&client.client_id, &client.client_secret)),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap();
    let introspection = provider
        .introspect(&client.client_id, &client.client_secret, token)
        .await;
    assert_eq!(introspection["active"], true, "{introspection}");

    // A restart serves the same certificate on the same port, under the same issuer.
    let port = provider.port();
    provider.stop().await;
    assert!(discovery_fails(&trusting, &provider).await);
    provider.start_again().await;
    assert_eq!(provider.port(), port);
    assert_eq!(discovery(&trusting, &provider).await["issuer"], provider.issuer());
    assert_eq!(provider.token_requests().await.len(), 1);
}

async fn discovery_fails(http: &reqwest::Client, provider: &OidcProvider) -> bool {
    http.get(format!("{}/.well-known/openid-configuration", provider.issuer()))
        .send()
        .await
        .is_err()
}

#[tokio::test]
async fn federated_credentials() {
    let claims = |sub: &str| json!({"iss": K8S_ISSUER, "sub": sub, "aud": [AUDIENCE], "jti": "abc"});
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut expired = claims(SUBJECT);
    expired["iat"] = json!(now - 7200);
    expired["exp"] = json!(now - 3600);
    let mut wrong_audience = claims(SUBJECT);
    wrong_audience["aud"] = json!(["api://something-else"]);
    let signed = sign_assertions(&[
        claims(SUBJECT),
        claims("system:serviceaccount:airflow:other"),
        expired,
        wrong_audience,
    ])
    .await;
    // The same claims signed by a key the provider does not know.
    let foreign = sign_assertions(&[claims(SUBJECT)]).await;

    let provider = OidcProvider::start(ProviderConfig {
        access_token_ttl_seconds: 5,
        clients: vec![reports_client()],
        federated: vec![FederatedCredential {
            client_id: "payroll".into(),
            issuer: K8S_ISSUER.into(),
            subject: SUBJECT.into(),
            audience: AUDIENCE.into(),
            jwks: signed.jwks.clone(),
        }],
        ..Default::default()
    })
    .await;
    let http = reqwest::Client::new();
    let token_endpoint = format!("{}/token", provider.url());
    let federated = |client_id: &'static str, assertion: &str| {
        let http = http.clone();
        let token_endpoint = token_endpoint.clone();
        let assertion = assertion.to_owned();
        async move {
            token_request(
                &http,
                &token_endpoint,
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", client_id),
                    ("client_assertion_type", JWT_BEARER),
                    ("client_assertion", &assertion),
                    ("scope", "api://winflow/.default"),
                ],
                None,
            )
            .await
        }
    };

    let (status, body) = federated("payroll", &signed.assertions[0]).await;
    assert_eq!(status, 200, "{body}\n{}", provider.log());
    assert!((4..=5).contains(&body["expires_in"].as_u64().unwrap()), "{body}");
    let token = body["access_token"].as_str().unwrap();
    let client = reports_client();
    let introspection = provider
        .introspect(&client.client_id, &client.client_secret, token)
        .await;
    assert_eq!(introspection["active"], true, "{introspection}");
    assert_eq!(introspection["client_id"], "payroll");

    for (client_id, assertion, why) in [
        ("payroll", &signed.assertions[1], "wrong subject"),
        ("payroll", &signed.assertions[2], "expired"),
        ("payroll", &signed.assertions[3], "wrong audience"),
        ("payroll", &foreign.assertions[0], "unknown key"),
        ("reports", &signed.assertions[0], "client without federated credentials"),
    ] {
        let (status, body) = federated(client_id, assertion).await;
        assert_eq!(status, 401, "{why}: {body}");
        assert_eq!(body["error"], "invalid_client", "{why}: {body}");
    }

    let records = provider.token_requests().await;
    assert_eq!(records.len(), 6);
    assert!(records.iter().all(|r| r.auth_method == "federated"));
    let good = &records[0];
    assert_eq!((good.client_id.as_deref(), good.status), (Some("payroll"), 200));
    let verified = good.assertion.as_ref().expect("verified claims recorded");
    assert_eq!(verified["iss"], K8S_ISSUER);
    assert_eq!(verified["sub"], SUBJECT);
    assert_eq!(verified["aud"], json!([AUDIENCE]));
    assert_eq!(verified["jti"], "abc");
    assert!(verified["exp"].as_u64().unwrap() > now);
    assert!(verified["iat"].is_u64());
    for (record, expected) in records[1..].iter().zip([
        "unexpected \"sub\" claim value",
        "\"exp\" claim timestamp check failed",
        "unexpected \"aud\" claim value",
        "signature verification failed",
        "no federated credential for this client_id",
    ]) {
        assert_eq!(record.status, 401);
        assert!(record.assertion.is_none(), "{record:?}");
        let error = record.error.as_deref().unwrap_or_default();
        assert!(error.contains(expected), "{error:?} should say {expected:?}");
    }
    // Assertions are credentials too: never recorded, and neither are tokens.
    let raw = std::fs::read_to_string(provider.state_file()).unwrap();
    assert!(!raw.contains(&signed.assertions[0]) && !raw.contains(token));
    assert_eq!(served_records(&provider).await.as_array().unwrap().len(), 6);
}

/// `GET /__harness/requests`: the records the running process holds.
async fn served_records(provider: &OidcProvider) -> Value {
    reqwest::get(format!("{}/__harness/requests", provider.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}
