//! The webhook's server certificate, read from a mounted Kubernetes TLS Secret (or cert-manager's
//! output) and reloaded when the files change, so a rotated certificate is served without a restart.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{InconsistentKeys, ServerConfig};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tracing::{debug, info, warn};

use crate::token::CaBundle;

/// The certificate chain's file name, as in a `kubernetes.io/tls` Secret.
const CERT_FILE: &str = "tls.crt";
/// The private key's file name, as in a `kubernetes.io/tls` Secret.
const KEY_FILE: &str = "tls.key";

/// Why a certificate/key pair cannot be served. Messages name the file; none carries key material.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("TLS file {} is missing", path.display())]
    Missing { path: PathBuf },
    #[error("cannot read TLS file {}: {source}", path.display())]
    Unreadable { path: PathBuf, source: io::Error },
    #[error("TLS file {} is not valid PEM: {source}", path.display())]
    Pem { path: PathBuf, source: pem::Error },
    #[error("TLS file {} holds no PEM CERTIFICATE block", path.display())]
    NoCertificate { path: PathBuf },
    #[error("TLS file {} holds no unencrypted PEM private key (PKCS#8, RSA or EC)", path.display())]
    NoKey { path: PathBuf },
    #[error("the private key in {} cannot be used: {source}", path.display())]
    UnusableKey { path: PathBuf, source: rustls::Error },
    #[error("the first certificate in {} cannot be parsed: {source}", path.display())]
    BadCertificate { path: PathBuf, source: rustls::Error },
    #[error("the private key in {} does not belong to the first certificate in {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
}

/// The CAs of `--webhook-client-ca` cannot verify client certificates.
#[derive(Debug, thiserror::Error)]
#[error("--webhook-client-ca {origin}: its certificates cannot verify client certificates: {source}")]
pub struct ClientCaError {
    origin: String,
    source: rustls::server::VerifierBuilderError,
}

/// A server certificate that the watcher swaps in place; handshakes always take the current one.
pub struct ReloadingCertificate {
    dir: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files as they were just before the first read, so a change made before the watcher
    /// starts is not missed.
    loaded: Stamp,
}

/// Modification time and length of `tls.crt` and `tls.key`; `None` for a file that cannot be inspected.
type Stamp = [Option<(SystemTime, u64)>; 2];

impl ReloadingCertificate {
    /// Reads `tls.crt` and `tls.key` from `dir`; fails when the pair cannot be served.
    pub fn load(dir: &Path) -> Result<Arc<Self>, CertificateError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let loaded = stamp(dir);
        let key = read_pair(dir, &provider)?;
        info!(dir = %dir.display(), sha256 = %fingerprint(&key), "loaded the webhook certificate");
        Ok(Arc::new(Self {
            dir: dir.to_owned(),
            provider,
            current: RwLock::new(Arc::new(key)),
            loaded,
        }))
    }

    /// Polls the files' modification time and length every `interval` and reloads when they
    /// change; a pair that cannot be served is logged and the current certificate kept.
    ///
    /// The files are small and local (a Secret volume), so they are read on the runtime directly.
    pub fn watch(self: &Arc<Self>, interval: Duration) -> JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let mut seen = this.loaded;
            loop {
                ticks.tick().await;
                let now = stamp(&this.dir);
                if now != seen {
                    // Taken before reading, so a change made while reading is picked up next time.
                    seen = now;
                    this.reload();
                }
            }
        })
    }

    /// TLS settings for the webhook: this certificate, HTTP/1.1 only, and, with `client_cas`,
    /// a client certificate required at the handshake and verified against those CAs (for API
    /// servers configured to present one); without, no client authentication.
    pub fn server_config(self: &Arc<Self>, client_cas: Option<&CaBundle>) -> Result<Arc<ServerConfig>, ClientCaError> {
        let builder = ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default protocol versions");
        let builder = match client_cas {
            None => builder.with_no_client_auth(),
            Some(bundle) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(bundle.root_store()),
                    Arc::clone(&self.provider),
                )
                .build()
                .map_err(|source| ClientCaError {
                    origin: bundle.origin().to_owned(),
                    source,
                })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.current.read().expect("webhook certificate lock"))
    }

    fn reload(&self) {
        match read_pair(&self.dir, &self.provider) {
            Ok(key) if key.cert == self.current().cert => {
                debug!(dir = %self.dir.display(), "webhook certificate files touched, certificate unchanged");
            }
            Ok(key) => {
                info!(dir = %self.dir.display(), sha256 = %fingerprint(&key), "reloaded the webhook certificate");
                *self.current.write().expect("webhook certificate lock") = Arc::new(key);
            }
            Err(error) => {
                warn!(%error, "cannot reload the webhook certificate; still serving the previous one");
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// Names the directory only: the key stays out of any output.
impl fmt::Debug for ReloadingCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCertificate")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn stamp(dir: &Path) -> Stamp {
    [CERT_FILE, KEY_FILE].map(|name| {
        let metadata = fs::metadata(dir.join(name)).ok()?;
        Some((metadata.modified().ok()?, metadata.len()))
    })
}

fn read_pair(dir: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, CertificateError> {
    let cert_path = dir.join(CERT_FILE);
    let key_path = dir.join(KEY_FILE);

    let chain = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|error| pem_error(&cert_path, error))?;
    if chain.is_empty() {
        return Err(CertificateError::NoCertificate { path: cert_path });
    }

    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|error| match error {
        pem::Error::NoItemsFound => CertificateError::NoKey { path: key_path.clone() },
        error => pem_error(&key_path, error),
    })?;
    let key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|source| CertificateError::UnusableKey {
            path: key_path.clone(),
            source,
        })?;

    let certified = CertifiedKey::new(chain, key);
    match certified.keys_match() {
        // A key that cannot tell its public half cannot be checked; rustls' own `from_der` accepts it too.
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => Err(CertificateError::KeyMismatch {
            cert: cert_path,
            key: key_path,
        }),
        Err(source) => Err(CertificateError::BadCertificate {
            path: cert_path,
            source,
        }),
    }
}

fn pem_error(path: &Path, error: pem::Error) -> CertificateError {
    let path = path.to_owned();
    match error {
        pem::Error::Io(source) if source.kind() == io::ErrorKind::NotFound => CertificateError::Missing { path },
        pem::Error::Io(source) => CertificateError::Unreadable { path, source },
        source => CertificateError::Pem { path, source },
    }
}

/// SHA-256 of the end-entity certificate, so logs show which certificate is being served.
fn fingerprint(key: &CertifiedKey) -> String {
    Sha256::digest(&key.cert[0])
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519, SignatureAlgorithm};
    use std::time::Instant;

    struct Pair {
        cert_pem: String,
        key_pem: String,
        der: Vec<u8>,
    }

    fn pair_with(alg: &'static SignatureAlgorithm) -> Pair {
        let key = KeyPair::generate_for(alg).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["winflow-webhook.winflow.svc".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        Pair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    fn pair() -> Pair {
        pair_with(&PKCS_ECDSA_P256_SHA256)
    }

    /// Writes through a temporary name and a rename, as a Secret volume or cert-manager would.
    fn write(dir: &Path, name: &str, contents: &str) {
        let tmp = dir.join(format!(".{name}.tmp"));
        fs::write(&tmp, contents).unwrap();
        fs::rename(tmp, dir.join(name)).unwrap();
    }

    fn install(dir: &Path, pair: &Pair) {
        write(dir, KEY_FILE, &pair.key_pem);
        write(dir, CERT_FILE, &pair.cert_pem);
    }

    fn served(cert: &ReloadingCertificate) -> Vec<u8> {
        cert.current().cert[0].to_vec()
    }

    fn load_err(dir: &Path) -> CertificateError {
        ReloadingCertificate::load(dir).unwrap_err()
    }

    #[test]
    fn loads_pkcs8_keys_of_each_supported_kind() {
        for alg in [&PKCS_ECDSA_P256_SHA256, &PKCS_ECDSA_P384_SHA384, &PKCS_ED25519] {
            let dir = tempfile::tempdir().unwrap();
            let pair = pair_with(alg);
            install(dir.path(), &pair);
            let cert = ReloadingCertificate::load(dir.path()).unwrap();
            assert_eq!(served(&cert), pair.der);
        }
    }

    #[test]
    fn serves_the_whole_chain_in_file_order() {
        let dir = tempfile::tempdir().unwrap();
        let (leaf, intermediate) = (pair(), pair());
        write(dir.path(), KEY_FILE, &leaf.key_pem);
        write(
            dir.path(),
            CERT_FILE,
            &format!("{}{}", leaf.cert_pem, intermediate.cert_pem),
        );
        let cert = ReloadingCertificate::load(dir.path()).unwrap();
        let chain: Vec<Vec<u8>> = cert.current().cert.iter().map(|c| c.to_vec()).collect();
        assert_eq!(chain, [leaf.der, intermediate.der]);
    }

    #[test]
    fn missing_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let pair = pair();
        let err = load_err(dir.path());
        assert!(
            matches!(&err, CertificateError::Missing { path } if path.ends_with(CERT_FILE)),
            "{err}"
        );
        assert!(err.to_string().ends_with("tls.crt is missing"), "{err}");

        write(dir.path(), CERT_FILE, &pair.cert_pem);
        let err = load_err(dir.path());
        assert!(
            matches!(&err, CertificateError::Missing { path } if path.ends_with(KEY_FILE)),
            "{err}"
        );
    }

    #[test]
    fn a_certificate_file_without_certificates_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let pair = pair();
        write(dir.path(), CERT_FILE, &pair.key_pem);
        write(dir.path(), KEY_FILE, &pair.key_pem);
        let err = load_err(dir.path());
        assert!(matches!(err, CertificateError::NoCertificate { .. }), "{err}");
        assert!(err.to_string().contains("tls.crt holds no PEM CERTIFICATE"), "{err}");
    }

    #[test]
    fn broken_pem_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let pair = pair();
        let truncated = &pair.cert_pem[..pair.cert_pem.len() / 2];
        write(dir.path(), CERT_FILE, truncated);
        write(dir.path(), KEY_FILE, &pair.key_pem);
        let err = load_err(dir.path());
        assert!(matches!(err, CertificateError::Pem { .. }), "{err}");
    }

    #[test]
    fn a_key_file_without_a_key_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let pair = pair();
        write(dir.path(), CERT_FILE, &pair.cert_pem);
        write(dir.path(), KEY_FILE, &pair.cert_pem);
        let err = load_err(dir.path());
        assert!(matches!(err, CertificateError::NoKey { .. }), "{err}");
        assert!(
            err.to_string().contains("tls.key holds no unencrypted PEM private key"),
            "{err}"
        );
    }

    #[test]
    fn a_key_that_does_not_parse_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let pair = pair();
        write(dir.path(), CERT_FILE, &pair.cert_pem);
        write(
            dir.path(),
            KEY_FILE,
            "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
        );
        let err = load_err(dir.path());
        assert!(matches!(err, CertificateError::UnusableKey { .. }), "{err}");
    }

    #[test]
    fn a_certificate_that_does_not_parse_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let pair = pair();
        write(
            dir.path(),
            CERT_FILE,
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
        );
        write(dir.path(), KEY_FILE, &pair.key_pem);
        let err = load_err(dir.path());
        assert!(matches!(err, CertificateError::BadCertificate { .. }), "{err}");
    }

    #[test]
    fn a_key_of_another_certificate_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (pair(), pair());
        write(dir.path(), CERT_FILE, &a.cert_pem);
        write(dir.path(), KEY_FILE, &b.key_pem);
        let err = load_err(dir.path());
        assert!(matches!(err, CertificateError::KeyMismatch { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("tls.key does not belong to the first certificate in"),
            "{err}"
        );
    }

    #[test]
    fn errors_and_debug_output_carry_no_key_material() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (pair(), pair());
        install(dir.path(), &a);
        let cert = ReloadingCertificate::load(dir.path()).unwrap();
        write(dir.path(), KEY_FILE, &b.key_pem);
        let err = load_err(dir.path());
        let key_lines = || {
            a.key_pem
                .lines()
                .chain(b.key_pem.lines())
                .filter(|l| !l.starts_with("-----"))
        };
        for text in [format!("{cert:?}"), err.to_string(), format!("{err:?}")] {
            assert!(key_lines().all(|line| !text.contains(line)), "{text}");
        }
    }

    #[test]
    fn server_config_offers_http1_only() {
        let dir = tempfile::tempdir().unwrap();
        install(dir.path(), &pair());
        let config = ReloadingCertificate::load(dir.path())
            .unwrap()
            .server_config(None)
            .unwrap();
        assert_eq!(config.alpn_protocols, [b"http/1.1".to_vec()]);
    }

    async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn watch_swaps_in_new_pairs_and_keeps_the_old_one_on_a_bad_pair() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (pair(), pair(), pair());
        install(dir.path(), &a);
        let cert = ReloadingCertificate::load(dir.path()).unwrap();
        let watcher = cert.watch(Duration::from_millis(20));

        install(dir.path(), &b);
        wait_until("the second certificate is served", || served(&cert) == b.der).await;

        // A key that does not match, then a missing key: both keep the second certificate.
        write(dir.path(), KEY_FILE, &c.key_pem);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(served(&cert), b.der);
        fs::remove_file(dir.path().join(KEY_FILE)).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(served(&cert), b.der);

        write(dir.path(), KEY_FILE, &a.key_pem);
        write(dir.path(), CERT_FILE, &a.cert_pem);
        wait_until("the first certificate is served again", || served(&cert) == a.der).await;
        watcher.abort();
    }
}
