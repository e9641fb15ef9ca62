//! `WindowsShare`: an SMB share that Windows task pods mount through the SMB CSI driver.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

// Each `printcolumn(...)` repeats `type_`, which clippy mistakes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "winflow.io",
    version = "v1alpha1",
    kind = "WindowsShare",
    namespaced,
    status = "WindowsShareStatus",
    shortname = "wsh",
    category = "winflow",
    doc = "An SMB share for Windows task pods: winflow keeps a static PersistentVolume (SMB CSI driver) and a PersistentVolumeClaim bound to it. Deleting a share never deletes data.",
    printcolumn(name = "Source", type_ = "string", json_path = ".status.source"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(name = "Claim", type_ = "string", json_path = ".status.persistentVolumeClaimName"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!self.server.contains('/') && !self.server.contains('\\\\')",
        "fieldPath": ".server",
        "messageExpression": "'\"' + self.server + '\" must be only the server\\'s name or IP address, without slashes; the share goes in spec.share'"
    },
    {
        "rule": "self.server.contains('/') || self.server.contains('\\\\') || !self.server.matches('(?i)(\\\\.svc|\\\\.cluster\\\\.local)\\\\.*$|\\\\.svc\\\\.')",
        "fieldPath": ".server",
        "messageExpression": "'\"' + self.server + '\" is a cluster-internal name, which Windows nodes cannot resolve (the SMB driver mounts from the node); use a name in the node\\'s DNS or an IP address'"
    },
    {
        "rule": "!has(self.subDir) || !(self.subDir.contains('\\\\') || self.subDir.matches('(^|/)\\\\.{0,2}(/|$)'))",
        "fieldPath": ".subDir",
        "messageExpression": "'\"' + self.subDir + '\" is not a relative folder path (allowed: folder names separated by \\'/\\', no leading or trailing \\'/\\', no \\'.\\' or \\'..\\')'"
    }
]))]
pub struct WindowsShareSpec {
    /// File server: a DNS name or IP address that the Windows nodes resolve themselves
    /// (cluster-internal `*.svc` names do not resolve there).
    #[schemars(length(min = 1, max = 253))]
    pub server: String,
    /// Share name on the server, for example `reports`.
    #[schemars(length(min = 1, max = 80))]
    pub share: String,
    /// Folder inside the share to mount instead of its root, with `/` separators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub sub_dir: Option<String>,
    /// Secret in this namespace with keys `username`, `password` and optionally `domain`.
    pub credentials_secret_ref: LocalSecretReference,
    /// Nominal size of the volume (SMB does not enforce it).
    #[serde(default = "default_capacity")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"))]
    pub capacity: String,
    /// Offer the volume read-only to every pod.
    #[serde(default)]
    pub read_only: bool,
}

/// A Secret in the same namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalSecretReference {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// What winflow observed and did.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WindowsShareStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (reasons `Bound`, `Pending`, `InvalidSpec`, `SecretMissing`, `Conflict`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// `//server/share[/subDir]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The static PersistentVolume (cluster scoped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_name: Option<String>,
    /// The PersistentVolumeClaim pods mount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim_name: Option<String>,
}

fn default_capacity() -> String {
    "100Gi".to_owned()
}
