//! The one reader of `gmsaCredentialSpec` contents: every account Windows could read from
//! them, normalised as Active Directory compares names, or why they cannot be read
//! unambiguously (then the pod is denied: what winflow cannot read it cannot vouch for).

use serde_json::{Map, Value};

use super::strict_json;
use crate::names::{account_key, domain_key, fold_case};

/// Contents as read: the document (to compare with an identity's own) and what it names.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Contents {
    pub(crate) document: Value,
    pub(crate) named: Named,
}

/// Every account the contents name, with the domains they give, as `names::account_key` and
/// `names::domain_key` spell them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Named {
    /// `ActiveDirectoryConfig.GroupManagedServiceAccounts[]`: each `Name`, with its `Scope`.
    pub(crate) accounts: Vec<(String, Option<String>)>,
    /// `DomainJoinConfig.MachineAccountName` (winflow puts the primary account there too).
    pub(crate) machine_account: Option<String>,
    /// `DomainJoinConfig`'s `DnsName`, `NetBiosName` and `DnsTreeName`.
    pub(crate) join_domains: Vec<String>,
    /// `ActiveDirectoryConfig.HostAccountConfig.PluginInput`, trimmed: the node's credential
    /// guard plugin fetches the gMSA with it.
    pub(crate) plugin_input: Option<String>,
}

/// What could not be read, in words for the denial.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Unreadable(pub(crate) String);

/// The allowed shape, for denials.
pub(crate) const READABLE: &str = "one JSON object with nothing but whitespace around it, no key given twice in an object (keys compare ignoring case), ActiveDirectoryConfig, DomainJoinConfig and HostAccountConfig as objects, GroupManagedServiceAccounts as an array of objects, and account, domain and plugin fields as strings";

pub(crate) fn read(text: &str) -> Result<Contents, Unreadable> {
    if text.contains('\u{feff}') {
        return Err(Unreadable("they contain a byte-order mark".to_owned()));
    }
    let document = strict_json::parse(text).map_err(|e| Unreadable(format!("they are not one JSON value: {e}")))?;
    let root = document
        .as_object()
        .ok_or_else(|| Unreadable(format!("they are JSON {}, not an object", kind(&document))))?;
    let named = named(root).map_err(Unreadable)?;
    Ok(Contents { document, named })
}

fn named(root: &Map<String, Value>) -> Result<Named, String> {
    let mut named = Named::default();
    if let Some(directory) = object(root, "ActiveDirectoryConfig", "")? {
        let at = "ActiveDirectoryConfig";
        if let Some(accounts) = field(directory, "GroupManagedServiceAccounts") {
            let where_ = format!("{at}.GroupManagedServiceAccounts");
            let accounts = accounts
                .as_array()
                .ok_or_else(|| format!("{where_} is {}, not an array", kind(accounts)))?;
            for (index, entry) in accounts.iter().enumerate() {
                let where_ = format!("{where_}[{index}]");
                let entry = entry
                    .as_object()
                    .ok_or_else(|| format!("{where_} is {}, not an object", kind(entry)))?;
                let scope = string(entry, "Scope", &where_)?.map(domain_key);
                if let Some(name) = string(entry, "Name", &where_)? {
                    named.accounts.push((account_key(name), scope));
                }
            }
        }
        if let Some(host) = object(directory, "HostAccountConfig", at)? {
            let at = format!("{at}.HostAccountConfig");
            string(host, "PluginGUID", &at)?;
            named.plugin_input = string(host, "PluginInput", &at)?.map(|input| input.trim().to_owned());
        }
    }
    if let Some(join) = object(root, "DomainJoinConfig", "")? {
        let at = "DomainJoinConfig";
        named.machine_account = string(join, "MachineAccountName", at)?.map(account_key);
        for key in ["DnsName", "NetBiosName", "DnsTreeName"] {
            if let Some(domain) = string(join, key, at)? {
                named.join_domains.push(domain_key(domain));
            }
        }
    }
    Ok(named)
}

/// The value of `key`, ignoring case (unambiguous: the parser refused a key given twice).
fn field<'a>(object: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    let key = fold_case(key);
    object.iter().find(|(k, _)| fold_case(k) == key).map(|(_, v)| v)
}

fn path(at: &str, key: &str) -> String {
    if at.is_empty() {
        key.to_owned()
    } else {
        format!("{at}.{key}")
    }
}

fn object<'a>(parent: &'a Map<String, Value>, key: &str, at: &str) -> Result<Option<&'a Map<String, Value>>, String> {
    match field(parent, key) {
        None => Ok(None),
        Some(Value::Object(object)) => Ok(Some(object)),
        Some(other) => Err(format!("{} is {}, not an object", path(at, key), kind(other))),
    }
}

fn string<'a>(parent: &'a Map<String, Value>, key: &str, at: &str) -> Result<Option<&'a str>, String> {
    match field(parent, key) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(other) => Err(format!("{} is {}, not a string", path(at, key), kind(other))),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::credential_spec_document;
    use crate::fixtures;

    fn unreadable(text: &str) -> String {
        read(text).unwrap_err().0
    }

    #[test]
    fn names_every_account_of_winflows_own_layout() {
        let document = credential_spec_document("airflow", &fixtures::domain_joined_spec());
        let contents = read(&document.to_string()).unwrap();
        assert_eq!(contents.document, document);
        let named = contents.named;
        let scoped = |name: &str, scope: &str| (name.to_owned(), Some(scope.to_owned()));
        assert_eq!(
            named.accounts,
            [
                scoped("svc-reports", "corp.example.com"),
                scoped("svc-reports", "corp"),
                scoped("svc-sql-reader", "corp.example.com"),
                scoped("svc-sql-reader", "corp"),
            ]
        );
        assert_eq!(named.machine_account.as_deref(), Some("svc-reports"));
        assert_eq!(named.join_domains, ["corp.example.com", "corp", "corp.example.com"]);
        assert_eq!(named.plugin_input, None);

        let document = credential_spec_document("airflow", &fixtures::key_vault_spec());
        let named = read(&document.to_string()).unwrap().named;
        assert!(named.plugin_input.unwrap().starts_with("ObjectId="));
    }

    #[test]
    fn reads_keys_in_any_case_and_names_as_active_directory_compares_them() {
        let text = r#" {"activedirectoryconfig": {"groupManagedServiceAccounts": [{"NAME": " SVC-Reports$ ", "scope": "Corp.Example.com."}],
            "HOSTACCOUNTCONFIG": {"pluginInput": "  batch:gmsa-reader "}},
            "domainjoinconfig": {"machineaccountname": "Svc-Other$", "NETBIOSNAME": "CORP"}} "#;
        let named = read(text).unwrap().named;
        assert_eq!(
            named.accounts,
            [("svc-reports".to_owned(), Some("corp.example.com".to_owned()))]
        );
        assert_eq!(named.machine_account.as_deref(), Some("svc-other"));
        assert_eq!(named.join_domains, ["corp"]);
        assert_eq!(named.plugin_input.as_deref(), Some("batch:gmsa-reader"));
    }

    #[test]
    fn contents_winflow_cannot_read_unambiguously_say_why() {
        let cases = [
            ("\u{feff}{}", "byte-order mark"),
            ("{} {}", "not one JSON value"),
            ("x{}", "not one JSON value"),
            ("[]", "JSON an array, not an object"),
            ("", "not one JSON value"),
            (r#"{"DomainJoinConfig": {}, "domainJoinConfig": {}}"#, "given twice"),
            (
                r#"{"ActiveDirectoryConfig": []}"#,
                "ActiveDirectoryConfig is an array, not an object",
            ),
            (
                r#"{"ActiveDirectoryConfig": {"GroupManagedServiceAccounts": {"Name": "a"}}}"#,
                "GroupManagedServiceAccounts is an object, not an array",
            ),
            (
                r#"{"ActiveDirectoryConfig": {"GroupManagedServiceAccounts": ["svc"]}}"#,
                "GroupManagedServiceAccounts[0] is a string, not an object",
            ),
            (
                r#"{"ActiveDirectoryConfig": {"GroupManagedServiceAccounts": [{"Name": ["svc"]}]}}"#,
                "GroupManagedServiceAccounts[0].Name is an array, not a string",
            ),
            (
                r#"{"ActiveDirectoryConfig": {"GroupManagedServiceAccounts": [{"Name": "svc", "Scope": null}]}}"#,
                "Scope is null, not a string",
            ),
            (
                r#"{"DomainJoinConfig": {"MachineAccountName": 1}}"#,
                "DomainJoinConfig.MachineAccountName is a number",
            ),
            (
                r#"{"ActiveDirectoryConfig": {"HostAccountConfig": {"PluginInput": {}}}}"#,
                "HostAccountConfig.PluginInput is an object",
            ),
        ];
        for (text, why) in cases {
            let found = unreadable(text);
            assert!(found.contains(why), "{text:?}: {found}");
        }
    }

    #[test]
    fn contents_that_name_nothing_are_readable() {
        assert_eq!(read("{}").unwrap().named, Named::default());
        assert_eq!(
            read(r#"{"CmsPlugins": ["ActiveDirectory"], "Other": {"Name": 1}}"#)
                .unwrap()
                .named,
            Named::default()
        );
    }
}
