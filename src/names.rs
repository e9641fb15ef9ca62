//! Names, labels and annotations that users, templates and tests rely on (SPEC.md "Names").

pub const FIELD_MANAGER: &str = "winflow";
pub const FINALIZER: &str = "winflow.io/cleanup";

pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "winflow";
pub const IDENTITY_LABEL: &str = "winflow.io/identity";
pub const ROLE_LABEL: &str = "winflow.io/role";
pub const ROLE_WINDOWS_TASK: &str = "windows-task";
pub const ROLE_EXECUTOR: &str = "executor";

/// Hash of everything winflow sets on a child; a changed hash means the child must be
/// re-applied even when only a field was removed (which a subset comparison cannot see).
pub const SPEC_HASH_ANNOTATION: &str = "winflow.io/spec-hash";

/// The Secret holding an identity's OIDC token: `spec.token.secretName`, or `<identity>-token`.
pub fn token_secret_name(configured: Option<&str>, identity: &str) -> String {
    configured.map_or_else(|| format!("{identity}-token"), str::to_owned)
}

/// Pod annotation: how long the identity's token must stay valid for the pod to be admitted.
pub const MIN_TOKEN_VALIDITY_ANNOTATION: &str = "winflow.io/min-token-validity";

pub const WINDOWS_TEMPLATE_KEY: &str = "windows-pod-template.yaml";
pub const EXECUTOR_TEMPLATE_KEY: &str = "executor-pod-template.yaml";

/// Kubernetes' limit for most object names (DNS subdomain).
pub const MAX_NAME_LENGTH: usize = 253;

/// `<namespace>.<name>`: namespaces contain no dots, so names never collide across namespaces.
pub fn credential_spec_name(namespace: &str, identity: &str) -> String {
    format!("{namespace}.{identity}")
}

/// The identity a credential spec name belongs to, as `(namespace, name)`.
pub fn identity_of_credential_spec(credential_spec: &str) -> Option<(&str, &str)> {
    credential_spec.split_once('.')
}

/// How a gMSA account name is compared, as Active Directory compares it: case-insensitively,
/// with or without the `$` of its sAMAccountName, surrounding spaces ignored.
pub(crate) fn account_key(account: &str) -> String {
    let trimmed = account.trim();
    trimmed.strip_suffix('$').unwrap_or(trimmed).to_lowercase()
}

/// Persistent volumes are cluster scoped; `<namespace>.<name>` cannot collide.
pub fn persistent_volume_name(namespace: &str, share: &str) -> String {
    format!("{namespace}.{share}")
}

/// The share a persistent volume name belongs to, as `(namespace, name)`.
pub fn share_of_persistent_volume(volume: &str) -> Option<(&str, &str)> {
    volume.split_once('.')
}

/// The label on children of a WindowsShare.
pub const SHARE_LABEL: &str = "winflow.io/share";

/// CSI driver of SMB volumes.
pub const SMB_CSI_DRIVER: &str = "smb.csi.k8s.io";

pub fn gmsa_role_name(identity: &str) -> String {
    format!("winflow-{identity}-gmsa")
}

/// The Role (and RoleBinding) granting verb `use` on exactly this identity: who holds it may
/// create pods that run as the identity (the webhook checks it with a SubjectAccessReview).
pub fn use_role_name(identity: &str) -> String {
    format!("winflow-{identity}-use")
}

/// Label of namespaces where unlabelled pods are validated too: none of them may reach an
/// identity's credentials (Secrets, claims, service accounts, credential specs).
pub const ENFORCE_LABEL: &str = "winflow.io/enforce";

pub fn pod_templates_config_map_name(identity: &str) -> String {
    format!("{identity}-pod-templates")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_spec_names_round_trip() {
        let name = credential_spec_name("airflow", "finance.reports");
        assert_eq!(name, "airflow.finance.reports");
        assert_eq!(identity_of_credential_spec(&name), Some(("airflow", "finance.reports")));
    }

    #[test]
    fn account_keys_ignore_case_the_dollar_and_spaces() {
        for spelling in ["svc-reports", "SVC-Reports", "svc-reports$", " svc-reports$ "] {
            assert_eq!(account_key(spelling), "svc-reports", "{spelling:?}");
        }
        assert_ne!(account_key("svc-reports2"), account_key("svc-reports"));
    }
}
