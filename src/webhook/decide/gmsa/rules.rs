//! The gMSA rules: an identity's pods carry its own credential spec (name and contents) and
//! nothing else; no other pod, in any namespace, names an identity's credential spec or sets
//! contents that name one of its accounts; contents winflow cannot read are refused.

use k8s_openapi::api::core::v1::{PodSpec, WindowsSecurityContextOptions};

use super::contents::{Contents, READABLE, read};
use super::matching::identities_named;
use crate::api::WindowsTaskIdentity;
use crate::build::credential_spec_document;
use crate::names::{self, IDENTITY_LABEL};
use crate::webhook::decide::mutate::credential_spec_name_of;
use crate::webhook::decide::validate::windows_options;
use crate::webhook::decide::{Checked, Denial, ResourceView};
use crate::webhook::reason::AdmissionReason;

/// gMSA contents come with the name of the credential spec they are (the upstream gMSA
/// webhook's rule too): contents alone would reach a gMSA past the RBAC check on the name.
pub(crate) fn check_content_named(place: &str, options: &WindowsSecurityContextOptions) -> Checked<()> {
    if options.gmsa_credential_spec.is_some() && options.gmsa_credential_spec_name.is_none() {
        return Err(Denial::new(
            AdmissionReason::GmsaContentWithoutName,
            format!(
                "{place} sets securityContext.windowsOptions.gmsaCredentialSpec without gmsaCredentialSpecName; contents are accepted only with the name of the GMSACredentialSpec they come from"
            ),
        ));
    }
    Ok(())
}

/// The contents as read, or the denial that says what could not be read.
fn readable(place: &str, text: &str) -> Checked<Contents> {
    read(text).map_err(|why| {
        Denial::new(
            AdmissionReason::GmsaContentUnreadable,
            format!(
                "{place} sets gmsaCredentialSpec contents that winflow cannot read unambiguously: {}; contents are admitted only as {READABLE}",
                why.0
            ),
        )
    })
}

/// Only the identity's own credential spec, by name and by contents, at every level
/// (ephemeral containers included).
pub(crate) fn check_own_gmsa(spec: &PodSpec, identity: &WindowsTaskIdentity, who: &str) -> Checked<()> {
    let own_spec = credential_spec_name_of(identity);
    for (place, options) in windows_options(spec) {
        check_content_named(&place, &options)?;
        if let Some(found) = options.gmsa_credential_spec_name.as_deref()
            && found != own_spec
        {
            return Err(Denial::new(
                AdmissionReason::GmsaConflict,
                format!("{place} names credential spec {found:?}, but identity {who} may use only {own_spec:?}"),
            ));
        }
        if let Some(found) = options.gmsa_credential_spec.as_deref() {
            check_own_contents(&place, found, identity, who)?;
        }
    }
    Ok(())
}

/// Contents equal to the identity's own, as the reader reads both (key order and spacing
/// aside); anything else, however close, is another credential spec.
pub(crate) fn check_own_contents(place: &str, found: &str, identity: &WindowsTaskIdentity, who: &str) -> Checked<()> {
    let contents = readable(place, found)?;
    let namespace = identity.metadata.namespace.as_deref().unwrap_or_default();
    if contents.document != credential_spec_document(namespace, &identity.spec) {
        return Err(Denial::new(
            AdmissionReason::GmsaConflict,
            format!(
                "{place} sets gmsaCredentialSpec contents other than identity {who}'s credential spec {:?}; remove them and winflow fills them in",
                credential_spec_name_of(identity)
            ),
        ));
    }
    Ok(())
}

/// What no pod outside an identity may do, in any namespace: set contents winflow cannot
/// read, contents that name an identity's account, or an identity's credential spec name.
/// `namespace` is the pod's: a denial is recorded on an identity of the same namespace only.
pub(crate) fn check_no_identitys_gmsa(
    place: &str,
    options: &WindowsSecurityContextOptions,
    view: &dyn ResourceView,
    namespace: &str,
) -> Checked<()> {
    if let Some(text) = options.gmsa_credential_spec.as_deref() {
        let contents = readable(place, text)?;
        if let Some(identity) = identities_named(&contents.named, view).first() {
            // The identity may live in another namespace: its name, never its namespace, is told.
            let name = identity.metadata.name.as_deref().unwrap_or_default();
            let denial = Denial::new(
                AdmissionReason::GmsaAccountOfIdentity,
                format!(
                    "{place} sets gmsaCredentialSpec contents naming a gMSA account of identity \"{name}\" in a pod without its {IDENTITY_LABEL} label; only that identity's own pods may use that gMSA, and winflow fills their contents in"
                ),
            );
            return Err(if identity.metadata.namespace.as_deref() == Some(namespace) {
                denial.concerning(name)
            } else {
                denial
            });
        }
    }
    if let Some(name) = options.gmsa_credential_spec_name.as_deref()
        && let Some((identity_namespace, identity)) = names::identity_of_credential_spec(name)
        && view.identity(identity_namespace, identity).is_some()
    {
        let denial = Denial::new(
            AdmissionReason::UnlabelledGmsaUse,
            format!(
                "{place} names credential spec {name:?} of identity \"{identity}\", but the pod has no {IDENTITY_LABEL} label; only pods labelled {IDENTITY_LABEL}={identity} in the identity's namespace may use it"
            ),
        );
        return Err(if identity_namespace == namespace {
            denial.concerning(identity)
        } else {
            denial
        });
    }
    Ok(())
}
