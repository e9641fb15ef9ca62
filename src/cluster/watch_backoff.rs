//! Retry delays for watches the API server failed: doubling, capped, reset on success.

use std::time::Duration;

const WATCH_FIRST: Duration = Duration::from_millis(250);
const WATCH_MAX: Duration = Duration::from_secs(5);

/// Delays before a failed watch is retried: 250 ms doubling to 5 s, reset once it works again.
/// kube-runtime's default grows to 30 s plus as much jitter, long after a short outage is
/// over; a retry every 5 s is a negligible load on an API server that is down.
#[derive(Clone, Debug)]
pub(super) struct WatchBackoff {
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
}
