//! `/validate-gmsa` (webhook `gmsa.pods.winflow.io`): a Windows node retrieves a gMSA for any
//! container whose credential spec names it, so the gMSA rules hold for every pod in the
//! cluster, not only in enforcement namespaces. This webhook sees pods without the identity
//! label outside enforcement namespaces (those see `enforce.pods.winflow.io`, labelled pods
//! `pods.winflow.io`) and applies only the gMSA rules: Secrets, claims and service accounts
//! stay rules of enforcement namespaces.

use kube::core::DynamicObject;
use kube::core::admission::AdmissionRequest;

use super::rules::check_no_identitys_gmsa;
use crate::webhook::decide::audit::{finish, invalid};
use crate::webhook::decide::envelope::subject;
use crate::webhook::decide::validate::windows_options;
use crate::webhook::decide::{Checked, Decision, ResourceView};

/// Denies an unlabelled pod (on CREATE, or the ephemeral containers added to it) whose
/// contents winflow cannot read, whose contents name an identity's account, or which names an
/// identity's credential spec, at pod level or in any container (init, app, ephemeral).
pub fn validate_gmsa(request: &AdmissionRequest<DynamicObject>, view: &dyn ResourceView) -> Decision {
    let subject = match subject(request) {
        Ok(subject) => subject,
        Err(message) => return invalid(request, message),
    };
    let outcome: Checked<()> = match &subject.identity_name {
        // An identity's pods are judged whole by pods.winflow.io and ephemeral.pods.winflow.io.
        Some(_) => Ok(()),
        None => windows_options(&subject.pod.spec.clone().unwrap_or_default())
            .iter()
            .try_for_each(|(place, options)| check_no_identitys_gmsa(place, options, view, &subject.namespace)),
    };
    finish(request, &subject, outcome.map(|()| None))
}
