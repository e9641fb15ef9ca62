//! OIDC access tokens for identities: requested with the client-credentials grant, kept in
//! the token Secret, renewed ahead of expiry from the lifetime the provider granted, retried
//! with capped backoff, and removed from the Secret once expired. A token value is only ever
//! written to that Secret: never to logs, Events, status or metrics.
//!
//! Issuing runs beside the identity reconcile, never inside it. The reconcile hands the
//! [`Issuer`] the identity as it is (`want`: the settings, the Secret, a digest of the
//! credentials) and reads back the last outcome for exactly that ([`TokenReport`]), which it
//! writes into status with everything else. Each identity's token is kept by a task of its
//! own (`keeper`), which owns the timing (renewal, retry with backoff, taking an expired token
//! out), writes the Secret as a child of the identity (`controller::apply::ensure_child`), and
//! wakes the reconcile when its outcome changes. Attempts at providers have slots, overall
//! and per issuer, and a deadline each (`attempt`): an issuer that accepts connections and
//! never answers holds its own few slots until the deadline, and nothing else waits for it.
//!
//! Who waits for whom: watch event -> identity reconcile -> `Issuer::report` (API reads, never
//! a provider) -> status write; keeper -> provider -> Secret -> outcome -> wakes the reconcile.

mod assertion;
mod attempt;
mod ca_bundle;
mod issuer;
mod keeper;
mod oidc;
mod reason;
mod report;
pub mod schedule;
pub mod secret;
mod want;

pub use ca_bundle::{CaBundle, CaBundleProblem, CaFileError};
pub use issuer::{IdentityKey, Issuer};
pub use oidc::OidcSettings;
pub use reason::Reason;
pub use report::TokenReport;
pub use schedule::RetryPolicy;

/// A refresh that did not produce a token. The message says what is wrong and never holds a
/// secret or a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub reason: Reason,
    pub message: String,
}

impl Failure {
    pub fn new(reason: Reason, message: String) -> Self {
        Self { reason, message }
    }
}

/// Settings of token handling, from the operator's flags.
#[derive(Clone, Debug, Default)]
pub struct TokenConfig {
    pub oidc: OidcSettings,
    pub retry: RetryPolicy,
}
