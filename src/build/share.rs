//! The static PersistentVolume (SMB CSI driver) and the PersistentVolumeClaim of a share.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    CSIPersistentVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeSpec, SecretReference, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use crate::api::share::{WindowsShare, WindowsShareSpec};
use crate::names::{MANAGED_BY_LABEL, MANAGED_BY_VALUE, SHARE_LABEL, SMB_CSI_DRIVER, persistent_volume_name};

/// `//server/share[/subDir]`, as the SMB driver expects `volumeAttributes.source`.
pub fn share_source(spec: &WindowsShareSpec) -> String {
    match &spec.sub_dir {
        Some(sub_dir) => format!("//{}/{}/{sub_dir}", spec.server, spec.share),
        None => format!("//{}/{}", spec.server, spec.share),
    }
}

/// Unique per share: the kubelet stages one mount per handle, so two shares of one server
/// and share name (different subDirs) must not share it. The form is the driver's documented
/// static `server/share#subdir#id` with the subdir left empty: the folder is in `source`.
pub fn volume_handle(namespace: &str, name: &str, spec: &WindowsShareSpec) -> String {
    format!(
        "{}/{}##{}",
        spec.server,
        spec.share,
        persistent_volume_name(namespace, name)
    )
}

fn share_labels(share: &WindowsShare) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY_VALUE.to_owned()),
        (SHARE_LABEL.to_owned(), share.name_any()),
    ])
}

fn access_modes(spec: &WindowsShareSpec) -> Vec<String> {
    vec![
        if spec.read_only {
            "ReadOnlyMany"
        } else {
            "ReadWriteMany"
        }
        .to_owned(),
    ]
}

/// The static volume, pre-bound to the share's claim. `Retain`: deleting the volume never
/// reaches the data on the server.
pub fn persistent_volume_for(share: &WindowsShare) -> PersistentVolume {
    let namespace = share.namespace().unwrap_or_default();
    let name = share.name_any();
    let spec = &share.spec;
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some(persistent_volume_name(&namespace, &name)),
            labels: Some(share_labels(share)),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeSpec {
            capacity: Some(BTreeMap::from([(
                "storage".to_owned(),
                Quantity(spec.capacity.clone()),
            )])),
            access_modes: Some(access_modes(spec)),
            persistent_volume_reclaim_policy: Some("Retain".to_owned()),
            storage_class_name: Some(String::new()),
            volume_mode: Some("Filesystem".to_owned()),
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("PersistentVolumeClaim".to_owned()),
                namespace: Some(namespace.clone()),
                name: Some(crate::api::refs::share_claim(share)),
                ..ObjectReference::default()
            }),
            csi: Some(CSIPersistentVolumeSource {
                driver: SMB_CSI_DRIVER.to_owned(),
                volume_handle: volume_handle(&namespace, &name, spec),
                read_only: spec.read_only.then_some(true),
                volume_attributes: Some(BTreeMap::from([("source".to_owned(), share_source(spec))])),
                node_stage_secret_ref: Some(SecretReference {
                    name: Some(spec.credentials_secret_ref.name.clone()),
                    namespace: Some(namespace),
                }),
                ..CSIPersistentVolumeSource::default()
            }),
            ..PersistentVolumeSpec::default()
        }),
        status: None,
    }
}

/// The claim pods mount, bound to the static volume by name; owned by the share.
pub fn persistent_volume_claim_for(share: &WindowsShare) -> PersistentVolumeClaim {
    let namespace = share.namespace().unwrap_or_default();
    let name = share.name_any();
    let spec = &share.spec;
    let owner = share.meta().uid.clone().map(|uid| OwnerReference {
        api_version: WindowsShare::api_version(&()).into_owned(),
        kind: WindowsShare::kind(&()).into_owned(),
        name: name.clone(),
        uid,
        controller: Some(true),
        block_owner_deletion: Some(true),
    });
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(crate::api::refs::share_claim(share)),
            namespace: Some(namespace.clone()),
            labels: Some(share_labels(share)),
            owner_references: owner.map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(access_modes(spec)),
            storage_class_name: Some(String::new()),
            volume_mode: Some("Filesystem".to_owned()),
            volume_name: Some(persistent_volume_name(&namespace, &name)),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    Quantity(spec.capacity.clone()),
                )])),
                limits: None,
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    #[test]
    fn volume_uses_the_smb_driver_and_keeps_data() {
        let share = fixtures::share();
        let pv = persistent_volume_for(&share);
        assert_eq!(pv.metadata.name.as_deref(), Some("airflow.finance-reports-share"));
        let spec = pv.spec.unwrap();
        assert_eq!(spec.persistent_volume_reclaim_policy.as_deref(), Some("Retain"));
        assert_eq!(spec.storage_class_name.as_deref(), Some(""));
        assert_eq!(spec.access_modes.unwrap(), ["ReadWriteMany"]);
        let claim = spec.claim_ref.unwrap();
        assert_eq!(
            (claim.namespace.as_deref(), claim.name.as_deref()),
            (Some("airflow"), Some("finance-reports-share"))
        );
        let csi = spec.csi.unwrap();
        assert_eq!(csi.driver, "smb.csi.k8s.io");
        assert_eq!(
            csi.volume_handle,
            "fs01.corp.example.com/reports##airflow.finance-reports-share"
        );
        assert_eq!(
            csi.volume_attributes.unwrap()["source"],
            "//fs01.corp.example.com/reports/finance"
        );
        let secret = csi.node_stage_secret_ref.unwrap();
        assert_eq!(
            (secret.name.as_deref(), secret.namespace.as_deref()),
            (Some("smb-finance"), Some("airflow"))
        );
    }

    #[test]
    fn claim_is_bound_by_volume_name_and_owned() {
        let share = fixtures::share();
        let pvc = persistent_volume_claim_for(&share);
        assert_eq!(pvc.metadata.name.as_deref(), Some("finance-reports-share"));
        assert_eq!(pvc.metadata.owner_references.unwrap()[0].kind, "WindowsShare");
        let spec = pvc.spec.unwrap();
        assert_eq!(spec.volume_name.as_deref(), Some("airflow.finance-reports-share"));
        assert_eq!(spec.storage_class_name.as_deref(), Some(""));
        assert_eq!(
            spec.resources.unwrap().requests.unwrap()["storage"],
            Quantity("100Gi".into())
        );
    }

    #[test]
    fn same_share_with_other_sub_dirs_gets_distinct_handles() {
        let mut a = fixtures::share();
        let mut b = fixtures::share();
        a.metadata.name = Some("a".into());
        b.metadata.name = Some("b".into());
        b.spec.sub_dir = Some("payroll".into());
        assert_ne!(
            volume_handle("airflow", "a", &a.spec),
            volume_handle("airflow", "b", &b.spec)
        );
    }

    #[test]
    fn read_only_shares_are_read_only_everywhere() {
        let mut share = fixtures::share();
        share.spec.read_only = true;
        let pv = persistent_volume_for(&share).spec.unwrap();
        assert_eq!(pv.access_modes.unwrap(), ["ReadOnlyMany"]);
        assert_eq!(pv.csi.unwrap().read_only, Some(true));
        let pvc = persistent_volume_claim_for(&share).spec.unwrap();
        assert_eq!(pvc.access_modes.unwrap(), ["ReadOnlyMany"]);
    }
}
