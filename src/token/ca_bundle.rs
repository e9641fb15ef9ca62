//! CA certificates trusted for OpenID providers in addition to the public roots compiled into
//! winflow (`winflow run --oidc-ca-file`): issuers behind a private CA, such as ADFS or
//! Keycloak with a corporate CA. Read once at start-up; a bundle that is not usable stops
//! winflow there rather than failing every token later. The same file format names the CAs
//! of the API server's client certificate (`--webhook-client-ca`).

use std::fmt;
use std::path::{Path, PathBuf};

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::{PemObject, SectionKind};

/// What a CA file must hold, said in every error about one (followed by what it is trusted for).
const EXPECTED: &str = "expected a PEM file of one or more CA certificates (-----BEGIN CERTIFICATE-----) to trust";

/// Extra trust anchors for the OIDC client. Never printed beyond its origin and size.
#[derive(Clone)]
pub struct CaBundle {
    origin: String,
    certificates: Vec<CertificateDer<'static>>,
}

impl fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaBundle")
            .field("origin", &self.origin)
            .field("certificates", &self.certificates.len())
            .finish()
    }
}

/// Why a CA file cannot be used; the message names the flag, the file and what it must hold.
#[derive(Debug, thiserror::Error)]
#[error("{flag} {}: {problem}; {EXPECTED} {trusted_for}", path.display())]
pub struct CaFileError {
    pub flag: &'static str,
    pub path: PathBuf,
    pub problem: CaBundleProblem,
    trusted_for: &'static str,
}

/// What is wrong with a bundle's contents.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CaBundleProblem {
    #[error("cannot read it: {0}")]
    Unreadable(String),
    #[error("it is not valid PEM: {0}")]
    NotPem(String),
    #[error("it holds no certificate")]
    NoCertificates,
    /// A key does not belong in a list of trusted certificates, and suggests the wrong file.
    #[error("it holds a private key (PEM section {0}); a CA bundle holds certificates only, never a key")]
    PrivateKey(usize),
    #[error("certificate {0} in it is not a valid X.509 certificate")]
    InvalidCertificate(usize),
}

impl CaBundle {
    /// Reads the PEM bundle of `--oidc-ca-file` from `path`.
    pub fn from_pem_file(path: &Path) -> Result<Self, CaFileError> {
        Self::from_pem_file_of("--oidc-ca-file", "for OIDC issuers", path)
    }

    /// Reads a PEM bundle from `path`, given as `flag`; errors name the flag and say what the
    /// certificates are trusted for (`trusted_for`, as in "for OIDC issuers").
    pub fn from_pem_file_of(flag: &'static str, trusted_for: &'static str, path: &Path) -> Result<Self, CaFileError> {
        let failed = |problem| CaFileError {
            flag,
            path: path.to_owned(),
            problem,
            trusted_for,
        };
        let pem = std::fs::read(path).map_err(|e| failed(CaBundleProblem::Unreadable(e.to_string())))?;
        let mut bundle = Self::from_pem(&pem).map_err(failed)?;
        bundle.origin = path.display().to_string();
        Ok(bundle)
    }

    /// Parses a PEM bundle: every `CERTIFICATE` section must be a certificate that rustls
    /// accepts as a trust anchor; text around the sections (comments, as in distribution
    /// bundles) is ignored; any private key refuses the whole bundle.
    pub fn from_pem(pem: &[u8]) -> Result<Self, CaBundleProblem> {
        let mut certificates = Vec::new();
        for (index, section) in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem).enumerate() {
            let (kind, der) = section.map_err(|e| CaBundleProblem::NotPem(e.to_string()))?;
            match kind {
                SectionKind::Certificate => {
                    let certificate = CertificateDer::from(der);
                    rustls::RootCertStore::empty()
                        .add(certificate.clone())
                        .map_err(|_| CaBundleProblem::InvalidCertificate(certificates.len() + 1))?;
                    certificates.push(certificate);
                }
                SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey => {
                    return Err(CaBundleProblem::PrivateKey(index + 1));
                }
                // CRLs, public keys and the like add no trust; they are left alone.
                _ => {}
            }
        }
        if certificates.is_empty() {
            return Err(CaBundleProblem::NoCertificates);
        }
        Ok(Self {
            origin: "PEM".to_owned(),
            certificates,
        })
    }

    /// Where the bundle came from (the file's path).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// How many certificates it holds.
    pub fn len(&self) -> usize {
        self.certificates.len()
    }

    pub fn is_empty(&self) -> bool {
        self.certificates.is_empty()
    }

    /// These certificates as the only trust anchors.
    pub fn root_store(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(self.certificates.iter().cloned());
        debug_assert_eq!(
            added,
            self.certificates.len(),
            "every certificate was checked when read"
        );
        roots
    }

    /// `builder` trusting these certificates as well as its built-in roots.
    pub(super) fn add_to(&self, mut builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        for certificate in &self.certificates {
            let root = reqwest::Certificate::from_der(certificate).expect("a DER certificate is taken as it is");
            builder = builder.add_root_certificate(root);
        }
        builder
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem(name: &str) -> String {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap().pem()
    }

    #[test]
    fn a_bundle_of_two_certificates_is_two_roots_and_comments_around_them_are_ignored() {
        let pem = format!(
            "# Corp Root CA\n{}\n# Corp Issuing CA\n{}",
            ca_pem("Corp Root CA"),
            ca_pem("Corp Issuing CA")
        );
        let bundle = CaBundle::from_pem(pem.as_bytes()).unwrap();
        assert_eq!(bundle.len(), 2);
        // Both reach the HTTP client: it builds with them.
        bundle.add_to(reqwest::Client::builder()).build().unwrap();
        let debug = format!("{bundle:?}");
        assert!(!debug.contains("BEGIN"), "{debug}");
    }

    #[test]
    fn files_without_a_usable_certificate_are_refused_with_what_is_wrong() {
        assert_eq!(CaBundle::from_pem(b"").unwrap_err(), CaBundleProblem::NoCertificates);
        assert_eq!(
            CaBundle::from_pem(b"not a certificate at all\n").unwrap_err(),
            CaBundleProblem::NoCertificates
        );
        let truncated = ca_pem("Corp Root CA");
        let truncated = &truncated[..truncated.len() / 2];
        assert!(
            matches!(
                CaBundle::from_pem(truncated.as_bytes()),
                Err(CaBundleProblem::NotPem(_))
            ),
            "a section without its END line"
        );
        let garbage = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n";
        let two = format!("{}{garbage}", ca_pem("Corp Root CA"));
        assert_eq!(
            CaBundle::from_pem(two.as_bytes()).unwrap_err(),
            CaBundleProblem::InvalidCertificate(2)
        );
        let key = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let with_key = format!("{}{key}", ca_pem("Corp Root CA"));
        assert_eq!(
            CaBundle::from_pem(with_key.as_bytes()).unwrap_err(),
            CaBundleProblem::PrivateKey(2)
        );
    }

    #[test]
    fn a_file_error_names_the_flag_the_path_and_what_is_expected() {
        let missing = CaBundle::from_pem_file(Path::new("/nonexistent/ca.crt")).unwrap_err();
        let message = missing.to_string();
        assert!(
            message.starts_with("--oidc-ca-file /nonexistent/ca.crt: cannot read it: "),
            "{message}"
        );
        assert!(message.ends_with(&format!("{EXPECTED} for OIDC issuers")), "{message}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.crt");
        std::fs::write(&path, "hello").unwrap();
        let empty = CaBundle::from_pem_file(&path).unwrap_err().to_string();
        assert_eq!(
            empty,
            format!(
                "--oidc-ca-file {}: it holds no certificate; {EXPECTED} for OIDC issuers",
                path.display()
            )
        );
        let other_flag =
            CaBundle::from_pem_file_of("--webhook-client-ca", "for the API server's client certificate", &path)
                .unwrap_err()
                .to_string();
        assert!(
            other_flag.starts_with(&format!(
                "--webhook-client-ca {}: it holds no certificate",
                path.display()
            )),
            "{other_flag}"
        );
        assert!(
            other_flag.ends_with("to trust for the API server's client certificate"),
            "{other_flag}"
        );
        std::fs::write(&path, ca_pem("Corp Root CA")).unwrap();
        let bundle = CaBundle::from_pem_file(&path).unwrap();
        assert_eq!((bundle.origin(), bundle.len()), (path.to_str().unwrap(), 1));
    }
}
