//! Controllers: each watches one kind and keeps its children and status current.

mod backoff;
mod exposure;
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

/// What the API server failed while a reconciliation ran; it is retried with backoff. The
/// message says which step and which object; `metric_label` is the `result` of the reconcile
/// metric.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("adding or removing winflow's finalizer: {0}")]
    Finalizer(#[source] kube::Error),
    #[error("reading {what}: {source}")]
    Read {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("applying {kind} {name}: {source}")]
    Apply {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting {kind} {name}: {source}")]
    Delete {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("writing the status: {0}")]
    Status(#[source] kube::Error),
    /// The token issuer's API part: the client secret's metadata, an unused token Secret.
    #[error("handing the identity to the token issuer: {0}")]
    Token(#[source] kube::Error),
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Finalizer(_) => "finalizer_error",
            Error::Read { .. } => "read_error",
            Error::Apply { .. } => "apply_error",
            Error::Delete { .. } => "delete_error",
            Error::Status(_) => "status_error",
            Error::Token(_) => "token_error",
        }
    }

    /// The error of reading `what` (a kind and name).
    pub(crate) fn reading(what: impl std::fmt::Display) -> impl FnOnce(kube::Error) -> Error {
        move |source| Error::Read {
            what: what.to_string(),
            source,
        }
    }

    /// The error of applying `child`.
    pub(crate) fn applying<K: Resource<DynamicType = ()>>(child: &K) -> impl FnOnce(kube::Error) -> Error + use<K> {
        let (kind, name) = (K::kind(&()).into_owned(), child.meta().name.clone().unwrap_or_default());
        move |source| Error::Apply { kind, name, source }
    }

    /// The error of deleting `child`.
    pub(crate) fn deleting<K: Resource<DynamicType = ()>>(child: &K) -> impl FnOnce(kube::Error) -> Error + use<K> {
        let (kind, name) = (K::kind(&()).into_owned(), child.meta().name.clone().unwrap_or_default());
        move |source| Error::Delete { kind, name, source }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure("roles.rbac.authorization.k8s.io \"r\" is forbidden", "Forbidden")
                .with_code(403)
                .boxed(),
        )
    }

    #[test]
    fn errors_name_the_step_and_the_object_and_each_step_has_its_own_result() {
        let identity = crate::fixtures::key_vault();
        let role = crate::build::children_for(&identity).unwrap().role;
        let errors = [
            Error::Finalizer(refused()),
            Error::reading("Secret s")(refused()),
            Error::applying(&role)(refused()),
            Error::deleting(&role)(refused()),
            Error::Status(refused()),
            Error::Token(refused()),
        ];
        let labels: std::collections::BTreeSet<&str> = errors.iter().map(Error::metric_label).collect();
        assert_eq!(labels.len(), errors.len(), "{labels:?}");
        assert!(errors[1].to_string().starts_with("reading Secret s: "), "{}", errors[1]);
        let name = role.metadata.name.unwrap();
        assert!(
            errors[2].to_string().starts_with(&format!("applying Role {name}: ")),
            "{}",
            errors[2]
        );
        assert!(
            errors[3].to_string().starts_with(&format!("deleting Role {name}: ")),
            "{}",
            errors[3]
        );
    }
}
