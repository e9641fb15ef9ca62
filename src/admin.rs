//! The admin server: `/metrics` (Prometheus text), `/livez`, `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

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
    if state.readiness.is_ready() {
        (StatusCode::OK, "ok")
    } else if state.readiness.is_shutting_down() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced")
    }
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
}
