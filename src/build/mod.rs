//! Pure functions from a `WindowsTaskIdentity` to the objects winflow keeps for it. No I/O:
//! the controller applies what these return and `winflow render` prints it.

mod credential_spec;
mod meta;
mod pod_templates;
mod rbac;
mod share;
mod token_env;

use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};

pub use credential_spec::{credential_spec_document, credential_spec_for, host_account_plugin_input};
pub use meta::{carries_labels_of, namespaced_meta, with_spec_hash};
pub use pod_templates::{executor_pod_template, identity_env, pod_templates_for, share_volumes, windows_pod_template};
pub use rbac::{gmsa_role_binding_for, gmsa_role_for, service_account_for, use_role_binding_for, use_role_for};
pub use share::{persistent_volume_claim_for, persistent_volume_for, share_source, volume_handle};
pub use token_env::{Os, TokenWiring, token_wiring};

use crate::api::{GMSACredentialSpec, WindowsTaskIdentity};
use crate::validate::{self, Violation};

/// Everything winflow creates for one identity.
#[derive(Clone, Debug)]
pub struct IdentityChildren {
    pub credential_spec: GMSACredentialSpec,
    /// `use` of the credential spec, for the identity's service account.
    pub role: Role,
    pub role_binding: RoleBinding,
    /// `use` of the identity itself, for `spec.access.creators`: who may create its pods.
    pub use_role: Role,
    pub use_role_binding: RoleBinding,
    /// `None` when the identity uses a service account it does not create.
    pub service_account: Option<ServiceAccount>,
    pub pod_templates: ConfigMap,
}

impl IdentityChildren {
    /// How many objects these are (the service account only when winflow creates it).
    pub fn count(&self) -> usize {
        6 + usize::from(self.service_account.is_some())
    }
}

/// Validates the identity and builds its children, each carrying its spec-hash annotation.
pub fn children_for(identity: &WindowsTaskIdentity) -> Result<IdentityChildren, Vec<Violation>> {
    let namespace = identity.metadata.namespace.as_deref().unwrap_or_default();
    let name = identity.metadata.name.as_deref().unwrap_or_default();
    validate::check_identity(namespace, name, &identity.spec)?;
    Ok(IdentityChildren {
        credential_spec: with_spec_hash(credential_spec_for(identity)),
        role: with_spec_hash(gmsa_role_for(identity)),
        role_binding: with_spec_hash(gmsa_role_binding_for(identity)),
        use_role: with_spec_hash(use_role_for(identity)),
        use_role_binding: with_spec_hash(use_role_binding_for(identity)),
        service_account: identity
            .spec
            .service_account
            .create
            .then(|| with_spec_hash(service_account_for(identity))),
        pod_templates: with_spec_hash(pod_templates_for(identity)),
    })
}
