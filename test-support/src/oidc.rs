//! A real OpenID Connect provider for tests: the npm package `oidc-provider` run by node
//! (`tests/oidc/provider.mjs`) on loopback, plain HTTP or HTTPS with a throwaway CA, with
//! client-credentials clients and Entra-style federated credentials (a JWT such as a
//! service-account token instead of a secret). Its node modules come from
//! `hack/oidc-provider.sh` (cached outside the checkout).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::REPO;

const READY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct ProviderConfig {
    /// Lifetime of client-credentials access tokens (`expires_in`).
    pub access_token_ttl_seconds: u64,
    pub clients: Vec<ClientConfig>,
    pub federated: Vec<FederatedCredential>,
    /// Defaults to `http://<host>:<port>` (`https://` with `tls`). Another value (e.g. to test an issuer mismatch)
    /// is announced in discovery while the endpoints stay on the host; a path in it
    /// (`http://127.0.0.1:<port>/tenant/v2.0`, Entra's shape) moves the endpoints under it.
    pub issuer: Option<String>,
    /// The address it listens on; defaults to 127.0.0.1. Pods on the local node reach the
    /// host only through the bridge's address (see hack/node.sh).
    pub host: Option<String>,
    /// Serve HTTPS with this certificate instead of plain HTTP (see [`write_serving_certificate`]
    /// and [`OidcProvider::start_https`]).
    pub tls: Option<TlsFiles>,
}

/// HTTPS for the provider: its certificate (PEM, the chain) and key files, and the CA (PEM)
/// that clients must trust to reach it.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca_pem: String,
}

/// A throwaway CA and a serving certificate it signs for `names` (IP addresses or DNS names),
/// written to `dir` as `tls.crt` and `tls.key`; the CA's PEM is `ca_pem`.
pub fn write_serving_certificate(dir: &Path, names: &[&str]) -> TlsFiles {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "winflow test OIDC provider CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    // rcgen makes an IP address SAN of each name that parses as one.
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let cert = CertificateParams::new(names).unwrap().signed_by(&key, &ca).unwrap();
    let files = TlsFiles {
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
        ca_pem: ca.pem(),
    };
    std::fs::write(&files.cert, cert.pem()).unwrap();
    std::fs::write(&files.key, key.serialize_pem()).unwrap();
    files
}

impl ProviderConfig {
    /// A provider with one client-credentials client, whose tokens last `ttl_seconds`.
    pub fn with_client(ttl_seconds: u64, client_id: &str, client_secret: &str, scope: &str) -> Self {
        Self {
            access_token_ttl_seconds: ttl_seconds,
            clients: vec![ClientConfig {
                client_id: client_id.to_owned(),
                client_secret: client_secret.to_owned(),
                scope: scope.to_owned(),
            }],
            ..Self::default()
        }
    }
}

impl Default for ProviderConfig {
    fn default() -> Self {
        Self {
            access_token_ttl_seconds: 30,
            clients: Vec::new(),
            federated: Vec::new(),
            issuer: None,
            host: None,
            tls: None,
        }
    }
}

/// A client that authenticates with a secret (client_secret_basic or client_secret_post).
#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub client_id: String,
    pub client_secret: String,
    /// Space-separated scopes it may request; empty allows any.
    pub scope: String,
}

/// Entra ID's federated identity credential: requests with a `client_assertion` JWT from
/// `issuer` for `subject` and `audience`, signed by a key of `jwks`, authenticate as
/// `client_id`.
#[derive(Clone, Debug)]
pub struct FederatedCredential {
    pub client_id: String,
    pub issuer: String,
    pub subject: String,
    pub audience: String,
    pub jwks: Value,
}

/// One request to the token endpoint, as the provider recorded it (never secrets or tokens).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRequestRecord {
    /// Arrival, Unix milliseconds.
    pub time: u64,
    pub client_id: Option<String>,
    pub grant_type: Option<String>,
    /// `client_secret_basic`, `client_secret_post`, `federated` or `none`.
    pub auth_method: String,
    pub scope: Option<String>,
    pub status: u16,
    /// The verified claims of a federated assertion (iss, sub, aud, iat, exp, nbf, jti).
    pub assertion: Option<Value>,
    /// Why the request failed, e.g. `invalid_client: invalid secret provided`.
    pub error: Option<String>,
}

/// The running provider; the node process is killed when this is dropped.
pub struct OidcProvider {
    config: ProviderConfig,
    host: String,
    port: u16,
    issuer: String,
    child: Option<Child>,
    // config.json, requests.jsonl (the records, kept across restarts) and provider.log (stderr).
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl OidcProvider {
    /// Starts the provider on a free port and waits until it serves.
    pub async fn start(config: ProviderConfig) -> OidcProvider {
        Self::start_in(tempfile::tempdir().unwrap(), config).await
    }

    /// Starts it serving HTTPS with a certificate for its host from a new throwaway CA
    /// ([`write_serving_certificate`], kept in its own directory); [`OidcProvider::ca_pem`]
    /// is what clients must trust.
    pub async fn start_https(mut config: ProviderConfig) -> OidcProvider {
        let dir = tempfile::tempdir().unwrap();
        let host = config.host.clone().unwrap_or_else(|| "127.0.0.1".to_owned());
        config.tls = Some(write_serving_certificate(dir.path(), &[host.as_str()]));
        Self::start_in(dir, config).await
    }

    async fn start_in(dir: tempfile::TempDir, config: ProviderConfig) -> OidcProvider {
        let host = config.host.clone().unwrap_or_else(|| "127.0.0.1".to_owned());
        // With the default issuer the provider picks the port and the issuer tells it; a
        // custom issuer may not contain it, so then a free port is chosen here.
        let port = match config.issuer {
            None => 0,
            Some(_) => std::net::TcpListener::bind((host.as_str(), 0))
                .unwrap()
                .local_addr()
                .unwrap()
                .port(),
        };
        // Introspection trusts the provider's CA, and only the public roots otherwise.
        // Node closes idle keep-alive connections after 5 s; a pooled one reused just then
        // fails the request (IncompleteMessage), so idle connections are dropped first.
        let mut http = reqwest::Client::builder().pool_idle_timeout(Duration::from_secs(2));
        if let Some(tls) = &config.tls {
            http = http.add_root_certificate(reqwest::Certificate::from_pem(tls.ca_pem.as_bytes()).unwrap());
        }
        let mut provider = OidcProvider {
            config,
            host,
            port,
            issuer: String::new(),
            child: None,
            dir,
            http: http.build().unwrap(),
        };
        provider.spawn().await;
        provider
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where the endpoints are served (`http://<host>:<port>`, `https://` with TLS), whatever
    /// the issuer says.
    pub fn url(&self) -> String {
        format!("{}://{}:{}", self.scheme(), self.host, self.port)
    }

    /// The CA (PEM) that signed its certificate, when it serves HTTPS.
    pub fn ca_pem(&self) -> Option<&str> {
        self.config.tls.as_ref().map(|tls| tls.ca_pem.as_str())
    }

    fn scheme(&self) -> &'static str {
        if self.config.tls.is_some() { "https" } else { "http" }
    }

    /// Simulates an outage: SIGKILL, and wait until the process is gone.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            tokio::task::spawn_blocking(move || {
                let _ = child.kill();
                let _ = child.wait();
            })
            .await
            .unwrap();
        }
    }

    /// Starts it again after `stop()`: same config, port and issuer. Tokens issued before are
    /// forgotten (oidc-provider keeps them in memory), the request records are not.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "start_again() needs stop() first");
        self.spawn().await;
    }

    /// RFC 7662 introspection of `token`, authenticated as a secret client.
    pub async fn introspect(&self, client_id: &str, client_secret: &str, token: &str) -> Value {
        let response = self
            .http
            .post(self.endpoint("/token/introspection"))
            .basic_auth(client_id, Some(client_secret))
            .form(&[("token", token)])
            .send()
            .await
            .expect("introspection request");
        let status = response.status();
        let body: Value = response.json().await.expect("introspection answers JSON");
        assert!(status.is_success(), "introspection failed: {status} {body}");
        body
    }

    /// Every token-endpoint request so far, across restarts; works while stopped. A request's
    /// record is written before its response is sent.
    pub async fn token_requests(&self) -> Vec<TokenRequestRecord> {
        let text = std::fs::read_to_string(self.state_file()).unwrap_or_default();
        // Only complete lines: the last one may be still being written.
        let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        complete
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("record {line:?}: {e}")))
            .collect()
    }

    /// What the provider wrote on stderr so far (warnings, error details).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("provider.log")).unwrap_or_default()
    }

    /// The URL of `path` as served for the issuer (endpoints move under an issuer's path).
    fn endpoint(&self, path: &str) -> String {
        let issuer_path = self.issuer.split_once("://").map_or("", |(_, rest)| {
            rest.find('/').map_or("", |i| rest[i..].trim_end_matches('/'))
        });
        format!("{}{issuer_path}{path}", self.url())
    }

    /// The records as JSON lines (appended by every process started for this provider).
    pub fn state_file(&self) -> PathBuf {
        self.dir.path().join("requests.jsonl")
    }

    async fn spawn(&mut self) {
        let node_modules = tokio::task::spawn_blocking(node_modules).await.unwrap();
        let config_file = self.dir.path().join("config.json");
        let c = &self.config;
        let config = json!({
            "port": self.port,
            "host": self.host,
            "tls": c.tls.as_ref().map(|tls| json!({"cert": tls.cert, "key": tls.key})),
            // After the first start, the issuer that was announced, so a restart keeps it.
            "issuer": if self.issuer.is_empty() { c.issuer.clone() } else { Some(self.issuer.clone()) },
            "accessTokenTtlSeconds": c.access_token_ttl_seconds,
            "clients": c.clients.iter().map(|c| json!({
                "clientId": c.client_id, "clientSecret": c.client_secret, "scope": c.scope,
            })).collect::<Vec<_>>(),
            "federated": c.federated.iter().map(|f| json!({
                "clientId": f.client_id, "issuer": f.issuer, "subject": f.subject,
                "audience": f.audience, "jwks": f.jwks,
            })).collect::<Vec<_>>(),
            "state": self.state_file(),
        });
        std::fs::write(&config_file, config.to_string()).unwrap();

        // stderr goes to a file: an unread pipe could fill up and stall node.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("provider.log"))
            .unwrap();
        let mut child = Command::new("node")
            .arg(Path::new(REPO).join("tests/oidc/provider.mjs"))
            .arg("--config")
            .arg(&config_file)
            // Exits when this process does, even without Drop (the pipe closes with it).
            .arg("--exit-with-stdin")
            .env("WINFLOW_OIDC_NODE_MODULES", &node_modules)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("node starts (is Node.js installed? see hack/oidc-provider.sh)");

        // A plain thread reads stdout (blocking) until `ready <issuer>`, then drains it.
        let stdout = child.stdout.take().unwrap();
        let (ready, ready_rx) = tokio::sync::oneshot::channel::<String>();
        std::thread::spawn(move || {
            let mut ready = Some(ready);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(issuer) = line.strip_prefix("ready ")
                    && let Some(ready) = ready.take()
                {
                    let _ = ready.send(issuer.to_owned());
                }
            }
        });
        self.child = Some(child);

        let issuer = match tokio::time::timeout(READY_TIMEOUT, ready_rx).await {
            Ok(Ok(issuer)) => issuer,
            outcome => {
                self.stop().await;
                let why = if outcome.is_err() { "timed out" } else { "exited" };
                panic!("oidc provider {why} before it was ready; its stderr:\n{}", self.log());
            }
        };
        if self.issuer.is_empty() {
            if self.port == 0 {
                let prefix = format!("{}://{}:", self.scheme(), self.host);
                self.port = issuer
                    .strip_prefix(prefix.as_str())
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_else(|| panic!("port in issuer {issuer:?}"));
            }
            self.issuer = issuer;
        } else {
            assert_eq!(issuer, self.issuer, "issuer after restart");
        }
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The provider's node_modules: `$WINFLOW_OIDC_NODE_MODULES` (set by hack/test.sh), else what
/// `hack/oidc-provider.sh` installs (once per test binary; the script locks against others).
fn node_modules() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| crate::tools::tool("WINFLOW_OIDC_NODE_MODULES", "oidc-provider.sh"))
        .clone()
}

/// JWTs standing in for service-account tokens, signed by a fresh RSA key.
pub struct SignedAssertions {
    /// The public key, for `FederatedCredential::jwks`.
    pub jwks: Value,
    /// One RS256 JWT per claim set, in order.
    pub assertions: Vec<String>,
}

/// Signs each claim set (`iat` defaults to now, `exp` to an hour later) with one new key,
/// using `tests/oidc/sign-assertion.mjs`.
pub async fn sign_assertions(claim_sets: &[Value]) -> SignedAssertions {
    let claims = Value::from(claim_sets.to_vec()).to_string();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(Path::new(REPO).join("tests/oidc/sign-assertion.mjs"))
            .arg(claims)
            .env("WINFLOW_OIDC_NODE_MODULES", node_modules())
            .output()
            .expect("node runs sign-assertion.mjs")
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "sign-assertion.mjs failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut signed: Value = serde_json::from_slice(&output.stdout).unwrap();
    SignedAssertions {
        jwks: signed["jwks"].take(),
        assertions: serde_json::from_value(signed["assertions"].take()).unwrap(),
    }
}
