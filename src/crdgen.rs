//! The CustomResourceDefinitions `winflow crds` prints and `crds/` holds.

use kube::CustomResourceExt;

use crate::api::WindowsTaskIdentity;

/// The winflow CRDs as one multi-document YAML stream, in a stable order.
pub fn winflow_crds_yaml() -> String {
    let crds = [WindowsTaskIdentity::crd()];
    crds.iter()
        .map(|crd| serde_yaml_ng::to_string(crd).expect("CRDs serialize to YAML"))
        .collect::<Vec<_>>()
        .join("---\n")
}
