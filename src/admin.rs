//! The admin server: `/metrics` (Prometheus text), `/livez`, `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::cluster::watch_health::{FailingWatch, Watcher};
use crate::metrics::Metrics;

/// Readiness: the number of parts (controller caches, the webhook's cache) still filling;
/// ready at zero, until shutdown starts.
#[derive(Clone)]
pub struct Readiness {
    filling: Arc<AtomicUsize>,
    shutting_down: Arc<AtomicBool>,
}

impl Readiness {
    /// Not ready until `parts` parts have reported ready.
    pub fn expecting(parts: usize) -> Self {
        Self {
            filling: Arc::new(AtomicUsize::new(parts)),
            shutting_down: Arc::new(AtomicBool::new(false)),
        }
    }
    /// One part is ready.
    pub fn set_ready(&self) {
        let _ = self
            .filling
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }
    /// Not ready from now on: the replica is going away and should get no new traffic.
    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }
    pub fn is_ready(&self) -> bool {
        self.filling.load(Ordering::SeqCst) == 0 && !self.is_shutting_down()
    }
    fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
struct AdminState {
    metrics: Metrics,
    readiness: Readiness,
}

pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    readiness: Readiness,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(AdminState { metrics, readiness });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "admin server listening");
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

async fn metrics_text(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    let failing = state.metrics.watch_health().failing();
    readiness_answer(&state.readiness, &failing, Instant::now())
}

/// How long the webhook's caches may fail to follow the API server before the replica is not
/// ready: longer than the watches take to come back after an API server restart (the outage
/// plus at most one 5 s retry; while the API server is down it calls no webhook anyway).
const WEBHOOK_CACHES_STALE_AFTER: Duration = Duration::from_secs(30);

/// `/readyz`: the first line says whether the replica takes traffic, every failing watch
/// follows on a line of its own, even while ready.
///
/// Readiness gates the webhook Service's endpoints, so it means "admission decisions are
/// right here". The webhook decides from its own caches of identities and shares: while one
/// of them has been failing for long, this replica decides from a view that no longer follows
/// the cluster (revoked rights still allowed, new identities unknown), and traffic should go to
/// replicas whose caches work; if none do, admission fails closed, as `failurePolicy: Fail`
/// wants for a webhook that cannot decide. The controllers' watches (task pods, Secrets,
/// children, namespaces) feed no decision: one failing (say, RBAC lost `list pods`) must not
/// take the webhook out of service for every identity, so it is reported here and stays 200.
/// `/livez` stays ok either way: a restart fixes neither RBAC nor the API server.
fn readiness_answer(readiness: &Readiness, failing: &[FailingWatch], now: Instant) -> (StatusCode, String) {
    let stale = failing.iter().any(|f| {
        f.watch.watcher == Watcher::Webhook && now.saturating_duration_since(f.since) >= WEBHOOK_CACHES_STALE_AFTER
    });
    if readiness.is_shutting_down() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down".to_owned());
    }
    let (status, summary) = if !readiness.is_ready() {
        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced")
    } else if stale {
        (StatusCode::SERVICE_UNAVAILABLE, "webhook caches stale")
    } else {
        (StatusCode::OK, "ok")
    };
    let lines = failing.iter().map(|f| f.describe(now));
    let body = std::iter::once(summary.to_owned())
        .chain(lines)
        .collect::<Vec<_>>()
        .join("\n");
    (status, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_once_every_part_is_and_never_again_after_shutdown_starts() {
        let readiness = Readiness::expecting(2);
        readiness.set_ready();
        assert!(!readiness.is_ready());
        readiness.set_ready();
        assert!(readiness.is_ready());
        readiness.set_shutting_down();
        assert!(!readiness.is_ready());
        readiness.set_ready();
        assert!(!readiness.is_ready());
    }

    fn failing(watcher: Watcher, since: Instant) -> FailingWatch {
        use crate::cluster::watch_health::{Cause, Watch};
        let watch = match watcher {
            Watcher::Webhook => Watch::of::<crate::api::WindowsShare>(watcher, Some("airflow")),
            _ => Watch::of::<k8s_openapi::api::core::v1::Pod>(watcher, Some("airflow")),
        };
        let cause = Cause {
            reason: "Forbidden".to_owned(),
            detail: format!("the operator's RBAC lacks list on {}", watch.resource),
        };
        FailingWatch {
            watch: Arc::new(watch),
            since,
            cause,
        }
    }

    #[test]
    fn a_failing_controller_watch_is_reported_while_ready() {
        let readiness = Readiness::expecting(0);
        let since = Instant::now();
        let now = since + Duration::from_secs(3600);
        assert_eq!(
            readiness_answer(&readiness, &[], now),
            (StatusCode::OK, "ok".to_owned())
        );
        let pods = failing(Watcher::Identity, since);
        assert_eq!(
            readiness_answer(&readiness, &[pods], now),
            (
                StatusCode::OK,
                "ok\nwatch pods in namespace airflow (identity controller) failing for 1h: \
                 Forbidden: the operator's RBAC lacks list on pods"
                    .to_owned()
            )
        );
    }

    #[test]
    fn the_webhooks_caches_failing_for_long_make_the_replica_not_ready() {
        let readiness = Readiness::expecting(0);
        // Instants from now on: the monotonic clock may not reach back a minute.
        let now = Instant::now() + Duration::from_secs(60);
        let shares = |failing_for: u64| failing(Watcher::Webhook, now - Duration::from_secs(failing_for));
        let (status, body) = readiness_answer(&readiness, &[shares(29)], now);
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, body) = readiness_answer(&readiness, &[shares(30)], now);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body,
            "webhook caches stale\nwatch windowsshares.winflow.io in namespace airflow (webhook) failing for 30s: \
             Forbidden: the operator's RBAC lacks list on windowsshares.winflow.io"
        );
        // Never synced: the failing watch says why.
        let filling = Readiness::expecting(1);
        let (status, body) = readiness_answer(&filling, &[shares(2)], now);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            body.starts_with("caches not synced\nwatch windowsshares.winflow.io"),
            "{body}"
        );
        assert_eq!(
            readiness_answer(&Readiness::expecting(1), &[], now),
            (StatusCode::SERVICE_UNAVAILABLE, "caches not synced".to_owned())
        );
        readiness.set_shutting_down();
        assert_eq!(
            readiness_answer(&readiness, &[shares(60)], now),
            (StatusCode::SERVICE_UNAVAILABLE, "shutting down".to_owned())
        );
    }
}
