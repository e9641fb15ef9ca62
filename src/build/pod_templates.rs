//! The Airflow `pod_template_file`s: a Windows one for the KubernetesPodOperator and a Linux
//! KubernetesExecutor worker one. Airflow requires the first container to be named `base`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, EnvVar, PersistentVolumeClaimVolumeSource, Pod, PodOS, PodSecurityContext, PodSpec, Volume,
    VolumeMount, WindowsSecurityContextOptions,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use sha2::{Digest, Sha256};

use super::meta::{identity_name, identity_namespace, managed_labels, namespaced_meta};
use super::token_env::{Os, token_wiring};
use crate::api::WindowsTaskIdentity;
use crate::api::identity::ShareMount;
use crate::names::{
    EXECUTOR_TEMPLATE_KEY, ROLE_EXECUTOR, ROLE_LABEL, ROLE_WINDOWS_TASK, WINDOWS_TEMPLATE_KEY, credential_spec_name,
    pod_templates_config_map_name,
};

/// Airflow's name for the task container, which it looks up in the template.
pub(super) const BASE_CONTAINER: &str = "base";
const OS_LABEL: &str = "kubernetes.io/os";

fn template_meta(identity: &WindowsTaskIdentity, name: &str, role: &str) -> ObjectMeta {
    let mut labels = managed_labels(identity);
    labels.insert(ROLE_LABEL.to_owned(), role.to_owned());
    ObjectMeta {
        name: Some(name.to_owned()),
        labels: Some(labels),
        ..ObjectMeta::default()
    }
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        value_from: None,
    }
}

/// Variables that tell the task which identity it runs as.
pub fn identity_env(identity: &WindowsTaskIdentity) -> Vec<EnvVar> {
    vec![
        env("WINFLOW_IDENTITY", identity_name(identity)),
        env("WINFLOW_GMSA_ACCOUNT", &identity.spec.gmsa.account),
        env("WINFLOW_DOMAIN", &identity.spec.domain.dns_name),
    ]
}

/// Pod volume name of a share: `share-<name>` when that is a valid volume name (a DNS label),
/// otherwise `share-` and a digest of the name.
pub(super) fn share_volume_name(share: &str) -> String {
    let plain = format!("share-{share}");
    if plain.len() <= 63 && !share.contains('.') {
        return plain;
    }
    let digest = Sha256::digest(share.as_bytes());
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("share-{hex}")
}

/// Each share mounts its claim (named like the share), read-only unless the entry says otherwise.
pub fn share_volumes(shares: &[ShareMount]) -> (Vec<Volume>, Vec<VolumeMount>) {
    shares
        .iter()
        .map(|share| {
            let name = share_volume_name(&share.name);
            let volume = Volume {
                name: name.clone(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: crate::api::refs::share_claim_name(&share.name),
                    read_only: Some(share.read_only),
                }),
                ..Volume::default()
            };
            let mount = VolumeMount {
                name,
                mount_path: share.mount_path.clone(),
                read_only: Some(share.read_only),
                ..VolumeMount::default()
            };
            (volume, mount)
        })
        .unzip()
}

/// The KubernetesPodOperator template: a Windows pod running as the gMSA.
pub fn windows_pod_template(identity: &WindowsTaskIdentity) -> Pod {
    let settings = &identity.spec.pod;
    let mut node_selector = settings.node_selector.clone();
    node_selector.insert(OS_LABEL.to_owned(), "windows".to_owned());
    let mut container_env = identity_env(identity);
    container_env.extend(settings.env.iter().cloned());
    let (mut volumes, mut mounts) = share_volumes(&identity.spec.shares);
    if let Some(token) = token_wiring(identity, Os::Windows) {
        container_env.extend(token.env);
        volumes.push(token.volume);
        mounts.push(token.mount);
    }
    Pod {
        metadata: template_meta(identity, "winflow-windows-task", ROLE_WINDOWS_TASK),
        spec: Some(PodSpec {
            os: Some(PodOS {
                name: "windows".to_owned(),
            }),
            service_account_name: Some(identity.spec.service_account.name.clone()),
            // The task talks to Active Directory, not to the Kubernetes API.
            automount_service_account_token: Some(false),
            node_selector: Some(node_selector),
            tolerations: (!settings.tolerations.is_empty()).then(|| settings.tolerations.clone()),
            restart_policy: Some("Never".to_owned()),
            security_context: Some(PodSecurityContext {
                windows_options: Some(WindowsSecurityContextOptions {
                    gmsa_credential_spec_name: Some(credential_spec_name(
                        identity_namespace(identity),
                        identity_name(identity),
                    )),
                    run_as_user_name: Some(settings.run_as_user_name.clone()),
                    ..WindowsSecurityContextOptions::default()
                }),
                ..PodSecurityContext::default()
            }),
            containers: vec![Container {
                name: BASE_CONTAINER.to_owned(),
                image: identity.spec.airflow.image.clone(),
                env: Some(container_env),
                resources: settings.resources.clone(),
                volume_mounts: (!mounts.is_empty()).then_some(mounts),
                ..Container::default()
            }],
            volumes: (!volumes.is_empty()).then_some(volumes),
            ..PodSpec::default()
        }),
        status: None,
    }
}

/// The KubernetesExecutor template: a Linux Airflow worker that knows its identity.
pub fn executor_pod_template(identity: &WindowsTaskIdentity) -> Pod {
    let mut env = identity_env(identity);
    let token = token_wiring(identity, Os::Linux);
    if let Some(token) = &token {
        env.extend(token.env.iter().cloned());
    }
    Pod {
        metadata: template_meta(identity, "winflow-executor", ROLE_EXECUTOR),
        spec: Some(PodSpec {
            service_account_name: Some(identity.spec.service_account.name.clone()),
            node_selector: Some(BTreeMap::from([(OS_LABEL.to_owned(), "linux".to_owned())])),
            restart_policy: Some("Never".to_owned()),
            containers: vec![Container {
                name: BASE_CONTAINER.to_owned(),
                image: identity.spec.airflow.worker_image.clone(),
                env: Some(env),
                volume_mounts: token.as_ref().map(|t| vec![t.mount.clone()]),
                ..Container::default()
            }],
            volumes: token.map(|t| vec![t.volume]),
            ..PodSpec::default()
        }),
        status: None,
    }
}

fn to_yaml(pod: &Pod) -> String {
    serde_yaml_ng::to_string(pod).expect("pods serialize to YAML")
}

/// The ConfigMap `<name>-pod-templates`, to be mounted as a directory (not `subPath`) so that
/// Airflow sees updates without a restart.
pub fn pod_templates_for(identity: &WindowsTaskIdentity) -> ConfigMap {
    ConfigMap {
        metadata: namespaced_meta(identity, pod_templates_config_map_name(identity_name(identity))),
        data: Some(BTreeMap::from([
            (
                WINDOWS_TEMPLATE_KEY.to_owned(),
                to_yaml(&windows_pod_template(identity)),
            ),
            (
                EXECUTOR_TEMPLATE_KEY.to_owned(),
                to_yaml(&executor_pod_template(identity)),
            ),
        ])),
        ..ConfigMap::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    fn parse(config_map: &ConfigMap, key: &str) -> Pod {
        serde_yaml_ng::from_str(&config_map.data.as_ref().unwrap()[key]).unwrap()
    }

    #[test]
    fn windows_template_carries_the_identity() {
        let identity = fixtures::domain_joined();
        let pod = parse(&pod_templates_for(&identity), WINDOWS_TEMPLATE_KEY);
        assert_eq!(pod.metadata.name.as_deref(), Some("winflow-windows-task"));
        let labels = pod.metadata.labels.unwrap();
        assert_eq!(labels["winflow.io/identity"], "finance-reports");
        assert_eq!(labels["winflow.io/role"], "windows-task");
        let spec = pod.spec.unwrap();
        assert_eq!(spec.os.unwrap().name, "windows");
        assert_eq!(spec.service_account_name.as_deref(), Some("finance-reports"));
        let selector = spec.node_selector.unwrap();
        assert_eq!(selector["kubernetes.io/os"], "windows");
        assert_eq!(selector["node.kubernetes.io/windows-build"], "10.0.20348");
        assert_eq!(spec.tolerations.unwrap()[0].key.as_deref(), Some("os"));
        let windows = spec.security_context.unwrap().windows_options.unwrap();
        assert_eq!(
            windows.gmsa_credential_spec_name.as_deref(),
            Some("airflow.finance-reports")
        );
        assert_eq!(windows.run_as_user_name.as_deref(), Some("ContainerUser"));
        let base = &spec.containers[0];
        assert_eq!(base.name, "base");
        assert_eq!(
            base.image.as_deref(),
            Some("registry.example.com/finance/reports-win:1.4")
        );
        let env: Vec<_> = base.env.as_ref().unwrap().iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            env,
            [
                "WINFLOW_IDENTITY",
                "WINFLOW_GMSA_ACCOUNT",
                "WINFLOW_DOMAIN",
                "REPORTS_OUTPUT"
            ]
        );
        assert!(base.resources.as_ref().unwrap().limits.is_some());
    }

    #[test]
    fn shares_become_claim_volumes_with_their_read_only_flags() {
        let mut identity = fixtures::domain_joined();
        identity.spec.shares = vec![
            ShareMount {
                name: "reports".into(),
                mount_path: "C:\\data\\reports".into(),
                read_only: true,
            },
            ShareMount {
                name: "scratch".into(),
                mount_path: "C:\\scratch".into(),
                read_only: false,
            },
        ];
        let pod = windows_pod_template(&identity);
        let spec = pod.spec.unwrap();
        let volumes = spec.volumes.unwrap();
        let claims: Vec<(&str, &str, Option<bool>)> = volumes
            .iter()
            .map(|v| {
                let claim = v.persistent_volume_claim.as_ref().unwrap();
                (v.name.as_str(), claim.claim_name.as_str(), claim.read_only)
            })
            .collect();
        assert_eq!(
            claims,
            [
                ("share-reports", "reports", Some(true)),
                ("share-scratch", "scratch", Some(false))
            ]
        );
        let mounts = spec.containers[0].volume_mounts.as_ref().unwrap();
        assert_eq!(mounts[0].mount_path, "C:\\data\\reports");
        assert_eq!((mounts[0].read_only, mounts[1].read_only), (Some(true), Some(false)));
    }

    #[test]
    fn volume_names_stay_valid() {
        assert_eq!(share_volume_name("reports"), "share-reports");
        let long = share_volume_name(&"a".repeat(80));
        assert!(long.len() <= 63 && long.starts_with("share-"));
        assert_ne!(share_volume_name("a.b"), "share-a.b");
    }

    #[test]
    fn executor_template_is_a_linux_worker() {
        let identity = fixtures::key_vault();
        let pod = parse(&pod_templates_for(&identity), EXECUTOR_TEMPLATE_KEY);
        assert_eq!(pod.metadata.name.as_deref(), Some("winflow-executor"));
        assert_eq!(pod.metadata.labels.as_ref().unwrap()["winflow.io/role"], "executor");
        let spec = pod.spec.unwrap();
        assert!(spec.os.is_none());
        assert!(spec.security_context.is_none());
        assert_eq!(spec.node_selector.unwrap()["kubernetes.io/os"], "linux");
        let base = &spec.containers[0];
        assert_eq!(base.name, "base");
        assert_eq!(base.image.as_deref(), Some("registry.example.com/airflow/worker:3.3.2"));
        let env: BTreeMap<_, _> = base
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| (e.name.as_str(), e.value.as_deref().unwrap()))
            .collect();
        assert_eq!(env["WINFLOW_IDENTITY"], "payroll-export");
        assert_eq!(env["WINFLOW_GMSA_ACCOUNT"], "svc-payroll");
        assert_eq!(env["WINFLOW_DOMAIN"], "corp.example.com");
    }

    #[test]
    fn both_templates_hand_over_the_token_when_the_identity_has_one() {
        let plain = pod_templates_for(&fixtures::key_vault());
        let windows = parse(&plain, WINDOWS_TEMPLATE_KEY).spec.unwrap();
        let env = windows.containers[0].env.as_ref().unwrap();
        assert!(!env.iter().any(|e| e.name.starts_with("WINFLOW_ACCESS")));

        let templates = pod_templates_for(&fixtures::key_vault_with_token());
        for (key, dir) in [
            (WINDOWS_TEMPLATE_KEY, r"C:\var\run\secrets\winflow.io\token"),
            (EXECUTOR_TEMPLATE_KEY, "/var/run/secrets/winflow.io/token"),
        ] {
            let spec = parse(&templates, key).spec.unwrap();
            let base = &spec.containers[0];
            let env: Vec<&str> = base.env.as_ref().unwrap().iter().map(|e| e.name.as_str()).collect();
            for wanted in [
                "WINFLOW_IDENTITY",
                "WINFLOW_ACCESS_TOKEN",
                "WINFLOW_TOKEN_EXPIRES_AT",
                "WINFLOW_TOKEN_FILE",
            ] {
                assert!(env.contains(&wanted), "{key}: {env:?}");
            }
            let mount = base
                .volume_mounts
                .as_ref()
                .unwrap()
                .iter()
                .find(|m| m.name == "winflow-token")
                .unwrap();
            assert_eq!(mount.mount_path, dir, "{key}");
            let volume = spec
                .volumes
                .as_ref()
                .unwrap()
                .iter()
                .find(|v| v.name == "winflow-token")
                .unwrap();
            assert_eq!(
                volume.secret.as_ref().unwrap().secret_name.as_deref(),
                Some("payroll-export-token")
            );
        }
    }
}
