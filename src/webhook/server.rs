//! The HTTPS endpoint the API server calls: it checks the HTTP envelope and the AdmissionReview,
//! and leaves every admission decision to an [`AdmissionHandler`].

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, FailedToBufferBody};
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use futures::future::BoxFuture;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionReview};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use super::tls::ReloadingCertificate;
use crate::token::CaBundle;

use kube::core::admission::AdmissionResponse;

/// Largest AdmissionReview read; the API server sends one object (and its old version) per review.
const MAX_BODY: usize = 4 * 1024 * 1024;
/// A client that has not finished the TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection that sends no complete request head for this long is closed (this includes idle keep-alive).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long in-flight requests may take to finish once shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Pause after a failed accept (for instance out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Sent with every answer given before the whole body was read: hyper closes such a connection
/// (the next request would start behind the unread body), so say it, or a keep-alive client
/// sends its next request into a closed connection.
const CLOSE: (header::HeaderName, &str) = (header::CONNECTION, "close");

/// Which endpoint a review came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReviewKind {
    Mutate,
    Validate,
    /// Ephemeral containers added to any pod: Kubernetes before 1.22 sends them without the
    /// pod's labels, so no object selector can pick out an identity's pods.
    ValidateEphemeral,
    /// Pods outside enforcement namespaces that carry gMSA fields, without the identity
    /// label: a node retrieves a gMSA for any pod, so the gMSA rules hold cluster-wide.
    ValidateGmsa,
    /// exec, attach and port-forward (operation CONNECT): the object is the options, without
    /// the pod's labels.
    ValidateConnect,
    /// Workloads (Deployments, Jobs, ...) in enforcement namespaces whose pod template runs as
    /// a creator's service account.
    ValidateWorkload,
}

/// The (group, resource) pairs an endpoint takes.
const WORKLOADS: &[(&str, &str)] = &[
    ("apps", "deployments"),
    ("apps", "replicasets"),
    ("apps", "statefulsets"),
    ("apps", "daemonsets"),
    ("batch", "jobs"),
    ("batch", "cronjobs"),
    ("", "replicationcontrollers"),
];

/// The resources (group, resource) and subresources whose reviews an endpoint takes.
fn reviewed(kind: ReviewKind) -> (&'static [(&'static str, &'static str)], &'static [&'static str]) {
    match kind {
        ReviewKind::ValidateConnect => (&[("", "pods")], &["exec", "attach", "portforward"]),
        ReviewKind::ValidateWorkload => (WORKLOADS, &[""]),
        // Ephemeral containers are added through their own subresource; no other subresource.
        _ => (&[("", "pods")], &["", "ephemeralcontainers"]),
    }
}

/// The decisions (winflow's webhook::handler implements it). Asynchronous: a decision may
/// need the API server's word on who the requester is allowed to be.
pub trait AdmissionHandler: Send + Sync + 'static {
    fn review<'a>(
        &'a self,
        kind: ReviewKind,
        request: &'a AdmissionRequest<DynamicObject>,
    ) -> BoxFuture<'a, AdmissionResponse>;
}

/// A bound, not yet serving, admission webhook endpoint.
pub struct WebhookServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    acceptor: TlsAcceptor,
    _watcher: AbortOnDrop,
}

/// Stops the certificate watcher together with the server.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl WebhookServer {
    /// Binds and loads the certificate (fails clearly when it cannot); starts the reload watcher.
    /// With `client_cas`, only clients with a certificate signed by one of them get past the
    /// TLS handshake.
    pub async fn bind(
        addr: SocketAddr,
        cert_dir: &Path,
        reload_interval: Duration,
        client_cas: Option<&CaBundle>,
    ) -> io::Result<Self> {
        let certificate = ReloadingCertificate::load(cert_dir)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("webhook certificate: {e}")))?;
        let config = certificate
            .server_config(client_cas)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        let local_addr = listener.local_addr()?;
        Ok(Self {
            listener,
            local_addr,
            acceptor: TlsAcceptor::from(config),
            _watcher: AbortOnDrop(certificate.watch(reload_interval)),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` completes (then stops accepting and lets in-flight requests finish,
    /// bounded to a few seconds).
    pub async fn run(self, handler: Arc<dyn AdmissionHandler>, shutdown: impl Future<Output = ()> + Send + 'static) {
        let app = router(handler);
        let (stop, stopping) = watch::channel(false);
        let mut connections = JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        // Small request/response exchanges: without this, Nagle's algorithm and
                        // delayed ACKs can hold a reply for tens of milliseconds.
                        let _ = tcp.set_nodelay(true);
                        let acceptor = self.acceptor.clone();
                        connections.spawn(serve_connection(tcp, peer, acceptor, app.clone(), stopping.clone()));
                    }
                    Err(error) => {
                        warn!(%error, "cannot accept a webhook connection");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                },
                Some(finished) = connections.join_next(), if !connections.is_empty() => {
                    if let Err(error) = finished {
                        warn!(%error, "a webhook connection task failed");
                    }
                }
            }
        }

        drop(self.listener);
        let _ = stop.send(true);
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(
                open = connections.len(),
                "webhook connections still open after the shutdown grace period; closing them"
            );
            connections.shutdown().await;
        }
        info!("stopped serving admission reviews");
    }
}

/// One client connection: TLS, then HTTP/1.1 until the client leaves or shutdown starts.
/// Whatever goes wrong here ends this connection only.
async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    app: Router,
    mut stopping: watch::Receiver<bool>,
) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            debug!(%peer, %error, "webhook TLS handshake failed");
            return;
        }
        Err(_) => {
            debug!(%peer, "webhook TLS handshake timed out");
            return;
        }
    };
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    let connection = http.serve_connection(TokioIo::new(tls), TowerToHyperService::new(app));
    let mut connection = std::pin::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = async { let _ = stopping.wait_for(|&stop| stop).await; } => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        debug!(%peer, %error, "webhook connection ended with an error");
    }
}

/// The endpoints, one per kind of review; registration.rs and the chart point at these paths.
const ENDPOINTS: [(&str, ReviewKind); 6] = [
    ("/mutate-pods", ReviewKind::Mutate),
    ("/validate-pods", ReviewKind::Validate),
    ("/validate-ephemeral-containers", ReviewKind::ValidateEphemeral),
    ("/validate-gmsa", ReviewKind::ValidateGmsa),
    ("/validate-connect", ReviewKind::ValidateConnect),
    ("/validate-workloads", ReviewKind::ValidateWorkload),
];

fn router(handler: Arc<dyn AdmissionHandler>) -> Router {
    ENDPOINTS
        .into_iter()
        .fold(Router::new(), |router, (path, kind)| {
            router.route(
                path,
                any(move |state: State<Arc<dyn AdmissionHandler>>, request: Request| review(state, kind, request)),
            )
        })
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(handler)
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [CLOSE],
        format!(
            "not found: admission reviews go to POST one of {}\n",
            ENDPOINTS.map(|(path, _)| path).join(", ")
        ),
    )
        .into_response()
}

/// Checks the envelope cheapest first, reading the body only once the headers are acceptable.
async fn review(State(handler): State<Arc<dyn AdmissionHandler>>, kind: ReviewKind, request: Request) -> Response {
    if request.method() != Method::POST {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "POST"), CLOSE],
            "method not allowed: admission reviews are sent with POST\n",
        )
            .into_response();
    }
    if !is_json(request.headers()) {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            [CLOSE],
            "unsupported content type: an AdmissionReview is sent as application/json\n",
        )
            .into_response();
    }
    if declared_length(request.headers()).is_some_and(|length| length > MAX_BODY as u64) {
        return too_large();
    }
    let body = match Bytes::from_request(request, &()).await {
        Ok(body) => body,
        Err(BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_))) => return too_large(),
        Err(rejection) => {
            debug!(%rejection, "cannot read an admission review");
            return rejection.into_response();
        }
    };
    let request = match parse(&body, kind) {
        Ok(request) => request,
        Err(problem) => {
            debug!(%problem, "rejected an admission review");
            return (StatusCode::BAD_REQUEST, format!("{problem}\n")).into_response();
        }
    };

    let review = handler.review(kind, &request).await.into_review();
    match serde_json::to_vec(&review) {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], Body::from(json)).into_response(),
        Err(error) => {
            warn!(%error, uid = %request.uid, "cannot serialize an admission response");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot serialize the admission response\n",
            )
                .into_response()
        }
    }
}

fn too_large() -> Response {
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        [CLOSE],
        format!("request body too large: an AdmissionReview may be at most {MAX_BODY} bytes\n"),
    )
        .into_response()
}

/// `application/json`, with or without parameters such as `charset=utf-8`.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media_type| media_type.trim().eq_ignore_ascii_case("application/json"))
}

/// A declared Content-Length lets an oversized body be refused before any of it is read.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// An `admission.k8s.io/v1` AdmissionReview with a request about core pods (or one of the
/// subresources the endpoint reviews).
fn parse(body: &[u8], kind: ReviewKind) -> Result<AdmissionRequest<DynamicObject>, String> {
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_slice(body).map_err(|e| format!("body is not an AdmissionReview: {e}"))?;
    if review.types.api_version != "admission.k8s.io/v1" || review.types.kind != "AdmissionReview" {
        return Err(format!(
            "expected apiVersion admission.k8s.io/v1 and kind AdmissionReview, got apiVersion {:?} and kind {:?}",
            review.types.api_version, review.types.kind
        ));
    }
    let request: AdmissionRequest<DynamicObject> = review
        .try_into()
        .map_err(|_| "the AdmissionReview has no request".to_owned())?;
    let resource = &request.resource;
    let sub_resource = request.sub_resource.as_deref().unwrap_or_default();
    let (resources, subresources) = reviewed(kind);
    let taken = resources
        .iter()
        .any(|(group, name)| resource.group == *group && resource.resource == *name);
    if !taken || !subresources.contains(&sub_resource) {
        let what = if kind == ReviewKind::ValidateWorkload {
            "workloads"
        } else {
            "pods"
        };
        return Err(format!(
            "only {what} are reviewed here ((group, resource) one of {resources:?}, subresource one of {subresources:?}); \
             got group {:?}, resource {:?}, subresource {:?}",
            resource.group, resource.resource, sub_resource
        ));
    }
    Ok(request)
}

#[cfg(test)]
mod test_harness;
#[cfg(test)]
mod tests;
