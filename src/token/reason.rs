//! Why a token stands as it does: the reasons of `TokenReady`, of `status.token.lastFailureReason`,
//! of the `winflow_token_refreshes_total{result}` metric and of the token log lines. Their
//! strings are part of the API (SPEC.md and the README's `TokenReady` table).

use crate::api::conditions::{self, ConditionReason};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The Secret holds a valid token.
    TokenIssued,
    /// Refreshing failed; the current token is still valid.
    Backoff,
    /// The token expired and could not be refreshed.
    Expired,
    DiscoveryFailed,
    InvalidClient,
    InvalidScope,
    InvalidIssuer,
    SecretMissing,
    ProviderUnavailable,
    TokenRequestFailed,
    AssertionFailed,
    LifetimeTooShort,
    CertificateNotTrusted,
    /// An attempt (assertion, discovery and token request) did not end within its deadline.
    DeadlineExceeded,
    /// The first attempt for the current settings has not ended yet.
    TokenPending,
    /// The API server refused the token Secret.
    ApiError,
    /// Pods that are not the identity's own name the token Secret: no token is written to it.
    Exposed,
}

impl Reason {
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::TokenIssued => "TokenIssued",
            Reason::Backoff => "Backoff",
            Reason::Expired => "Expired",
            Reason::DiscoveryFailed => "DiscoveryFailed",
            Reason::InvalidClient => "InvalidClient",
            Reason::InvalidScope => "InvalidScope",
            Reason::InvalidIssuer => "InvalidIssuer",
            Reason::SecretMissing => "SecretMissing",
            Reason::ProviderUnavailable => "ProviderUnavailable",
            Reason::TokenRequestFailed => "TokenRequestFailed",
            Reason::AssertionFailed => "AssertionFailed",
            Reason::LifetimeTooShort => "LifetimeTooShort",
            Reason::CertificateNotTrusted => "CertificateNotTrusted",
            Reason::DeadlineExceeded => "DeadlineExceeded",
            Reason::TokenPending => "TokenPending",
            Reason::Exposed => "Exposed",
            // The reason of every child the API server refused.
            Reason::ApiError => ConditionReason::ApiError.as_str(),
        }
    }
}

impl conditions::Reason for Reason {
    fn as_str(self) -> &'static str {
        Reason::as_str(self)
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_strings_are_the_documented_ones() {
        let all = [
            (Reason::TokenIssued, "TokenIssued"),
            (Reason::Backoff, "Backoff"),
            (Reason::Expired, "Expired"),
            (Reason::DiscoveryFailed, "DiscoveryFailed"),
            (Reason::InvalidClient, "InvalidClient"),
            (Reason::InvalidScope, "InvalidScope"),
            (Reason::InvalidIssuer, "InvalidIssuer"),
            (Reason::SecretMissing, "SecretMissing"),
            (Reason::ProviderUnavailable, "ProviderUnavailable"),
            (Reason::TokenRequestFailed, "TokenRequestFailed"),
            (Reason::AssertionFailed, "AssertionFailed"),
            (Reason::LifetimeTooShort, "LifetimeTooShort"),
            (Reason::CertificateNotTrusted, "CertificateNotTrusted"),
            (Reason::DeadlineExceeded, "DeadlineExceeded"),
            (Reason::TokenPending, "TokenPending"),
            (Reason::ApiError, "ApiError"),
            (Reason::Exposed, "Exposed"),
        ];
        for (reason, text) in all {
            assert_eq!(reason.as_str(), text);
            assert_eq!(reason.to_string(), text);
        }
    }
}
