//! `winflow render`: the objects the operator would create, offline.

use kube::core::DynamicObject;
use serde::Serialize;

use kube::ResourceExt;

use crate::api::{WindowsShare, WindowsTaskIdentity};
use crate::build::{self, IdentityChildren};
use crate::validate;

/// Renders every child of every WindowsTaskIdentity and WindowsShare in `documents` (a
/// multi-document YAML stream) as one YAML stream. Documents of other kinds are skipped;
/// invalid resources are an error naming the resource and the rule.
pub fn render(documents: &str, default_namespace: &str) -> Result<String, String> {
    let mut out = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(documents) {
        let value = yaml_document(document)?;
        if value.is_null() {
            continue;
        }
        let object: DynamicObject =
            serde_json::from_value(value.clone()).map_err(|e| format!("not a Kubernetes object: {e}"))?;
        let kind = object.types.as_ref().map(|t| t.kind.as_str()).unwrap_or_default();
        let describe = |namespace: &str| {
            format!(
                "{kind} {namespace}/{}",
                object.metadata.name.as_deref().unwrap_or_default()
            )
        };
        match kind {
            "WindowsTaskIdentity" => {
                let mut identity: WindowsTaskIdentity =
                    serde_json::from_value(value).map_err(|e| format!("{}: {e}", describe(default_namespace)))?;
                let namespace = identity
                    .metadata
                    .namespace
                    .get_or_insert_with(|| default_namespace.to_owned())
                    .clone();
                let children = build::children_for(&identity)
                    .map_err(|violations| format!("{}: {}", describe(&namespace), validate::describe(&violations)))?;
                out.extend(children_yaml(&children)?);
            }
            "WindowsShare" => {
                let mut share: WindowsShare =
                    serde_json::from_value(value).map_err(|e| format!("{}: {e}", describe(default_namespace)))?;
                let namespace = share
                    .metadata
                    .namespace
                    .get_or_insert_with(|| default_namespace.to_owned())
                    .clone();
                validate::check_share(&namespace, &share.name_any(), &share.spec)
                    .map_err(|violations| format!("{}: {}", describe(&namespace), validate::describe(&violations)))?;
                out.push(yaml(&build::with_spec_hash(build::persistent_volume_for(&share)))?);
                out.push(yaml(&build::with_spec_hash(build::persistent_volume_claim_for(
                    &share,
                )))?);
            }
            _ => {}
        }
    }
    Ok(out.join("---\n"))
}

fn yaml_document(document: serde_yaml_ng::Deserializer<'_>) -> Result<serde_json::Value, String> {
    serde::Deserialize::deserialize(document).map_err(|e| format!("invalid YAML: {e}"))
}

fn children_yaml(children: &IdentityChildren) -> Result<Vec<String>, String> {
    let mut docs = vec![
        yaml(&children.credential_spec)?,
        yaml(&children.role)?,
        yaml(&children.role_binding)?,
        yaml(&children.use_role)?,
        yaml(&children.use_role_binding)?,
    ];
    if let Some(sa) = &children.service_account {
        docs.push(yaml(sa)?);
    }
    docs.push(yaml(&children.pod_templates)?);
    Ok(docs)
}

/// k8s-openapi types serialize with `apiVersion` and `kind`, so the output can be applied.
fn yaml<T: Serialize>(object: &T) -> Result<String, String> {
    serde_yaml_ng::to_string(object).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_child_of_the_examples() {
        let input = format!(
            "{}\n---\n{}\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: other\n",
            include_str!("../examples/identity-domain-joined.yaml"),
            include_str!("../examples/identity-azure-key-vault.yaml")
        );
        let output = render(&input, "airflow").unwrap();
        let kinds: Vec<String> = serde_yaml_ng::Deserializer::from_str(&output)
            .map(|d| {
                let v: serde_json::Value = serde::Deserialize::deserialize(d).unwrap();
                format!(
                    "{}/{}",
                    v["kind"].as_str().unwrap(),
                    v["metadata"]["name"].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "GMSACredentialSpec/airflow.finance-reports",
                "Role/winflow-finance-reports-gmsa",
                "RoleBinding/winflow-finance-reports-gmsa",
                "Role/winflow-finance-reports-use",
                "RoleBinding/winflow-finance-reports-use",
                "ServiceAccount/finance-reports",
                "ConfigMap/finance-reports-pod-templates",
                "GMSACredentialSpec/airflow.payroll-export",
                "Role/winflow-payroll-export-gmsa",
                "RoleBinding/winflow-payroll-export-gmsa",
                "Role/winflow-payroll-export-use",
                "RoleBinding/winflow-payroll-export-use",
                "ServiceAccount/payroll-export",
                "ConfigMap/payroll-export-pod-templates",
            ]
        );
    }

    #[test]
    fn renders_the_use_role_binding_with_the_creators() {
        let output = render(include_str!("../examples/identity-azure-key-vault.yaml"), "airflow").unwrap();
        let docs: Vec<serde_json::Value> = serde_yaml_ng::Deserializer::from_str(&output)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        let mut identity: WindowsTaskIdentity =
            serde_yaml_ng::from_str(include_str!("../examples/identity-azure-key-vault.yaml")).unwrap();
        identity.metadata.namespace = Some("airflow".into());
        assert_eq!(docs.len(), build::children_for(&identity).unwrap().count());
        let binding = docs
            .iter()
            .find(|d| d["kind"] == "RoleBinding" && d["metadata"]["name"] == "winflow-payroll-export-use")
            .unwrap();
        assert_eq!(
            binding["subjects"],
            serde_json::json!([
                {"kind": "ServiceAccount", "name": "airflow-scheduler", "namespace": "airflow"},
                {"kind": "ServiceAccount", "name": "airflow-worker", "namespace": "airflow"},
            ])
        );
        assert_eq!(binding["roleRef"]["name"], "winflow-payroll-export-use");
    }

    #[test]
    fn renders_shares_as_volume_and_claim() {
        let output = render(include_str!("../examples/share-reports.yaml"), "airflow").unwrap();
        let docs: Vec<serde_json::Value> = serde_yaml_ng::Deserializer::from_str(&output)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0]["kind"], "PersistentVolume");
        assert_eq!(
            docs[0]["spec"]["csi"]["volumeAttributes"]["source"],
            "//fs01.corp.example.com/reports/finance"
        );
        assert_eq!(docs[1]["kind"], "PersistentVolumeClaim");
        assert_eq!(docs[1]["metadata"]["namespace"], "airflow");
    }

    #[test]
    fn invalid_share_is_named_in_the_error() {
        let input = include_str!("../examples/share-reports.yaml")
            .replace("fs01.corp.example.com", "smb.files.svc.cluster.local");
        let err = render(&input, "airflow").unwrap_err();
        assert!(
            err.contains("WindowsShare airflow/finance-reports-share") && err.contains("spec.server"),
            "{err}"
        );
    }

    #[test]
    fn invalid_identity_is_named_in_the_error() {
        let input = include_str!("../examples/identity-domain-joined.yaml")
            .replace("svc-reports", "svc-reports-with-a-long-name");
        let err = render(&input, "airflow").unwrap_err();
        assert!(err.contains("airflow/finance-reports"), "{err}");
        assert!(err.contains("spec.gmsa.account"), "{err}");
    }
}
