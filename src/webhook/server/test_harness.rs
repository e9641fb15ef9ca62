//! A TLS client and a server under test for the webhook server's tests: a throwaway CA and
//! the certificates it issues for 127.0.0.1, a handler that records which endpoint was
//! called, and raw HTTP/1.1 requests on fresh TLS connections.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SerialNumber,
};
use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio_rustls::TlsConnector;

use super::*;

pub(super) const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A test CA and the server certificates it issues for 127.0.0.1.
pub(super) struct Pki {
    pub(super) ca: CertifiedIssuer<'static, KeyPair>,
}

pub(super) struct ServerPair {
    pub(super) cert_pem: String,
    pub(super) key_pem: String,
    pub(super) der: Vec<u8>,
}

impl Pki {
    pub(super) fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "winflow test CA");
        Self {
            ca: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    pub(super) fn issue(&self, serial: u64) -> ServerPair {
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

    /// A client certificate, as an API server presents to a webhook.
    pub(super) fn issue_client(&self, name: &str) -> ServerPair {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.ca).unwrap();
        ServerPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    /// This CA's certificate, as `--webhook-client-ca` reads it.
    pub(super) fn bundle(&self) -> CaBundle {
        CaBundle::from_pem(self.ca.pem().as_bytes()).unwrap()
    }

    pub(super) fn connector(&self) -> TlsConnector {
        self.connector_presenting(None)
    }

    /// A client that trusts this CA's server certificates and presents `client`, if any.
    pub(super) fn connector_presenting(&self, client: Option<&ServerPair>) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match client {
            None => builder.with_no_client_auth(),
            Some(pair) => builder
                .with_client_auth_cert(
                    vec![CertificateDer::from(pair.der.clone())],
                    PrivateKeyDer::from_pem_slice(pair.key_pem.as_bytes()).unwrap(),
                )
                .unwrap(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        // Every connection runs a full handshake, so it shows the certificate being served.
        config.resumption = Resumption::disabled();
        TlsConnector::from(Arc::new(config))
    }
}

/// Installs a pair the way a rotation does: each file written under a temporary name and
/// renamed into place, key first, so a reader may briefly see the new key with the old certificate.
pub(super) fn install(dir: &Path, pair: &ServerPair) {
    for (name, contents) in [("tls.key", &pair.key_pem), ("tls.crt", &pair.cert_pem)] {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
}

/// Records which endpoints were called and allows everything.
#[derive(Default)]
pub(super) struct Recorder {
    pub(super) kinds: Mutex<Vec<ReviewKind>>,
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

pub(super) struct Running {
    pub(super) addr: SocketAddr,
    pub(super) recorder: Arc<Recorder>,
    pub(super) stop: oneshot::Sender<()>,
    pub(super) task: JoinHandle<()>,
}

pub(super) async fn start(dir: &Path, reload_interval: Duration) -> Running {
    start_with(dir, reload_interval, None).await
}

/// A server that requires client certificates signed by `client_cas`, when given.
pub(super) async fn start_with(dir: &Path, reload_interval: Duration, client_cas: Option<&CaBundle>) -> Running {
    let server = WebhookServer::bind((LOCALHOST, 0).into(), dir, reload_interval, client_cas)
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
pub(super) async fn serve() -> (Running, Pki, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    install(dir.path(), &pki.issue(1));
    let running = start(dir.path(), Duration::from_secs(60)).await;
    (running, pki, dir)
}

#[derive(Debug)]
pub(super) struct Reply {
    pub(super) status: u16,
    pub(super) content_type: String,
    pub(super) body: String,
    pub(super) peer_cert: Vec<u8>,
}

/// One request on a new TLS connection; the request is written while the reply is read,
/// so a server that answers before reading a large body is seen answering.
pub(super) async fn send(addr: SocketAddr, connector: &TlsConnector, request: &[u8]) -> io::Result<Reply> {
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

pub(super) fn request(method: &str, path: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
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
pub(super) fn chunked_request(path: &str, body: &[u8]) -> Vec<u8> {
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

pub(super) fn review_of(uid: &str, group: &str, version: &str, kind: &str, resource: &str, object: Value) -> Vec<u8> {
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

pub(super) fn pod_review(uid: &str) -> Vec<u8> {
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "task", "namespace": "airflow"},
        "spec": {"containers": [{"name": "base", "image": "mcr.microsoft.com/windows/servercore:ltsc2022"}]},
    });
    review_of(uid, "", "v1", "Pod", "pods", pod)
}

pub(super) fn good_request(uid: &str) -> Vec<u8> {
    request("POST", "/validate-pods", "application/json", &pod_review(uid))
}

pub(super) async fn assert_good(addr: SocketAddr, connector: &TlsConnector, uid: &str) -> Reply {
    let reply = send(addr, connector, &good_request(uid)).await.unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    let review: Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(review["response"]["uid"], uid, "{reply:?}");
    reply
}
