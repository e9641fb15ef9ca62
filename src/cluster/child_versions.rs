//! Which children still hold exactly what winflow last applied or checked, so a reconcile
//! need not read them back. The children's own watches keep this honest: every version a
//! watch reports that winflow did not produce, and every deletion, marks the child unknown
//! again, and the next reconcile reads it from the API server as before.
//!
//! It also tells which watch events are news. An event for the version winflow itself just
//! wrote changes nothing a reconcile would see, so it triggers none: creating an identity's
//! seven children no longer reconciles the identity seven more times. The watch often reports
//! a write before its answer arrives, so while winflow writes a child, the versions reported
//! are held back and compared with the answer's: any other version is someone else's, and
//! the reconcile looks again at once.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::Resource;
use serde_json::Value;

#[derive(Default)]
pub struct ChildVersions {
    entries: Mutex<HashMap<Key, Entry>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    kind: Cow<'static, str>,
    namespace: String,
    name: String,
}

#[derive(Default)]
struct Entry {
    /// The version the watch last reported.
    observed: Option<String>,
    /// The digest of what winflow wanted, and the version that was known to hold it.
    confirmed: Option<(u64, String)>,
    /// While winflow's write is on its way: the versions the watch reported meanwhile. Its
    /// own is among them when the watch is faster than the answer; any other is someone
    /// else's, and `finish_write` marks the child `changed_meanwhile`. A write that never
    /// finished (its reconcile was cancelled) stops holding anything back after `WRITE_TIMEOUT`.
    writing: Option<(Instant, Vec<String>)>,
    /// Someone else wrote the child while winflow did; the watch event that said so was held
    /// back, so the owner's reconcile must look again by itself (`take_changed_meanwhile`).
    changed_meanwhile: bool,
}

/// Longer than any write takes (the client's own timeout is shorter).
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// A digest of what winflow wants a child to hold (as JSON, which the caller already has for
/// comparing); equal digests, equal objects.
pub(crate) fn digest(desired: &Value) -> u64 {
    let mut hasher = DefaultHasher::new();
    desired.to_string().hash(&mut hasher);
    hasher.finish()
}

fn key_of<K: Resource<DynamicType = ()>>(object: &K) -> Key {
    let meta = object.meta();
    key(
        kind_of::<K>(),
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default(),
    )
}

fn key(kind: Cow<'static, str>, namespace: &str, name: &str) -> Key {
    Key {
        kind,
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    }
}

/// The kind's name for keys: metadata-only watches (`PartialObjectMeta<K>`) and full objects
/// of one kind share it. Static (borrowed) for k8s-openapi and kube-derive types.
fn kind_of<K: Resource<DynamicType = ()>>() -> Cow<'static, str> {
    K::kind(&())
}

impl ChildVersions {
    /// Whether the child is known to hold `desired` right now: winflow applied (or read) it
    /// at the version the watch reports last.
    pub fn holds<K>(&self, desired: &K, digest: u64) -> bool
    where
        K: Resource<DynamicType = ()>,
    {
        let entries = self.entries.lock().expect("child-versions lock");
        entries.get(&key_of(desired)).is_some_and(|entry| {
            matches!((&entry.observed, &entry.confirmed), (Some(seen), Some((d, version))) if *d == digest && seen == version)
        })
    }

    /// Winflow read `desired` back unchanged at `version`.
    pub fn confirm<K>(&self, desired: &K, digest: u64, version: Option<&str>)
    where
        K: Resource<DynamicType = ()>,
    {
        let mut entries = self.entries.lock().expect("child-versions lock");
        let entry = entries.entry(key_of(desired)).or_default();
        entry.confirmed = version.map(|v| (digest, v.to_owned()));
    }

    /// Winflow is about to write `desired`: versions the watch reports until `finish_write`
    /// are held back rather than taken as news, since one of them is winflow's own.
    pub fn start_write<K>(&self, desired: &K)
    where
        K: Resource<DynamicType = ()>,
    {
        let mut entries = self.entries.lock().expect("child-versions lock");
        entries.entry(key_of(desired)).or_default().writing = Some((Instant::now(), Vec::new()));
    }

    /// Winflow's write of `desired` ended: applied at `version`, or failed (`None`). A version
    /// the watch reported meanwhile that was not winflow's marks the child changed meanwhile.
    pub fn finish_write<K>(&self, desired: &K, digest: u64, version: Option<&str>)
    where
        K: Resource<DynamicType = ()>,
    {
        let mut entries = self.entries.lock().expect("child-versions lock");
        let entry = entries.entry(key_of(desired)).or_default();
        let seen = entry.writing.take().map(|(_, seen)| seen).unwrap_or_default();
        entry.confirmed = version.map(|v| (digest, v.to_owned()));
        entry.changed_meanwhile |= seen.iter().any(|seen| Some(seen.as_str()) != version);
    }

    /// Whether someone else wrote `child` while winflow did since the last ask: news the
    /// watch could not deliver, so the owner should be reconciled again at once.
    pub fn take_changed_meanwhile<K>(&self, child: &K) -> bool
    where
        K: Resource<DynamicType = ()>,
    {
        let mut entries = self.entries.lock().expect("child-versions lock");
        entries
            .get_mut(&key_of(child))
            .is_some_and(|entry| std::mem::take(&mut entry.changed_meanwhile))
    }

    /// The watch reports `object` at its version. Returns whether that is news, i.e. not the
    /// version winflow itself confirmed.
    pub fn observed<K>(&self, object: &K) -> bool
    where
        K: Resource<DynamicType = ()>,
    {
        let version = object.meta().resource_version.clone();
        let mut entries = self.entries.lock().expect("child-versions lock");
        let entry = entries.entry(key_of(object)).or_default();
        if entry
            .writing
            .as_ref()
            .is_some_and(|(since, _)| since.elapsed() > WRITE_TIMEOUT)
        {
            entry.writing = None;
        }
        if let (Some((_, seen)), Some(v)) = (entry.writing.as_mut(), version.as_ref()) {
            seen.push(v.clone());
            entry.observed = version;
            return false;
        }
        let own = matches!((&entry.confirmed, &version), (Some((_, confirmed)), Some(v)) if confirmed == v);
        entry.observed = version;
        !own
    }

    /// The child is gone.
    pub fn deleted<K>(&self, object: &K)
    where
        K: Resource<DynamicType = ()>,
    {
        self.entries
            .lock()
            .expect("child-versions lock")
            .remove(&key_of(object));
    }

    /// The watch of kind `K` lists again: deletions it missed while disconnected would go
    /// unnoticed, so nothing of that kind is trusted until read again.
    pub fn relisting<K>(&self)
    where
        K: Resource<DynamicType = ()>,
    {
        let kind = kind_of::<K>();
        self.entries
            .lock()
            .expect("child-versions lock")
            .retain(|key, _| key.kind != kind);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.lock().expect("child-versions lock").len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::api::rbac::v1::Role;
    use kube::api::ObjectMeta;

    fn digest_of(desired: &ConfigMap) -> u64 {
        digest(&serde_json::to_value(desired).unwrap())
    }

    fn config_map(name: &str, version: Option<&str>, value: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some("airflow".to_owned()),
                resource_version: version.map(str::to_owned),
                ..ObjectMeta::default()
            },
            data: Some([("k".to_owned(), value.to_owned())].into()),
            ..ConfigMap::default()
        }
    }

    #[test]
    fn a_child_is_held_once_the_watch_shows_the_version_winflow_wrote() {
        let versions = ChildVersions::default();
        let desired = config_map("t", None, "v1");
        let d = digest_of(&desired);
        assert!(!versions.holds(&desired, d), "never seen");
        versions.confirm(&desired, d, Some("10"));
        assert!(!versions.holds(&desired, d), "the watch has not shown version 10 yet");
        assert!(
            !versions.observed(&config_map("t", Some("10"), "v1")),
            "own write: no news"
        );
        assert!(versions.holds(&desired, d));
        // Watches see children as metadata only: the same child, the same key.
        let seen = kube::core::PartialObjectMeta::<ConfigMap> {
            metadata: config_map("t", Some("11"), "v1").metadata,
            ..Default::default()
        };
        assert!(
            versions.observed(&seen),
            "someone else's version, seen through metadata"
        );
        assert!(!versions.holds(&desired, d));
    }

    #[test]
    fn another_writer_makes_the_child_unknown() {
        let versions = ChildVersions::default();
        let desired = config_map("t", None, "v1");
        let d = digest_of(&desired);
        versions.confirm(&desired, d, Some("10"));
        assert!(!versions.observed(&config_map("t", Some("10"), "v1")));
        assert!(
            versions.observed(&config_map("t", Some("11"), "edited")),
            "a hand edit is news"
        );
        assert!(!versions.holds(&desired, d));
    }

    #[test]
    fn an_edit_seen_before_winflow_records_its_own_write_is_not_missed() {
        let versions = ChildVersions::default();
        let desired = config_map("t", None, "v1");
        let d = digest_of(&desired);
        // Watch events 10 (winflow's) and 11 (someone else's) both arrive before the apply's
        // answer is recorded.
        versions.observed(&config_map("t", Some("10"), "v1"));
        versions.observed(&config_map("t", Some("11"), "edited"));
        versions.confirm(&desired, d, Some("10"));
        assert!(!versions.holds(&desired, d));
    }

    #[test]
    fn the_own_write_seen_before_its_answer_is_no_news() {
        let versions = ChildVersions::default();
        let desired = config_map("t", None, "v1");
        let d = digest_of(&desired);
        versions.start_write(&desired);
        assert!(
            !versions.observed(&config_map("t", Some("10"), "v1")),
            "held back while writing"
        );
        versions.finish_write(&desired, d, Some("10"));
        assert!(!versions.take_changed_meanwhile(&desired), "it was winflow's own");
        assert!(versions.holds(&desired, d));
    }

    #[test]
    fn someone_elses_write_during_winflows_is_reported_when_it_ends() {
        let versions = ChildVersions::default();
        let desired = config_map("t", None, "v1");
        let d = digest_of(&desired);
        versions.start_write(&desired);
        assert!(!versions.observed(&config_map("t", Some("10"), "v1")));
        assert!(!versions.observed(&config_map("t", Some("11"), "edited")));
        versions.finish_write(&desired, d, Some("10"));
        assert!(versions.take_changed_meanwhile(&desired), "version 11 is news");
        assert!(!versions.take_changed_meanwhile(&desired), "told once");
        assert!(!versions.holds(&desired, d), "and the child is read again");
        // A failed write reports anything seen meanwhile, and holds nothing.
        versions.start_write(&desired);
        assert!(!versions.observed(&config_map("t", Some("12"), "edited")));
        versions.finish_write(&desired, d, None);
        assert!(versions.take_changed_meanwhile(&desired));
        assert!(!versions.holds(&desired, d));
        // After the write, the watch's news are news again.
        assert!(versions.observed(&config_map("t", Some("13"), "edited")));
    }

    #[test]
    fn a_changed_wish_is_not_held() {
        let versions = ChildVersions::default();
        let desired = config_map("t", None, "v1");
        versions.confirm(&desired, digest_of(&desired), Some("10"));
        versions.observed(&config_map("t", Some("10"), "v1"));
        let wanted_now = config_map("t", None, "v2");
        assert!(!versions.holds(&wanted_now, digest_of(&wanted_now)));
    }

    #[test]
    fn deletions_and_relists_forget() {
        let versions = ChildVersions::default();
        let desired = config_map("t", None, "v1");
        let d = digest_of(&desired);
        versions.confirm(&desired, d, Some("10"));
        versions.observed(&config_map("t", Some("10"), "v1"));
        versions.deleted(&config_map("t", Some("10"), "v1"));
        assert!(!versions.holds(&desired, d));

        versions.confirm(&desired, d, Some("12"));
        versions.observed(&config_map("t", Some("12"), "v1"));
        let role = Role {
            metadata: ObjectMeta {
                name: Some("t".to_owned()),
                namespace: Some("airflow".to_owned()),
                resource_version: Some("13".to_owned()),
                ..ObjectMeta::default()
            },
            ..Role::default()
        };
        versions.confirm(&role, 1, Some("13"));
        versions.observed(&role);
        versions.relisting::<ConfigMap>();
        assert!(
            !versions.holds(&desired, d),
            "config maps are read again after a relist"
        );
        assert!(versions.holds(&role, 1), "other kinds are kept");
        assert_eq!(versions.len(), 1);
    }
}
