//! The CustomResourceDefinitions `winflow crds` prints and `crds/` holds, one file per CRD.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::api::{WindowsShare, WindowsTaskIdentity};

/// winflow's CRDs, in a stable order.
pub fn winflow_crds() -> Vec<CustomResourceDefinition> {
    vec![WindowsTaskIdentity::crd(), WindowsShare::crd()]
}

pub fn crd_yaml(crd: &CustomResourceDefinition) -> String {
    serde_yaml_ng::to_string(crd).expect("CRDs serialize to YAML")
}

/// The file in `crds/` that holds a CRD: `<crd name>.yaml`.
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or_default())
}

/// All winflow CRDs as one multi-document YAML stream.
pub fn winflow_crds_yaml() -> String {
    winflow_crds().iter().map(crd_yaml).collect::<Vec<_>>().join("---\n")
}
