//! The `GMSACredentialSpec` in Microsoft's credential spec layout.

use serde::Serialize;

use super::meta::{cluster_meta, identity_name, identity_namespace};
use crate::api::GMSACredentialSpec;
use crate::api::identity::{HostAccount, WindowsTaskIdentity, WindowsTaskIdentitySpec};
use crate::names::credential_spec_name;

/// CCG plugin class GUIDs, as Microsoft and the cloud vendors publish them.
const AZURE_KEY_VAULT_PLUGIN: &str = "{CCC2A336-D7F3-4818-A213-272B7924213E}";
const AWS_SECRETS_MANAGER_PLUGIN: &str = "{859E1386-BDB4-49E8-85C7-3070B13920E1}";
const KUBERNETES_SECRET_PLUGIN: &str = "{e4781092-f116-4b79-b55e-28eb6a224e26}";

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct CredentialSpecDocument {
    cms_plugins: Vec<&'static str>,
    domain_join_config: DomainJoinConfig,
    active_directory_config: ActiveDirectoryConfig,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DomainJoinConfig {
    sid: String,
    machine_account_name: String,
    guid: String,
    dns_tree_name: String,
    dns_name: String,
    net_bios_name: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ActiveDirectoryConfig {
    group_managed_service_accounts: Vec<GroupManagedServiceAccount>,
    #[serde(skip_serializing_if = "Option::is_none")]
    host_account_config: Option<HostAccountConfig>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct GroupManagedServiceAccount {
    name: String,
    scope: String,
}

#[derive(Serialize)]
struct HostAccountConfig {
    #[serde(rename = "PortableCcgVersion")]
    portable_ccg_version: String,
    #[serde(rename = "PluginGUID")]
    plugin_guid: String,
    #[serde(rename = "PluginInput")]
    plugin_input: String,
}

/// The credential spec content (the `credspec` field) for an identity in `namespace`.
pub fn credential_spec_document(namespace: &str, spec: &WindowsTaskIdentitySpec) -> serde_json::Value {
    let domain = &spec.domain;
    let accounts = std::iter::once(&spec.gmsa.account).chain(&spec.gmsa.additional_accounts);
    // Each account is listed under both the DNS and the NetBIOS domain name, as
    // New-CredentialSpec does, so that either form of lookup succeeds.
    let group_managed_service_accounts = accounts
        .flat_map(|account| {
            [&domain.dns_name, &domain.netbios_name].map(|scope| GroupManagedServiceAccount {
                name: account.clone(),
                scope: scope.clone(),
            })
        })
        .collect();
    let document = CredentialSpecDocument {
        cms_plugins: vec!["ActiveDirectory"],
        domain_join_config: DomainJoinConfig {
            sid: domain.sid.clone(),
            machine_account_name: spec.gmsa.account.clone(),
            guid: domain.guid.clone(),
            dns_tree_name: domain.forest_name.clone().unwrap_or_else(|| domain.dns_name.clone()),
            dns_name: domain.dns_name.clone(),
            net_bios_name: domain.netbios_name.clone(),
        },
        active_directory_config: ActiveDirectoryConfig {
            group_managed_service_accounts,
            host_account_config: spec
                .host_account
                .as_ref()
                .and_then(|h| host_account_config(namespace, h)),
        },
    };
    serde_json::to_value(document).expect("credential spec serializes")
}

fn host_account_config(namespace: &str, host: &HostAccount) -> Option<HostAccountConfig> {
    let (plugin_guid, plugin_input) = if let Some(akv) = &host.azure_key_vault {
        (
            AZURE_KEY_VAULT_PLUGIN.to_owned(),
            format!(
                "ObjectId={};SecretUri={}",
                akv.managed_identity_object_id, akv.secret_uri
            ),
        )
    } else if let Some(aws) = &host.aws_secrets_manager {
        (
            AWS_SECRETS_MANAGER_PLUGIN.to_owned(),
            serde_json::json!({ "credentialArn": aws.secret_arn }).to_string(),
        )
    } else if let Some(secret) = &host.kubernetes_secret {
        (
            KUBERNETES_SECRET_PLUGIN.to_owned(),
            format!("{namespace}:{}", secret.name),
        )
    } else {
        let custom = host.custom.as_ref()?;
        (custom.plugin_guid.clone(), custom.plugin_input.clone())
    };
    Some(HostAccountConfig {
        portable_ccg_version: host.portable_ccg_version.clone(),
        plugin_guid,
        plugin_input,
    })
}

/// The `HostAccountConfig.PluginInput` winflow writes for an identity in `namespace`, if it
/// has a host account: whoever presents it to a node's credential guard gets the identity's
/// gMSA, so the webhook treats it as naming the identity.
pub fn host_account_plugin_input(namespace: &str, spec: &WindowsTaskIdentitySpec) -> Option<String> {
    let host = spec.host_account.as_ref()?;
    host_account_config(namespace, host).map(|config| config.plugin_input)
}

/// The cluster-scoped `GMSACredentialSpec` named `<namespace>.<name>`.
pub fn credential_spec_for(identity: &WindowsTaskIdentity) -> GMSACredentialSpec {
    let namespace = identity_namespace(identity);
    let name = credential_spec_name(namespace, identity_name(identity));
    GMSACredentialSpec::new(
        cluster_meta(identity, name),
        credential_spec_document(namespace, &identity.spec),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::identity::{AwsSecretsManagerHostAccount, CustomHostAccount, KubernetesSecretHostAccount};
    use crate::fixtures;
    use serde_json::json;

    #[test]
    fn domain_joined_layout() {
        let spec = credential_spec_for(&fixtures::domain_joined());
        assert_eq!(spec.metadata.name.as_deref(), Some("airflow.finance-reports"));
        assert_eq!(
            spec.credspec,
            json!({
                "CmsPlugins": ["ActiveDirectory"],
                "DomainJoinConfig": {
                    "Sid": "S-1-5-21-3623811015-3361044348-30300820",
                    "MachineAccountName": "svc-reports",
                    "Guid": "244818ae-87ca-4fcd-92ec-e79e5252348a",
                    "DnsTreeName": "corp.example.com",
                    "DnsName": "corp.example.com",
                    "NetBiosName": "CORP"
                },
                "ActiveDirectoryConfig": {
                    "GroupManagedServiceAccounts": [
                        {"Name": "svc-reports", "Scope": "corp.example.com"},
                        {"Name": "svc-reports", "Scope": "CORP"},
                        {"Name": "svc-sql-reader", "Scope": "corp.example.com"},
                        {"Name": "svc-sql-reader", "Scope": "CORP"}
                    ]
                }
            })
        );
    }

    fn host_config(namespace: &str, spec: &WindowsTaskIdentitySpec) -> serde_json::Value {
        credential_spec_document(namespace, spec)["ActiveDirectoryConfig"]["HostAccountConfig"].clone()
    }

    #[test]
    fn host_account_plugins() {
        let mut spec = fixtures::key_vault_spec();
        assert_eq!(
            host_config("airflow", &spec),
            json!({
                "PortableCcgVersion": "1",
                "PluginGUID": "{CCC2A336-D7F3-4818-A213-272B7924213E}",
                "PluginInput": "ObjectId=6e7a5f1c-2b1d-4c39-9f3e-8d2a1b0c4e5f;SecretUri=https://winflow-kv.vault.azure.net/secrets/gmsa-reader"
            })
        );
        let host = spec.host_account.as_mut().unwrap();
        host.azure_key_vault = None;
        host.aws_secrets_manager = Some(AwsSecretsManagerHostAccount {
            secret_arn: "arn:aws:secretsmanager:eu-west-1:123456789012:secret:gmsa".into(),
        });
        let aws = host_config("airflow", &spec);
        assert_eq!(aws["PluginGUID"], "{859E1386-BDB4-49E8-85C7-3070B13920E1}");
        assert_eq!(
            aws["PluginInput"],
            r#"{"credentialArn":"arn:aws:secretsmanager:eu-west-1:123456789012:secret:gmsa"}"#
        );

        let host = spec.host_account.as_mut().unwrap();
        host.aws_secrets_manager = None;
        host.kubernetes_secret = Some(KubernetesSecretHostAccount {
            name: "gmsa-reader".into(),
        });
        let k8s = host_config("batch", &spec);
        assert_eq!(k8s["PluginGUID"], "{e4781092-f116-4b79-b55e-28eb6a224e26}");
        assert_eq!(k8s["PluginInput"], "batch:gmsa-reader");

        let host = spec.host_account.as_mut().unwrap();
        host.kubernetes_secret = None;
        host.custom = Some(CustomHostAccount {
            plugin_guid: "{11111111-2222-3333-4444-555555555555}".into(),
            plugin_input: "vault:gmsa".into(),
        });
        host.portable_ccg_version = "2".into();
        assert_eq!(
            host_config("airflow", &spec),
            json!({"PortableCcgVersion": "2", "PluginGUID": "{11111111-2222-3333-4444-555555555555}", "PluginInput": "vault:gmsa"})
        );
    }

    #[test]
    fn the_plugin_input_is_the_one_in_the_document() {
        let identity = fixtures::key_vault();
        let namespace = identity.metadata.namespace.clone().unwrap();
        assert_eq!(
            host_account_plugin_input(&namespace, &identity.spec).as_deref(),
            host_config(&namespace, &identity.spec)["PluginInput"].as_str()
        );
        assert_eq!(
            host_account_plugin_input("airflow", &fixtures::domain_joined().spec),
            None
        );
    }

    #[test]
    fn forest_name_becomes_the_tree_name() {
        let mut spec = fixtures::domain_joined_spec();
        spec.domain.forest_name = Some("example.com".into());
        assert_eq!(
            credential_spec_document("airflow", &spec)["DomainJoinConfig"]["DnsTreeName"],
            "example.com"
        );
    }
}
