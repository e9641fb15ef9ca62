//! winflow's resources as the webhook reads them: by namespace and name, and by the terms a
//! review looks an identity up by (its gMSA accounts, its host-account plugin input), so that
//! a review costs as much as the pod it carries, not as many identities as the cluster holds.
//! Kept up to date from watch events; pure, so it is tested without a cluster.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use kube::core::DeserializeGuard;
use kube::runtime::watcher;

use crate::api::creators::{CreatorAccounts, creator_accounts};
use crate::api::{WindowsShare, WindowsTaskIdentity};
use crate::webhook::decide::{account_keys, plugin_input};

/// `(namespace, name)`: ordered, so a namespace's objects are one range.
type Key = (String, String);

/// What an object is looked up by, besides its namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Term {
    /// A gMSA account, as `names::account_key` spells it.
    Account(String),
    /// A host-account plugin input, as winflow writes it into the credential spec.
    PluginInput(String),
    /// A creator's service accounts (`spec.access.creators`): one account, every account of a
    /// namespace, or every account of the cluster.
    Creator(CreatorAccounts),
}

/// The terms an object is found by.
pub trait Indexed {
    fn terms(&self) -> Vec<Term>;
}

impl Indexed for WindowsTaskIdentity {
    fn terms(&self) -> Vec<Term> {
        // The same keys the strict reader looks contents up by.
        account_keys(&self.spec)
            .map(Term::Account)
            .chain(plugin_input(self).map(Term::PluginInput))
            .chain(creator_accounts(self).into_iter().map(Term::Creator))
            .collect()
    }
}

impl Indexed for WindowsShare {
    fn terms(&self) -> Vec<Term> {
        Vec::new()
    }
}

/// How far a namespace's objects have changed: equal versions, same objects. What is built
/// from a namespace's objects is kept as long as its version stays the same.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NamespaceVersion {
    relists: u64,
    changes: u64,
}

/// The decodable objects of one kind; objects that do not decode are left out (and one that
/// stops decoding is removed), as the decisions never read them.
pub struct ResourceIndex<K> {
    objects: BTreeMap<Key, Arc<K>>,
    by_term: HashMap<Term, BTreeSet<Key>>,
    /// Changes per namespace, and complete relists (which may change any namespace).
    changes: HashMap<String, u64>,
    relists: u64,
    /// A relist in progress: the watch's new view of every object, swapped in once complete
    /// (objects deleted while the watch was down then disappear).
    relisting: Option<BTreeMap<Key, Arc<K>>>,
}

impl<K> Default for ResourceIndex<K> {
    fn default() -> Self {
        Self {
            objects: BTreeMap::new(),
            by_term: HashMap::new(),
            changes: HashMap::new(),
            relists: 0,
            relisting: None,
        }
    }
}

fn key_of<K: kube::Resource>(object: &K) -> Key {
    let meta = object.meta();
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

impl<K> ResourceIndex<K>
where
    K: kube::Resource + Indexed + Clone,
{
    /// Applies one watch event.
    pub fn apply(&mut self, event: watcher::Event<DeserializeGuard<K>>) {
        match event {
            watcher::Event::Apply(guarded) => match guarded.0 {
                Ok(object) => self.insert(Arc::new(object)),
                Err(invalid) => self.remove(&key_of_meta(&invalid.metadata)),
            },
            watcher::Event::Delete(guarded) => {
                let key = match &guarded.0 {
                    Ok(object) => key_of(object),
                    Err(invalid) => key_of_meta(&invalid.metadata),
                };
                self.remove(&key);
            }
            watcher::Event::Init => self.relisting = Some(BTreeMap::new()),
            watcher::Event::InitApply(guarded) => {
                if let (Some(relisting), Ok(object)) = (&mut self.relisting, guarded.0) {
                    relisting.insert(key_of(&object), Arc::new(object));
                }
            }
            watcher::Event::InitDone => {
                if let Some(relisted) = self.relisting.take() {
                    self.relists += 1;
                    self.objects.clear();
                    self.by_term.clear();
                    for object in relisted.into_values() {
                        self.insert(object);
                    }
                }
            }
        }
    }

    fn insert(&mut self, object: Arc<K>) {
        let key = key_of(&*object);
        self.remove(&key);
        for term in object.terms() {
            self.by_term.entry(term).or_default().insert(key.clone());
        }
        *self.changes.entry(key.0.clone()).or_default() += 1;
        self.objects.insert(key, object);
    }

    fn remove(&mut self, key: &Key) {
        let Some(old) = self.objects.remove(key) else { return };
        *self.changes.entry(key.0.clone()).or_default() += 1;
        for term in old.terms() {
            if let Some(keys) = self.by_term.get_mut(&term) {
                keys.remove(key);
                if keys.is_empty() {
                    self.by_term.remove(&term);
                }
            }
        }
    }

    /// Changes whenever an object of `namespace` is added, changed or removed.
    pub fn namespace_version(&self, namespace: &str) -> NamespaceVersion {
        NamespaceVersion {
            relists: self.relists,
            changes: self.changes.get(namespace).copied().unwrap_or_default(),
        }
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        self.objects.get(&(namespace.to_owned(), name.to_owned())).cloned()
    }

    /// The objects of `namespace`, by name.
    pub fn in_namespace(&self, namespace: &str) -> Vec<Arc<K>> {
        let from = (namespace.to_owned(), String::new());
        self.objects
            .range(from..)
            .take_while(|((ns, _), _)| ns == namespace)
            .map(|(_, object)| Arc::clone(object))
            .collect()
    }

    /// Every object, by namespace and name.
    pub fn all(&self) -> Vec<Arc<K>> {
        self.objects.values().cloned().collect()
    }

    /// The objects found by `term`, by namespace and name.
    pub fn with_term(&self, term: &Term) -> Vec<Arc<K>> {
        self.by_term
            .get(term)
            .into_iter()
            .flatten()
            .filter_map(|key| self.objects.get(key).cloned())
            .collect()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.objects.len()
    }
}

fn key_of_meta(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Key {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;
    use kube::core::error_boundary::InvalidObject;

    fn identity(namespace: &str, name: &str, account: &str) -> WindowsTaskIdentity {
        let mut identity = fixtures::domain_joined();
        identity.metadata.namespace = Some(namespace.to_owned());
        identity.metadata.name = Some(name.to_owned());
        identity.spec.gmsa.account = account.to_owned();
        identity.spec.gmsa.additional_accounts.clear();
        identity
    }

    fn applied(identity: &WindowsTaskIdentity) -> watcher::Event<DeserializeGuard<WindowsTaskIdentity>> {
        watcher::Event::Apply(DeserializeGuard(Ok(identity.clone())))
    }

    fn names(found: Vec<Arc<WindowsTaskIdentity>>) -> Vec<String> {
        found
            .iter()
            .map(|i| {
                format!(
                    "{}/{}",
                    i.metadata.namespace.as_deref().unwrap(),
                    i.metadata.name.as_deref().unwrap()
                )
            })
            .collect()
    }

    fn account(index: &ResourceIndex<WindowsTaskIdentity>, account: &str) -> Vec<String> {
        names(index.with_term(&Term::Account(crate::names::account_key(account))))
    }

    #[test]
    fn apply_indexes_by_namespace_and_by_account() {
        let mut index = ResourceIndex::default();
        index.apply(applied(&identity("airflow", "reports", "svc-reports")));
        index.apply(applied(&identity("airflow", "payroll", "svc-payroll")));
        index.apply(applied(&identity("batch", "reports", "SVC-Reports$")));
        index.apply(applied(&identity("airflow-2", "other", "svc-other")));

        assert_eq!(
            names(index.in_namespace("airflow")),
            ["airflow/payroll", "airflow/reports"]
        );
        assert_eq!(names(index.in_namespace("batch")), ["batch/reports"]);
        assert!(index.in_namespace("airflow-").is_empty());
        assert!(index.in_namespace("nowhere").is_empty());
        assert_eq!(account(&index, "svc-reports"), ["airflow/reports", "batch/reports"]);
        assert_eq!(account(&index, "Svc-Payroll$"), ["airflow/payroll"]);
        assert!(account(&index, "svc-nobody").is_empty());
        assert_eq!(index.get("batch", "reports").unwrap().spec.gmsa.account, "SVC-Reports$");
        assert_eq!(index.len(), 4);
    }

    #[test]
    fn an_update_that_changes_the_account_moves_the_identity() {
        let mut index = ResourceIndex::default();
        let mut reports = identity("airflow", "reports", "svc-reports");
        reports.spec.gmsa.additional_accounts = vec!["svc-sql-reader".to_owned()];
        index.apply(applied(&reports));
        assert_eq!(account(&index, "svc-sql-reader"), ["airflow/reports"]);

        reports.spec.gmsa.account = "svc-reports-v2".to_owned();
        reports.spec.gmsa.additional_accounts.clear();
        index.apply(applied(&reports));
        assert!(account(&index, "svc-reports").is_empty());
        assert!(account(&index, "svc-sql-reader").is_empty());
        assert_eq!(account(&index, "svc-reports-v2"), ["airflow/reports"]);
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn delete_and_undecodable_objects_leave_no_trace() {
        let mut index = ResourceIndex::default();
        let reports = identity("airflow", "reports", "svc-reports");
        let payroll = identity("airflow", "payroll", "svc-payroll");
        index.apply(applied(&reports));
        index.apply(applied(&payroll));

        index.apply(watcher::Event::Delete(DeserializeGuard(Ok(reports))));
        assert!(account(&index, "svc-reports").is_empty());
        assert!(
            index
                .by_term
                .keys()
                .all(|term| *term != Term::Account("svc-reports".into()))
        );

        // An update the watch cannot decode: the old version must not be decided on.
        let invalid = InvalidObject {
            error: "spec.gmsa: missing field".to_owned(),
            metadata: payroll.metadata.clone(),
        };
        index.apply(watcher::Event::Apply(DeserializeGuard(Err(invalid))));
        assert_eq!(index.len(), 0);
        assert!(index.by_term.is_empty());
    }

    #[test]
    fn a_relist_replaces_everything_once_complete() {
        let mut index = ResourceIndex::default();
        index.apply(applied(&identity("airflow", "gone", "svc-gone")));
        index.apply(applied(&identity("airflow", "kept", "svc-kept")));

        index.apply(watcher::Event::Init);
        let mut kept = identity("airflow", "kept", "svc-kept-v2");
        kept.metadata.resource_version = Some("2".to_owned());
        index.apply(watcher::Event::InitApply(DeserializeGuard(Ok(kept))));
        // Until the relist is complete, reviews see the previous state.
        assert_eq!(account(&index, "svc-gone"), ["airflow/gone"]);

        index.apply(watcher::Event::InitDone);
        assert!(account(&index, "svc-gone").is_empty());
        assert!(account(&index, "svc-kept").is_empty());
        assert_eq!(account(&index, "svc-kept-v2"), ["airflow/kept"]);
        assert_eq!(names(index.all()), ["airflow/kept"]);
    }

    #[test]
    fn a_namespace_version_changes_with_its_objects_and_relists_only() {
        let mut index = ResourceIndex::default();
        let never = index.namespace_version("airflow");
        let reports = identity("airflow", "reports", "svc-reports");
        index.apply(applied(&reports));
        let after_apply = index.namespace_version("airflow");
        assert_ne!(after_apply, never);

        index.apply(applied(&identity("batch", "reports", "svc-reports")));
        assert_eq!(
            index.namespace_version("airflow"),
            after_apply,
            "another namespace changed"
        );

        let mut updated = reports.clone();
        updated.metadata.resource_version = Some("2".to_owned());
        index.apply(applied(&updated));
        let after_update = index.namespace_version("airflow");
        assert_ne!(after_update, after_apply);

        index.apply(watcher::Event::Delete(DeserializeGuard(Ok(updated))));
        let after_delete = index.namespace_version("airflow");
        assert_ne!(after_delete, after_update);

        index.apply(watcher::Event::Init);
        index.apply(watcher::Event::InitDone);
        assert_ne!(
            index.namespace_version("airflow"),
            after_delete,
            "a relist may change any namespace"
        );
    }

    #[test]
    fn identities_are_found_by_their_plugin_input() {
        let mut index = ResourceIndex::default();
        let key_vault = fixtures::key_vault();
        index.apply(applied(&key_vault));
        index.apply(applied(&identity("airflow", "reports", "svc-reports")));
        let input = plugin_input(&key_vault).unwrap();
        let found = index.with_term(&Term::PluginInput(input));
        assert_eq!(
            names(found),
            [format!("airflow/{}", key_vault.metadata.name.as_deref().unwrap())]
        );
        assert!(index.with_term(&Term::PluginInput("airflow:other".into())).is_empty());
    }
}
