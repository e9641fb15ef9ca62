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
    pub async fn bind(addr: SocketAddr, cert_dir: &Path, reload_interval: Duration) -> io::Result<Self> {
        let certificate = ReloadingCertificate::load(cert_dir)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("webhook certificate: {e}")))?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        let local_addr = listener.local_addr()?;
        Ok(Self {
            listener,
            local_addr,
            acceptor: TlsAcceptor::from(certificate.server_config()),
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

fn router(handler: Arc<dyn AdmissionHandler>) -> Router {
    Router::new()
        .route(
            "/mutate-pods",
            any(|state: State<Arc<dyn AdmissionHandler>>, request: Request| review(state, ReviewKind::Mutate, request)),
        )
        .route(
            "/validate-pods",
            any(|state: State<Arc<dyn AdmissionHandler>>, request: Request| {
                review(state, ReviewKind::Validate, request)
            }),
        )
        .route(
            "/validate-ephemeral-containers",
            any(|state: State<Arc<dyn AdmissionHandler>>, request: Request| {
                review(state, ReviewKind::ValidateEphemeral, request)
            }),
        )
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(handler)
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [CLOSE],
        "not found: admission reviews go to POST /mutate-pods, /validate-pods or /validate-ephemeral-containers\n",
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
    let request = match parse(&body) {
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

/// An `admission.k8s.io/v1` AdmissionReview with a request about core pods.
fn parse(body: &[u8]) -> Result<AdmissionRequest<DynamicObject>, String> {
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
    // Ephemeral containers are added through their own subresource; no other subresource.
    if !resource.group.is_empty() || resource.resource != "pods" || !["", "ephemeralcontainers"].contains(&sub_resource)
    {
        return Err(format!(
            "only pods are reviewed (group \"\", resource \"pods\", no subresource or ephemeralcontainers); \
             got group {:?}, resource {:?}, subresource {:?}",
            resource.group, resource.resource, sub_resource
        ));
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SerialNumber};
    use rustls::client::Resumption;
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, RootCertStore};
    use serde_json::{Value, json};
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::Mutex;
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::oneshot;
    use tokio_rustls::TlsConnector;

    const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    /// A test CA and the server certificates it issues for 127.0.0.1.
    struct Pki {
        ca: CertifiedIssuer<'static, KeyPair>,
    }

    struct ServerPair {
        cert_pem: String,
        key_pem: String,
        der: Vec<u8>,
    }

    impl Pki {
        fn new() -> Self {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, "winflow test CA");
            Self {
                ca: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
            }
        }

        fn issue(&self, serial: u64) -> ServerPair {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(vec![LOCALHOST.to_string()]).unwrap();
            params.serial_number = Some(SerialNumber::from(serial));
            let cert = params.signed_by(&key, &self.ca).unwrap();
            ServerPair {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
                der: cert.der().to_vec(),
            }
        }

        fn connector(&self) -> TlsConnector {
            let mut roots = RootCertStore::empty();
            roots.add(self.ca.der().clone()).unwrap();
            let mut config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            // Every connection runs a full handshake, so it shows the certificate being served.
            config.resumption = Resumption::disabled();
            TlsConnector::from(Arc::new(config))
        }
    }

    /// Installs a pair the way a rotation does: each file written under a temporary name and
    /// renamed into place, key first, so a reader may briefly see the new key with the old certificate.
    fn install(dir: &Path, pair: &ServerPair) {
        for (name, contents) in [("tls.key", &pair.key_pem), ("tls.crt", &pair.cert_pem)] {
            let tmp = dir.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, contents).unwrap();
            std::fs::rename(&tmp, dir.join(name)).unwrap();
        }
    }

    /// Records which endpoints were called and allows everything.
    #[derive(Default)]
    struct Recorder {
        kinds: Mutex<Vec<ReviewKind>>,
    }

    impl AdmissionHandler for Recorder {
        fn review<'a>(
            &'a self,
            kind: ReviewKind,
            request: &'a AdmissionRequest<DynamicObject>,
        ) -> BoxFuture<'a, AdmissionResponse> {
            self.kinds.lock().unwrap().push(kind);
            Box::pin(std::future::ready(AdmissionResponse::from(request)))
        }
    }

    struct Running {
        addr: SocketAddr,
        recorder: Arc<Recorder>,
        stop: oneshot::Sender<()>,
        task: JoinHandle<()>,
    }

    async fn start(dir: &Path, reload_interval: Duration) -> Running {
        let server = WebhookServer::bind((LOCALHOST, 0).into(), dir, reload_interval)
            .await
            .unwrap();
        let addr = server.local_addr();
        let recorder = Arc::new(Recorder::default());
        let (stop, stopped) = oneshot::channel();
        let handler: Arc<dyn AdmissionHandler> = recorder.clone();
        let task = tokio::spawn(server.run(handler, async {
            let _ = stopped.await;
        }));
        Running {
            addr,
            recorder,
            stop,
            task,
        }
    }

    /// A running server with a fresh CA and certificate in a temporary directory.
    async fn serve() -> (Running, Pki, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new();
        install(dir.path(), &pki.issue(1));
        let running = start(dir.path(), Duration::from_secs(60)).await;
        (running, pki, dir)
    }

    #[derive(Debug)]
    struct Reply {
        status: u16,
        content_type: String,
        body: String,
        peer_cert: Vec<u8>,
    }

    /// One request on a new TLS connection; the request is written while the reply is read,
    /// so a server that answers before reading a large body is seen answering.
    async fn send(addr: SocketAddr, connector: &TlsConnector, request: &[u8]) -> io::Result<Reply> {
        let tcp = TcpStream::connect(addr).await?;
        let tls = connector.connect(ServerName::IpAddress(LOCALHOST.into()), tcp).await?;
        let peer_cert = tls.get_ref().1.peer_certificates().expect("a server certificate")[0].to_vec();
        let (mut reader, mut writer) = tokio::io::split(tls);
        let mut raw = Vec::new();
        let (_, read) = tokio::join!(
            async {
                // The server may close once it has answered; the answer is what counts.
                let _ = writer.write_all(request).await;
            },
            reader.read_to_end(&mut raw)
        );
        read?;
        let raw = String::from_utf8_lossy(&raw);
        let (head, body) = raw
            .split_once("\r\n\r\n")
            .ok_or_else(|| io::Error::other(format!("no HTTP response: {raw:?}")))?;
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("no status line: {head:?}")))?;
        let content_type = head
            .lines()
            .find_map(|line| {
                line.to_ascii_lowercase()
                    .strip_prefix("content-type: ")
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        Ok(Reply {
            status,
            content_type,
            body: body.to_owned(),
            peer_cert,
        })
    }

    fn request(method: &str, path: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
        let mut raw = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        raw.extend_from_slice(body);
        raw
    }

    /// A body sent in chunks with no declared length, so only the limit while reading can stop it.
    fn chunked_request(path: &str, body: &[u8]) -> Vec<u8> {
        let mut raw = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        .into_bytes();
        for chunk in body.chunks(64 * 1024) {
            raw.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            raw.extend_from_slice(chunk);
            raw.extend_from_slice(b"\r\n");
        }
        raw.extend_from_slice(b"0\r\n\r\n");
        raw
    }

    fn review_of(uid: &str, group: &str, version: &str, kind: &str, resource: &str, object: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": uid,
                "kind": {"group": group, "version": version, "kind": kind},
                "resource": {"group": group, "version": version, "resource": resource},
                "operation": "CREATE",
                "userInfo": {},
                "namespace": "airflow",
                "object": object,
            }
        }))
        .unwrap()
    }

    fn pod_review(uid: &str) -> Vec<u8> {
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "task", "namespace": "airflow"},
            "spec": {"containers": [{"name": "base", "image": "mcr.microsoft.com/windows/servercore:ltsc2022"}]},
        });
        review_of(uid, "", "v1", "Pod", "pods", pod)
    }

    fn good_request(uid: &str) -> Vec<u8> {
        request("POST", "/validate-pods", "application/json", &pod_review(uid))
    }

    async fn assert_good(addr: SocketAddr, connector: &TlsConnector, uid: &str) -> Reply {
        let reply = send(addr, connector, &good_request(uid)).await.unwrap();
        assert_eq!(reply.status, 200, "{reply:?}");
        let review: Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(review["response"]["uid"], uid, "{reply:?}");
        reply
    }

    #[tokio::test]
    async fn a_pod_review_reaches_the_handler_and_is_answered() {
        let (running, pki, _dir) = serve().await;
        let connector = pki.connector();

        for (path, uid) in [("/mutate-pods", "mutate-1"), ("/validate-pods", "validate-1")] {
            let json_utf8 = "application/json; charset=utf-8";
            let reply = send(
                running.addr,
                &connector,
                &request("POST", path, json_utf8, &pod_review(uid)),
            )
            .await
            .unwrap();
            assert_eq!(reply.status, 200, "{reply:?}");
            assert_eq!(reply.content_type, "application/json");
            let review: Value = serde_json::from_str(&reply.body).unwrap();
            assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
            assert_eq!(review["kind"], "AdmissionReview");
            assert_eq!(review["response"]["uid"], uid);
            assert_eq!(review["response"]["allowed"], true);
        }
        assert_eq!(
            *running.recorder.kinds.lock().unwrap(),
            [ReviewKind::Mutate, ReviewKind::Validate]
        );
    }

    #[tokio::test]
    async fn bad_requests_are_refused_with_the_reason_and_the_server_keeps_serving() {
        let (running, pki, _dir) = serve().await;
        let connector = pki.connector();
        let huge = vec![b' '; 5 * 1024 * 1024];
        let config_map = review_of(
            "cm",
            "",
            "v1",
            "ConfigMap",
            "configmaps",
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}),
        );
        let pod_metrics = review_of(
            "metrics",
            "metrics.k8s.io",
            "v1beta1",
            "PodMetrics",
            "pods",
            json!({"apiVersion": "metrics.k8s.io/v1beta1", "kind": "PodMetrics", "metadata": {"name": "p"}}),
        );
        let mut pod_status: Value = serde_json::from_slice(&pod_review("status")).unwrap();
        pod_status["request"]["subResource"] = json!("status");
        let mut old_version: Value = serde_json::from_slice(&pod_review("v1beta1")).unwrap();
        old_version["apiVersion"] = json!("admission.k8s.io/v1beta1");
        let no_request = br#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}"#;

        let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
            (
                "wrong content type",
                request("POST", "/mutate-pods", "text/plain", &pod_review("t")),
                415,
                "application/json",
            ),
            (
                "no content type",
                b"POST /mutate-pods HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}".to_vec(),
                415,
                "application/json",
            ),
            (
                "declared 5 MiB body",
                request("POST", "/mutate-pods", "application/json", &huge),
                413,
                "at most 4194304 bytes",
            ),
            (
                "chunked 5 MiB body",
                chunked_request("/validate-pods", &huge),
                413,
                "at most 4194304 bytes",
            ),
            (
                "garbage",
                request("POST", "/validate-pods", "application/json", b"not json"),
                400,
                "not an AdmissionReview",
            ),
            (
                "review without a request",
                request("POST", "/validate-pods", "application/json", no_request),
                400,
                "has no request",
            ),
            (
                "v1beta1 review",
                request(
                    "POST",
                    "/validate-pods",
                    "application/json",
                    &serde_json::to_vec(&old_version).unwrap(),
                ),
                400,
                "admission.k8s.io/v1",
            ),
            (
                "review of a ConfigMap",
                request("POST", "/mutate-pods", "application/json", &config_map),
                400,
                "only pods are reviewed",
            ),
            (
                "review of pods in another group",
                request("POST", "/validate-pods", "application/json", &pod_metrics),
                400,
                "only pods are reviewed",
            ),
            (
                "review of pods/status",
                request(
                    "POST",
                    "/validate-pods",
                    "application/json",
                    &serde_json::to_vec(&pod_status).unwrap(),
                ),
                400,
                "only pods are reviewed",
            ),
            (
                "GET",
                request("GET", "/mutate-pods", "application/json", b""),
                405,
                "POST",
            ),
            (
                "unknown path",
                request("POST", "/mutate-deployments", "application/json", &pod_review("t")),
                404,
                "/mutate-pods",
            ),
        ];
        for (what, raw, status, says) in cases {
            let reply = send(running.addr, &connector, &raw).await.unwrap();
            assert_eq!(reply.status, status, "{what}: {reply:?}");
            assert!(reply.content_type.starts_with("text/plain"), "{what}: {reply:?}");
            assert!(reply.body.contains(says), "{what}: {reply:?}");
        }

        assert_good(running.addr, &connector, "after").await;
        assert_eq!(*running.recorder.kinds.lock().unwrap(), [ReviewKind::Validate]);
    }

    #[tokio::test]
    async fn silent_clients_do_not_block_others() {
        let (running, pki, _dir) = serve().await;
        let connector = pki.connector();

        // One client stops before the TLS handshake, one after it; both stay connected.
        let _before_handshake = TcpStream::connect(running.addr).await.unwrap();
        let tcp = TcpStream::connect(running.addr).await.unwrap();
        let _after_handshake = connector
            .connect(ServerName::IpAddress(LOCALHOST.into()), tcp)
            .await
            .unwrap();

        tokio::time::timeout(
            Duration::from_secs(2),
            assert_good(running.addr, &connector, "meanwhile"),
        )
        .await
        .expect("a good request is answered while silent clients are connected");
    }

    #[tokio::test]
    async fn a_failed_handshake_ends_only_its_connection() {
        let (running, pki, _dir) = serve().await;

        let mut plain = TcpStream::connect(running.addr).await.unwrap();
        plain.write_all(&good_request("plain")).await.unwrap();
        let mut ignored = Vec::new();
        let _ = plain.read_to_end(&mut ignored).await;

        let stranger = Pki::new().connector();
        let tcp = TcpStream::connect(running.addr).await.unwrap();
        let refused = stranger.connect(ServerName::IpAddress(LOCALHOST.into()), tcp).await;
        assert!(refused.is_err(), "a client that trusts another CA must not get through");

        assert_good(running.addr, &pki.connector(), "after").await;
    }

    #[tokio::test]
    async fn certificates_rotate_without_failed_requests() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new();
        let first = pki.issue(1);
        install(dir.path(), &first);
        let running = start(dir.path(), Duration::from_millis(100)).await;
        let connector = pki.connector();

        let generations = Arc::new(Mutex::new(vec![first.der.clone()]));
        let (stop_clients, mut clients_stopped) = watch::channel(false);
        let client = tokio::spawn({
            let (connector, addr) = (connector.clone(), running.addr);
            async move {
                let mut seen = Vec::new();
                let mut failures = Vec::new();
                let mut n = 0;
                while !*clients_stopped.borrow_and_update() {
                    n += 1;
                    let uid = format!("loop-{n}");
                    match send(addr, &connector, &good_request(&uid)).await {
                        Ok(reply) if reply.status == 200 && reply.body.contains(&uid) => seen.push(reply.peer_cert),
                        Ok(reply) => failures.push(format!("{uid}: {reply:?}")),
                        Err(error) => failures.push(format!("{uid}: {error}")),
                    }
                }
                (seen, failures)
            }
        });

        let mut latencies = Vec::new();
        for serial in 2..=11 {
            let next = pki.issue(serial);
            let installed = Instant::now();
            install(dir.path(), &next);
            generations.lock().unwrap().push(next.der.clone());
            loop {
                let reply = assert_good(running.addr, &connector, &format!("probe-{serial}")).await;
                if reply.peer_cert == next.der {
                    break;
                }
                assert!(
                    installed.elapsed() < Duration::from_secs(5),
                    "certificate {serial} is not served"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            latencies.push(installed.elapsed());
            let reply = assert_good(running.addr, &connector, &format!("check-{serial}")).await;
            assert_eq!(reply.peer_cert, next.der, "a new connection after rotation {serial}");
        }

        stop_clients.send(true).unwrap();
        let (seen, failures) = client.await.unwrap();
        assert!(failures.is_empty(), "failed requests: {failures:#?}");
        let generations = generations.lock().unwrap();
        let order: Vec<usize> = seen
            .iter()
            .map(|der| {
                generations
                    .iter()
                    .position(|g| g == der)
                    .expect("a certificate that was installed")
            })
            .collect();
        assert!(
            order.is_sorted(),
            "a connection got an older certificate than an earlier one: {order:?}"
        );
        assert!(seen.len() > 10, "the client loop ran only {} requests", seen.len());
        let slowest = latencies.iter().max().unwrap();
        assert!(*slowest < Duration::from_secs(2), "rotation latencies: {latencies:?}");
    }

    #[tokio::test]
    async fn shutdown_stops_accepting_and_returns() {
        let (running, pki, _dir) = serve().await;
        let connector = pki.connector();
        assert_good(running.addr, &connector, "before").await;

        // An idle connection must not hold the shutdown for the whole grace period.
        let tcp = TcpStream::connect(running.addr).await.unwrap();
        let _idle = connector
            .connect(ServerName::IpAddress(LOCALHOST.into()), tcp)
            .await
            .unwrap();

        running.stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(2), running.task)
            .await
            .expect("run returns soon after shutdown")
            .unwrap();
        assert!(
            TcpStream::connect(running.addr).await.is_err(),
            "the listener is closed"
        );
    }

    #[tokio::test]
    async fn bind_names_the_missing_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let err = WebhookServer::bind((LOCALHOST, 0).into(), dir.path(), Duration::from_secs(1))
            .await
            .err()
            .expect("no certificate, no server");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().starts_with("webhook certificate: TLS file "), "{err}");
        assert!(err.to_string().ends_with("tls.crt is missing"), "{err}");
    }
}
