//! The service accounts among an identity's creators (`spec.access.creators`). A pod that runs
//! as one of them makes its requests as that creator, so wearing the account is a way to use
//! the identity: the webhook checks who starts such pods, and the identity's `Enforced`
//! condition says where that cannot be checked.

use crate::api::WindowsTaskIdentity;
use crate::api::identity::{SUBJECT_GROUP, SUBJECT_SERVICE_ACCOUNT, SUBJECT_USER};

/// The service accounts one creator entry names.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CreatorAccounts {
    /// A `ServiceAccount` (namespace defaulting to the identity's), or the `User`
    /// `system:serviceaccount:<namespace>:<name>`.
    One { namespace: String, name: String },
    /// The `Group` `system:serviceaccounts:<namespace>`: every account of the namespace.
    Namespace(String),
    /// The `Group` `system:serviceaccounts`: every account of the cluster.
    All,
}

impl CreatorAccounts {
    /// Whether a pod running as `namespace/name` wears this creator.
    pub fn includes(&self, namespace: &str, name: &str) -> bool {
        match self {
            CreatorAccounts::One {
                namespace: ns,
                name: account,
            } => ns == namespace && account == name,
            CreatorAccounts::Namespace(ns) => ns == namespace,
            CreatorAccounts::All => true,
        }
    }

    /// The entries that include service account `name` of `namespace`: what an index of
    /// creators is looked up by.
    pub fn including(namespace: &str, name: &str) -> [CreatorAccounts; 3] {
        [
            CreatorAccounts::One {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            },
            CreatorAccounts::Namespace(namespace.to_owned()),
            CreatorAccounts::All,
        ]
    }

    /// The namespace whose pods may wear it (`None`: every namespace).
    pub fn namespace(&self) -> Option<&str> {
        match self {
            CreatorAccounts::One { namespace, .. } | CreatorAccounts::Namespace(namespace) => Some(namespace),
            CreatorAccounts::All => None,
        }
    }
}

/// The service accounts among the identity's creators; users and groups that are not service
/// accounts are left out (no pod runs as them).
pub fn creator_accounts(identity: &WindowsTaskIdentity) -> Vec<CreatorAccounts> {
    let own_namespace = identity.metadata.namespace.as_deref().unwrap_or_default();
    let Some(access) = &identity.spec.access else {
        return Vec::new();
    };
    access
        .creators
        .iter()
        .filter_map(|creator| match creator.kind.as_str() {
            SUBJECT_SERVICE_ACCOUNT => Some(CreatorAccounts::One {
                namespace: creator.namespace.clone().unwrap_or_else(|| own_namespace.to_owned()),
                name: creator.name.clone(),
            }),
            SUBJECT_USER => {
                let (namespace, name) = creator.name.strip_prefix("system:serviceaccount:")?.split_once(':')?;
                Some(CreatorAccounts::One {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                })
            }
            SUBJECT_GROUP if creator.name == "system:serviceaccounts" => Some(CreatorAccounts::All),
            SUBJECT_GROUP => creator
                .name
                .strip_prefix("system:serviceaccounts:")
                .map(|namespace| CreatorAccounts::Namespace(namespace.to_owned())),
            _ => None,
        })
        .collect()
}

/// Whether a pod running as service account `namespace/name` acts as a creator of `identity`.
pub fn is_creator_account(identity: &WindowsTaskIdentity, namespace: &str, name: &str) -> bool {
    creator_accounts(identity)
        .iter()
        .any(|accounts| accounts.includes(namespace, name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::identity::{AccessSettings, AccessSubject};
    use crate::fixtures;

    fn with_creators(creators: &[(&str, &str, Option<&str>)]) -> WindowsTaskIdentity {
        let mut identity = fixtures::key_vault();
        identity.spec.access = Some(AccessSettings {
            creators: creators
                .iter()
                .map(|(kind, name, namespace)| AccessSubject {
                    kind: kind.to_string(),
                    name: name.to_string(),
                    namespace: namespace.map(str::to_owned),
                    api_group: None,
                })
                .collect(),
        });
        identity
    }

    #[test]
    fn service_accounts_are_found_however_the_creator_names_them() {
        let identity = with_creators(&[
            ("ServiceAccount", "airflow-worker", None),
            ("ServiceAccount", "airflow-scheduler", Some("airflow-system")),
            ("User", "system:serviceaccount:ops:deployer", None),
            ("User", "alice", None),
            ("Group", "system:serviceaccounts:ci", None),
            ("Group", "data-engineers", None),
        ]);
        let namespace = identity.metadata.namespace.clone().unwrap();
        assert!(is_creator_account(&identity, &namespace, "airflow-worker"));
        assert!(!is_creator_account(&identity, "other", "airflow-worker"));
        assert!(is_creator_account(&identity, "airflow-system", "airflow-scheduler"));
        assert!(!is_creator_account(&identity, &namespace, "airflow-scheduler"));
        assert!(is_creator_account(&identity, "ops", "deployer"));
        assert!(is_creator_account(&identity, "ci", "anything"));
        assert!(!is_creator_account(&identity, &namespace, "alice"));
        let namespaces: Vec<_> = creator_accounts(&identity)
            .iter()
            .map(|a| a.namespace().map(str::to_owned))
            .collect();
        assert_eq!(
            namespaces,
            [
                Some(namespace),
                Some("airflow-system".into()),
                Some("ops".into()),
                Some("ci".into())
            ]
        );
        let everyone = with_creators(&[("Group", "system:serviceaccounts", None)]);
        assert!(is_creator_account(&everyone, "any", "one"));
        assert_eq!(creator_accounts(&everyone)[0].namespace(), None);
    }
}
