//! The OpenID provider side: discovery (cached per issuer, fetched again on a timer and after
//! failures) and the client-credentials grant. Errors become a reason and a message that
//! never contain a secret or a token.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use openidconnect::core::{CoreClient, CoreProviderMetadata};
use openidconnect::{AccessToken, ClientId, ClientSecret, IssuerUrl, OAuth2TokenResponse, Scope};

use super::ca_bundle::CaBundle;
use super::{Failure, Reason};

/// Everything winflow needs to know about the provider's reply.
pub(super) struct Granted {
    pub access_token: AccessToken,
    pub token_type: String,
    pub lifetime: Duration,
}

/// How the client proves who it is.
pub(super) enum ClientAuth {
    Secret(ClientSecret),
    /// A JWT sent as `client_assertion` (RFC 7523): a service account token.
    Assertion(String),
}

/// Settings of the provider client.
#[derive(Clone, Debug)]
pub struct OidcSettings {
    /// Accept `http://` issuers on loopback addresses (local development and tests only).
    pub allow_insecure_loopback: bool,
    /// How long a discovery document is trusted before it is fetched again.
    pub rediscover_after: Duration,
    /// Bound on one attempt at a token: minting the assertion, discovery and the token
    /// request together (each HTTP exchange is within it, so it needs no bound of its own).
    pub attempt_deadline: Duration,
    /// Attempts in flight at once, over all issuers.
    pub concurrency: usize,
    /// Attempts in flight at once to one issuer URL: fewer than `concurrency`, so that an
    /// issuer that never answers leaves slots to the others.
    pub concurrency_per_issuer: usize,
    /// CA certificates trusted for issuers in addition to the public roots
    /// (`--oidc-ca-file`): for providers behind a private CA.
    pub ca_bundle: Option<CaBundle>,
}

impl Default for OidcSettings {
    fn default() -> Self {
        Self {
            allow_insecure_loopback: false,
            rediscover_after: Duration::from_secs(3600),
            attempt_deadline: Duration::from_secs(20),
            concurrency: 8,
            concurrency_per_issuer: 4,
            ca_bundle: None,
        }
    }
}

/// The client shared by all identities.
pub(super) struct Oidc {
    http: reqwest::Client,
    settings: OidcSettings,
    discovered: Mutex<HashMap<String, (CoreProviderMetadata, Instant)>>,
}

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

impl Oidc {
    pub(super) fn new(settings: OidcSettings) -> Self {
        // Redirects are refused: discovery and token requests go to the issuer's own
        // endpoints only (a redirect could carry client credentials elsewhere).
        let mut builder = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
        if let Some(bundle) = &settings.ca_bundle {
            builder = bundle.add_to(builder);
        }
        let http = builder
            .build()
            .expect("an HTTP client builds (a CA bundle's certificates were checked when it was read)");
        Self {
            http,
            settings,
            discovered: Mutex::new(HashMap::new()),
        }
    }

    /// The issuer's discovery document (cached for `rediscover_after`).
    pub(super) async fn discover(&self, issuer: &str) -> Result<CoreProviderMetadata, Failure> {
        check_issuer_url(issuer, self.settings.allow_insecure_loopback)?;
        self.metadata(issuer).await
    }

    /// Requests a token with the client-credentials grant from the token endpoint that
    /// `issuer`'s discovery document names.
    pub(super) async fn request_token(
        &self,
        issuer: &str,
        metadata: CoreProviderMetadata,
        client_id: &str,
        auth: ClientAuth,
        scopes: &[String],
    ) -> Result<Granted, Failure> {
        let secret = match &auth {
            ClientAuth::Secret(secret) => Some(secret.clone()),
            ClientAuth::Assertion(_) => None,
        };
        let client = CoreClient::from_provider_metadata(metadata, ClientId::new(client_id.to_owned()), secret);
        let mut request = client.exchange_client_credentials().map_err(|e| {
            Failure::new(
                Reason::DiscoveryFailed,
                format!("the provider's discovery document has no usable token endpoint: {e}"),
            )
        })?;
        request = request.add_scopes(scopes.iter().map(|s| Scope::new(s.clone())));
        if let ClientAuth::Assertion(assertion) = auth {
            request = request
                .add_extra_param("client_assertion_type", JWT_BEARER)
                .add_extra_param("client_assertion", assertion);
        }
        let response = request.request_async(&self.http).await.map_err(|e| {
            let failure = token_failure(&e, self.settings.ca_bundle.as_ref());
            if failure.reason == Reason::ProviderUnavailable {
                self.forget(issuer);
            }
            failure
        })?;
        let lifetime = response.expires_in().ok_or_else(|| {
            Failure::new(
                Reason::TokenRequestFailed,
                "the provider's token response has no expires_in, so winflow cannot schedule renewal".to_owned(),
            )
        })?;
        Ok(Granted {
            access_token: response.access_token().clone(),
            // RFC 6750 spells it `Bearer`; the token type is case-insensitive.
            token_type: match response.token_type().as_ref() {
                bearer if bearer.eq_ignore_ascii_case("bearer") => "Bearer".to_owned(),
                other => other.to_owned(),
            },
            lifetime,
        })
    }

    async fn metadata(&self, issuer: &str) -> Result<CoreProviderMetadata, Failure> {
        if let Some((metadata, fetched)) = self.discovered.lock().expect("discovery cache lock").get(issuer)
            && fetched.elapsed() < self.settings.rediscover_after
        {
            return Ok(metadata.clone());
        }
        let url = IssuerUrl::new(issuer.to_owned()).map_err(|e| {
            Failure::new(
                Reason::DiscoveryFailed,
                format!("issuer URL {issuer:?} is not a URL: {e}"),
            )
        })?;
        let metadata = CoreProviderMetadata::discover_async(url, &self.http)
            .await
            .map_err(|e| discovery_failure(issuer, &e, self.settings.ca_bundle.as_ref()))?;
        self.discovered
            .lock()
            .expect("discovery cache lock")
            .insert(issuer.to_owned(), (metadata.clone(), Instant::now()));
        Ok(metadata)
    }

    /// Discover `issuer` again on the next attempt: its endpoints may have moved.
    pub(super) fn forget(&self, issuer: &str) {
        self.discovered.lock().expect("discovery cache lock").remove(issuer);
    }
}

/// Issuers must use `https`; `http` only on a loopback address, and only when allowed.
pub(super) fn check_issuer_url(issuer: &str, allow_insecure_loopback: bool) -> Result<(), Failure> {
    let url = reqwest::Url::parse(issuer).map_err(|e| {
        Failure::new(
            Reason::InvalidIssuer,
            format!("spec.token.issuerUrl {issuer:?} is not a URL: {e}"),
        )
    })?;
    match url.scheme() {
        "https" => Ok(()),
        "http" if allow_insecure_loopback && is_loopback(&url) => Ok(()),
        "http" => Err(Failure::new(
            Reason::InvalidIssuer,
            format!(
                "spec.token.issuerUrl {issuer:?} uses plain http; issuers must use https (http is accepted only for loopback addresses when the operator runs with --allow-insecure-loopback-issuers, for local use)"
            ),
        )),
        other => Err(Failure::new(
            Reason::InvalidIssuer,
            format!("spec.token.issuerUrl {issuer:?} has scheme {other:?}; issuers must use https"),
        )),
    }
}

fn is_loopback(url: &reqwest::Url) -> bool {
    let host = url.host_str().unwrap_or_default();
    let address = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || address.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The innermost cause of an error, such as "Connection refused (os error 111)".
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

type HttpError = openidconnect::HttpClientError<reqwest::Error>;

/// Why the TLS handshake refused the server's certificate, if that is what failed. rustls'
/// error travels inside `io::Error`s, whose `source()` skips what they wrap, so the walk
/// goes into them.
fn certificate_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::CertificateError> {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(rustls::Error::InvalidCertificate(rejected)) = error.downcast_ref::<rustls::Error>() {
            return Some(rejected);
        }
        cause = match error.downcast_ref::<std::io::Error>().and_then(std::io::Error::get_ref) {
            Some(wrapped) => Some(wrapped as &(dyn std::error::Error + 'static)),
            None => error.source(),
        };
    }
    None
}

/// A name as webpki presents it (`DnsName("idp.example.com")`, `IpAddress(10.0.0.5)`), bare.
fn presented_name(presented: &str) -> &str {
    presented
        .split_once('(')
        .and_then(|(_, inner)| inner.strip_suffix(')'))
        .map_or(presented, |inner| inner.trim_matches('"'))
}

/// `https://host:port` of the request that failed (no path or query).
fn server_of(error: &HttpError) -> Option<String> {
    match error {
        openidconnect::HttpClientError::Reqwest(e) => e.url().map(|url| url.origin().ascii_serialization()),
        _ => None,
    }
}

/// A server certificate winflow does not accept, said so that whoever runs winflow knows what
/// to change: for an unknown CA, trusting it with `--oidc-ca-file`.
fn certificate_failure(
    context: &str,
    server: &str,
    rejected: &rustls::CertificateError,
    ca_bundle: Option<&CaBundle>,
) -> Failure {
    use rustls::CertificateError as C;
    let why = match rejected {
        C::UnknownIssuer => {
            let trusted = match ca_bundle {
                None => "the public web roots".to_owned(),
                Some(bundle) => format!(
                    "the public web roots and the {} certificate(s) of --oidc-ca-file {}",
                    bundle.len(),
                    bundle.origin()
                ),
            };
            let fix = match ca_bundle {
                None => "give winflow that CA's certificate (PEM) with winflow run --oidc-ca-file, or the Helm value token.caBundle",
                Some(_) => "add that CA's certificate (PEM) to --oidc-ca-file (the Helm value token.caBundle)",
            };
            format!(
                "is not trusted: it is not signed by a CA that winflow trusts ({trusted}); if the issuer uses a private CA, {fix}"
            )
        }
        C::NotValidForName => "is not valid for that host name; use the name the certificate is issued for in spec.token.issuerUrl, or have the certificate reissued".to_owned(),
        C::NotValidForNameContext { presented, .. } if !presented.is_empty() => format!(
            "is not valid for that host name (it is issued for {}); use one of those names in spec.token.issuerUrl, or have the certificate reissued",
            presented.iter().map(|name| presented_name(name)).collect::<Vec<_>>().join(", ")
        ),
        C::NotValidForNameContext { .. } => {
            "is not valid for that host name (it names none); have the certificate reissued for it".to_owned()
        }
        C::Expired | C::ExpiredContext { .. } => "has expired; the provider must renew it".to_owned(),
        C::NotValidYet | C::NotValidYetContext { .. } => {
            "is not valid yet (check the clocks of the provider and of winflow's node)".to_owned()
        }
        // webpki found a trusted CA by the name the certificate names as its issuer, but that
        // CA's key did not sign it.
        C::BadSignature => "is not trusted: its signature does not verify with the trusted CA certificate of the same name (an older CA, or another CA that happens to have that name?); give winflow the issuer's current CA certificate with --oidc-ca-file (the Helm value token.caBundle)".to_owned(),
        C::Revoked => "has been revoked".to_owned(),
        C::InvalidPurpose => "is not a certificate for TLS servers (its extended key usage)".to_owned(),
        other => format!("is not accepted: {other}"),
    };
    Failure::new(
        Reason::CertificateNotTrusted,
        format!("{context}: the TLS certificate of {server} {why}"),
    )
}

fn discovery_failure(
    issuer: &str,
    error: &openidconnect::DiscoveryError<HttpError>,
    ca_bundle: Option<&CaBundle>,
) -> Failure {
    use openidconnect::DiscoveryError as D;
    if let D::Request(e) = error {
        if let Some(rejected) = certificate_error(e) {
            return certificate_failure(
                &format!("OIDC discovery for issuer {issuer:?} failed"),
                &server_of(e).unwrap_or_else(|| issuer.to_owned()),
                rejected,
                ca_bundle,
            );
        }
        // Unreachable is not a discovery problem: nothing to fix in the settings.
        return Failure::new(
            Reason::ProviderUnavailable,
            format!(
                "issuer {issuer:?} did not answer its discovery request: {}",
                root_cause(e)
            ),
        );
    }
    let detail = match error {
        D::Request(_) => unreachable!("handled above"),
        D::Response(status, _, _) => format!("the discovery document answered HTTP {status}"),
        D::Parse(e) => format!("the discovery document is not valid: {}", e.path()),
        D::Validation(why) => why.clone(),
        D::UrlParse(e) => format!("no discovery URL can be made from it: {e}"),
        D::Other(why) => why.clone(),
        _ => error.to_string(),
    };
    Failure::new(
        Reason::DiscoveryFailed,
        format!("OIDC discovery for issuer {issuer:?} failed: {detail}"),
    )
}

fn token_failure(
    error: &openidconnect::RequestTokenError<
        HttpError,
        openidconnect::StandardErrorResponse<openidconnect::core::CoreErrorResponseType>,
    >,
    ca_bundle: Option<&CaBundle>,
) -> Failure {
    use openidconnect::RequestTokenError as E;
    use openidconnect::core::CoreErrorResponseType as T;
    match error {
        E::ServerResponse(response) => {
            let code = response.error();
            let description = response
                .error_description()
                .map(|d| format!(" ({})", crate::text::truncate(d, 200)))
                .unwrap_or_default();
            let reason = match code {
                T::InvalidClient | T::UnauthorizedClient => Reason::InvalidClient,
                T::InvalidScope => Reason::InvalidScope,
                _ => Reason::TokenRequestFailed,
            };
            Failure::new(
                reason,
                format!("the provider refused the token request: {}{description}", code.as_ref()),
            )
        }
        E::Request(e) => match certificate_error(e) {
            Some(rejected) => certificate_failure(
                "the token request failed",
                &server_of(e).unwrap_or_else(|| "the token endpoint".to_owned()),
                rejected,
                ca_bundle,
            ),
            None => Failure::new(
                Reason::ProviderUnavailable,
                format!("the token endpoint did not answer: {}", root_cause(e)),
            ),
        },
        // The body is never quoted: it may hold a token.
        E::Parse(e, _) => Failure::new(
            Reason::TokenRequestFailed,
            format!("the token response is not valid OAuth 2.0 JSON (at {})", e.path()),
        ),
        E::Other(why) => Failure::new(
            Reason::TokenRequestFailed,
            format!("the token request failed: {}", crate::text::truncate(why, 200)),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn issuers_must_be_https_unless_loopback_is_allowed() {
        assert!(check_issuer_url("https://login.microsoftonline.com/tenant/v2.0", false).is_ok());
        for loopback in ["http://127.0.0.1:8080", "http://localhost:9000/oidc", "http://[::1]:80"] {
            assert!(check_issuer_url(loopback, true).is_ok(), "{loopback}");
            let refused = check_issuer_url(loopback, false).unwrap_err();
            assert_eq!(refused.reason, Reason::InvalidIssuer);
            assert!(
                refused.message.contains("--allow-insecure-loopback-issuers"),
                "{}",
                refused.message
            );
        }
        let remote = check_issuer_url("http://idp.example.com", true).unwrap_err();
        assert!(remote.message.contains("must use https"), "{}", remote.message);
        assert!(check_issuer_url("ftp://idp.example.com", true).is_err());
        assert!(check_issuer_url("not a url", true).is_err());
    }

    /// A new CA (PEM) named `ca_name` and an HTTPS server on loopback whose certificate it
    /// signed for `names`; the
    /// server answers every request with 404, so a client that trusts it gets past TLS.
    async fn https_server(ca_name: &str, names: &[&str]) -> (String, std::net::SocketAddr) {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, ca_name);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let cert = CertificateParams::new(names).unwrap().signed_by(&key, &ca).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut request = [0u8; 4096];
                    let _ = tls.read(&mut request).await;
                    let _ = tls
                        .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        (ca.pem(), addr)
    }

    async fn discover(settings: OidcSettings, issuer: &str) -> Failure {
        match Oidc::new(settings).discover(issuer).await {
            Ok(_) => panic!("a server that answers 404 served a discovery document"),
            Err(failure) => failure,
        }
    }

    #[tokio::test]
    async fn an_issuer_on_a_private_ca_is_trusted_only_with_that_ca_and_says_how_otherwise() {
        let (ca_pem, addr) = https_server("Corp Test CA", &["127.0.0.1"]).await;
        let issuer = format!("https://{addr}");

        let untrusted = discover(OidcSettings::default(), &issuer).await;
        assert_eq!(untrusted.reason, Reason::CertificateNotTrusted);
        assert_eq!(
            untrusted.message,
            format!(
                "OIDC discovery for issuer {issuer:?} failed: the TLS certificate of {issuer} is not trusted: it is not signed by a CA that winflow trusts (the public web roots); if the issuer uses a private CA, give winflow that CA's certificate (PEM) with winflow run --oidc-ca-file, or the Helm value token.caBundle"
            )
        );

        // Another CA in the bundle does not help, and the message says what was trusted.
        let (other_ca, _) = https_server("Other Test CA", &["127.0.0.1"]).await;
        let wrong = discover(
            OidcSettings {
                ca_bundle: Some(CaBundle::from_pem(other_ca.as_bytes()).unwrap()),
                ..OidcSettings::default()
            },
            &issuer,
        )
        .await;
        assert_eq!(wrong.reason, Reason::CertificateNotTrusted);
        assert!(
            wrong
                .message
                .contains("the public web roots and the 1 certificate(s) of --oidc-ca-file PEM")
                && wrong
                    .message
                    .contains("add that CA's certificate (PEM) to --oidc-ca-file"),
            "{}",
            wrong.message
        );

        // A CA of the same name (an older one, say) is named as the likely mistake.
        let (namesake, _) = https_server("Corp Test CA", &["127.0.0.1"]).await;
        let replaced = discover(
            OidcSettings {
                ca_bundle: Some(CaBundle::from_pem(namesake.as_bytes()).unwrap()),
                ..OidcSettings::default()
            },
            &issuer,
        )
        .await;
        assert_eq!(replaced.reason, Reason::CertificateNotTrusted);
        assert!(replaced.message.contains("same name"), "{}", replaced.message);

        // With its CA, the handshake succeeds and the request reaches the server (which has no
        // discovery document).
        let trusted = discover(
            OidcSettings {
                ca_bundle: Some(CaBundle::from_pem(ca_pem.as_bytes()).unwrap()),
                ..OidcSettings::default()
            },
            &issuer,
        )
        .await;
        assert_eq!(trusted.reason, Reason::DiscoveryFailed, "{}", trusted.message);
        assert!(trusted.message.contains("HTTP 404"), "{}", trusted.message);
    }

    #[tokio::test]
    async fn a_certificate_for_another_name_is_named_as_such_and_a_ca_does_not_help() {
        let (ca_pem, addr) = https_server("Corp Test CA", &["idp.corp.example.com"]).await;
        let issuer = format!("https://{addr}");
        let failure = discover(
            OidcSettings {
                ca_bundle: Some(CaBundle::from_pem(ca_pem.as_bytes()).unwrap()),
                ..OidcSettings::default()
            },
            &issuer,
        )
        .await;
        assert_eq!(failure.reason, Reason::CertificateNotTrusted);
        assert_eq!(
            failure.message,
            format!(
                "OIDC discovery for issuer {issuer:?} failed: the TLS certificate of {issuer} is not valid for that host name (it is issued for idp.corp.example.com); use one of those names in spec.token.issuerUrl, or have the certificate reissued"
            )
        );
    }
}
