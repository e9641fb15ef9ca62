//! How often a denial becomes an Event. Every denial is counted (metrics) and logged (the
//! audit line); an Event is for people reading `kubectl describe`, and a DAG retrying a
//! denied task, or a flood of bad requests, would otherwise write one per pod. One Event per
//! identity and rule per window tells the story; the next one says how many were not shown.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most one denial Event per identity and rule in this window.
pub(super) const WINDOW: Duration = Duration::from_secs(30);

/// Entries kept before old ones are pruned: a bound on memory whatever names requests carry.
const PRUNE_ABOVE: usize = 1024;

pub struct DenialEvents {
    window: Duration,
    recent: Mutex<HashMap<Key, Recent>>,
}

type Key = (String, String, &'static str);

struct Recent {
    recorded_at: Instant,
    held_back: u64,
}

impl Default for DenialEvents {
    fn default() -> Self {
        Self::new(WINDOW)
    }
}

impl DenialEvents {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            recent: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a denial of `identity` (in `namespace`) by rule `reason` gets an Event now.
    /// `Some(n)`: yes, and `n` denials of the same kind were held back since the last one.
    pub fn admit(&self, namespace: &str, identity: &str, reason: &'static str, now: Instant) -> Option<u64> {
        let mut recent = self.recent.lock().expect("denial-events lock");
        let key = (namespace.to_owned(), identity.to_owned(), reason);
        if let Some(entry) = recent.get_mut(&key)
            && now.duration_since(entry.recorded_at) < self.window
        {
            entry.held_back += 1;
            return None;
        }
        if recent.len() >= PRUNE_ABOVE {
            let window = self.window;
            recent.retain(|_, r| now.duration_since(r.recorded_at) < window);
        }
        let held_back = recent.insert(
            key,
            Recent {
                recorded_at: now,
                held_back: 0,
            },
        );
        Some(held_back.map_or(0, |r| r.held_back))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_event_per_identity_and_rule_per_window() {
        let events = DenialEvents::new(Duration::from_secs(30));
        let start = Instant::now();
        assert_eq!(events.admit("airflow", "payroll", "DagNotAllowed", start), Some(0));
        for i in 1..=5 {
            let at = start + Duration::from_secs(i);
            assert_eq!(events.admit("airflow", "payroll", "DagNotAllowed", at), None);
        }
        // Other rules and identities have windows of their own.
        assert_eq!(events.admit("airflow", "payroll", "Privileged", start), Some(0));
        assert_eq!(events.admit("airflow", "reports", "DagNotAllowed", start), Some(0));
        // After the window, the next Event tells how many were held back.
        let later = start + Duration::from_secs(30);
        assert_eq!(events.admit("airflow", "payroll", "DagNotAllowed", later), Some(5));
        assert_eq!(events.admit("airflow", "payroll", "DagNotAllowed", later), None);
    }

    #[test]
    fn memory_stays_bounded_whatever_names_arrive() {
        let events = DenialEvents::new(Duration::from_secs(30));
        let start = Instant::now();
        for i in 0..PRUNE_ABOVE {
            events.admit("ns", &format!("identity-{i}"), "UnknownIdentity", start);
        }
        let later = start + Duration::from_secs(31);
        assert_eq!(events.admit("ns", "another", "UnknownIdentity", later), Some(0));
        assert_eq!(events.recent.lock().unwrap().len(), 1, "expired entries were pruned");
    }
}
