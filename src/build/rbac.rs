//! The service account and the Role/RoleBinding that let only it `use` the credential spec.

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};

use super::meta::{identity_name, identity_namespace, namespaced_meta};
use crate::api::WindowsTaskIdentity;
use crate::api::gmsa;
use crate::names::{credential_spec_name, gmsa_role_name};

/// `use` on exactly this identity's credential spec: what the kubelet and the gMSA webhook
/// check with a LocalSubjectAccessReview before a pod may name it.
pub fn gmsa_role_for(identity: &WindowsTaskIdentity) -> Role {
    Role {
        metadata: namespaced_meta(identity, gmsa_role_name(identity_name(identity))),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![gmsa::GROUP.to_owned()]),
            resources: Some(vec![gmsa::PLURAL.to_owned()]),
            resource_names: Some(vec![credential_spec_name(
                identity_namespace(identity),
                identity_name(identity),
            )]),
            verbs: vec!["use".to_owned()],
            non_resource_urls: None,
        }]),
    }
}

pub fn gmsa_role_binding_for(identity: &WindowsTaskIdentity) -> RoleBinding {
    let name = gmsa_role_name(identity_name(identity));
    RoleBinding {
        metadata: namespaced_meta(identity, name.clone()),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_owned(),
            kind: "Role".to_owned(),
            name,
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_owned(),
            name: identity.spec.service_account.name.clone(),
            namespace: Some(identity_namespace(identity).to_owned()),
            api_group: None,
        }]),
    }
}

pub fn service_account_for(identity: &WindowsTaskIdentity) -> ServiceAccount {
    let settings = &identity.spec.service_account;
    let mut metadata = namespaced_meta(identity, settings.name.clone());
    if !settings.annotations.is_empty() {
        metadata.annotations = Some(settings.annotations.clone());
    }
    ServiceAccount {
        metadata,
        ..ServiceAccount::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    #[test]
    fn role_grants_only_use_of_one_credential_spec() {
        let role = gmsa_role_for(&fixtures::domain_joined());
        assert_eq!(role.metadata.name.as_deref(), Some("winflow-finance-reports-gmsa"));
        let rules = role.rules.unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].verbs, ["use"]);
        assert_eq!(rules[0].api_groups.as_deref(), Some(&["windows.k8s.io".to_owned()][..]));
        assert_eq!(
            rules[0].resources.as_deref(),
            Some(&["gmsacredentialspecs".to_owned()][..])
        );
        assert_eq!(
            rules[0].resource_names.as_deref(),
            Some(&["airflow.finance-reports".to_owned()][..])
        );
    }

    #[test]
    fn binding_names_the_identity_service_account() {
        let binding = gmsa_role_binding_for(&fixtures::domain_joined());
        assert_eq!(binding.role_ref.name, "winflow-finance-reports-gmsa");
        let subjects = binding.subjects.unwrap();
        assert_eq!(subjects.len(), 1);
        assert_eq!(
            (subjects[0].kind.as_str(), subjects[0].name.as_str()),
            ("ServiceAccount", "finance-reports")
        );
        assert_eq!(subjects[0].namespace.as_deref(), Some("airflow"));
    }
}
