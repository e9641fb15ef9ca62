//! Admission decisions for pods, as pure functions of the request, a read-only view of
//! winflow's resources and the authorizer's answer about the pod's creator (asked before by
//! the handler). Mutation injects an identity into a labelled pod; validation enforces it and
//! keeps every pod away from credentials that are not its own. A value the user set that
//! conflicts with the identity is denied, never replaced.

mod airflow_ids;
mod audit;
mod connect;
mod creator_account;
mod credentials;
mod envelope;
mod gmsa;
mod mutate;
#[cfg(test)]
mod tests;
mod validate;
mod workload;

use crate::webhook::reason::AdmissionReason;
use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;

use super::access::Access;
use super::token_check::check_token;
use crate::api::conditions;
use crate::api::{WindowsShare, WindowsTaskIdentity};
use crate::names::{IDENTITY_LABEL, use_role_name};
use envelope::Subject;

pub use airflow_ids::airflow_id;
pub use audit::{Audit, Decision, decision_timed_out, pod_lookup_failed};
pub use connect::validate_connect;
pub use credentials::Protected;
pub use envelope::{identities_to_authorize, pod_to_look_up, with_pod_labels};
pub use gmsa::validate_gmsa;
pub(crate) use gmsa::{account_keys, plugin_input};
pub use mutate::{inline_credential_spec, mutate};
pub use validate::{validate, validate_ephemeral};
pub use workload::validate_workload;

/// Read-only access to winflow's resources, as the webhook's caches hold them.
pub trait ResourceView {
    fn identity(&self, namespace: &str, name: &str) -> Option<Arc<WindowsTaskIdentity>>;
    /// Shows `visit` every identity of `namespace`, or of every namespace with `None`, without
    /// copying them. Reviews read one namespace; every namespace costs as many identities as
    /// the cluster holds, so reviews look identities up by account or plugin input instead.
    fn each_identity(&self, namespace: Option<&str>, visit: &mut dyn FnMut(&WindowsTaskIdentity));
    /// Shows `visit` every share of `namespace`.
    fn each_share(&self, namespace: &str, visit: &mut dyn FnMut(&WindowsShare));
    /// Identities (any namespace) one of whose gMSA accounts has `names::account_key` `account`.
    fn identities_with_account(&self, account: &str) -> Vec<Arc<WindowsTaskIdentity>>;
    /// Identities (any namespace) whose host-account plugin input, as winflow writes it, is `input`.
    fn identities_with_plugin_input(&self, input: &str) -> Vec<Arc<WindowsTaskIdentity>>;
    /// What winflow's resources in `namespace` name (`Protected::of_namespace`); a cache keeps
    /// it until the namespace's identities or shares change, so reviews do not rebuild it.
    fn protected(&self, namespace: &str) -> Arc<Protected>;
    /// The identities (namespace, name), in any namespace, whose creators include service
    /// account `name` of `namespace`, sorted: a pod that runs as it acts as their creator.
    fn identities_created_by(&self, namespace: &str, name: &str) -> Vec<(String, String)>;
}

/// The authorizer's answers about the requester's `use` of identities, as the handler asked
/// them before deciding ([`identities_to_authorize`]).
pub trait Authorizations {
    /// The answer about identity `name` of `namespace`; `None` when it was not asked.
    fn answer(&self, namespace: &str, name: &str) -> Option<&Access>;
}

/// Answers keyed by (namespace, identity).
impl Authorizations for BTreeMap<(String, String), Access> {
    fn answer(&self, namespace: &str, name: &str) -> Option<&Access> {
        self.get(&(namespace.to_owned(), name.to_owned()))
    }
}

/// Why a pod was denied: the reason (for metrics and Events), a message that names the
/// identity, the rule and what is allowed, and the identity concerned when the pod names none.
struct Denial {
    reason: AdmissionReason,
    message: String,
    concerns: Option<String>,
}

impl Denial {
    fn new(reason: AdmissionReason, message: String) -> Self {
        Self {
            reason,
            message,
            concerns: None,
        }
    }

    fn concerning(mut self, identity: &str) -> Self {
        self.concerns = Some(identity.to_owned());
        self
    }

    /// The same denial, its message put in context (what was reviewed).
    fn reworded(mut self, context: impl FnOnce(&str) -> String) -> Self {
        self.message = context(&self.message);
        self
    }
}

type Checked<T> = Result<T, Denial>;

/// The creator's `use` of the identity, as the handler found it; fail closed.
fn check_creator(subject: &Subject, name: &str, access: &dyn Authorizations, doing: &str) -> Checked<()> {
    let user = &subject.creator;
    let namespace = &subject.namespace;
    let role = use_role_name(name);
    match access.answer(namespace, name) {
        Some(Access::Allowed) => Ok(()),
        Some(Access::Denied(why)) => {
            let why = if why.is_empty() {
                String::new()
            } else {
                format!(" (the authorizer said: {why})")
            };
            Err(Denial::new(
                AdmissionReason::CreatorNotAllowed,
                format!(
                    "user {user:?} may not {doing} identity \"{name}\": that needs verb use on windowstaskidentities.winflow.io \"{name}\" in namespace {namespace:?}{why}; list the user in the identity's spec.access.creators, or bind the Role {role:?} to it"
                ),
            ))
        }
        Some(Access::Unavailable(error)) => Err(Denial::new(
            AdmissionReason::AuthorizationUnavailable,
            format!(
                "winflow could not check whether user {user:?} may use identity \"{name}\" ({error}); pods of an identity are admitted only once that check answers"
            ),
        )),
        None => Err(Denial::new(
            AdmissionReason::AuthorizationUnavailable,
            format!("winflow did not check whether user {user:?} may use identity \"{name}\"; denied"),
        )),
    }
}

/// The identity a labelled pod names, if it exists and is Ready. A new pod (`creating`) of an
/// identity with a token is also checked for a token that lasts long enough; this comes
/// first, so that an expired token is named as such rather than as "not Ready".
fn ready_identity(
    view: &dyn ResourceView,
    namespace: &str,
    name: &str,
    creating: Option<&Pod>,
) -> Checked<Arc<WindowsTaskIdentity>> {
    let identity = view.identity(namespace, name).ok_or_else(|| {
        Denial::new(AdmissionReason::UnknownIdentity, format!("identity \"{name}\" does not exist in namespace \"{namespace}\" (label {IDENTITY_LABEL} must name a WindowsTaskIdentity there)"))
    })?;
    if let Some(pod) = creating {
        check_token(&identity, pod.metadata.annotations.as_ref(), jiff::Timestamp::now())
            .map_err(|(reason, message)| Denial::new(reason, message))?;
    }
    let conditions = identity
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    if !conditions::is_true(conditions, conditions::READY) {
        let why = conditions::find(conditions, conditions::READY)
            .map(|c| format!("{}: {}", c.reason, c.message))
            .unwrap_or_else(|| "not reconciled yet".to_owned());
        return Err(Denial::new(
            AdmissionReason::IdentityNotReady,
            format!("identity \"{name}\" is not Ready ({why}); its pods are admitted once it is"),
        ));
    }
    Ok(identity)
}

/// `"name"` of an identity, as messages quote it.
fn quoted_name(identity: &WindowsTaskIdentity) -> String {
    format!("\"{}\"", identity.metadata.name.as_deref().unwrap_or_default())
}
