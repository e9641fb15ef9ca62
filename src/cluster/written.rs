//! The status winflow last wrote to each object, kept until the watch cache shows it. A
//! reconcile that starts just after a status write still reads the old status from the
//! cache; compared against that, it would write the same status again and repeat the
//! Events of its transitions.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a written status is trusted over the cache. The cache catches up within moments;
/// an entry this old means someone else (another replica, after a leader change) wrote
/// since, and the cache is the better guess.
pub(crate) const TRUSTED_FOR: Duration = Duration::from_secs(30);

pub(crate) struct WrittenStatus<S> {
    trusted_for: Duration,
    entries: Mutex<HashMap<String, Written<S>>>,
}

struct Written<S> {
    uid: String,
    status: S,
    at: Instant,
}

impl<S: Clone + PartialEq> Default for WrittenStatus<S> {
    fn default() -> Self {
        Self::new(TRUSTED_FOR)
    }
}

impl<S: Clone + PartialEq> WrittenStatus<S> {
    pub(crate) fn new(trusted_for: Duration) -> Self {
        Self {
            trusted_for,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The status the object holds: the one winflow wrote last while the cache has not shown
    /// it yet, else the cached one. `uid` tells a recreated object from the one written to.
    pub(crate) fn current(&self, key: &str, uid: &str, cached: &S) -> S {
        let mut entries = self.entries.lock().expect("written-status lock");
        match entries.get(key) {
            Some(w) if w.uid == uid && w.status != *cached && w.at.elapsed() < self.trusted_for => w.status.clone(),
            Some(_) => {
                // The cache caught up (or the entry is moot): it is the truth again.
                entries.remove(key);
                cached.clone()
            }
            None => cached.clone(),
        }
    }

    pub(crate) fn remember(&self, key: &str, uid: &str, status: S) {
        let written = Written {
            uid: uid.to_owned(),
            status,
            at: Instant::now(),
        };
        self.entries
            .lock()
            .expect("written-status lock")
            .insert(key.to_owned(), written);
    }

    pub(crate) fn forget(&self, key: &str) {
        self.entries.lock().expect("written-status lock").remove(key);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.lock().expect("written-status lock").len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_cache_is_overruled_by_the_status_just_written() {
        let written = WrittenStatus::default();
        written.remember("ns/a", "uid-1", "Ready");
        assert_eq!(written.current("ns/a", "uid-1", &"Pending"), "Ready");
        assert_eq!(written.len(), 1);
    }

    #[test]
    fn once_the_cache_shows_it_the_entry_is_dropped() {
        let written = WrittenStatus::default();
        written.remember("ns/a", "uid-1", "Ready");
        assert_eq!(written.current("ns/a", "uid-1", &"Ready"), "Ready");
        assert!(written.is_empty());
        // From now on the cache alone answers.
        assert_eq!(written.current("ns/a", "uid-1", &"Pending"), "Pending");
    }

    #[test]
    fn a_recreated_object_is_not_confused_with_the_old_one() {
        let written = WrittenStatus::default();
        written.remember("ns/a", "uid-1", "Ready");
        assert_eq!(written.current("ns/a", "uid-2", &""), "");
        assert!(written.is_empty());
    }

    #[test]
    fn old_entries_are_not_trusted() {
        let written = WrittenStatus::new(Duration::ZERO);
        written.remember("ns/a", "uid-1", "Ready");
        assert_eq!(written.current("ns/a", "uid-1", &"Pending"), "Pending");
        assert!(written.is_empty());
    }

    #[test]
    fn forgotten_objects_answer_from_the_cache() {
        let written = WrittenStatus::default();
        written.remember("ns/a", "uid-1", "Ready");
        written.forget("ns/a");
        assert_eq!(written.current("ns/a", "uid-1", &"Pending"), "Pending");
    }
}
