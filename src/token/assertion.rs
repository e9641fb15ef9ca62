//! Workload identity: a service account token, minted by the API server's TokenRequest for
//! each token request and never stored, is the client's proof of identity (the Entra ID
//! workload identity federation flow: no long-lived client secret anywhere).

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::PostParams;
use kube::{Api, Client};

use super::{Failure, Reason};

/// A fresh token of `service_account` for `audience`, to send as `client_assertion`.
pub(super) async fn mint(
    client: &Client,
    namespace: &str,
    service_account: &str,
    audience: &str,
    expiration_seconds: i64,
) -> Result<String, Failure> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![audience.to_owned()],
            expiration_seconds: Some(expiration_seconds),
            bound_object_ref: None,
        },
        ..TokenRequest::default()
    };
    match api
        .create_token_request(service_account, &PostParams::default(), &request)
        .await
    {
        Ok(answer) => answer.status.map(|s| s.token).filter(|t| !t.is_empty()).ok_or_else(|| {
            Failure::new(
                Reason::AssertionFailed,
                format!("the API server's TokenRequest for service account {service_account} returned no token"),
            )
        }),
        Err(kube::Error::Api(status)) => Err(Failure::new(
            Reason::AssertionFailed,
            format!(
                "the API server refused a token for service account {service_account} (audience {audience:?}): {}",
                status.message
            ),
        )),
        Err(e) => Err(Failure::new(
            Reason::AssertionFailed,
            format!("requesting a token for service account {service_account} failed: {e}"),
        )),
    }
}
