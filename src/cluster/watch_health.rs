//! Which of the operator's watches fail, since when and why. A watch says so in the log when
//! it starts failing, when its reason changes and when it recovers (with a reminder while it
//! keeps failing), never once per retry; it counts every failure and its start in the
//! metrics; and `/readyz` lists the watches failing now.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use kube::Resource;
use kube::core::Status;
use kube::runtime::watcher;

use crate::metrics::{Metrics, WatchLabels};
use crate::text::human_duration;

/// How often a watch that keeps failing the same way says so again.
const REMIND_EVERY: Duration = Duration::from_secs(300);

/// Who reads a watch's events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Watcher {
    Identity,
    /// The identity controller's watch of every unfinished pod, for pods that expose
    /// identities (apart from its watch of task pods, so that each says which one fails).
    Exposure,
    Share,
    Webhook,
}

impl Watcher {
    /// The `watcher` label of the watch metrics.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Watcher::Identity => "identity",
            Watcher::Exposure => "exposure",
            Watcher::Share => "share",
            Watcher::Webhook => "webhook",
        }
    }
}

impl fmt::Display for Watcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Watcher::Identity => "identity controller",
            Watcher::Exposure => "identity controller, pods that may expose identities",
            Watcher::Share => "share controller",
            Watcher::Webhook => "webhook",
        })
    }
}

/// One watch: who reads it, and what it watches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Watch {
    pub watcher: Watcher,
    pub kind: String,
    /// As RBAC names it: `pods`, `windowsshares.winflow.io`.
    pub resource: String,
    /// The watched namespace; `None` for all (or a cluster-scoped kind).
    pub namespace: Option<String>,
}

impl Watch {
    pub(crate) fn of<K: Resource<DynamicType = ()>>(watcher: Watcher, namespace: Option<&str>) -> Self {
        let (group, plural) = (K::group(&()), K::plural(&()));
        Self {
            watcher,
            kind: K::kind(&()).into_owned(),
            resource: match group.as_ref() {
                "" => plural.into_owned(),
                group => format!("{plural}.{group}"),
            },
            namespace: namespace.map(str::to_owned),
        }
    }

    fn labels(&self) -> WatchLabels {
        WatchLabels {
            watcher: self.watcher.label(),
            kind: self.kind.clone(),
        }
    }
}

impl fmt::Display for Watch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(namespace) => write!(f, "{} in namespace {namespace} ({})", self.resource, self.watcher),
            None => write!(f, "{} ({})", self.resource, self.watcher),
        }
    }
}

/// Why a watch fails, in words an operator can act on; never the contents of an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Cause {
    /// Short and from a small set (the metric label): `Forbidden`, `Unreachable`, ...
    pub reason: String,
    pub detail: String,
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

impl Cause {
    fn new(reason: &str, detail: impl Into<String>) -> Self {
        Self {
            reason: reason.to_owned(),
            detail: detail.into(),
        }
    }

    pub(crate) fn of(error: &watcher::Error, resource: &str) -> Self {
        let (verb, error) = match error {
            watcher::Error::InitialListFailed(e) => ("list", e),
            watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e) => ("watch", e),
            watcher::Error::WatchError(status) => return Self::of_status("watch", status, resource),
            watcher::Error::NoResourceVersion => {
                let detail = format!("the API server's list of {resource} has no resourceVersion to watch from");
                return Self::new("NoResourceVersion", detail);
            }
        };
        match error {
            kube::Error::Api(status) => Self::of_status(verb, status, resource),
            kube::Error::SerdeError(_) => Self::new(
                "Undecodable",
                format!("the API server's answer to the {verb} of {resource} could not be decoded"),
            ),
            kube::Error::Auth(_) => Self::new(
                "CredentialsUnavailable",
                "the operator's credentials for the API server could not be loaded",
            ),
            _ => Self::new(
                "Unreachable",
                "the API server could not be reached, or the connection to it broke",
            ),
        }
    }

    fn of_status(verb: &str, status: &Status, resource: &str) -> Self {
        match status.code {
            403 => Self::new("Forbidden", format!("the operator's RBAC lacks {verb} on {resource}")),
            401 => Self::new(
                "Unauthorized",
                "the API server does not accept the operator's credentials",
            ),
            404 => Self::new(
                "NotFound",
                format!("the API server does not serve {resource} (is its CRD installed?)"),
            ),
            code => {
                let reason = match status.reason.as_str() {
                    "" => format!("Status{code}"),
                    reason => reason.to_owned(),
                };
                let detail = format!("the API server answered the {verb} of {resource} with {code}");
                Self { reason, detail }
            }
        }
    }
}

/// A failing watch as `/readyz` reports it.
#[derive(Clone, Debug)]
pub(crate) struct FailingWatch {
    pub watch: Arc<Watch>,
    pub since: Instant,
    pub cause: Cause,
}

impl FailingWatch {
    /// `watch pods in namespace airflow (identity controller) failing for 42s: Forbidden: ...`
    pub(crate) fn describe(&self, now: Instant) -> String {
        let failing_for = human_duration(now.saturating_duration_since(self.since));
        format!("watch {} failing for {failing_for}: {}", self.watch, self.cause)
    }
}

/// The watches failing now, shared by every part that watches and by the admin server.
#[derive(Clone, Default)]
pub(crate) struct WatchHealth {
    failing: Arc<Mutex<BTreeMap<u64, FailingWatch>>>,
    next_id: Arc<AtomicU64>,
}

impl WatchHealth {
    /// The failing watches, longest failing first.
    pub(crate) fn failing(&self) -> Vec<FailingWatch> {
        let mut failing: Vec<_> = self.lock().values().cloned().collect();
        failing.sort_by_key(|f| f.since);
        failing
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, FailingWatch>> {
        self.failing.lock().expect("watch health lock")
    }
}

/// What a failure of a watch is worth saying.
#[derive(Debug, PartialEq, Eq)]
enum Change {
    Started,
    Reason { was: Cause },
    Reminder,
    Nothing,
}

/// One watch's state: since when and why it fails, if it does.
#[derive(Debug, Default)]
struct State {
    failing: Option<Failure>,
}

#[derive(Debug)]
struct Failure {
    since: Instant,
    cause: Cause,
    /// When the log last said so.
    said: Instant,
}

impl State {
    fn failed(&mut self, cause: Cause, now: Instant) -> Change {
        let Some(failure) = &mut self.failing else {
            self.failing = Some(Failure {
                since: now,
                cause,
                said: now,
            });
            return Change::Started;
        };
        if failure.cause != cause {
            failure.said = now;
            return Change::Reason {
                was: std::mem::replace(&mut failure.cause, cause),
            };
        }
        if now.saturating_duration_since(failure.said) >= REMIND_EVERY {
            failure.said = now;
            return Change::Reminder;
        }
        Change::Nothing
    }

    /// The failure that ended, if the watch was failing.
    fn succeeded(&mut self) -> Option<Failure> {
        self.failing.take()
    }
}

/// Follows one watch's results: logs changes, counts failures and keeps `WatchHealth`
/// current. Dropped with its watch, which then no longer counts as failing.
pub(crate) struct WatchTracker {
    watch: Arc<Watch>,
    id: u64,
    state: State,
    metrics: Metrics,
}

impl WatchTracker {
    pub(crate) fn new(watch: Watch, metrics: &Metrics) -> Self {
        Self {
            watch: Arc::new(watch),
            id: metrics.watch_health().next_id.fetch_add(1, Ordering::Relaxed),
            state: State::default(),
            metrics: metrics.clone(),
        }
    }

    /// One failed request; `retry_in` is the backoff before the next.
    pub(crate) fn failed(&mut self, error: &watcher::Error, retry_in: Duration) {
        let now = Instant::now();
        let cause = Cause::of(error, &self.watch.resource);
        let labels = self.watch.labels();
        self.metrics.watch_failed(&labels, &cause.reason);
        let change = self.state.failed(cause.clone(), now);
        let since = self.state.failing.as_ref().map_or(now, |f| f.since);
        // Set on every failure: idempotent, and right again at once if a watch of the same
        // labels (a previous leader term's) removed the series when it ended.
        self.metrics
            .watch_failing_since(&labels, Some(unix_seconds(since, now)));
        let failing = FailingWatch {
            watch: self.watch.clone(),
            since,
            cause: cause.clone(),
        };
        self.metrics.watch_health().lock().insert(self.id, failing);
        let watch = &self.watch;
        let (watcher, kind, namespace) = (watch.watcher.label(), &watch.kind, watch.namespace.as_deref());
        let (reason, retry_in_ms) = (&cause.reason, retry_in.as_millis() as u64);
        let failing_for = || human_duration(now.saturating_duration_since(since));
        match change {
            Change::Started => tracing::warn!(
                watcher, %kind, namespace, %reason, %error, retry_in_ms,
                "watch of {watch} failing: {cause}"
            ),
            Change::Reason { was } => tracing::warn!(
                watcher, %kind, namespace, %reason, %error, retry_in_ms,
                "watch of {watch} still failing after {}, now with {cause} (was {was})", failing_for()
            ),
            Change::Reminder => tracing::warn!(
                watcher, %kind, namespace, %reason, %error, retry_in_ms,
                "watch of {watch} still failing after {}: {cause}", failing_for()
            ),
            Change::Nothing => {
                tracing::debug!(watcher, %kind, namespace, %reason, %error, retry_in_ms, "watch failed")
            }
        }
    }

    /// An event arrived: the watch works (again).
    pub(crate) fn succeeded(&mut self) {
        let Some(failure) = self.state.succeeded() else {
            return;
        };
        self.forget();
        let watch = &self.watch;
        let (watcher, kind, namespace) = (watch.watcher.label(), &watch.kind, watch.namespace.as_deref());
        let after = human_duration(failure.since.elapsed());
        let cause = failure.cause;
        tracing::warn!(watcher, %kind, namespace, "watch of {watch} recovered after {after} (it failed with {cause})");
    }

    fn forget(&self) {
        self.metrics.watch_failing_since(&self.watch.labels(), None);
        self.metrics.watch_health().lock().remove(&self.id);
    }
}

impl Drop for WatchTracker {
    fn drop(&mut self) {
        if self.state.failing.is_some() {
            self.forget();
        }
    }
}

/// `at` as Unix time in seconds, given that it is `now` on the monotonic clock.
fn unix_seconds(at: Instant, now: Instant) -> i64 {
    let unix_now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    unix_now.saturating_sub(now.saturating_duration_since(at)).as_secs() as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;

    fn forbidden(verb_error: fn(kube::Error) -> watcher::Error) -> watcher::Error {
        let status = Status::failure(
            "pods is forbidden: User \"system:serviceaccount:x:winflow\"",
            "Forbidden",
        )
        .with_code(403);
        verb_error(kube::Error::Api(Box::new(status)))
    }

    #[test]
    fn causes_name_what_to_fix() {
        let resource = Watch::of::<Pod>(Watcher::Identity, None).resource;
        let list = Cause::of(&forbidden(watcher::Error::InitialListFailed), &resource);
        assert_eq!(list.to_string(), "Forbidden: the operator's RBAC lacks list on pods");
        let watch = Cause::of(&forbidden(watcher::Error::WatchStartFailed), &resource);
        assert_eq!(watch.to_string(), "Forbidden: the operator's RBAC lacks watch on pods");
        let shares = Watch::of::<crate::api::WindowsShare>(Watcher::Webhook, Some("airflow"));
        let missing = Status::failure("the server could not find the requested resource", "NotFound").with_code(404);
        let missing = watcher::Error::InitialListFailed(kube::Error::Api(Box::new(missing)));
        assert_eq!(
            Cause::of(&missing, &shares.resource).to_string(),
            "NotFound: the API server does not serve windowsshares.winflow.io (is its CRD installed?)"
        );
        assert_eq!(
            shares.to_string(),
            "windowsshares.winflow.io in namespace airflow (webhook)"
        );
        let throttled = Status::failure("slow down", "TooManyRequests").with_code(429);
        let throttled = Cause::of(&watcher::Error::WatchError(Box::new(throttled)), &resource);
        assert_eq!(throttled.reason, "TooManyRequests");
        assert!(!throttled.detail.contains("slow down"), "no message text in a reason");
    }

    #[test]
    fn a_watch_says_when_it_starts_failing_and_changes_reason_and_is_reminded_not_on_every_retry() {
        let mut state = State::default();
        let start = Instant::now();
        let forbidden = Cause::new("Forbidden", "the operator's RBAC lacks list on pods");
        let unreachable = Cause::new("Unreachable", "the API server could not be reached");
        assert_eq!(state.failed(forbidden.clone(), start), Change::Started);
        for retry in 1..10 {
            let at = start + Duration::from_secs(5 * retry);
            assert_eq!(state.failed(forbidden.clone(), at), Change::Nothing, "retry {retry}");
        }
        assert_eq!(state.failed(forbidden.clone(), start + REMIND_EVERY), Change::Reminder);
        assert_eq!(
            state.failed(forbidden.clone(), start + REMIND_EVERY + Duration::from_secs(5)),
            Change::Nothing
        );
        let later = start + REMIND_EVERY + Duration::from_secs(10);
        assert_eq!(
            state.failed(unreachable.clone(), later),
            Change::Reason { was: forbidden }
        );
        let ended = state.succeeded().unwrap();
        assert_eq!(
            (ended.since, ended.cause),
            (start, unreachable),
            "failing since the first failure"
        );
        assert!(state.succeeded().is_none());
    }

    #[test]
    fn a_failing_watch_is_listed_counted_and_forgotten_once_it_recovers_or_ends() {
        let metrics = Metrics::default();
        let mut tracker = WatchTracker::new(Watch::of::<Pod>(Watcher::Identity, Some("airflow")), &metrics);
        tracker.succeeded();
        assert!(metrics.watch_health().failing().is_empty());
        for _ in 0..3 {
            tracker.failed(&forbidden(watcher::Error::InitialListFailed), Duration::from_secs(1));
        }
        let failing = metrics.watch_health().failing();
        assert_eq!(failing.len(), 1);
        assert_eq!(
            failing[0].describe(failing[0].since + Duration::from_secs(42)),
            "watch pods in namespace airflow (identity controller) failing for 42s: \
             Forbidden: the operator's RBAC lacks list on pods"
        );
        let text = metrics.encode();
        assert!(
            text.contains(r#"winflow_watch_failures_total{watcher="identity",kind="Pod",reason="Forbidden"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"winflow_watch_failing_since_timestamp_seconds{watcher="identity",kind="Pod"} "#),
            "{text}"
        );
        tracker.succeeded();
        assert!(metrics.watch_health().failing().is_empty());
        assert!(
            !metrics
                .encode()
                .contains("winflow_watch_failing_since_timestamp_seconds{")
        );

        tracker.failed(&forbidden(watcher::Error::WatchStartFailed), Duration::from_secs(1));
        assert_eq!(metrics.watch_health().failing().len(), 1);
        drop(tracker);
        assert!(metrics.watch_health().failing().is_empty());
        assert!(
            !metrics
                .encode()
                .contains("winflow_watch_failing_since_timestamp_seconds{")
        );
    }
}
