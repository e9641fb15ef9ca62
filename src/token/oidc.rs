//! The OpenID provider side: discovery (cached per issuer, fetched again on a timer and after
//! failures) and the client-credentials grant. Errors become a reason and a message that
//! never contain a secret or a token.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use openidconnect::core::{CoreClient, CoreProviderMetadata};
use openidconnect::{AccessToken, ClientId, ClientSecret, IssuerUrl, OAuth2TokenResponse, Scope};

use super::Failure;

/// Everything winflow needs to know about the provider's reply.
pub struct Granted {
    pub access_token: AccessToken,
    pub token_type: String,
    pub lifetime: Duration,
}

/// How the client proves who it is.
pub enum ClientAuth {
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
    /// Bound on each HTTP exchange with a provider.
    pub request_timeout: Duration,
}

impl Default for OidcSettings {
    fn default() -> Self {
        Self {
            allow_insecure_loopback: false,
            rediscover_after: Duration::from_secs(3600),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// The client shared by all identities.
pub struct Oidc {
    http: reqwest::Client,
    settings: OidcSettings,
    discovered: Mutex<HashMap<String, (CoreProviderMetadata, Instant)>>,
}

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

impl Oidc {
    pub fn new(settings: OidcSettings) -> Self {
        // Redirects are refused: discovery and token requests go to the issuer's own
        // endpoints only (a redirect could carry client credentials elsewhere).
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.request_timeout)
            .build()
            .expect("an HTTP client with default TLS settings builds");
        Self {
            http,
            settings,
            discovered: Mutex::new(HashMap::new()),
        }
    }

    /// Requests a token with the client-credentials grant.
    pub async fn request_token(
        &self,
        issuer: &str,
        client_id: &str,
        auth: ClientAuth,
        scopes: &[String],
    ) -> Result<Granted, Failure> {
        check_issuer_url(issuer, self.settings.allow_insecure_loopback)?;
        let metadata = self.metadata(issuer).await?;
        let secret = match &auth {
            ClientAuth::Secret(secret) => Some(secret.clone()),
            ClientAuth::Assertion(_) => None,
        };
        let client = CoreClient::from_provider_metadata(metadata, ClientId::new(client_id.to_owned()), secret);
        let mut request = client.exchange_client_credentials().map_err(|e| {
            Failure::new(
                super::REASON_DISCOVERY_FAILED,
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
            let failure = token_failure(&e);
            if failure.reason == super::REASON_PROVIDER_UNAVAILABLE {
                // The endpoints may have moved: discover again on the next attempt.
                self.forget(issuer);
            }
            failure
        })?;
        let lifetime = response.expires_in().ok_or_else(|| {
            Failure::new(
                super::REASON_TOKEN_REQUEST_FAILED,
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
                super::REASON_DISCOVERY_FAILED,
                format!("issuer URL {issuer:?} is not a URL: {e}"),
            )
        })?;
        let metadata = CoreProviderMetadata::discover_async(url, &self.http)
            .await
            .map_err(|e| discovery_failure(issuer, &e))?;
        self.discovered
            .lock()
            .expect("discovery cache lock")
            .insert(issuer.to_owned(), (metadata.clone(), Instant::now()));
        Ok(metadata)
    }

    fn forget(&self, issuer: &str) {
        self.discovered.lock().expect("discovery cache lock").remove(issuer);
    }
}

/// Issuers must use `https`; `http` only on a loopback address, and only when allowed.
pub fn check_issuer_url(issuer: &str, allow_insecure_loopback: bool) -> Result<(), Failure> {
    let url = reqwest::Url::parse(issuer).map_err(|e| {
        Failure::new(
            super::REASON_INVALID_ISSUER,
            format!("spec.token.issuerUrl {issuer:?} is not a URL: {e}"),
        )
    })?;
    match url.scheme() {
        "https" => Ok(()),
        "http" if allow_insecure_loopback && is_loopback(&url) => Ok(()),
        "http" => Err(Failure::new(
            super::REASON_INVALID_ISSUER,
            format!(
                "spec.token.issuerUrl {issuer:?} uses plain http; issuers must use https (http is accepted only for loopback addresses when the operator runs with --allow-insecure-loopback-issuers, for local use)"
            ),
        )),
        other => Err(Failure::new(
            super::REASON_INVALID_ISSUER,
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

fn discovery_failure(issuer: &str, error: &openidconnect::DiscoveryError<HttpError>) -> Failure {
    use openidconnect::DiscoveryError as D;
    if let D::Request(e) = error {
        // Unreachable is not a discovery problem: nothing to fix in the settings.
        return Failure::new(
            super::REASON_PROVIDER_UNAVAILABLE,
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
        super::REASON_DISCOVERY_FAILED,
        format!("OIDC discovery for issuer {issuer:?} failed: {detail}"),
    )
}

fn token_failure(
    error: &openidconnect::RequestTokenError<
        HttpError,
        openidconnect::StandardErrorResponse<openidconnect::core::CoreErrorResponseType>,
    >,
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
                T::InvalidClient | T::UnauthorizedClient => super::REASON_INVALID_CLIENT,
                T::InvalidScope => super::REASON_INVALID_SCOPE,
                _ => super::REASON_TOKEN_REQUEST_FAILED,
            };
            Failure::new(
                reason,
                format!("the provider refused the token request: {}{description}", code.as_ref()),
            )
        }
        E::Request(e) => Failure::new(
            super::REASON_PROVIDER_UNAVAILABLE,
            format!("the token endpoint did not answer: {}", root_cause(e)),
        ),
        // The body is never quoted: it may hold a token.
        E::Parse(e, _) => Failure::new(
            super::REASON_TOKEN_REQUEST_FAILED,
            format!("the token response is not valid OAuth 2.0 JSON (at {})", e.path()),
        ),
        E::Other(why) => Failure::new(
            super::REASON_TOKEN_REQUEST_FAILED,
            format!("the token request failed: {}", crate::text::truncate(why, 200)),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuers_must_be_https_unless_loopback_is_allowed() {
        assert!(check_issuer_url("https://login.microsoftonline.com/tenant/v2.0", false).is_ok());
        for loopback in ["http://127.0.0.1:8080", "http://localhost:9000/oidc", "http://[::1]:80"] {
            assert!(check_issuer_url(loopback, true).is_ok(), "{loopback}");
            let refused = check_issuer_url(loopback, false).unwrap_err();
            assert_eq!(refused.reason, super::super::REASON_INVALID_ISSUER);
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
}
