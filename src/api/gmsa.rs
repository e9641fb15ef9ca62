//! The upstream `GMSACredentialSpec` (`windows.k8s.io/v1`, cluster scoped). Its root holds
//! `credspec` instead of `spec`/`status`, so the `kube::Resource` impl is written by hand.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::ClusterResourceScope;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "windows.k8s.io";
pub const VERSION: &str = "v1";
pub const KIND: &str = "GMSACredentialSpec";
pub const PLURAL: &str = "gmsacredentialspecs";

/// The upstream CustomResourceDefinition, for clusters that lack it (shipped in `crds/`).
pub const UPSTREAM_CRD_YAML: &str = include_str!("../../crds/gmsacredentialspecs.windows.k8s.io.yaml");

/// A gMSA credential spec as the Windows container runtime consumes it. The content is kept
/// as JSON so that credential specs winflow does not manage are read without loss.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct GMSACredentialSpec {
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub credspec: serde_json::Value,
}

impl GMSACredentialSpec {
    pub fn new(metadata: ObjectMeta, credspec: serde_json::Value) -> Self {
        Self {
            api_version: format!("{GROUP}/{VERSION}"),
            kind: KIND.to_owned(),
            metadata,
            credspec,
        }
    }
}

impl kube::Resource for GMSACredentialSpec {
    type DynamicType = ();
    type Scope = ClusterResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        KIND.into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        GROUP.into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        VERSION.into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        PLURAL.into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::Resource;

    #[test]
    fn upstream_crd_matches_the_resource_impl() {
        let crd: CustomResourceDefinition = serde_yaml_ng::from_str(UPSTREAM_CRD_YAML).unwrap();
        assert_eq!(crd.spec.group, GMSACredentialSpec::group(&()));
        assert_eq!(crd.spec.names.plural, GMSACredentialSpec::plural(&()));
        assert_eq!(crd.spec.names.kind, GMSACredentialSpec::kind(&()));
        assert_eq!(crd.spec.scope, "Cluster");
        let storage: Vec<_> = crd
            .spec
            .versions
            .iter()
            .filter(|v| v.storage)
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(storage, [VERSION]);
        let v1alpha1 = crd.spec.versions.iter().find(|v| v.name == "v1alpha1").unwrap();
        assert!(v1alpha1.served && v1alpha1.deprecated == Some(true));
        let annotations = crd.metadata.annotations.unwrap();
        assert!(annotations.contains_key("api-approved.kubernetes.io"));
    }
}
