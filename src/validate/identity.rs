//! Rules for `WindowsTaskIdentity`.

use std::collections::HashSet;

use globset::Glob;

use super::{Checker, Violation, is_dns_name, parse_duration};
use crate::api::identity::{
    CONTAINER_ADMINISTRATOR, RBAC_API_GROUP, SUBJECT_GROUP, SUBJECT_SERVICE_ACCOUNT, SUBJECT_USER,
    WindowsTaskIdentitySpec,
};
use crate::names::{self, MAX_NAME_LENGTH};

/// Checks an identity named `name` in `namespace`.
pub fn check_identity(namespace: &str, name: &str, spec: &WindowsTaskIdentitySpec) -> Result<(), Vec<Violation>> {
    let mut c = Checker::default();
    check_derived_names(&mut c, namespace, name);
    check_domain(&mut c, spec);
    check_accounts(&mut c, spec);
    check_host_account(&mut c, spec);
    check_service_account(&mut c, spec);
    check_airflow(&mut c, spec);
    check_pod(&mut c, spec);
    check_shares(&mut c, spec);
    check_token(&mut c, spec);
    check_access(&mut c, namespace, spec);
    c.finish()
}

fn check_derived_names(c: &mut Checker, namespace: &str, name: &str) {
    let longest = [
        names::credential_spec_name(namespace, name),
        names::gmsa_role_name(name),
        names::use_role_name(name),
        names::pod_templates_config_map_name(name),
    ]
    .into_iter()
    .map(|n| n.len())
    .max()
    .unwrap_or_default();
    if longest > MAX_NAME_LENGTH {
        let allowed = MAX_NAME_LENGTH - (longest - name.len());
        c.fail(
            "metadata.name",
            format!(
                "is too long for the objects derived from it: at most {allowed} characters in namespace {namespace:?}"
            ),
        );
    }
}

fn check_domain(c: &mut Checker, spec: &WindowsTaskIdentitySpec) {
    let domain = &spec.domain;
    if !is_dns_name(&domain.dns_name) {
        c.fail("spec.domain.dnsName", format!("{:?} is not a fully qualified DNS name (allowed: labels of letters, digits and '-', separated by dots, such as corp.example.com)", domain.dns_name));
    }
    if let Some(forest) = &domain.forest_name
        && !is_dns_name(forest)
    {
        c.fail(
            "spec.domain.forestName",
            format!("{forest:?} is not a fully qualified DNS name"),
        );
    }
    if domain.netbios_name.is_empty()
        || domain.netbios_name.chars().count() > 15
        || domain.netbios_name.chars().any(|ch| "\\/:*?\"<>|. ".contains(ch))
    {
        c.fail("spec.domain.netbiosName", format!("{:?} is not a NetBIOS domain name (allowed: 1 to 15 characters, none of \\ / : * ? \" < > | . or space)", domain.netbios_name));
    }
    if !is_domain_sid(&domain.sid) {
        c.fail(
            "spec.domain.sid",
            format!(
                "{:?} is not a domain SID (allowed: S-1-5-21-<a>-<b>-<c> with decimal numbers)",
                domain.sid
            ),
        );
    }
    if !is_guid(&domain.guid) {
        c.fail(
            "spec.domain.guid",
            format!(
                "{:?} is not a GUID (allowed: xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx in hexadecimal)",
                domain.guid
            ),
        );
    }
}

fn check_accounts(c: &mut Checker, spec: &WindowsTaskIdentitySpec) {
    check_account_name(c, "spec.gmsa.account", &spec.gmsa.account);
    let mut seen = HashSet::from([spec.gmsa.account.to_ascii_lowercase()]);
    for (i, account) in spec.gmsa.additional_accounts.iter().enumerate() {
        let field = format!("spec.gmsa.additionalAccounts[{i}]");
        check_account_name(c, &field, account);
        if !seen.insert(account.to_ascii_lowercase()) {
            c.fail(
                field,
                format!("{account:?} is listed twice (account names are case-insensitive)"),
            );
        }
    }
}

fn check_account_name(c: &mut Checker, field: &str, account: &str) {
    let forbidden = "\"/\\[]:;|=,+*?<>@$";
    if account.is_empty()
        || account.chars().count() > 15
        || account.chars().any(|ch| forbidden.contains(ch) || ch.is_whitespace())
    {
        c.fail(field, format!("{account:?} is not a gMSA sAMAccountName (allowed: 1 to 15 characters without the trailing '$', none of {forbidden} or spaces)"));
    }
}

fn check_host_account(c: &mut Checker, spec: &WindowsTaskIdentitySpec) {
    let Some(host) = &spec.host_account else {
        return;
    };
    let kinds = [
        ("azureKeyVault", host.azure_key_vault.is_some()),
        ("awsSecretsManager", host.aws_secrets_manager.is_some()),
        ("kubernetesSecret", host.kubernetes_secret.is_some()),
        ("custom", host.custom.is_some()),
    ];
    let set: Vec<&str> = kinds.iter().filter(|(_, on)| *on).map(|(k, _)| *k).collect();
    if set.len() != 1 {
        c.fail(
            "spec.hostAccount",
            format!(
                "exactly one of azureKeyVault, awsSecretsManager, kubernetesSecret or custom must be set (found {})",
                if set.is_empty() {
                    "none".to_owned()
                } else {
                    set.join(", ")
                }
            ),
        );
    }
    if let Some(custom) = &host.custom {
        let inner = custom.plugin_guid.strip_prefix('{').and_then(|g| g.strip_suffix('}'));
        if !inner.is_some_and(is_guid) {
            c.fail(
                "spec.hostAccount.custom.pluginGuid",
                format!(
                    "{:?} is not a COM class GUID (allowed: {{xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx}})",
                    custom.plugin_guid
                ),
            );
        }
    }
    if let Some(akv) = &host.azure_key_vault {
        if !is_guid(&akv.managed_identity_object_id) {
            c.fail(
                "spec.hostAccount.azureKeyVault.managedIdentityObjectId",
                format!("{:?} is not a GUID", akv.managed_identity_object_id),
            );
        }
        if !akv.secret_uri.starts_with("https://") || akv.secret_uri.contains(';') {
            c.fail(
                "spec.hostAccount.azureKeyVault.secretUri",
                "must be an https:// Key Vault secret URI without ';'",
            );
        }
    }
}

fn check_service_account(c: &mut Checker, spec: &WindowsTaskIdentitySpec) {
    if !is_dns_subdomain(&spec.service_account.name) {
        c.fail("spec.serviceAccount.name", format!("{:?} is not a valid service account name (allowed: lower-case letters, digits, '-' and '.', at most 253 characters)", spec.service_account.name));
    }
    // Every pod without a service account runs as `default`: as an identity's, it would hand
    // the identity's rights (credential spec `use`, workload identity) to all of them.
    if spec.service_account.name == "default" {
        c.fail(
            "spec.serviceAccount.name",
            "\"default\" is the service account of every pod that names none; give the identity a service account of its own",
        );
    }
}

fn check_airflow(c: &mut Checker, spec: &WindowsTaskIdentitySpec) {
    for (list, field) in [
        (&spec.airflow.dag_ids, "spec.airflow.dagIds"),
        (&spec.airflow.task_ids, "spec.airflow.taskIds"),
    ] {
        if list.is_empty() {
            c.fail(field, "needs at least one pattern (use \"*\" to allow all)");
        }
        for (i, pattern) in list.iter().enumerate() {
            if let Err(e) = Glob::new(pattern) {
                c.fail(
                    format!("{field}[{i}]"),
                    format!(
                        "{pattern:?} is not a glob pattern: {} (allowed: *, ?, [abc], {{a,b}})",
                        e.kind()
                    ),
                );
            }
        }
    }
}

fn check_pod(c: &mut Checker, spec: &WindowsTaskIdentitySpec) {
    let pod = &spec.pod;
    if pod.runs_as_administrator() && !pod.allow_administrator {
        c.fail("spec.pod.runAsUserName", format!("{CONTAINER_ADMINISTRATOR} is refused unless spec.pod.allowAdministrator is true (least privilege: use ContainerUser or a domain account)"));
    }
    if let Some(os) = pod.node_selector.get("kubernetes.io/os")
        && os != "windows"
    {
        c.fail(
            "spec.pod.nodeSelector",
            format!("kubernetes.io/os is {os:?}, but Windows task pods run only on kubernetes.io/os=windows"),
        );
    }
    for (i, env) in pod.env.iter().enumerate() {
        if env.name.starts_with("WINFLOW_") {
            c.fail(
                format!("spec.pod.env[{i}].name"),
                format!(
                    "{:?} uses the prefix WINFLOW_, which winflow reserves for the variables it sets",
                    env.name
                ),
            );
        }
    }
}

fn check_shares(c: &mut Checker, spec: &WindowsTaskIdentitySpec) {
    let mut names = HashSet::new();
    let mut paths = HashSet::new();
    for (i, share) in spec.shares.iter().enumerate() {
        if !names.insert(share.name.as_str()) {
            c.fail(
                format!("spec.shares[{i}].name"),
                format!("share {:?} is listed twice", share.name),
            );
        }
        if !paths.insert(share.mount_path.to_ascii_lowercase()) {
            c.fail(
                format!("spec.shares[{i}].mountPath"),
                format!(
                    "{:?} is used by another share (Windows paths are case-insensitive)",
                    share.mount_path
                ),
            );
        }
    }
}

fn check_token(c: &mut Checker, spec: &WindowsTaskIdentitySpec) {
    let Some(token) = &spec.token else { return };
    match (&token.client_secret_ref, &token.workload_identity) {
        (Some(_), Some(_)) | (None, None) => c.fail(
            "spec.token",
            "exactly one of clientSecretRef or workloadIdentity must be set",
        ),
        _ => {}
    }
    if let Some(renew) = &token.renew_before
        && parse_duration(renew).is_none()
    {
        c.fail(
            "spec.token.renewBefore",
            format!("{renew:?} is not a positive duration (for example 10m, 1h)"),
        );
    }
    if parse_duration(&token.min_validity).is_none() {
        c.fail(
            "spec.token.minValidity",
            format!("{:?} is not a positive duration (for example 5m)", token.min_validity),
        );
    }
    if let Some(name) = &token.secret_name {
        if !is_dns_subdomain(name) {
            c.fail(
                "spec.token.secretName",
                format!("{name:?} is not a valid Secret name (lowercase letters, digits, '-' and '.')"),
            );
        }
        if token.client_secret_ref.as_ref().is_some_and(|r| &r.name == name) {
            c.fail(
                "spec.token.secretName",
                format!("{name:?} is the client secret's Secret; winflow writes the token to a Secret of its own"),
            );
        }
    }
}

fn check_access(c: &mut Checker, namespace: &str, spec: &WindowsTaskIdentitySpec) {
    let Some(access) = &spec.access else { return };
    let mut seen = HashSet::new();
    for (i, creator) in access.creators.iter().enumerate() {
        let field = format!("spec.access.creators[{i}]");
        let kind = creator.kind.as_str();
        let service_account = kind == SUBJECT_SERVICE_ACCOUNT;
        if ![SUBJECT_USER, SUBJECT_GROUP, SUBJECT_SERVICE_ACCOUNT].contains(&kind) {
            c.fail(
                format!("{field}.kind"),
                format!("{kind:?} is not an RBAC subject kind (allowed: User, Group, ServiceAccount)"),
            );
            continue;
        }
        if creator.name.is_empty() {
            c.fail(
                format!("{field}.name"),
                format!("the name of the {kind} must not be empty"),
            );
        } else if service_account && !is_dns_subdomain(&creator.name) {
            c.fail(format!("{field}.name"), format!("{:?} is not a valid service account name (allowed: lower-case letters, digits, '-' and '.', at most 253 characters)", creator.name));
        }
        match (&creator.namespace, service_account) {
            (Some(ns), true) if !is_dns_label(ns) => c.fail(
                format!("{field}.namespace"),
                format!("{ns:?} is not a namespace name (allowed: lower-case letters, digits and '-', at most 63 characters)"),
            ),
            (Some(_), false) => c.fail(
                format!("{field}.namespace"),
                format!("is only for kind ServiceAccount (a {kind} is not namespaced); remove it"),
            ),
            _ => {}
        }
        let wanted_group = if service_account { "" } else { RBAC_API_GROUP };
        if let Some(group) = &creator.api_group
            && group != wanted_group
        {
            let allowed = if service_account {
                "empty".to_owned()
            } else {
                format!("{RBAC_API_GROUP}, or leave it out")
            };
            c.fail(
                format!("{field}.apiGroup"),
                format!("{group:?} is not the API group of a {kind} subject (allowed: {allowed})"),
            );
        }
        let subject_namespace = service_account.then(|| creator.namespace.as_deref().unwrap_or(namespace));
        if !seen.insert((kind, creator.name.as_str(), subject_namespace)) {
            c.fail(field, format!("{kind} {:?} is listed twice", creator.name));
        }
    }
}

fn is_dns_label(name: &str) -> bool {
    !name.is_empty() && name.len() <= 63 && !name.contains('.') && is_dns_subdomain(name)
}

fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-')
        })
}

fn is_domain_sid(sid: &str) -> bool {
    let Some(rest) = sid.strip_prefix("S-1-5-21-") else {
        return false;
    };
    let parts: Vec<&str> = rest.split('-').collect();
    parts.len() == 3
        && parts.iter().all(|p| {
            !p.is_empty() && p.len() <= 10 && p.chars().all(|ch| ch.is_ascii_digit()) && p.parse::<u32>().is_ok()
        })
}

fn is_guid(guid: &str) -> bool {
    let groups: Vec<&str> = guid.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.chars().all(|ch| ch.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::identity::{AccessSettings, AccessSubject};
    use crate::fixtures;

    fn violations(spec: &WindowsTaskIdentitySpec) -> Vec<Violation> {
        check_identity("airflow", "finance-reports", spec)
            .err()
            .unwrap_or_default()
    }

    fn fields(spec: &WindowsTaskIdentitySpec) -> Vec<String> {
        violations(spec).into_iter().map(|v| v.field).collect()
    }

    #[test]
    fn example_identities_are_valid() {
        assert_eq!(violations(&fixtures::domain_joined_spec()), []);
        assert_eq!(violations(&fixtures::key_vault_spec()), []);
    }

    #[test]
    fn the_default_service_account_is_refused() {
        let mut spec = fixtures::domain_joined_spec();
        spec.service_account.name = "default".into();
        assert_eq!(fields(&spec), ["spec.serviceAccount.name"]);
        assert!(violations(&spec)[0].message.contains("every pod that names none"));
    }

    #[test]
    fn bad_sid_and_guid_are_named() {
        let mut spec = fixtures::domain_joined_spec();
        spec.domain.sid = "S-1-5-32-544".into();
        spec.domain.guid = "not-a-guid".into();
        assert_eq!(fields(&spec), ["spec.domain.sid", "spec.domain.guid"]);
        assert!(violations(&spec)[0].message.contains("S-1-5-21-<a>-<b>-<c>"));
    }

    #[test]
    fn account_longer_than_fifteen_characters_is_refused() {
        let mut spec = fixtures::domain_joined_spec();
        spec.gmsa.account = "a-very-long-account-name".into();
        spec.gmsa.additional_accounts = vec!["svc$".into(), "SVC-REPORTS".into()];
        assert_eq!(fields(&spec), ["spec.gmsa.account", "spec.gmsa.additionalAccounts[0]"]);
        spec.gmsa.account = "svc-reports".into();
        assert_eq!(
            fields(&spec),
            ["spec.gmsa.additionalAccounts[0]", "spec.gmsa.additionalAccounts[1]"]
        );
    }

    #[test]
    fn administrator_needs_explicit_consent() {
        let mut spec = fixtures::domain_joined_spec();
        spec.pod.run_as_user_name = "containeradministrator".into();
        let v = violations(&spec);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].field, "spec.pod.runAsUserName");
        assert!(v[0].message.contains("allowAdministrator"));
        spec.pod.allow_administrator = true;
        assert_eq!(violations(&spec), []);
    }

    #[test]
    fn two_host_account_kinds_are_refused() {
        let mut spec = fixtures::key_vault_spec();
        let host = spec.host_account.as_mut().unwrap();
        host.kubernetes_secret = Some(crate::api::identity::KubernetesSecretHostAccount { name: "ccg".into() });
        let v = violations(&spec);
        assert_eq!(v.len(), 1);
        assert!(
            v[0].message.contains("found azureKeyVault, kubernetesSecret"),
            "{}",
            v[0].message
        );
    }

    #[test]
    fn bad_globs_and_reserved_env_are_refused() {
        let mut spec = fixtures::domain_joined_spec();
        spec.airflow.dag_ids = vec!["reports_[".into()];
        spec.pod.env = vec![k8s_openapi::api::core::v1::EnvVar {
            name: "WINFLOW_ACCESS_TOKEN".into(),
            ..Default::default()
        }];
        assert_eq!(fields(&spec), ["spec.airflow.dagIds[0]", "spec.pod.env[0].name"]);
    }

    #[test]
    fn linux_node_selector_is_refused() {
        let mut spec = fixtures::domain_joined_spec();
        spec.pod.node_selector.insert("kubernetes.io/os".into(), "linux".into());
        assert_eq!(fields(&spec), ["spec.pod.nodeSelector"]);
    }

    #[test]
    fn derived_names_must_fit() {
        let spec = fixtures::domain_joined_spec();
        let long = "a".repeat(245);
        let v = check_identity("airflow", &long, &spec).unwrap_err();
        assert_eq!(v[0].field, "metadata.name");
        assert!(v[0].message.contains("at most 239 characters"), "{}", v[0].message);
    }

    #[test]
    fn sid_and_guid_shapes() {
        assert!(is_domain_sid("S-1-5-21-3623811015-3361044348-30300820"));
        assert!(!is_domain_sid("S-1-5-21-1-2"));
        assert!(!is_domain_sid("S-1-5-21-1-2-99999999999"));
        assert!(is_guid("244818ae-87ca-4fcd-92ec-e79e5252348a"));
        assert!(!is_guid("244818ae87ca4fcd92ece79e5252348a"));
    }

    fn creator(kind: &str, name: &str, namespace: Option<&str>, api_group: Option<&str>) -> AccessSubject {
        AccessSubject {
            kind: kind.into(),
            name: name.into(),
            namespace: namespace.map(Into::into),
            api_group: api_group.map(Into::into),
        }
    }

    #[test]
    fn creators_are_rbac_subjects() {
        let mut spec = fixtures::domain_joined_spec();
        spec.access = Some(AccessSettings {
            creators: vec![
                creator("ServiceAccount", "airflow-scheduler", None, None),
                creator("ServiceAccount", "airflow-worker", Some("airflow-workers"), Some("")),
                creator("User", "alice@example.com", None, Some("rbac.authorization.k8s.io")),
                creator("Group", "platform", None, None),
            ],
        });
        assert_eq!(violations(&spec), []);
    }

    #[test]
    fn bad_creators_are_named_with_what_is_allowed() {
        let mut spec = fixtures::domain_joined_spec();
        spec.access = Some(AccessSettings {
            creators: vec![
                creator("user", "alice", None, None),
                creator("Group", "", None, None),
                creator("User", "alice", Some("airflow"), None),
                creator("ServiceAccount", "Airflow_Scheduler", Some("Airflow"), None),
                creator(
                    "ServiceAccount",
                    "airflow-worker",
                    None,
                    Some("rbac.authorization.k8s.io"),
                ),
                creator("Group", "platform", None, Some("")),
                // The same service account twice: the namespace defaults to the identity's.
                creator("ServiceAccount", "airflow-scheduler", None, None),
                creator("ServiceAccount", "airflow-scheduler", Some("airflow"), None),
            ],
        });
        let v = violations(&spec);
        let fields: Vec<&str> = v.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.access.creators[0].kind",
                "spec.access.creators[1].name",
                "spec.access.creators[2].namespace",
                "spec.access.creators[3].name",
                "spec.access.creators[3].namespace",
                "spec.access.creators[4].apiGroup",
                "spec.access.creators[5].apiGroup",
                "spec.access.creators[7]",
            ]
        );
        let message = |i: usize| v[i].message.as_str();
        assert!(
            message(0).contains("allowed: User, Group, ServiceAccount"),
            "{}",
            message(0)
        );
        assert!(message(1).contains("must not be empty"), "{}", message(1));
        assert!(message(2).contains("only for kind ServiceAccount"), "{}", message(2));
        assert!(message(5).contains("allowed: empty"), "{}", message(5));
        assert!(
            message(6).contains("allowed: rbac.authorization.k8s.io"),
            "{}",
            message(6)
        );
        assert!(message(7).contains("listed twice"), "{}", message(7));
    }

    #[test]
    fn token_secret_names_must_be_valid_and_not_the_client_secret() {
        let mut spec = fixtures::key_vault_spec();
        let mut token = fixtures::token_settings();
        token.secret_name = Some("Payroll_Token".into());
        spec.token = Some(token.clone());
        assert_eq!(fields(&spec), ["spec.token.secretName"]);
        token.secret_name = Some("payroll-oidc".into());
        spec.token = Some(token.clone());
        let message = crate::validate::describe(&violations(&spec));
        assert!(message.contains("client secret's Secret"), "{message}");
        token.secret_name = Some("payroll-access-token".into());
        spec.token = Some(token);
        assert_eq!(violations(&spec), []);
    }
}
