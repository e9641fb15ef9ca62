//! The service account and the Role/RoleBinding that let only it `use` the credential spec;
//! the Role/RoleBinding that let only the identity's creators `use` the identity.

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::Resource;

use super::meta::{identity_name, identity_namespace, namespaced_meta};
use crate::api::WindowsTaskIdentity;
use crate::api::gmsa;
use crate::api::identity::{AccessSubject, RBAC_API_GROUP, SUBJECT_SERVICE_ACCOUNT};
use crate::names::{credential_spec_name, gmsa_role_name, use_role_name};

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
    let account = Subject {
        kind: "ServiceAccount".to_owned(),
        name: identity.spec.service_account.name.clone(),
        namespace: Some(identity_namespace(identity).to_owned()),
        api_group: None,
    };
    binding_to_role(identity, gmsa_role_name(identity_name(identity)), vec![account])
}

/// A RoleBinding of the identity's binding `subjects` to the Role of the same name.
fn binding_to_role(identity: &WindowsTaskIdentity, name: String, subjects: Vec<Subject>) -> RoleBinding {
    RoleBinding {
        metadata: namespaced_meta(identity, name.clone()),
        role_ref: RoleRef {
            api_group: RBAC_API_GROUP.to_owned(),
            kind: "Role".to_owned(),
            name,
        },
        subjects: Some(subjects),
    }
}

/// `use` on exactly this identity: what the admission webhook checks, with a
/// SubjectAccessReview, before a pod's creator may name the identity.
pub fn use_role_for(identity: &WindowsTaskIdentity) -> Role {
    Role {
        metadata: namespaced_meta(identity, use_role_name(identity_name(identity))),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![WindowsTaskIdentity::group(&()).into_owned()]),
            resources: Some(vec![WindowsTaskIdentity::plural(&()).into_owned()]),
            resource_names: Some(vec![identity_name(identity).to_owned()]),
            verbs: vec!["use".to_owned()],
            non_resource_urls: None,
        }]),
    }
}

/// Binds `spec.access.creators` to the use Role. Always there, with no subjects when there
/// are no creators: users may then bind the Role from their own manifests instead.
pub fn use_role_binding_for(identity: &WindowsTaskIdentity) -> RoleBinding {
    let creators = identity.spec.access.iter().flat_map(|a| &a.creators);
    let subjects = creators.map(|c| subject(identity, c)).collect();
    binding_to_role(identity, use_role_name(identity_name(identity)), subjects)
}

/// A creator as RBAC stores it: a service account always with its namespace and no API group,
/// users and groups with RBAC's API group and no namespace.
fn subject(identity: &WindowsTaskIdentity, creator: &AccessSubject) -> Subject {
    let service_account = creator.kind == SUBJECT_SERVICE_ACCOUNT;
    Subject {
        kind: creator.kind.clone(),
        name: creator.name.clone(),
        namespace: service_account.then(|| {
            creator
                .namespace
                .as_deref()
                .unwrap_or(identity_namespace(identity))
                .to_owned()
        }),
        api_group: (!service_account).then(|| RBAC_API_GROUP.to_owned()),
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
    fn use_role_grants_only_use_of_this_identity() {
        let role = use_role_for(&fixtures::domain_joined());
        assert_eq!(role.metadata.name.as_deref(), Some("winflow-finance-reports-use"));
        assert_eq!(role.metadata.namespace.as_deref(), Some("airflow"));
        assert_eq!(
            serde_json::to_value(role.rules.unwrap()).unwrap(),
            serde_json::json!([{
                "apiGroups": ["winflow.io"],
                "resources": ["windowstaskidentities"],
                "resourceNames": ["finance-reports"],
                "verbs": ["use"],
            }])
        );
        let meta = role.metadata;
        assert_eq!(meta.labels.unwrap()["winflow.io/identity"], "finance-reports");
        assert_eq!(meta.owner_references.unwrap()[0].name, "finance-reports");
    }

    #[test]
    fn use_binding_binds_the_creators_as_rbac_wants_them() {
        let mut identity = fixtures::domain_joined();
        let binding = use_role_binding_for(&identity);
        assert_eq!(binding.metadata.name.as_deref(), Some("winflow-finance-reports-use"));
        assert_eq!(binding.role_ref.name, "winflow-finance-reports-use");
        assert_eq!(binding.role_ref.kind, "Role");
        assert_eq!(
            binding.subjects,
            Some(vec![]),
            "no creators: a binding without subjects"
        );
        assert!(binding.metadata.owner_references.is_some());

        identity.spec.access = serde_yaml_ng::from_str(
            "creators:\n\
             - {kind: ServiceAccount, name: airflow-scheduler}\n\
             - {kind: ServiceAccount, name: airflow-worker, namespace: workers, apiGroup: ''}\n\
             - {kind: User, name: alice@example.com}\n\
             - {kind: Group, name: platform, apiGroup: rbac.authorization.k8s.io}\n",
        )
        .unwrap();
        let subjects = use_role_binding_for(&identity).subjects.unwrap();
        assert_eq!(
            serde_json::to_value(subjects).unwrap(),
            serde_json::json!([
                {"kind": "ServiceAccount", "name": "airflow-scheduler", "namespace": "airflow"},
                {"kind": "ServiceAccount", "name": "airflow-worker", "namespace": "workers"},
                {"kind": "User", "name": "alice@example.com", "apiGroup": "rbac.authorization.k8s.io"},
                {"kind": "Group", "name": "platform", "apiGroup": "rbac.authorization.k8s.io"},
            ])
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
