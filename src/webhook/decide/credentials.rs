//! "Every managed credential has one way in": the Secrets, claims and service accounts that
//! winflow's resources in a namespace name, and every place a pod spec can reach for one.
//! A pod may reach only its own identity's token Secret and the claims of the shares its
//! identity lists, and winflow injects those itself; everything else named here is denied.

use crate::webhook::reason::AdmissionReason;
use std::collections::BTreeMap;

use super::{Checked, Denial, ResourceView};
use crate::api::WindowsTaskIdentity;
use crate::api::refs;
use crate::names::IDENTITY_LABEL;
pub(super) use crate::pod_refs::{Reference, references};

/// What a Secret that winflow's resources name is for.
#[derive(Clone, Debug, PartialEq, Eq)]
enum SecretUse {
    /// An identity's OIDC token: its own pods get it.
    Token { identity: String },
    /// An identity's OIDC client secret: winflow reads it, no pod.
    ClientSecret { identity: String },
    /// The Kubernetes Secret host account plugin's Secret: the node's CCG reads it, no pod.
    HostAccount { identity: String },
    /// A share's SMB credentials: the CSI driver reads them on the node, no pod.
    ShareCredentials { share: String },
}

impl SecretUse {
    /// What `what` is for, with the name of the resource that names it.
    fn of(what: refs::SecretUse, owner: String) -> Self {
        match what {
            refs::SecretUse::Token => Self::Token { identity: owner },
            refs::SecretUse::ClientSecret => Self::ClientSecret { identity: owner },
            refs::SecretUse::HostAccount => Self::HostAccount { identity: owner },
            refs::SecretUse::ShareCredentials => Self::ShareCredentials { share: owner },
        }
    }

    fn reason(&self) -> AdmissionReason {
        match self {
            Self::Token { .. } => AdmissionReason::TokenSecretNotOwn,
            Self::ClientSecret { .. } => AdmissionReason::ClientSecretReference,
            Self::HostAccount { .. } => AdmissionReason::HostAccountSecretReference,
            Self::ShareCredentials { .. } => AdmissionReason::ShareCredentialsReference,
        }
    }

    fn identity(&self) -> Option<&str> {
        match self {
            Self::Token { identity } | Self::ClientSecret { identity } | Self::HostAccount { identity } => {
                Some(identity)
            }
            Self::ShareCredentials { .. } => None,
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Token { identity } => format!(
                "the token Secret of identity \"{identity}\"; only that identity's pods get it, through what winflow injects into pods labelled {IDENTITY_LABEL}={identity}"
            ),
            Self::ClientSecret { identity } => {
                format!("the OIDC client secret of identity \"{identity}\"; only winflow reads it, no pod may")
            }
            Self::HostAccount { identity } => format!(
                "the host account Secret of identity \"{identity}\" (spec.hostAccount.kubernetesSecret); only the node's credential guard reads it, no pod may"
            ),
            Self::ShareCredentials { share } => format!(
                "the SMB credentials of share \"{share}\"; only the SMB CSI driver reads them, no pod may (mount the share by listing it in an identity's spec.shares)"
            ),
        }
    }
}

/// Everything winflow's resources in one namespace name. Built from the namespace's
/// identities and shares only; the webhook's cache keeps it until one of them changes.
#[derive(Default)]
pub struct Protected {
    secrets: BTreeMap<String, Vec<SecretUse>>,
    /// Claim name to share name (a share's claim is named after it).
    claims: BTreeMap<String, String>,
    /// Service account name to the identities that run as it.
    service_accounts: BTreeMap<String, Vec<String>>,
}

impl Protected {
    pub fn of_namespace(view: &dyn ResourceView, namespace: &str) -> Self {
        let mut protected = Self::default();
        view.each_identity(Some(namespace), &mut |identity| protected.add_identity(identity));
        view.each_share(namespace, &mut |share| {
            let name = share.metadata.name.clone().unwrap_or_default();
            for secret in refs::share_secrets(share) {
                protected.add_secret(&secret.name, SecretUse::of(secret.what, name.clone()));
            }
            protected.claims.insert(refs::share_claim(share), name);
        });
        protected
    }

    fn add_secret(&mut self, secret: &str, what: SecretUse) {
        self.secrets.entry(secret.to_owned()).or_default().push(what);
    }

    fn add_identity(&mut self, identity: &WindowsTaskIdentity) {
        let name = identity.metadata.name.clone().unwrap_or_default();
        for secret in refs::identity_secrets(identity) {
            self.add_secret(&secret.name, SecretUse::of(secret.what, name.clone()));
        }
        self.service_accounts
            .entry(refs::identity_service_account(identity).to_owned())
            .or_default()
            .push(name);
    }

    /// The identities (other than `own`) whose service account `account` is.
    pub fn service_account_owners(&self, account: &str, own: Option<&str>) -> Vec<&str> {
        self.service_accounts
            .get(account)
            .into_iter()
            .flatten()
            .map(String::as_str)
            .filter(|identity| Some(*identity) != own)
            .collect()
    }
}

/// Denies a reference to a Secret or claim that is not the pod's own. `own` is the identity
/// the pod runs as (`None` for a pod without the identity label).
pub(super) fn check_references(
    references: &[Reference],
    protected: &Protected,
    own: Option<&WindowsTaskIdentity>,
) -> Checked<()> {
    let own_name = own.and_then(|i| i.metadata.name.as_deref());
    let pod_kind = match own_name {
        Some(name) => format!("a pod of identity \"{name}\""),
        None => format!("a pod without the {IDENTITY_LABEL} label"),
    };
    for reference in references {
        match reference {
            Reference::Secret { name, place } => {
                for secret_use in protected.secrets.get(name).into_iter().flatten() {
                    let is_own_token =
                        matches!(secret_use, SecretUse::Token { identity } if Some(identity.as_str()) == own_name);
                    if is_own_token {
                        continue;
                    }
                    let denial = Denial::new(
                        secret_use.reason(),
                        format!(
                            "{place} references Secret {name:?}, which is {}; denied for {pod_kind}",
                            secret_use.describe()
                        ),
                    );
                    return Err(match secret_use.identity() {
                        Some(identity) => denial.concerning(identity),
                        None => denial,
                    });
                }
            }
            Reference::Claim { name, place } => {
                let Some(share) = protected.claims.get(name) else {
                    continue;
                };
                let listed = own.is_some_and(|identity| identity.spec.shares.iter().any(|s| &s.name == share));
                if !listed {
                    let allowed = match own {
                        Some(identity) if !identity.spec.shares.is_empty() => {
                            let shares: Vec<&str> = identity.spec.shares.iter().map(|s| s.name.as_str()).collect();
                            format!(
                                "identity \"{}\" lists only {}",
                                own_name.unwrap_or_default(),
                                shares.join(", ")
                            )
                        }
                        Some(_) => format!("identity \"{}\" lists no shares", own_name.unwrap_or_default()),
                        None => "only pods of an identity that lists the share may mount it".to_owned(),
                    };
                    return Err(Denial::new(
                        AdmissionReason::ShareNotListed,
                        format!(
                            "{place} mounts claim {name:?} of share \"{share}\", which {pod_kind} may not mount ({allowed}; an identity mounts a share by listing it in spec.shares)"
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}
