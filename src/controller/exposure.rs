//! Pods that reach an identity's credentials although a new pod like them would be denied:
//! the webhook sees pods only when they are created, so a pod created before the identity,
//! its share or the namespace's `winflow.io/enforce` label may name the token Secret or a
//! claim that winflow creates later. Pure: the controller feeds it the cached pods.

use crate::api::WindowsTaskIdentity;
use crate::api::conditions::{CREDENTIALS_CONTAINED, ConditionReason, ConditionState};
use crate::api::identity::{ExposedPod, ExposedReference, ExposureStatus};
use crate::api::refs::{self, SecretUse};
use crate::names::IDENTITY_LABEL;
use crate::pod_refs::{Reference, ReferringPod};
use crate::webhook::reason::AdmissionReason;

/// How many exposing pods the status names.
const EXAMPLES: usize = 5;

/// The admission rule a new pod naming a Secret for `what` is denied by.
fn rule_of(what: SecretUse) -> AdmissionReason {
    match what {
        SecretUse::Token => AdmissionReason::TokenSecretNotOwn,
        SecretUse::ClientSecret => AdmissionReason::ClientSecretReference,
        SecretUse::HostAccount => AdmissionReason::HostAccountSecretReference,
        SecretUse::ShareCredentials => AdmissionReason::ShareCredentialsReference,
    }
}

/// What of `identity` the pod names and may not: its token Secret unless the pod is labelled
/// with this identity, its client secret and host account Secret always, the claim of a share
/// it lists unless the pod's own identity lists that share too (`lists_share(identity,
/// share)`). The pod must be in the identity's namespace.
pub(crate) fn exposed_references(
    identity: &WindowsTaskIdentity,
    pod: &ReferringPod,
    lists_share: &dyn Fn(&str, &str) -> bool,
) -> Vec<ExposedReference> {
    let name = identity.metadata.name.as_deref().unwrap_or_default();
    let secrets = refs::identity_secrets(identity);
    let own_pod = pod.identity.as_deref() == Some(name);
    let mut exposed = Vec::new();
    for reference in &pod.references {
        match reference {
            Reference::Secret { name: secret, place } => {
                let reached = secrets
                    .iter()
                    .filter(|r| &r.name == secret)
                    .find(|r| !(r.what == SecretUse::Token && own_pod));
                if let Some(reached) = reached {
                    exposed.push(ExposedReference {
                        place: place.clone(),
                        kind: "Secret".to_owned(),
                        name: secret.clone(),
                        rule: rule_of(reached.what).as_str().to_owned(),
                    });
                }
            }
            Reference::Claim { name: claim, place } => {
                let share = identity
                    .spec
                    .shares
                    .iter()
                    .find(|s| &refs::share_claim_name(&s.name) == claim);
                let Some(share) = share else { continue };
                let allowed = pod.identity.as_deref().is_some_and(|own| lists_share(own, &share.name));
                if !allowed {
                    exposed.push(ExposedReference {
                        place: place.clone(),
                        kind: "PersistentVolumeClaim".to_owned(),
                        name: claim.clone(),
                        rule: AdmissionReason::ShareNotListed.as_str().to_owned(),
                    });
                }
            }
        }
    }
    exposed
}

/// The pods of the identity's namespace that expose it, by name.
pub(crate) fn exposed_pods<'a>(
    identity: &WindowsTaskIdentity,
    pods: impl IntoIterator<Item = &'a ReferringPod>,
    lists_share: &dyn Fn(&str, &str) -> bool,
) -> Vec<ExposedPod> {
    let mut exposed: Vec<ExposedPod> = pods
        .into_iter()
        .filter(|pod| pod.metadata.namespace == identity.metadata.namespace)
        .filter_map(|pod| {
            let references = exposed_references(identity, pod, lists_share);
            (!references.is_empty()).then(|| ExposedPod {
                pod: pod.metadata.name.clone().unwrap_or_default(),
                references,
            })
        })
        .collect();
    exposed.sort_by(|a, b| a.pod.cmp(&b.pod));
    exposed
}

/// The pods that name the token Secret and are not the identity's own: while there are any,
/// the token is kept out of the Secret.
pub(crate) fn token_exposed_to(exposed: &[ExposedPod]) -> Vec<String> {
    let token_rule = AdmissionReason::TokenSecretNotOwn.as_str();
    exposed
        .iter()
        .filter(|pod| pod.references.iter().any(|r| r.rule == token_rule))
        .map(|pod| pod.pod.clone())
        .collect()
}

/// `status.exposure` (`None` when no pod exposes the identity) and `CredentialsContained`.
pub(crate) fn report(exposed: &[ExposedPod]) -> (Option<ExposureStatus>, ConditionState) {
    let Some(first) = exposed.first() else {
        let condition = ConditionState::new(
            CREDENTIALS_CONTAINED,
            true,
            ConditionReason::NotExposed,
            "no pod but this identity's own names its token Secret, client secret, host account Secret or the claims of its shares",
        );
        return (None, condition);
    };
    let described: Vec<String> = first
        .references
        .iter()
        .map(|r| format!("{} names {} {} ({})", r.place, r.kind, r.name, r.rule))
        .collect();
    let more = match exposed.len() - 1 {
        0 => String::new(),
        n => format!(" and {n} more pod(s), see status.exposure"),
    };
    let message = format!(
        "pod {}: {}{more}; a new pod like it is denied, so it predates the rule (created before this identity, its share or the winflow.io/enforce label) or runs where the rule is not enforced; delete it (only pods labelled {IDENTITY_LABEL} with this identity get its token, and only pods of identities that list a share mount its claim)",
        first.pod,
        described.join("; ")
    );
    let status = ExposureStatus {
        pods: i32::try_from(exposed.len()).unwrap_or(i32::MAX),
        examples: exposed.iter().take(EXAMPLES).cloned().collect(),
    };
    let condition = ConditionState::new(CREDENTIALS_CONTAINED, false, ConditionReason::ExposedToPods, message);
    (Some(status), condition)
}

/// `CredentialsContained` while winflow cannot list pods.
pub(crate) fn unknown() -> ConditionState {
    ConditionState::new(
        CREDENTIALS_CONTAINED,
        false,
        ConditionReason::PodsUnknown,
        "winflow cannot list pods (its ClusterRole needs list and watch on pods), so it cannot tell whether pods that are not this identity's name its credentials",
    )
}

#[cfg(test)]
mod tests;
