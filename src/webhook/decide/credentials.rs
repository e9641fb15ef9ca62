//! "Every managed credential has one way in": the Secrets, claims and service accounts that
//! winflow's resources in a namespace name, and every place a pod spec can reach for one.
//! A pod may reach only its own identity's token Secret and the claims of the shares its
//! identity lists, and winflow injects those itself; everything else named here is denied.

use crate::webhook::reason::AdmissionReason;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvFromSource, EnvVar, LocalObjectReference, PodSpec, Volume};

use super::{Checked, Denial, ResourceView};
use crate::api::WindowsTaskIdentity;
use crate::names::{IDENTITY_LABEL, token_secret_name};

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
            let share_use = SecretUse::ShareCredentials { share: name.clone() };
            protected.add_secret(&share.spec.credentials_secret_ref.name, share_use);
            protected.claims.insert(name.clone(), name);
        });
        protected
    }

    fn add_secret(&mut self, secret: &str, what: SecretUse) {
        self.secrets.entry(secret.to_owned()).or_default().push(what);
    }

    fn add_identity(&mut self, identity: &WindowsTaskIdentity) {
        let name = identity.metadata.name.clone().unwrap_or_default();
        let spec = &identity.spec;
        if let Some(token) = &spec.token {
            let token_secret = token_secret_name(token.secret_name.as_deref(), &name);
            self.add_secret(&token_secret, SecretUse::Token { identity: name.clone() });
            if let Some(client) = &token.client_secret_ref {
                self.add_secret(&client.name, SecretUse::ClientSecret { identity: name.clone() });
            }
        }
        if let Some(host) = spec.host_account.as_ref().and_then(|h| h.kubernetes_secret.as_ref()) {
            self.add_secret(&host.name, SecretUse::HostAccount { identity: name.clone() });
        }
        self.service_accounts
            .entry(spec.service_account.name.clone())
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

/// A Secret or claim a pod reaches for, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Reference {
    Secret { name: String, place: String },
    Claim { name: String, place: String },
}

/// Every Secret and claim the pod spec names: volumes of any kind that take a Secret, and the
/// environment of every container (init, app and ephemeral).
pub(super) fn references(spec: &PodSpec) -> Vec<Reference> {
    let mut found = Vec::new();
    for volume in spec.volumes.iter().flatten() {
        volume_references(volume, &mut found);
    }
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .map(|c| (c.name.as_str(), "container", c.env.as_deref(), c.env_from.as_deref()));
    let ephemeral = spec.ephemeral_containers.iter().flatten().map(|c| {
        (
            c.name.as_str(),
            "ephemeral container",
            c.env.as_deref(),
            c.env_from.as_deref(),
        )
    });
    for (name, kind, env, env_from) in containers.chain(ephemeral) {
        env_references(
            name,
            kind,
            env.unwrap_or_default(),
            env_from.unwrap_or_default(),
            &mut found,
        );
    }
    found
}

fn by_ref(reference: Option<&LocalObjectReference>) -> Option<&String> {
    reference.map(|r| &r.name)
}

fn volume_references(volume: &Volume, found: &mut Vec<Reference>) {
    let place = format!("volume {:?}", volume.name);
    let mut secret = |name: Option<&String>, how: &str| {
        if let Some(name) = name {
            found.push(Reference::Secret {
                name: name.clone(),
                place: format!("{place} ({how})"),
            });
        }
    };
    let secrets = [
        (volume.secret.as_ref().and_then(|s| s.secret_name.as_ref()), "secret"),
        (
            by_ref(volume.csi.as_ref().and_then(|c| c.node_publish_secret_ref.as_ref())),
            "csi nodePublishSecretRef",
        ),
        (volume.azure_file.as_ref().map(|a| &a.secret_name), "azureFile"),
        (
            by_ref(volume.cephfs.as_ref().and_then(|c| c.secret_ref.as_ref())),
            "cephfs",
        ),
        (
            by_ref(volume.cinder.as_ref().and_then(|c| c.secret_ref.as_ref())),
            "cinder",
        ),
        (
            by_ref(volume.flex_volume.as_ref().and_then(|f| f.secret_ref.as_ref())),
            "flexVolume",
        ),
        (
            by_ref(volume.iscsi.as_ref().and_then(|i| i.secret_ref.as_ref())),
            "iscsi",
        ),
        (by_ref(volume.rbd.as_ref().and_then(|r| r.secret_ref.as_ref())), "rbd"),
        (volume.scale_io.as_ref().map(|s| &s.secret_ref.name), "scaleIO"),
        (
            by_ref(volume.storageos.as_ref().and_then(|s| s.secret_ref.as_ref())),
            "storageos",
        ),
    ];
    for (name, how) in secrets {
        secret(name, how);
    }
    for source in volume.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
        secret(source.secret.as_ref().map(|s| &s.name), "projected secret");
    }
    if let Some(claim) = &volume.persistent_volume_claim {
        found.push(Reference::Claim {
            name: claim.claim_name.clone(),
            place,
        });
    }
}

fn env_references(container: &str, kind: &str, env: &[EnvVar], env_from: &[EnvFromSource], found: &mut Vec<Reference>) {
    for var in env {
        if let Some(key) = var.value_from.as_ref().and_then(|f| f.secret_key_ref.as_ref()) {
            found.push(Reference::Secret {
                name: key.name.clone(),
                place: format!("env {} of {kind} {container:?}", var.name),
            });
        }
    }
    for source in env_from {
        if let Some(secret) = &source.secret_ref {
            found.push(Reference::Secret {
                name: secret.name.clone(),
                place: format!("envFrom of {kind} {container:?}"),
            });
        }
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
