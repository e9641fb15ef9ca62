//! The admission webhook for pods: pure decisions (`decide`) behind a thin HTTPS layer
//! (`server`, `tls`), the glue that audits them (`handler`), and the webhook configurations
//! that point the API server at it (`registration`).

pub mod access;
pub mod decide;
pub mod decision_pool;
mod denial_count;
mod denial_events;
pub mod handler;
pub mod managed_certs;
pub mod reason;
pub mod registration;
pub mod resource_cache;
pub mod resource_index;
pub mod server;
pub mod tls;
mod token_check;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Recorder, Reporter};
use kube::{Api, Client};

use crate::admin::Readiness;
use crate::metrics::Metrics;
use crate::names::FIELD_MANAGER;

/// How the webhook is served.
#[derive(Clone, Debug)]
pub struct WebhookSettings {
    pub addr: SocketAddr,
    /// Holds `tls.crt` and `tls.key`; reloaded when they change.
    pub cert_dir: PathBuf,
    pub reload_interval: Duration,
    /// Only identities of this namespace are known (all when `None`).
    pub namespace: Option<String>,
    /// Name of this replica in Events.
    pub instance: String,
    /// When set, the API server must present a client certificate signed by one of these CAs.
    pub client_ca: Option<crate::token::CaBundle>,
}

/// Binds the HTTPS server (failing at once without a usable certificate), starts the caches of
/// identities and shares and returns the bound address and the serving task. Readiness waits
/// for the caches.
pub async fn start(
    client: Client,
    settings: WebhookSettings,
    metrics: Metrics,
    readiness: Readiness,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let server = server::WebhookServer::bind(
        settings.addr,
        &settings.cert_dir,
        settings.reload_interval,
        settings.client_ca.as_ref(),
    )
    .await?;
    let addr = server.local_addr();
    let resources = resource_cache::ResourceCache::start(client.clone(), settings.namespace.as_deref(), &metrics);
    let cache = resources.clone();
    tokio::spawn(async move {
        if cache.synced().await {
            readiness.set_ready();
        }
    });
    let reporter = Reporter {
        controller: "winflow-webhook".to_owned(),
        instance: Some(settings.instance),
    };
    let denial_counts = Arc::new(denial_count::DenialCounts::default());
    tokio::spawn(denial_counts.clone().run(client.clone()));
    let webhook = Arc::new(handler::PodWebhook {
        client: client.clone(),
        resources,
        access: access::AccessReviewer::new(client.clone()),
        decisions: decision_pool::DecisionPool::default(),
        metrics,
        recorder: Recorder::new(client, reporter),
        denial_events: denial_events::DenialEvents::default(),
        denial_counts,
    });
    tracing::info!(%addr, "admission webhook listening");
    Ok((addr, tokio::spawn(server.run(webhook, shutdown))))
}

/// Applies both webhook configurations (local runs; a chart renders them in a cluster).
pub async fn register(client: Client, registration: &registration::Registration) -> Result<(), kube::Error> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mutating = registration::mutating_configuration(registration);
    let validating = registration::validating_configuration(registration);
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .patch(&registration.name, &params, &Patch::Apply(&mutating))
        .await?;
    Api::<ValidatingWebhookConfiguration>::all(client)
        .patch(&registration.name, &params, &Patch::Apply(&validating))
        .await?;
    Ok(())
}
