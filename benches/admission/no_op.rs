//! A validating webhook that allows every pod at once, on winflow's own HTTPS server: a pod it
//! reviews shows what one webhook call costs the API server when the webhook itself costs
//! nothing (the part of the pod-create ratio no webhook can avoid).

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use kube::api::{Patch, PatchParams};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse};
use kube::{Api, ResourceExt};
use serde_json::json;
use tokio::sync::oneshot;
use winflow::webhook::server::{AdmissionHandler, ReviewKind, WebhookServer};

use crate::support::TestEnv;

/// The label that sends a pod to this webhook.
pub const LABEL: &str = "bench.winflow.io/no-op-webhook";

struct AllowAll {
    reviews: Arc<AtomicUsize>,
}

impl AdmissionHandler for AllowAll {
    fn review<'a>(
        &'a self,
        _: ReviewKind,
        request: &'a AdmissionRequest<DynamicObject>,
    ) -> BoxFuture<'a, AdmissionResponse> {
        self.reviews.fetch_add(1, Ordering::Relaxed);
        Box::pin(std::future::ready(AdmissionResponse::from(request)))
    }
}

/// The served and registered webhook; dropping it stops the server.
pub struct NoOpWebhook {
    /// Reviews answered so far.
    pub reviews: Arc<AtomicUsize>,
    _certs: tempfile::TempDir,
    _stop: oneshot::Sender<()>,
}

/// Serves the webhook and registers it for pods labelled [`LABEL`] in the test's namespace
/// (which `support::webhook::start_webhook` labelled `winflow-test: <namespace>`).
pub async fn start(env: &TestEnv) -> NoOpWebhook {
    let certs = tempfile::tempdir().unwrap();
    let ca = crate::support::webhook::write_certificates(certs.path());
    let server = WebhookServer::bind(
        (Ipv4Addr::LOCALHOST, 0).into(),
        certs.path(),
        Duration::from_secs(60),
        None,
    )
    .await
    .expect("the no-op webhook binds");
    let addr = server.local_addr();
    let reviews = Arc::new(AtomicUsize::new(0));
    let (stop, stopped) = oneshot::channel::<()>();
    let handler = Arc::new(AllowAll {
        reviews: reviews.clone(),
    });
    tokio::spawn(server.run(handler, async move {
        let _ = stopped.await;
    }));
    let mut configuration: ValidatingWebhookConfiguration = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": format!("bench-no-op-{}", env.namespace)},
        "webhooks": [{
            "name": "no-op.bench.winflow.io",
            "clientConfig": {"url": format!("https://{addr}/validate-pods")},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            "objectSelector": {"matchLabels": {LABEL: "true"}},
            "namespaceSelector": {"matchLabels": {"winflow-test": env.namespace}},
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "failurePolicy": "Fail",
            "timeoutSeconds": 10
        }]
    }))
    .expect("a valid webhook configuration");
    for webhook in configuration.webhooks.iter_mut().flatten() {
        webhook.client_config.ca_bundle = Some(ByteString(ca.clone().into_bytes()));
    }
    let api: Api<ValidatingWebhookConfiguration> = Api::all(env.client.clone());
    let params = PatchParams::apply("winflow-bench").force();
    api.patch(&configuration.name_any(), &params, &Patch::Apply(&configuration))
        .await
        .expect("the no-op webhook registers");
    NoOpWebhook {
        reviews,
        _certs: certs,
        _stop: stop,
    }
}
