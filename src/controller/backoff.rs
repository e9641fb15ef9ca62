//! Retry delays: per object after failed reconciliations, and for the controllers' watches
//! after the API server failed them. Both double, are capped, and reset on success.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

const FIRST: Duration = Duration::from_secs(2);
const MAX: Duration = Duration::from_secs(300);

#[derive(Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    /// Records a failure of `key` and returns how long to wait before the next attempt.
    pub fn failed(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().expect("backoff lock");
        let count = failures.entry(key.to_owned()).or_default();
        let delay = FIRST.saturating_mul(2u32.saturating_pow(*count)).min(MAX);
        *count = count.saturating_add(1);
        delay
    }

    pub fn succeeded(&self, key: &str) {
        self.failures.lock().expect("backoff lock").remove(key);
    }
}

const WATCH_FIRST: Duration = Duration::from_millis(250);
const WATCH_MAX: Duration = Duration::from_secs(5);

/// Delays before a failed watch is retried: 250 ms doubling to 5 s, reset once it works again.
/// kube-runtime's default grows to 30 s plus as much jitter, long after a short outage is
/// over; a retry every 5 s is a negligible load on an API server that is down.
#[derive(Clone, Debug)]
pub struct WatchBackoff {
    next: Duration,
}

impl Default for WatchBackoff {
    fn default() -> Self {
        Self { next: WATCH_FIRST }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.next;
        self.next = (delay * 2).min(WATCH_MAX);
        Some(delay)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = WATCH_FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_retries_double_to_five_seconds_and_reset() {
        use kube::runtime::utils::Backoff as _;
        let mut backoff = WatchBackoff::default();
        let delays: Vec<u128> = backoff.by_ref().take(7).map(|d| d.as_millis()).collect();
        assert_eq!(delays, [250, 500, 1000, 2000, 4000, 5000, 5000]);
        backoff.reset();
        assert_eq!(backoff.next(), Some(Duration::from_millis(250)));
    }

    #[test]
    fn doubles_caps_and_resets() {
        let backoff = Backoff::default();
        let delays: Vec<u64> = (0..10).map(|_| backoff.failed("a").as_secs()).collect();
        assert_eq!(delays, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(backoff.failed("b").as_secs(), 2);
        backoff.succeeded("a");
        assert_eq!(backoff.failed("a").as_secs(), 2);
    }
}
