//! Controllers: each watches one kind and keeps its children and status current.

mod backoff;
pub mod identity;
pub mod share;
pub mod status;

use std::time::Duration;

use kube::runtime::events::{Recorder, Reporter};
use kube::{Client, Resource};

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
    /// OIDC provider access (request slots, deadlines) and token refresh retries.
    pub token: crate::token::TokenConfig,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            namespace: None,
            resync_period: Duration::from_secs(300),
            retry_period: Duration::from_secs(30),
            concurrency: 4,
            instance: "winflow".to_owned(),
            token: crate::token::TokenConfig::default(),
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
    /// Identity children known to hold what winflow wants, kept by their watches; the token
    /// issuer writes token Secrets through it too.
    pub(crate) child_versions: std::sync::Arc<crate::cluster::child_versions::ChildVersions>,
    /// Identity statuses written and not yet seen in the cache.
    pub(crate) written_status: crate::cluster::written::WrittenStatus<crate::api::WindowsTaskIdentityStatus>,
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
            child_versions: Default::default(),
            written_status: crate::cluster::written::WrittenStatus::default(),
        }
    }
}

/// What the namespace cache holds of each namespace.
pub type Namespaces = kube::core::PartialObjectMeta<k8s_openapi::api::core::v1::Namespace>;

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

/// The parts of readiness the controllers report.
pub const READINESS_PARTS: usize = 2;

/// Runs every controller until `shutdown` completes; each reports one part of `readiness`
/// once it is watching.
pub async fn run_all(
    ctx: std::sync::Arc<Context>,
    readiness: crate::admin::Readiness,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let shutdown = futures::FutureExt::shared(Box::pin(shutdown));
    tokio::join!(
        identity::run(ctx.clone(), readiness.clone(), shutdown.clone()),
        share::run(ctx, readiness, shutdown),
    );
}

/// `namespace/name` of a watched object, whether or not it decoded.
pub(crate) fn guarded_key<K: Resource>(guard: &kube::core::DeserializeGuard<K>) -> String {
    let meta = match &guard.0 {
        Ok(object) => object.meta(),
        Err(invalid) => &invalid.metadata,
    };
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}

/// Runs one reconciliation, recording its duration and result, and forgets the object's
/// backoff when it succeeds.
pub(crate) async fn measured<K: Resource>(
    controller: &'static str,
    guard: &kube::core::DeserializeGuard<K>,
    ctx: &Context,
    work: impl std::future::Future<Output = Result<kube::runtime::controller::Action, Error>>,
) -> Result<kube::runtime::controller::Action, Error> {
    let timer = ctx.metrics.reconcile_started(controller);
    let result = work.await;
    timer.finish(match &result {
        Ok(_) => "success",
        Err(e) => e.metric_label(),
    });
    if result.is_ok() {
        ctx.backoff.succeeded(&format!("{controller}:{}", guarded_key(guard)));
    }
    result
}

/// The error policy of every controller: a warning and a per-object, capped, doubling delay.
pub(crate) fn retry_with_backoff<K: Resource>(
    controller: &'static str,
    guard: &kube::core::DeserializeGuard<K>,
    error: &Error,
    ctx: &Context,
) -> kube::runtime::controller::Action {
    let key = guarded_key(guard);
    let delay = ctx.backoff.failed(&format!("{controller}:{key}"));
    tracing::warn!(controller, object = %key, error = %error, retry_in_seconds = delay.as_secs(), "reconcile failed");
    kube::runtime::controller::Action::requeue(delay)
}
