//! Controllers: each watches one kind and keeps its children and status current.

pub mod apply;
mod backoff;
pub mod identity;
pub mod status;

use std::time::Duration;

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};

use crate::metrics::Metrics;

/// Settings shared by the controllers.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// Watch only this namespace; all namespaces when `None`.
    pub namespace: Option<String>,
    /// How often a converged resource is looked at again (reads only, no writes).
    pub resync_period: Duration,
    /// How soon a resource waiting on something outside winflow (a conflicting object, a
    /// missing service account) is looked at again.
    pub retry_period: Duration,
    /// Resources reconciled in parallel.
    pub concurrency: u16,
    /// Name written as the reporting controller of Events.
    pub instance: String,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            namespace: None,
            resync_period: Duration::from_secs(300),
            retry_period: Duration::from_secs(30),
            concurrency: 4,
            instance: "winflow".to_owned(),
        }
    }
}

/// What every reconciliation needs.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub config: ControllerConfig,
    pub backoff: backoff::Backoff,
}

impl Context {
    pub fn new(client: Client, metrics: Metrics, config: ControllerConfig) -> Self {
        let reporter = Reporter {
            controller: "winflow".to_owned(),
            instance: Some(config.instance.clone()),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            config,
            backoff: backoff::Backoff::default(),
        }
    }
}

/// Errors that end a reconciliation early; it is retried with backoff. Their `metric_label`
/// is the `result` of the reconcile metric.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "api_error",
        }
    }
}

/// Runs every controller until `shutdown` completes; `readiness` turns ready once they are
/// watching.
pub async fn run_all(
    ctx: std::sync::Arc<Context>,
    readiness: crate::admin::Readiness,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    identity::run(ctx, readiness, shutdown).await;
}
