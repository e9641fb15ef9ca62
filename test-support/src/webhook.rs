//! The admission webhook served in-process and registered with the API server, for this
//! test's namespace only (so parallel tests never review each other's pods).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::Api;
use kube::api::{Patch, PatchParams};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use serde_json::json;
use tokio::sync::oneshot;
use winflow::metrics::Metrics;
use winflow::webhook::registration::{self, Endpoint, Registration};
use winflow::webhook::{self, WebhookSettings};

use crate::{TestEnv, wait_until};

/// A CA and a serving certificate for 127.0.0.1 in `dir` (tls.crt, tls.key); returns the CA PEM.
pub fn write_certificates(dir: &std::path::Path) -> String {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "winflow webhook test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec![IpAddr::V4(Ipv4Addr::LOCALHOST).to_string()]).unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    std::fs::write(dir.join("tls.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();
    ca.pem()
}

pub struct Webhook {
    pub addr: SocketAddr,
    /// PEM of the CA the API server trusts for the webhook.
    pub ca_pem: String,
    pub metrics: Metrics,
    _certs: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The webhook served in-process, with its real handler and identity cache.
pub struct Served {
    pub addr: SocketAddr,
    pub metrics: Metrics,
    /// The server's task; it ends once `stop` is sent or dropped.
    pub task: tokio::task::JoinHandle<()>,
    pub stop: oneshot::Sender<()>,
}

/// Serves the webhook on a free loopback port with the certificate in `cert_dir`, for this
/// test's namespace only, and waits until its identity cache is synced. Nothing registers it.
pub async fn serve(env: &TestEnv, cert_dir: &Path, reload_interval: Duration, instance: &str) -> Served {
    serve_as(env, env.config.clone(), cert_dir, reload_interval, instance).await
}

/// [`serve`], talking to the API server through a client made from `config` (for example
/// as winflow's own service account, under exactly its RBAC), its writes counted as the
/// operator counts them.
pub async fn serve_as(
    env: &TestEnv,
    config: kube::Config,
    cert_dir: &Path,
    reload_interval: Duration,
    instance: &str,
) -> Served {
    let settings = WebhookSettings {
        addr: (Ipv4Addr::LOCALHOST, 0).into(),
        cert_dir: cert_dir.to_owned(),
        reload_interval,
        namespace: Some(env.namespace.clone()),
        instance: instance.to_owned(),
        client_ca: None,
    };
    let (metrics, readiness) = (Metrics::default(), winflow::admin::Readiness::expecting(1));
    let (client, _) = super::counted_client(config, &metrics);
    let (stop, stopped) = oneshot::channel::<()>();
    let shutdown = async move {
        let _ = stopped.await;
    };
    let (addr, task) = webhook::start(client, settings, metrics.clone(), readiness.clone(), shutdown)
        .await
        .unwrap();
    wait_until("webhook cache synced", Duration::from_secs(60), || async {
        readiness.is_ready().then_some(())
    })
    .await;
    Served {
        addr,
        metrics,
        task,
        stop,
    }
}

/// Serves the webhook on a free loopback port and registers it for this test's namespace only.
pub async fn start_webhook(env: &TestEnv) -> Webhook {
    start_webhook_as(env, env.config.clone()).await
}

/// [`start_webhook`], the webhook talking to the API server through a client made from
/// `config`.
pub async fn start_webhook_as(env: &TestEnv, config: kube::Config) -> Webhook {
    let certs = tempfile::tempdir().unwrap();
    let ca = write_certificates(certs.path());
    let Served {
        addr, metrics, stop, ..
    } = serve_as(env, config, certs.path(), Duration::from_secs(1), "test").await;

    // Scope the configurations to this namespace, so parallel tests do not see each other.
    let namespaces: Api<Namespace> = Api::all(env.client.clone());
    let label = json!({"metadata": {"labels": {"winflow-test": env.namespace}}});
    namespaces
        .patch(&env.namespace, &PatchParams::default(), &Patch::Merge(&label))
        .await
        .unwrap();
    let registration = Registration {
        name: format!("winflow-{}", env.namespace),
        endpoint: Endpoint::Url(format!("https://{addr}")),
        ca_bundle: ca.clone().into_bytes(),
        failure_policy: "Fail".to_owned(),
        namespace_selector: Some(LabelSelector {
            match_labels: Some([("winflow-test".to_owned(), env.namespace.clone())].into()),
            match_expressions: None,
        }),
        match_conditions: registration::supports_match_conditions(&env.client).await.unwrap(),
    };
    webhook::register(env.client.clone(), &registration).await.unwrap();
    Webhook {
        addr,
        ca_pem: ca,
        metrics,
        _certs: certs,
        stop: Some(stop),
    }
}
