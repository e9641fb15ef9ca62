//! The token Secret: what winflow writes and what it reads back. Pure.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use sha2::{Digest, Sha256};

use super::schedule::Held;
use crate::api::WindowsTaskIdentity;
use crate::api::identity::TokenSettings;
use crate::build::{carries_labels_of, namespaced_meta};

pub use crate::api::refs::{ACCESS_TOKEN_KEY, EXPIRES_AT_KEY, TOKEN_TYPE_KEY};
/// When the token expires (RFC 3339), readable without reading the token.
pub const EXPIRES_AT_ANNOTATION: &str = "winflow.io/expires-at";
/// When winflow received the token: with the expiry, the lifetime the provider granted.
pub const ISSUED_AT_ANNOTATION: &str = "winflow.io/issued-at";
/// Digest of what the token was requested with; a different digest means a new token is due.
pub const INPUTS_ANNOTATION: &str = "winflow.io/token-inputs";
/// When winflow took the expired token out of the Secret.
pub const REMOVED_AT_ANNOTATION: &str = "winflow.io/token-removed-at";

/// The token Secret's name: `spec.token.secretName`, or `<identity>-token`.
pub fn secret_name(settings: &TokenSettings, identity: &str) -> String {
    crate::names::token_secret_name(settings.secret_name.as_deref(), identity)
}

/// RFC 3339 in whole seconds, rounded down: an expiry is never shown later than it is.
pub fn rfc3339(at: Timestamp) -> String {
    Timestamp::from_second(at.as_second()).unwrap_or(at).to_string()
}

/// RFC 3339 in whole seconds, rounded up: a due time is never shown before it is.
pub fn rfc3339_up(at: Timestamp) -> String {
    let second = at.as_second() + i64::from(at.subsec_nanosecond() > 0);
    Timestamp::from_second(second).unwrap_or(at).to_string()
}

/// Digest of the token settings and the version of the credentials they point at: a changed
/// client secret or token spec gives another digest. The secret's value never enters it.
pub fn inputs_digest(settings: &TokenSettings, credentials_version: &str) -> String {
    let json = serde_json::to_vec(&(settings, credentials_version)).expect("token settings serialize");
    let digest = Sha256::digest(&json);
    digest.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

/// The token as the Secret holds it; `None` for `access_token` writes the Secret without one
/// (an expired token is removed rather than handed to pods), noting when in `removed_at`.
pub struct TokenContent<'a> {
    pub access_token: Option<&'a str>,
    pub token_type: &'a str,
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
    pub inputs: &'a str,
    pub removed_at: Option<Timestamp>,
}

/// The Secret winflow applies; owned by the identity, so it goes when the identity goes.
pub fn token_secret(identity: &WindowsTaskIdentity, name: &str, content: &TokenContent<'_>) -> Secret {
    let mut meta = namespaced_meta(identity, name.to_owned());
    let expires_at = rfc3339(content.expires_at);
    let mut annotations = BTreeMap::from([
        (EXPIRES_AT_ANNOTATION.to_owned(), expires_at.clone()),
        (ISSUED_AT_ANNOTATION.to_owned(), rfc3339(content.issued_at)),
        (INPUTS_ANNOTATION.to_owned(), content.inputs.to_owned()),
    ]);
    // Also what tells the apply from the Secret that holds the token: `ensure_child` counts
    // keys the Secret has beyond those wanted as someone else's, not as a change.
    if let Some(removed_at) = content.removed_at {
        annotations.insert(REMOVED_AT_ANNOTATION.to_owned(), rfc3339(removed_at));
    }
    meta.annotations = Some(annotations);
    let mut data = BTreeMap::from([(EXPIRES_AT_KEY.to_owned(), ByteString(expires_at.into_bytes()))]);
    if let Some(token) = content.access_token {
        data.insert(ACCESS_TOKEN_KEY.to_owned(), ByteString(token.as_bytes().to_vec()));
        data.insert(
            TOKEN_TYPE_KEY.to_owned(),
            ByteString(content.token_type.as_bytes().to_vec()),
        );
    }
    Secret {
        metadata: meta,
        type_: Some("Opaque".to_owned()),
        data: Some(data),
        ..Secret::default()
    }
}

/// Whether an existing Secret of that name is winflow's for this identity.
pub fn is_managed(existing: &Secret, identity: &WindowsTaskIdentity) -> bool {
    carries_labels_of(&existing.metadata, &namespaced_meta(identity, String::new()))
}

/// The token a managed Secret holds, from its annotations and keys; `None` when the
/// annotations are missing or unreadable (the token is then replaced).
pub fn held(secret: &Secret) -> Option<Held> {
    let annotations = secret.metadata.annotations.as_ref()?;
    let parse = |key: &str| annotations.get(key)?.parse::<Timestamp>().ok();
    let has_token = secret
        .data
        .as_ref()
        .and_then(|d| d.get(ACCESS_TOKEN_KEY))
        .is_some_and(|token| !token.0.is_empty());
    Some(Held {
        issued_at: parse(ISSUED_AT_ANNOTATION)?,
        expires_at: parse(EXPIRES_AT_ANNOTATION)?,
        inputs: annotations.get(INPUTS_ANNOTATION)?.clone(),
        has_token,
    })
}

/// The `token_type` a managed Secret holds (kept when an expired token is removed).
pub fn token_type(secret: &Secret) -> String {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(TOKEN_TYPE_KEY))
        .and_then(|t| String::from_utf8(t.0.clone()).ok())
        .unwrap_or_else(|| "Bearer".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    fn settings() -> TokenSettings {
        fixtures::token_settings()
    }

    #[test]
    fn the_secret_carries_the_token_its_expiry_and_what_it_was_requested_with() {
        let identity = fixtures::key_vault_with_token();
        let issued_at: Timestamp = "2026-11-29T10:00:00.7Z".parse().unwrap();
        let expires_at: Timestamp = "2026-11-29T11:00:00.7Z".parse().unwrap();
        let secret = token_secret(
            &identity,
            "payroll-export-token",
            &TokenContent {
                access_token: Some("t0ken"),
                token_type: "Bearer",
                issued_at,
                expires_at,
                inputs: "abc",
                removed_at: None,
            },
        );
        assert_eq!(secret.type_.as_deref(), Some("Opaque"));
        let data = secret.data.as_ref().unwrap();
        assert_eq!(data["access_token"].0, b"t0ken");
        assert_eq!(data["token_type"].0, b"Bearer");
        assert_eq!(data["expires_at"].0, b"2026-11-29T11:00:00Z");
        let annotations = secret.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations["winflow.io/expires-at"], "2026-11-29T11:00:00Z");
        assert!(is_managed(&secret, &identity));
        let held = held(&secret).unwrap();
        assert!(held.has_token);
        assert_eq!(held.inputs, "abc");
        assert_eq!(held.expires_at.as_second(), expires_at.as_second());
        assert_eq!(token_type(&secret), "Bearer");
        assert_eq!(rfc3339_up(issued_at), "2026-11-29T10:00:01Z");
        assert_eq!(
            rfc3339_up(expires_at.round(jiff::Unit::Second).unwrap()),
            "2026-11-29T11:00:01Z"
        );

        let blanked = token_secret(
            &identity,
            "payroll-export-token",
            &TokenContent {
                access_token: None,
                token_type: "Bearer",
                issued_at,
                expires_at,
                inputs: "abc",
                removed_at: Some(expires_at),
            },
        );
        assert!(!blanked.data.as_ref().unwrap().contains_key("access_token"));
        assert!(!super::held(&blanked).unwrap().has_token);
        assert!(
            !secret
                .metadata
                .annotations
                .as_ref()
                .unwrap()
                .contains_key(REMOVED_AT_ANNOTATION)
        );
        // The blank is a change to the Secret that holds the token, and applying it is written.
        let removed = &blanked.metadata.annotations.as_ref().unwrap()[REMOVED_AT_ANNOTATION];
        assert_eq!(removed, "2026-11-29T11:00:00Z");
        let (blank, full) = (
            serde_json::to_value(&blanked).unwrap(),
            serde_json::to_value(&secret).unwrap(),
        );
        assert!(!crate::cluster::apply::is_subset(&blank, &full));
    }

    #[test]
    fn a_changed_setting_or_credential_version_changes_the_digest() {
        let base = inputs_digest(&settings(), "rv-1");
        assert_eq!(base, inputs_digest(&settings(), "rv-1"));
        assert_ne!(base, inputs_digest(&settings(), "rv-2"));
        let mut scoped = settings();
        scoped.scopes.push("api://other/.default".into());
        assert_ne!(base, inputs_digest(&scoped, "rv-1"));
    }

    #[test]
    fn unreadable_annotations_mean_no_usable_token() {
        let mut secret = Secret::default();
        assert!(held(&secret).is_none());
        secret.metadata.annotations = Some(BTreeMap::from([(
            EXPIRES_AT_ANNOTATION.to_owned(),
            "yesterday".to_owned(),
        )]));
        assert!(held(&secret).is_none());
        assert_eq!(secret_name(&settings(), "payroll-export"), "payroll-export-token");
    }
}
