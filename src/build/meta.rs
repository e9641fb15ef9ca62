//! Metadata every child carries: the managed-by and identity labels, the controller owner
//! reference (namespaced children) and the spec hash.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::api::WindowsTaskIdentity;
use crate::names::{IDENTITY_LABEL, MANAGED_BY_LABEL, MANAGED_BY_VALUE, SPEC_HASH_ANNOTATION};

pub(super) fn identity_name(identity: &WindowsTaskIdentity) -> &str {
    identity.metadata.name.as_deref().unwrap_or_default()
}

pub(super) fn identity_namespace(identity: &WindowsTaskIdentity) -> &str {
    identity.metadata.namespace.as_deref().unwrap_or_default()
}

pub(super) fn managed_labels(identity: &WindowsTaskIdentity) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY_VALUE.to_owned()),
        (IDENTITY_LABEL.to_owned(), identity_name(identity).to_owned()),
    ])
}

/// Metadata of a child in the identity's namespace, owned by the identity. Without a uid
/// (offline rendering) there is no owner to reference yet.
pub fn namespaced_meta(identity: &WindowsTaskIdentity, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(identity_namespace(identity).to_owned()),
        labels: Some(managed_labels(identity)),
        owner_references: controller_reference(identity).map(|r| vec![r]),
        ..ObjectMeta::default()
    }
}

/// Metadata of a cluster-scoped child; the finalizer removes it, not the garbage collector.
pub(super) fn cluster_meta(identity: &WindowsTaskIdentity, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        labels: Some(managed_labels(identity)),
        ..ObjectMeta::default()
    }
}

fn controller_reference(identity: &WindowsTaskIdentity) -> Option<OwnerReference> {
    let uid = identity.metadata.uid.clone()?;
    Some(OwnerReference {
        api_version: WindowsTaskIdentity::api_version(&()).into_owned(),
        kind: WindowsTaskIdentity::kind(&()).into_owned(),
        name: identity_name(identity).to_owned(),
        uid,
        controller: Some(true),
        block_owner_deletion: Some(true),
    })
}

/// Whether `existing` carries every label of `desired`: winflow's children carry exactly
/// the labels that say who manages them, so this is the ownership test.
pub fn carries_labels_of(existing: &ObjectMeta, desired: &ObjectMeta) -> bool {
    let have = existing.labels.as_ref();
    desired
        .labels
        .iter()
        .flatten()
        .all(|(key, value)| have.and_then(|l| l.get(key)) == Some(value))
}

/// Adds the spec-hash annotation: a digest of the object as winflow wants it. The zero-write
/// check (`controller::apply::is_subset`) reads it back: an entry winflow stopped setting
/// changes it, where comparing the entries alone would call the child up to date.
pub fn with_spec_hash<K: Resource + Serialize>(mut object: K) -> K {
    let json = serde_json::to_vec(&object).expect("Kubernetes objects serialize to JSON");
    let digest = Sha256::digest(&json);
    let hash: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    object
        .meta_mut()
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(SPEC_HASH_ANNOTATION.to_owned(), hash);
    object
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;
    use k8s_openapi::api::core::v1::ConfigMap;

    #[test]
    fn namespaced_children_are_controlled_by_the_identity() {
        let identity = fixtures::domain_joined();
        let meta = namespaced_meta(&identity, "x".into());
        let owner = &meta.owner_references.unwrap()[0];
        assert_eq!(owner.kind, "WindowsTaskIdentity");
        assert_eq!(owner.api_version, "winflow.io/v1alpha1");
        assert_eq!(owner.controller, Some(true));
        assert_eq!(meta.labels.unwrap()["winflow.io/identity"], "finance-reports");
    }

    #[test]
    fn spec_hash_follows_content() {
        let identity = fixtures::domain_joined();
        let a = with_spec_hash(ConfigMap {
            metadata: namespaced_meta(&identity, "a".into()),
            ..Default::default()
        });
        let a_again = with_spec_hash(ConfigMap {
            metadata: namespaced_meta(&identity, "a".into()),
            ..Default::default()
        });
        let b = with_spec_hash(ConfigMap {
            metadata: namespaced_meta(&identity, "b".into()),
            ..Default::default()
        });
        let hash = |c: &ConfigMap| c.metadata.annotations.as_ref().unwrap()[SPEC_HASH_ANNOTATION].clone();
        assert_eq!(hash(&a), hash(&a_again));
        assert_ne!(hash(&a), hash(&b));
    }

    #[test]
    fn ownership_is_carrying_every_desired_label() {
        let identity = fixtures::domain_joined();
        let desired = namespaced_meta(&identity, "x".into());
        assert!(carries_labels_of(&desired, &desired));
        let mut other = desired.clone();
        other
            .labels
            .as_mut()
            .unwrap()
            .insert(IDENTITY_LABEL.into(), "payroll-export".into());
        assert!(!carries_labels_of(&other, &desired));
        assert!(!carries_labels_of(&ObjectMeta::default(), &desired));
        // Both labels are needed: the identity label alone is not winflow's mark.
        let mut unmanaged = desired.clone();
        unmanaged.labels.as_mut().unwrap().remove(MANAGED_BY_LABEL);
        assert!(!carries_labels_of(&unmanaged, &desired));
    }
}
