//! Why the webhook allowed or denied a pod: the one list of admission reasons, with their
//! strings (`as_str`) for the audit record, the `winflow_admission_decisions_total{reason}`
//! metric and the identity's Warning Events. The strings are part of the API (SPEC.md and the
//! README's webhook tables).

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AdmissionReason {
    Allowed,
    /// Allowed with the identity filled in.
    Mutated,
    AdministratorNotAllowed,
    /// The creator's SubjectAccessReview could not be answered: denied, fail closed.
    AuthorizationUnavailable,
    ClientSecretReference,
    CreatorNotAllowed,
    /// The pod runs as a service account that creates pods of identities its creator may not use.
    CreatorServiceAccount,
    DagNotAllowed,
    /// The decision did not finish within its deadline: denied, fail closed.
    DecisionTimeout,
    FieldConflict,
    GmsaAccountOfIdentity,
    GmsaChanged,
    GmsaConflict,
    /// gMSA contents winflow cannot read unambiguously (not one JSON object, a key given
    /// twice, an account field of the wrong type): denied, fail closed.
    GmsaContentUnreadable,
    GmsaContentWithoutName,
    HostAccountSecretReference,
    IdentityLabelChanged,
    IdentityNotReady,
    InvalidAnnotation,
    InvalidPod,
    PodLookupFailed,
    PrivilegedNotAllowed,
    ServiceAccountMismatch,
    ServiceAccountOfIdentity,
    ShareCredentialsReference,
    ShareNotListed,
    TaskNotAllowed,
    TokenExpired,
    TokenExpiring,
    TokenNotIssued,
    TokenSecretNotOwn,
    UnknownIdentity,
    UnknownRole,
    UnlabelledGmsaUse,
}

impl AdmissionReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            AdmissionReason::Allowed => "Allowed",
            AdmissionReason::Mutated => "Mutated",
            AdmissionReason::AdministratorNotAllowed => "AdministratorNotAllowed",
            AdmissionReason::AuthorizationUnavailable => "AuthorizationUnavailable",
            AdmissionReason::ClientSecretReference => "ClientSecretReference",
            AdmissionReason::CreatorNotAllowed => "CreatorNotAllowed",
            AdmissionReason::CreatorServiceAccount => "CreatorServiceAccount",
            AdmissionReason::DagNotAllowed => "DagNotAllowed",
            AdmissionReason::DecisionTimeout => "DecisionTimeout",
            AdmissionReason::FieldConflict => "FieldConflict",
            AdmissionReason::GmsaAccountOfIdentity => "GmsaAccountOfIdentity",
            AdmissionReason::GmsaChanged => "GmsaChanged",
            AdmissionReason::GmsaConflict => "GmsaConflict",
            AdmissionReason::GmsaContentUnreadable => "GmsaContentUnreadable",
            AdmissionReason::GmsaContentWithoutName => "GmsaContentWithoutName",
            AdmissionReason::HostAccountSecretReference => "HostAccountSecretReference",
            AdmissionReason::IdentityLabelChanged => "IdentityLabelChanged",
            AdmissionReason::IdentityNotReady => "IdentityNotReady",
            AdmissionReason::InvalidAnnotation => "InvalidAnnotation",
            AdmissionReason::InvalidPod => "InvalidPod",
            AdmissionReason::PodLookupFailed => "PodLookupFailed",
            AdmissionReason::PrivilegedNotAllowed => "PrivilegedNotAllowed",
            AdmissionReason::ServiceAccountMismatch => "ServiceAccountMismatch",
            AdmissionReason::ServiceAccountOfIdentity => "ServiceAccountOfIdentity",
            AdmissionReason::ShareCredentialsReference => "ShareCredentialsReference",
            AdmissionReason::ShareNotListed => "ShareNotListed",
            AdmissionReason::TaskNotAllowed => "TaskNotAllowed",
            AdmissionReason::TokenExpired => "TokenExpired",
            AdmissionReason::TokenExpiring => "TokenExpiring",
            AdmissionReason::TokenNotIssued => "TokenNotIssued",
            AdmissionReason::TokenSecretNotOwn => "TokenSecretNotOwn",
            AdmissionReason::UnknownIdentity => "UnknownIdentity",
            AdmissionReason::UnknownRole => "UnknownRole",
            AdmissionReason::UnlabelledGmsaUse => "UnlabelledGmsaUse",
        }
    }
}

impl std::fmt::Display for AdmissionReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
