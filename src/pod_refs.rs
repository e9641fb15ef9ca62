//! Every place a pod spec names a Secret or a claim: volumes of any kind that take a Secret,
//! persistentVolumeClaim volumes, and the environment of init, app and ephemeral containers.
//! The webhook checks new pods against it, the identity controller pods that were already
//! there; one catalogue, so the two cannot disagree about what a pod reaches.

use k8s_openapi::api::core::v1::{EnvFromSource, EnvVar, LocalObjectReference, PodSpec, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

use crate::names::IDENTITY_LABEL;

/// A Secret or claim a pod reaches for, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Reference {
    Secret { name: String, place: String },
    Claim { name: String, place: String },
}

/// Every Secret and claim the pod spec names: volumes of any kind that take a Secret, and the
/// environment of every container (init, app and ephemeral).
pub(crate) fn references(spec: &PodSpec) -> Vec<Reference> {
    let mut found = Vec::new();
    for volume in spec.volumes.iter().flatten() {
        volume_references(volume, &mut found);
    }
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .map(|c| (c.name.as_str(), "container", c.env.as_deref(), c.env_from.as_deref()));
    let ephemeral = spec.ephemeral_containers.iter().flatten().map(|c| {
        (
            c.name.as_str(),
            "ephemeral container",
            c.env.as_deref(),
            c.env_from.as_deref(),
        )
    });
    for (name, kind, env, env_from) in containers.chain(ephemeral) {
        env_references(
            name,
            kind,
            env.unwrap_or_default(),
            env_from.unwrap_or_default(),
            &mut found,
        );
    }
    found
}

fn by_ref(reference: Option<&LocalObjectReference>) -> Option<&String> {
    reference.map(|r| &r.name)
}

fn volume_references(volume: &Volume, found: &mut Vec<Reference>) {
    let place = format!("volume {:?}", volume.name);
    let mut secret = |name: Option<&String>, how: &str| {
        if let Some(name) = name {
            found.push(Reference::Secret {
                name: name.clone(),
                place: format!("{place} ({how})"),
            });
        }
    };
    let secrets = [
        (volume.secret.as_ref().and_then(|s| s.secret_name.as_ref()), "secret"),
        (
            by_ref(volume.csi.as_ref().and_then(|c| c.node_publish_secret_ref.as_ref())),
            "csi nodePublishSecretRef",
        ),
        (volume.azure_file.as_ref().map(|a| &a.secret_name), "azureFile"),
        (
            by_ref(volume.cephfs.as_ref().and_then(|c| c.secret_ref.as_ref())),
            "cephfs",
        ),
        (
            by_ref(volume.cinder.as_ref().and_then(|c| c.secret_ref.as_ref())),
            "cinder",
        ),
        (
            by_ref(volume.flex_volume.as_ref().and_then(|f| f.secret_ref.as_ref())),
            "flexVolume",
        ),
        (
            by_ref(volume.iscsi.as_ref().and_then(|i| i.secret_ref.as_ref())),
            "iscsi",
        ),
        (by_ref(volume.rbd.as_ref().and_then(|r| r.secret_ref.as_ref())), "rbd"),
        (volume.scale_io.as_ref().map(|s| &s.secret_ref.name), "scaleIO"),
        (
            by_ref(volume.storageos.as_ref().and_then(|s| s.secret_ref.as_ref())),
            "storageos",
        ),
    ];
    for (name, how) in secrets {
        secret(name, how);
    }
    for source in volume.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
        secret(source.secret.as_ref().map(|s| &s.name), "projected secret");
    }
    if let Some(claim) = &volume.persistent_volume_claim {
        found.push(Reference::Claim {
            name: claim.claim_name.clone(),
            place,
        });
    }
}

fn env_references(container: &str, kind: &str, env: &[EnvVar], env_from: &[EnvFromSource], found: &mut Vec<Reference>) {
    for var in env {
        if let Some(key) = var.value_from.as_ref().and_then(|f| f.secret_key_ref.as_ref()) {
            found.push(Reference::Secret {
                name: key.name.clone(),
                place: format!("env {} of {kind} {container:?}", var.name),
            });
        }
    }
    for source in env_from {
        if let Some(secret) = &source.secret_ref {
            found.push(Reference::Secret {
                name: secret.name.clone(),
                place: format!("envFrom of {kind} {container:?}"),
            });
        }
    }
}

/// A pod as the identity controller caches it to find pods that reach an identity's
/// credentials: its name, namespace, identity label and references, decoded straight from
/// the API server's pod JSON. The spec is dropped as soon as its references are read, so the
/// cache holds a few strings per pod, whatever the pod's size.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(from = "WholePod")]
pub(crate) struct ReferringPod {
    pub metadata: ObjectMeta,
    /// The pod's `winflow.io/identity` label.
    pub identity: Option<String>,
    pub references: Vec<Reference>,
}

#[derive(Deserialize)]
struct WholePod {
    metadata: ObjectMeta,
    #[serde(default)]
    spec: Option<PodSpec>,
}

impl From<WholePod> for ReferringPod {
    fn from(pod: WholePod) -> Self {
        let identity = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(IDENTITY_LABEL))
            .cloned();
        Self {
            metadata: ObjectMeta {
                name: pod.metadata.name,
                namespace: pod.metadata.namespace,
                ..ObjectMeta::default()
            },
            identity,
            references: pod.spec.as_ref().map(references).unwrap_or_default(),
        }
    }
}

crate::task_pod::served_as_pods!(ReferringPod);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_pod_keeps_its_name_label_and_references_only() {
        let pod: ReferringPod = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "airflow", "uid": "u", "resourceVersion": "7",
                "labels": {"winflow.io/identity": "payroll", "app": "x"}, "annotations": {"a": "b"},
                "managedFields": [{"manager": "kubectl"}]},
            "spec": {
                "volumes": [{"name": "t", "secret": {"secretName": "payroll-token"}},
                            {"name": "d", "persistentVolumeClaim": {"claimName": "reports"}},
                            {"name": "c", "configMap": {"name": "cm"}}],
                "initContainers": [{"name": "init", "image": "i", "envFrom": [{"secretRef": {"name": "creds"}}]}],
                "containers": [{"name": "base", "image": "b",
                    "env": [{"name": "S", "valueFrom": {"secretKeyRef": {"name": "oidc", "key": "k"}}}]}],
                "ephemeralContainers": [{"name": "debug", "image": "d",
                    "env": [{"name": "E", "valueFrom": {"secretKeyRef": {"name": "host", "key": "k"}}}]}]},
            "status": {"phase": "Pending"}
        }))
        .unwrap();
        assert_eq!(
            pod.metadata,
            ObjectMeta {
                name: Some("p".into()),
                namespace: Some("airflow".into()),
                ..ObjectMeta::default()
            }
        );
        assert_eq!(pod.identity.as_deref(), Some("payroll"));
        let named: Vec<(&str, &str)> = pod
            .references
            .iter()
            .map(|r| match r {
                Reference::Secret { name, place } | Reference::Claim { name, place } => (name.as_str(), place.as_str()),
            })
            .collect();
        assert_eq!(
            named,
            [
                ("payroll-token", "volume \"t\" (secret)"),
                ("reports", "volume \"d\""),
                ("creds", "envFrom of container \"init\""),
                ("oidc", "env S of container \"base\""),
                ("host", "env E of ephemeral container \"debug\""),
            ]
        );
        let bare: ReferringPod = serde_json::from_value(serde_json::json!({"metadata": {"name": "q"}})).unwrap();
        assert!(bare.references.is_empty() && bare.identity.is_none());
    }
}
