//! Webhook TLS managed by winflow itself (`--manage-webhook-certs`), for clusters without
//! cert-manager: a self-signed CA and a serving certificate for the webhook Service, kept in a
//! Secret that every replica shares, written to the certificate directory the HTTPS server
//! reloads from, and the CA patched into the webhook configurations' `caBundle`. Nothing is
//! rendered by Helm, so GitOps tools see no changing certificate.
//!
//! Rotation: the serving certificate is renewed when a third of its life is left, the CA too;
//! after a CA rotation the `caBundle` holds the new and the previous CA until the previous one
//! expires, so the API server trusts every replica while they pick up the new certificate.
//! Replicas race safely: the Secret is replaced with its resourceVersion, and a loser uses
//! what the winner wrote.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use crate::names::{MANAGED_BY_LABEL, MANAGED_BY_VALUE};

const CA_LIFETIME: SignedDuration = SignedDuration::from_hours(5 * 365 * 24);
const SERVING_LIFETIME: SignedDuration = SignedDuration::from_hours(365 * 24);
const CA_COMMON_NAME: &str = "winflow webhook CA";

const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const PREVIOUS_CA_CERT: &str = "previous-ca.crt";
const TLS_CERT: &str = "tls.crt";
const TLS_KEY: &str = "tls.key";
const CA_NOT_AFTER: &str = "winflow.io/ca-not-after";
const PREVIOUS_CA_NOT_AFTER: &str = "winflow.io/previous-ca-not-after";
const CERT_NOT_AFTER: &str = "winflow.io/cert-not-after";
const CERT_DNS_NAMES: &str = "winflow.io/cert-dns-names";

/// Where the certificates live and whom they serve.
#[derive(Clone, Debug)]
pub struct ManagedCerts {
    /// The operator's namespace (the Secret's and the Service's).
    pub namespace: String,
    pub secret_name: String,
    /// The webhook Service the API server calls.
    pub service: String,
    /// Name of both the mutating and the validating webhook configuration.
    pub configuration: String,
    /// The directory the HTTPS server reads `tls.crt` and `tls.key` from.
    pub cert_dir: PathBuf,
    /// How often the Secret is looked at for a rotation (by this or another replica).
    pub check_every: Duration,
}

impl ManagedCerts {
    fn dns_names(&self) -> Vec<String> {
        let short = format!("{}.{}.svc", self.service, self.namespace);
        vec![short.clone(), format!("{short}.cluster.local")]
    }
}

/// The certificate material as the Secret holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Material {
    ca_cert: String,
    ca_key: String,
    ca_not_after: Timestamp,
    previous_ca: Option<(String, Timestamp)>,
    cert: String,
    key: String,
    cert_not_after: Timestamp,
    dns_names: Vec<String>,
}

impl Material {
    /// The PEM bundle the API server trusts: the CA, and the previous one while it is valid.
    fn ca_bundle(&self, now: Timestamp) -> String {
        let mut bundle = self.ca_cert.clone();
        if let Some((previous, not_after)) = &self.previous_ca
            && now < *not_after
        {
            bundle.push_str(previous);
        }
        bundle
    }
}

/// What must change, if anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Renewal {
    None,
    Certificate,
    CaAndCertificate,
}

fn due(not_after: Timestamp, lifetime: SignedDuration, now: Timestamp) -> bool {
    now >= not_after - lifetime / 3
}

fn renewal(material: &Material, dns_names: &[String], now: Timestamp) -> Renewal {
    if due(material.ca_not_after, CA_LIFETIME, now) {
        Renewal::CaAndCertificate
    } else if due(material.cert_not_after, SERVING_LIFETIME, now) || material.dns_names != dns_names {
        Renewal::Certificate
    } else {
        Renewal::None
    }
}

fn offset(at: Timestamp) -> Result<time::OffsetDateTime, rcgen::Error> {
    time::OffsetDateTime::from_unix_timestamp(at.as_second()).map_err(|_| rcgen::Error::Time)
}

fn ca_params(not_after: Timestamp, not_before: Timestamp) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.distinguished_name.push(DnType::CommonName, CA_COMMON_NAME);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = offset(not_before)?;
    params.not_after = offset(not_after)?;
    Ok(params)
}

/// New material: a new CA when `keep_ca` is `None`, then a serving certificate signed by it.
fn issue(
    keep_ca: Option<&Material>,
    previous_ca: Option<(String, Timestamp)>,
    dns_names: &[String],
    now: Timestamp,
) -> Result<Material, rcgen::Error> {
    let start = now - SignedDuration::from_mins(5);
    let (ca_cert, ca_key, ca_not_after) = match keep_ca {
        Some(m) => (m.ca_cert.clone(), m.ca_key.clone(), m.ca_not_after),
        None => {
            let not_after = now + CA_LIFETIME;
            let key = KeyPair::generate()?;
            let cert = ca_params(not_after, start)?.self_signed(&key)?;
            (cert.pem(), key.serialize_pem(), not_after)
        }
    };
    // The issuer is rebuilt from the CA's key and name, which is all a signature needs.
    let issuer = Issuer::new(ca_params(ca_not_after, start)?, KeyPair::from_pem(&ca_key)?);
    let cert_not_after = (now + SERVING_LIFETIME).min(ca_not_after);
    let mut params = CertificateParams::new(dns_names.to_vec())?;
    params.distinguished_name.push(DnType::CommonName, dns_names[0].clone());
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = offset(start)?;
    params.not_after = offset(cert_not_after)?;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Material {
        ca_cert,
        ca_key,
        ca_not_after,
        previous_ca,
        cert: cert.pem(),
        key: key.serialize_pem(),
        cert_not_after,
        dns_names: dns_names.to_vec(),
    })
}

fn text(data: &BTreeMap<String, ByteString>, key: &str) -> Option<String> {
    data.get(key).and_then(|v| String::from_utf8(v.0.clone()).ok())
}

fn read_material(secret: &Secret) -> Option<Material> {
    let data = secret.data.as_ref()?;
    let notes = secret.metadata.annotations.as_ref()?;
    let time = |key: &str| notes.get(key)?.parse::<Timestamp>().ok();
    let previous_ca = text(data, PREVIOUS_CA_CERT).zip(time(PREVIOUS_CA_NOT_AFTER));
    Some(Material {
        ca_cert: text(data, CA_CERT)?,
        ca_key: text(data, CA_KEY)?,
        ca_not_after: time(CA_NOT_AFTER)?,
        previous_ca,
        cert: text(data, TLS_CERT)?,
        key: text(data, TLS_KEY)?,
        cert_not_after: time(CERT_NOT_AFTER)?,
        dns_names: notes.get(CERT_DNS_NAMES)?.split(',').map(str::to_owned).collect(),
    })
}

fn to_secret(settings: &ManagedCerts, material: &Material, base: Option<&Secret>) -> Secret {
    let mut data = BTreeMap::from([
        (CA_CERT.to_owned(), ByteString(material.ca_cert.clone().into_bytes())),
        (CA_KEY.to_owned(), ByteString(material.ca_key.clone().into_bytes())),
        (TLS_CERT.to_owned(), ByteString(material.cert.clone().into_bytes())),
        (TLS_KEY.to_owned(), ByteString(material.key.clone().into_bytes())),
    ]);
    let mut notes = BTreeMap::from([
        (CA_NOT_AFTER.to_owned(), material.ca_not_after.to_string()),
        (CERT_NOT_AFTER.to_owned(), material.cert_not_after.to_string()),
        (CERT_DNS_NAMES.to_owned(), material.dns_names.join(",")),
    ]);
    if let Some((previous, not_after)) = &material.previous_ca {
        data.insert(PREVIOUS_CA_CERT.to_owned(), ByteString(previous.clone().into_bytes()));
        notes.insert(PREVIOUS_CA_NOT_AFTER.to_owned(), not_after.to_string());
    }
    Secret {
        metadata: ObjectMeta {
            name: Some(settings.secret_name.clone()),
            namespace: Some(settings.namespace.clone()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.to_owned(),
                MANAGED_BY_VALUE.to_owned(),
            )])),
            annotations: Some(notes),
            resource_version: base.and_then(|b| b.metadata.resource_version.clone()),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(data),
        ..Secret::default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("writing the certificate files: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "Secret {0} exists and is not winflow's webhook certificate Secret (no app.kubernetes.io/managed-by=winflow label); delete it or choose another --webhook-cert-secret"
    )]
    NotOurs(String),
}

/// Keeps the certificates current: the first pass runs before the webhook is served (so it
/// starts with a certificate); later passes run every `check_every` until `shutdown`.
pub struct CertKeeper {
    settings: ManagedCerts,
    secrets: Api<Secret>,
    client: Client,
    applied: Option<Material>,
}

impl CertKeeper {
    pub fn new(client: Client, settings: ManagedCerts) -> Self {
        Self {
            secrets: Api::namespaced(client.clone(), &settings.namespace),
            client,
            settings,
            applied: None,
        }
    }

    /// Makes sure a valid certificate is in the Secret, the directory and the configurations.
    pub async fn ensure(&mut self) -> Result<(), CertError> {
        let material = self.current_material().await?;
        if self.applied.as_ref() != Some(&material) {
            write_files(&self.settings.cert_dir, &material)?;
            info!(secret = %self.settings.secret_name, not_after = %material.cert_not_after, "webhook serving certificate in place");
        }
        self.patch_ca_bundles(&material.ca_bundle(Timestamp::now())).await?;
        self.applied = Some(material);
        Ok(())
    }

    /// Runs `ensure` every `check_every` until `shutdown` completes.
    pub async fn keep(mut self, shutdown: impl std::future::Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(self.settings.check_every) => {}
            }
            if let Err(e) = self.ensure().await {
                warn!(error = %e, "could not keep the webhook certificate current; retrying");
            }
        }
    }

    /// The Secret's material, issuing or renewing it first when needed.
    async fn current_material(&self) -> Result<Material, CertError> {
        let dns_names = self.settings.dns_names();
        loop {
            let existing = self.secrets.get_opt(&self.settings.secret_name).await?;
            if let Some(secret) = &existing {
                let labels = secret.metadata.labels.clone().unwrap_or_default();
                if labels.get(MANAGED_BY_LABEL).map(String::as_str) != Some(MANAGED_BY_VALUE) {
                    return Err(CertError::NotOurs(self.settings.secret_name.clone()));
                }
            }
            let now = Timestamp::now();
            let found = existing.as_ref().and_then(read_material);
            let next = match &found {
                Some(material) => match renewal(material, &dns_names, now) {
                    Renewal::None => return Ok(material.clone()),
                    Renewal::Certificate => issue(Some(material), material.previous_ca.clone(), &dns_names, now)?,
                    Renewal::CaAndCertificate => {
                        let previous = (material.ca_cert.clone(), material.ca_not_after);
                        issue(None, Some(previous), &dns_names, now)?
                    }
                },
                None => issue(None, None, &dns_names, now)?,
            };
            let secret = to_secret(&self.settings, &next, existing.as_ref());
            let written = match &existing {
                Some(_) => {
                    self.secrets
                        .replace(&self.settings.secret_name, &PostParams::default(), &secret)
                        .await
                }
                None => self.secrets.create(&PostParams::default(), &secret).await,
            };
            match written {
                Ok(_) => {
                    info!(secret = %self.settings.secret_name, ca_rotated = found.as_ref().is_none_or(|f| f.ca_cert != next.ca_cert), "issued the webhook certificate");
                    return Ok(next);
                }
                // Another replica wrote first: use what it wrote.
                Err(kube::Error::Api(status)) if status.code == 409 => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn patch_ca_bundles(&self, bundle: &str) -> Result<(), CertError> {
        let name = &self.settings.configuration;
        let mutating: Api<MutatingWebhookConfiguration> = Api::all(self.client.clone());
        let validating: Api<ValidatingWebhookConfiguration> = Api::all(self.client.clone());
        let current = mutating
            .get_opt(name)
            .await?
            .map(|c| bundles(c.webhooks, |w| w.client_config));
        self.patch_one(&mutating, current, bundle).await?;
        let current = validating
            .get_opt(name)
            .await?
            .map(|c| bundles(c.webhooks, |w| w.client_config));
        self.patch_one(&validating, current, bundle).await
    }

    /// Sets `caBundle` on every webhook of one configuration that does not have it yet.
    async fn patch_one<K>(
        &self,
        api: &Api<K>,
        current: Option<Vec<Option<ByteString>>>,
        bundle: &str,
    ) -> Result<(), CertError>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    {
        let kind = K::kind(&());
        let Some(current) = current else {
            warn!(%kind, name = %self.settings.configuration, "webhook configuration not found; its caBundle is set once it exists");
            return Ok(());
        };
        let wanted = ByteString(bundle.as_bytes().to_vec());
        let operations: Vec<serde_json::Value> = current
            .iter()
            .enumerate()
            .filter(|(_, have)| have.as_ref() != Some(&wanted))
            .map(|(i, _)| {
                serde_json::json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": wanted})
            })
            .collect();
        if operations.is_empty() {
            return Ok(());
        }
        let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(operations))
            .expect("JSON patch operations are well formed");
        api.patch(
            &self.settings.configuration,
            &PatchParams::default(),
            &Patch::<()>::Json(patch),
        )
        .await?;
        info!(%kind, name = %self.settings.configuration, "patched the webhook CA bundle");
        Ok(())
    }
}

/// The `caBundle` of each webhook of a configuration, in order.
fn bundles<W>(webhooks: Option<Vec<W>>, config: impl Fn(W) -> WebhookClientConfig) -> Vec<Option<ByteString>> {
    webhooks.into_iter().flatten().map(|w| config(w).ca_bundle).collect()
}

/// Writes tls.crt, tls.key and ca.crt; each file is replaced by a rename, so the server never
/// reads half a file.
fn write_files(dir: &Path, material: &Material) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, content) in [
        (TLS_KEY, &material.key),
        (TLS_CERT, &material.cert),
        (CA_CERT, &material.ca_cert),
    ] {
        let temporary = dir.join(format!(".{name}.new"));
        std::fs::write(&temporary, content)?;
        std::fs::rename(&temporary, dir.join(name))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec![
            "winflow-webhook.winflow-system.svc".into(),
            "winflow-webhook.winflow-system.svc.cluster.local".into(),
        ]
    }

    #[test]
    fn a_new_ca_signs_a_serving_certificate_for_the_service() {
        let now = Timestamp::now();
        let material = issue(None, None, &names(), now).unwrap();
        assert!(material.ca_cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(material.key.contains("PRIVATE KEY"));
        assert_eq!(renewal(&material, &names(), now), Renewal::None);
        assert_eq!(material.ca_bundle(now), material.ca_cert);
        // The certificate verifies against the CA for the Service's name, with rustls.
        verify(&material.cert, &material.ca_bundle(now), &names()[0], now).unwrap();
        assert!(verify(&material.cert, &material.ca_bundle(now), "elsewhere.example.com", now).is_err());
    }

    fn verify(cert: &str, bundle: &str, name: &str, at: Timestamp) -> Result<(), rustls::Error> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(bundle.as_bytes()) {
            roots.add(ca.unwrap()).unwrap();
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(std::sync::Arc::new(roots), provider)
                .build()
                .unwrap();
        let leaf = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        rustls::client::danger::ServerCertVerifier::verify_server_cert(
            verifier.as_ref(),
            &leaf,
            &[],
            &ServerName::try_from(name.to_owned()).unwrap(),
            &[],
            UnixTime::since_unix_epoch(Duration::from_secs(at.as_second().try_into().unwrap())),
        )
        .map(|_| ())
    }

    #[test]
    fn certificates_renew_at_two_thirds_of_their_life_and_on_new_names() {
        let now = Timestamp::now();
        let material = issue(None, None, &names(), now).unwrap();
        let later = now + SERVING_LIFETIME * 2 / 3 + SignedDuration::from_hours(1);
        assert_eq!(renewal(&material, &names(), later), Renewal::Certificate);
        assert_eq!(
            renewal(&material, &["other.ns.svc".to_owned()], now),
            Renewal::Certificate
        );
        let much_later = now + CA_LIFETIME * 2 / 3 + SignedDuration::from_hours(1);
        assert_eq!(renewal(&material, &names(), much_later), Renewal::CaAndCertificate);

        // A renewed certificate keeps the CA; a rotated CA keeps the old one in the bundle.
        let renewed = issue(Some(&material), None, &names(), later).unwrap();
        assert_eq!(renewed.ca_cert, material.ca_cert);
        assert_ne!(renewed.cert, material.cert);
        let rotated = issue(
            None,
            Some((material.ca_cert.clone(), material.ca_not_after)),
            &names(),
            much_later,
        )
        .unwrap();
        assert_ne!(rotated.ca_cert, material.ca_cert);
        let bundle = rotated.ca_bundle(much_later);
        assert!(bundle.starts_with(&rotated.ca_cert) && bundle.ends_with(&material.ca_cert));
        // During the overlap the bundle trusts certificates of both CAs.
        let from_old_ca = issue(Some(&material), None, &names(), much_later).unwrap();
        verify(&from_old_ca.cert, &bundle, &names()[0], much_later).unwrap();
        verify(&rotated.cert, &bundle, &names()[0], much_later).unwrap();
        // A renewed certificate signed by the kept CA still verifies.
        verify(&renewed.cert, &material.ca_cert, &names()[0], later).unwrap();
        assert_eq!(
            rotated.ca_bundle(material.ca_not_after),
            rotated.ca_cert,
            "an expired CA leaves the bundle"
        );
    }

    #[test]
    fn the_secret_round_trips() {
        let settings = ManagedCerts {
            namespace: "winflow-system".into(),
            secret_name: "winflow-webhook-certs".into(),
            service: "winflow-webhook".into(),
            configuration: "winflow".into(),
            cert_dir: PathBuf::from("/tmp/x"),
            check_every: Duration::from_secs(60),
        };
        assert_eq!(settings.dns_names(), names());
        let now = Timestamp::from_second(now_second()).unwrap();
        let material = issue(
            None,
            Some(("-----BEGIN CERTIFICATE-----\nold\n".into(), now)),
            &names(),
            now,
        )
        .unwrap();
        let secret = to_secret(&settings, &material, None);
        assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
        assert_eq!(read_material(&secret).unwrap(), material);
    }

    fn now_second() -> i64 {
        Timestamp::now().as_second()
    }
}
