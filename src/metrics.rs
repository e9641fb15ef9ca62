//! Prometheus metrics. Labels never carry secrets or tokens.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::cluster::watch_health::WatchHealth;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    pub controller: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    pub kind: String,
    pub verb: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdmissionLabels {
    pub webhook: &'static str,
    pub decision: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefreshLabels {
    /// `success` or the failure reason (`ProviderUnavailable`, `InvalidClient`, ...).
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IdentityLabels {
    pub namespace: String,
    pub identity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    pub webhook: &'static str,
}

/// One watch: who reads it (`identity`, `share`, `webhook`: several watch the same kind) and
/// the kind it watches.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WatchLabels {
    pub watcher: &'static str,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WatchFailureLabels {
    pub watcher: &'static str,
    pub kind: String,
    /// `Forbidden`, `Unauthorized`, `NotFound`, `Unreachable`, or the API server's reason.
    pub reason: String,
}

/// The operator's metrics, shared by controllers, the webhook and the admin server. They
/// also carry the health of the watches, which the admin server reports on `/readyz`: one
/// handle reaches every watch, including those of each leader term's fresh controllers.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    reconciles: Family<ReconcileLabels, Counter>,
    reconcile_duration: Family<ControllerLabels, Histogram>,
    api_writes: Family<WriteLabels, Counter>,
    admission_decisions: Family<AdmissionLabels, Counter>,
    admission_duration: Family<WebhookLabels, Histogram>,
    token_refreshes: Family<RefreshLabels, Counter>,
    token_expiry: Family<IdentityLabels, Gauge>,
    exposed_pods: Family<IdentityLabels, Gauge>,
    leader: Gauge,
    watch_failures: Family<WatchFailureLabels, Counter>,
    watch_failing_since: Family<WatchLabels, Gauge>,
    watch_health: WatchHealth,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut root = Registry::default();
        // process_* are standard names, without winflow's prefix.
        root.register_collector(Box::new(crate::process_metrics::ProcessCollector));
        let registry = root.sub_registry_with_prefix("winflow");
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciliations by controller and result",
            reconciles.clone(),
        );
        let reconcile_duration = Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 12))
        });
        registry.register(
            "reconcile_duration_seconds",
            "Duration of reconciliations",
            reconcile_duration.clone(),
        );
        let api_writes = Family::<WriteLabels, Counter>::default();
        registry.register(
            "api_writes",
            "Writes to the Kubernetes API by kind and verb",
            api_writes.clone(),
        );
        let admission_decisions = Family::<AdmissionLabels, Counter>::default();
        registry.register(
            "admission_decisions",
            "Admission decisions by webhook, decision and reason",
            admission_decisions.clone(),
        );
        let admission_duration = Family::<WebhookLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.0, 14))
        });
        registry.register(
            "admission_duration_seconds",
            "Time to decide an admission review",
            admission_duration.clone(),
        );
        let token_refreshes = Family::<RefreshLabels, Counter>::default();
        registry.register(
            "token_refreshes",
            "OIDC token refresh attempts by result",
            token_refreshes.clone(),
        );
        let token_expiry = Family::<IdentityLabels, Gauge>::default();
        registry.register(
            "token_expiry_timestamp_seconds",
            "When each identity's current OIDC token expires (Unix time)",
            token_expiry.clone(),
        );
        let exposed_pods = Family::<IdentityLabels, Gauge>::default();
        registry.register(
            "identity_exposed_pods",
            "Pods that name a credential of the identity they may not reach (status.exposure)",
            exposed_pods.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader lease and reconciles, 0 otherwise",
            leader.clone(),
        );
        let watch_failures = Family::<WatchFailureLabels, Counter>::default();
        registry.register(
            "watch_failures",
            "Failed list and watch requests of the operator's watches, by watcher, kind and reason",
            watch_failures.clone(),
        );
        let watch_failing_since = Family::<WatchLabels, Gauge>::default();
        registry.register(
            "watch_failing_since_timestamp_seconds",
            "Since when each failing watch has been failing (Unix time); no series while it works",
            watch_failing_since.clone(),
        );
        Self {
            registry: Arc::new(root),
            reconciles,
            reconcile_duration,
            api_writes,
            admission_decisions,
            admission_duration,
            token_refreshes,
            token_expiry,
            exposed_pods,
            leader,
            watch_failures,
            watch_failing_since,
            watch_health: WatchHealth::default(),
        }
    }
}

impl Metrics {
    /// Starts timing a reconciliation; the result is recorded when the guard is finished.
    pub fn reconcile_started(&self, controller: &'static str) -> ReconcileTimer {
        ReconcileTimer {
            metrics: self.clone(),
            controller,
            start: Instant::now(),
        }
    }

    pub(crate) fn api_write(&self, kind: &str, verb: &'static str) {
        self.api_writes
            .get_or_create(&WriteLabels {
                kind: kind.to_owned(),
                verb,
            })
            .inc();
    }

    /// One admission decision and how long it took.
    pub fn admission_decided(&self, webhook: &'static str, allowed: bool, reason: &'static str, took: Duration) {
        let decision = if allowed { "allowed" } else { "denied" };
        self.admission_decisions
            .get_or_create(&AdmissionLabels {
                webhook,
                decision,
                reason,
            })
            .inc();
        self.admission_duration
            .get_or_create(&WebhookLabels { webhook })
            .observe(took.as_secs_f64());
    }

    /// One token refresh attempt: `success` or the failure reason.
    pub fn token_refreshed(&self, result: &str) {
        self.token_refreshes
            .get_or_create(&RefreshLabels {
                result: result.to_owned(),
            })
            .inc();
    }

    /// The expiry of an identity's current token; `None` removes the series.
    pub fn token_expiry(&self, namespace: &str, identity: &str, expires_at: Option<i64>) {
        let labels = IdentityLabels {
            namespace: namespace.to_owned(),
            identity: identity.to_owned(),
        };
        match expires_at {
            Some(at) => {
                self.token_expiry.get_or_create(&labels).set(at);
            }
            None => {
                self.token_expiry.remove(&labels);
            }
        }
    }

    /// How many pods expose an identity's credentials; `None` removes the series (the identity
    /// is gone, or winflow cannot tell).
    pub fn exposed_pods(&self, namespace: &str, identity: &str, pods: Option<i64>) {
        let labels = IdentityLabels {
            namespace: namespace.to_owned(),
            identity: identity.to_owned(),
        };
        match pods {
            Some(count) => {
                self.exposed_pods.get_or_create(&labels).set(count);
            }
            None => {
                self.exposed_pods.remove(&labels);
            }
        }
    }

    /// Whether this replica leads (and reconciles).
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// One failed request of a watch.
    pub(crate) fn watch_failed(&self, watch: &WatchLabels, reason: &str) {
        self.watch_failures
            .get_or_create(&WatchFailureLabels {
                watcher: watch.watcher,
                kind: watch.kind.clone(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Since when (Unix time) a watch has been failing; `None` removes the series.
    pub(crate) fn watch_failing_since(&self, watch: &WatchLabels, since: Option<i64>) {
        match since {
            Some(at) => {
                self.watch_failing_since.get_or_create(watch).set(at);
            }
            None => {
                self.watch_failing_since.remove(watch);
            }
        }
    }

    /// Which watches fail now, for `/readyz`.
    pub(crate) fn watch_health(&self) -> &WatchHealth {
        &self.watch_health
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// Records the duration and result of one reconciliation.
pub struct ReconcileTimer {
    metrics: Metrics,
    controller: &'static str,
    start: Instant,
}

impl ReconcileTimer {
    pub fn finish(self, result: &'static str) {
        let controller = self.controller;
        self.metrics
            .reconcile_duration
            .get_or_create(&ControllerLabels { controller })
            .observe(self.start.elapsed().as_secs_f64());
        self.metrics
            .reconciles
            .get_or_create(&ReconcileLabels { controller, result })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_reconciles_are_exposed() {
        let metrics = Metrics::default();
        metrics.api_write("ConfigMap", "apply");
        metrics.api_write("ConfigMap", "apply");
        metrics.reconcile_started("identity").finish("success");
        metrics.admission_decided("validate", false, "DagNotAllowed", Duration::from_millis(1));
        let text = metrics.encode();
        assert!(
            text.contains(r#"winflow_api_writes_total{kind="ConfigMap",verb="apply"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"winflow_reconciles_total{controller="identity",result="success"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("winflow_reconcile_duration_seconds_count{controller=\"identity\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn token_refreshes_and_expiries_are_exposed_and_expiries_removed() {
        let metrics = Metrics::default();
        metrics.token_refreshed("success");
        metrics.token_refreshed("ProviderUnavailable");
        metrics.token_expiry("airflow", "payroll-export", Some(1_800_000_000));
        let text = metrics.encode();
        assert!(
            text.contains(r#"winflow_token_refreshes_total{result="ProviderUnavailable"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"winflow_token_expiry_timestamp_seconds{namespace="airflow",identity="payroll-export"} 1800000000"#
            ),
            "{text}"
        );
        assert!(text.contains("\nprocess_resident_memory_bytes "), "{text}");
        assert!(text.contains("\nprocess_cpu_seconds_total "), "{text}");
        metrics.token_expiry("airflow", "payroll-export", None);
        assert!(!metrics.encode().contains("payroll-export"));
        metrics.exposed_pods("airflow", "payroll-export", Some(2));
        assert!(
            metrics
                .encode()
                .contains(r#"winflow_identity_exposed_pods{namespace="airflow",identity="payroll-export"} 2"#)
        );
        metrics.exposed_pods("airflow", "payroll-export", None);
        assert!(!metrics.encode().contains("payroll-export"));
    }
}
