//! The reader against every spelling of an identity's contents (property tests), and the gMSA
//! rules on every path a pod takes: the cluster-wide webhook, enforcement namespaces,
//! labelled pods, mutation and ephemeral containers (as Kubernetes 1.22+ sends them).

use std::sync::Arc;

use proptest::prelude::*;
use serde_json::{Value, json};

use super::contents::read;
use super::matching::identities_named;
use super::validate_gmsa;
use crate::api::WindowsTaskIdentity;
use crate::build::credential_spec_document;
use crate::webhook::access::Access;
use crate::webhook::decide::tests::{
    View, base_with, denial, guarded_view, mutate, mutated_pod, pod, request, request_as, unlabelled, validate,
};
use crate::webhook::decide::{ResourceView, inline_credential_spec, validate_ephemeral};

/// A JSON tree that may hold a key twice (serde_json's `Map` cannot), written out as text.
#[derive(Clone, Debug)]
enum Node {
    Text(String),
    List(Vec<Node>),
    Object(Vec<(String, Node)>),
}

impl Node {
    fn to_json(&self) -> String {
        match self {
            Node::Text(text) => Value::String(text.clone()).to_string(),
            Node::List(items) => format!("[{}]", items.iter().map(Node::to_json).collect::<Vec<_>>().join(",")),
            Node::Object(fields) => {
                let fields: Vec<String> = fields
                    .iter()
                    .map(|(key, value)| format!("{}:{}", Value::String(key.clone()), value.to_json()))
                    .collect();
                format!("{{{}}}", fields.join(","))
            }
        }
    }
}

/// Case flips taken in turn from a generated pattern.
struct Casing {
    flips: Vec<bool>,
    next: usize,
}

impl Casing {
    fn spell(&mut self, text: &str) -> String {
        text.chars()
            .map(|c| {
                let flip = !self.flips.is_empty() && self.flips[self.next % self.flips.len()];
                self.next += 1;
                match (flip, c.is_ascii_uppercase()) {
                    (false, _) => c,
                    (true, true) => c.to_ascii_lowercase(),
                    (true, false) => c.to_ascii_uppercase(),
                }
            })
            .collect()
    }
}

/// Where the variant names the account.
#[derive(Clone, Copy, Debug)]
enum Placement {
    /// winflow's own layout (accounts with scopes and the machine account).
    Layout,
    /// Only `GroupManagedServiceAccounts`, no `DomainJoinConfig`.
    AccountsOnly,
    /// Only `DomainJoinConfig.MachineAccountName`.
    MachineAccountOnly,
    /// Only the host-account plugin input (identities with a host account).
    PluginInputOnly,
}

/// One spelling of contents naming `account` in `domains` (and the plugin input, if given).
#[derive(Clone, Debug)]
struct Variant {
    placement: Placement,
    key_case: Vec<bool>,
    value_case: Vec<bool>,
    dollar: bool,
    trailing_dot: bool,
    padding: &'static str,
    scope: Option<usize>,
    byte_order_mark: bool,
    duplicate_key: Option<usize>,
    around: &'static str,
}

fn variants() -> impl Strategy<Value = Variant> {
    let placement = prop_oneof![
        Just(Placement::Layout),
        Just(Placement::AccountsOnly),
        Just(Placement::MachineAccountOnly),
        Just(Placement::PluginInputOnly),
    ];
    let padding = prop_oneof![Just(""), Just(" "), Just("\t"), Just("  \n")];
    let around = prop_oneof![Just(""), Just(" "), Just("\n\t "), Just("\r\n")];
    (
        placement,
        proptest::collection::vec(any::<bool>(), 0..8),
        proptest::collection::vec(any::<bool>(), 0..8),
        (any::<bool>(), any::<bool>(), padding),
        proptest::option::of(0..3usize),
        any::<bool>(),
        proptest::option::weighted(0.2, 0..8usize),
        around,
    )
        .prop_map(
            |(
                placement,
                key_case,
                value_case,
                (dollar, trailing_dot, padding),
                scope,
                byte_order_mark,
                duplicate_key,
                around,
            )| {
                Variant {
                    placement,
                    key_case,
                    value_case,
                    dollar,
                    trailing_dot,
                    padding,
                    scope,
                    byte_order_mark,
                    duplicate_key,
                    around,
                }
            },
        )
}

/// The contents text: `account` (of `domains`: DNS, NetBIOS, forest) and `plugin_input`,
/// spelled as `variant` says.
fn spelled(variant: &Variant, account: &str, domains: [&str; 3], plugin_input: Option<&str>) -> String {
    let mut keys = Casing {
        flips: variant.key_case.clone(),
        next: 0,
    };
    let mut values = Casing {
        flips: variant.value_case.clone(),
        next: 0,
    };
    let pad = |text: String| format!("{}{text}{}", variant.padding, variant.padding);
    let account = pad(values.spell(&format!("{account}{}", if variant.dollar { "$" } else { "" })));
    let mut domain = |index: usize| {
        let dot = if variant.trailing_dot { "." } else { "" };
        pad(values.spell(&format!("{}{dot}", domains[index])))
    };
    let mut key = |name: &str| keys.spell(name);
    let text = |s: String| Node::Text(s);

    let mut entry = vec![(key("Name"), text(account.clone()))];
    if let Some(scope) = variant.scope {
        entry.push((key("Scope"), text(domain(scope))));
    }
    let join =
        |machine: Option<String>, key: &mut dyn FnMut(&str) -> String, domain: &mut dyn FnMut(usize) -> String| {
            let mut fields = vec![(key("Sid"), text("S-1-5-21-1".to_owned()))];
            if let Some(machine) = machine {
                fields.push((key("MachineAccountName"), text(machine)));
            }
            fields.push((key("DnsName"), text(domain(0))));
            fields.push((key("NetBiosName"), text(domain(1))));
            Node::Object(fields)
        };
    let accounts = Node::List(vec![Node::Object(entry)]);
    let plugin = plugin_input.map(|input| {
        Node::Object(vec![
            (
                key("PluginGUID"),
                text("{e4781092-f116-4b79-b55e-28eb6a224e26}".to_owned()),
            ),
            (key("PluginInput"), text(pad(input.to_owned()))),
        ])
    });
    let mut root = vec![(key("CmsPlugins"), Node::List(vec![text("ActiveDirectory".to_owned())]))];
    match variant.placement {
        Placement::Layout => {
            root.push((key("DomainJoinConfig"), join(Some(account), &mut key, &mut domain)));
            let mut directory = vec![(key("GroupManagedServiceAccounts"), accounts)];
            if let Some(plugin) = plugin {
                directory.push((key("HostAccountConfig"), plugin));
            }
            root.push((key("ActiveDirectoryConfig"), Node::Object(directory)));
        }
        Placement::AccountsOnly => {
            root.push((
                key("ActiveDirectoryConfig"),
                Node::Object(vec![(key("GroupManagedServiceAccounts"), accounts)]),
            ));
        }
        Placement::MachineAccountOnly => {
            root.push((key("DomainJoinConfig"), join(Some(account), &mut key, &mut domain)));
        }
        Placement::PluginInputOnly => {
            root.push((key("DomainJoinConfig"), join(None, &mut key, &mut domain)));
            let directory = match plugin {
                Some(plugin) => vec![(key("HostAccountConfig"), plugin)],
                None => vec![(key("GroupManagedServiceAccounts"), accounts)],
            };
            root.push((key("ActiveDirectoryConfig"), Node::Object(directory)));
        }
    }
    // A second copy of a top-level key, spelled in another case, that hides the first from
    // a reader that keeps the last (serde_json's Value).
    if let Some(index) = variant.duplicate_key {
        let (name, _) = root[index % root.len()].clone();
        root.push((name.to_ascii_lowercase(), Node::Object(Vec::new())));
    }
    let bom = if variant.byte_order_mark { "\u{feff}" } else { "" };
    format!(
        "{bom}{}{}{}",
        variant.around,
        Node::Object(root).to_json(),
        variant.around
    )
}

fn spelled_for(variant: &Variant, identity: &WindowsTaskIdentity, account: &str) -> String {
    let domain = &identity.spec.domain;
    let forest = domain.forest_name.as_deref().unwrap_or(&domain.dns_name);
    let plugin = super::plugin_input(identity);
    spelled(
        variant,
        account,
        [&domain.dns_name, &domain.netbios_name, forest],
        plugin.as_deref(),
    )
}

/// The reason and message of a denial, kept past the decision.
fn denied(decision: crate::webhook::decide::Decision) -> (&'static str, String) {
    let (reason, message) = denial(&decision);
    (reason, message.to_owned())
}

fn name_of(identity: &WindowsTaskIdentity) -> &str {
    identity.metadata.name.as_deref().unwrap()
}

fn identities(view: &View) -> Vec<Arc<WindowsTaskIdentity>> {
    let mut all = Vec::new();
    view.each_identity(None, &mut |identity| all.push(Arc::new(identity.clone())));
    all
}

/// An unlabelled pod carrying `contents` (under a credential spec name that is not winflow's)
/// at pod level (0), in an init (1), app (2) or ephemeral (3) container.
fn carrying(contents: &str, place: usize) -> Value {
    let options = json!({"windowsOptions": {"gmsaCredentialSpecName": "webapp-gmsa", "gmsaCredentialSpec": contents}});
    let mut spec = base_with(json!({}));
    let container = json!({"name": "c", "image": "i", "securityContext": options});
    match place {
        0 => spec["securityContext"] = options,
        1 => spec["initContainers"] = json!([container]),
        2 => spec["containers"][0]["securityContext"] = options,
        _ => spec["ephemeralContainers"] = json!([container]),
    }
    unlabelled(spec)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Every spelling of an identity's account (or its plugin input) is read as naming that
    /// identity, or refused as unreadable; never as naming no managed account.
    #[test]
    fn every_spelling_of_an_identitys_contents_names_it_or_is_unreadable(
        variant in variants(),
        which in 0..2usize,
        additional in any::<bool>(),
        place in 0..4usize,
    ) {
        let view = guarded_view();
        let identity = identities(&view)[which].clone();
        let gmsa = &identity.spec.gmsa;
        let account = match (additional, gmsa.additional_accounts.first()) {
            (true, Some(other)) => other,
            _ => &gmsa.account,
        };
        let text = spelled_for(&variant, &identity, account);
        match read(&text) {
            Err(_) => {}
            Ok(contents) => {
                let named = identities_named(&contents.named, &view);
                prop_assert!(
                    named.iter().any(|i| i.metadata == identity.metadata),
                    "{text} names {:?}", named.iter().map(|i| name_of(i)).collect::<Vec<_>>()
                );
            }
        }
        let decision = validate_gmsa(&request("CREATE", carrying(&text, place), None), &view);
        prop_assert!(!decision.response.allowed, "{text} admitted");
        let reason = decision.audit.reason.as_str();
        prop_assert!(
            reason == "GmsaAccountOfIdentity" || reason == "GmsaContentUnreadable",
            "{text}: {reason}"
        );
        // The enforcement webhook applies the same rules.
        let reason = denial(&validate(&request("CREATE", carrying(&text, place), None), &view)).0;
        prop_assert!(reason == "GmsaAccountOfIdentity" || reason == "GmsaContentUnreadable", "{reason}");
    }

    /// The same spellings of an account no identity has never name one.
    #[test]
    fn no_spelling_of_an_unrelated_account_names_an_identity(variant in variants()) {
        let view = guarded_view();
        let text = spelled(&variant, "svc-webapp", ["corp.example.com", "CORP", "corp.example.com"], Some("airflow:webapp-host"));
        if let Ok(contents) = read(&text) {
            prop_assert!(identities_named(&contents.named, &view).is_empty(), "{text}");
            prop_assert!(validate_gmsa(&request("CREATE", carrying(&text, 2), None), &view).response.allowed);
        }
    }
}

#[test]
fn every_unreadable_trick_is_caught_by_the_generator_and_the_reader() {
    // The property above would pass vacuously if every variant were unreadable: the plain
    // spelling is readable, and each trick alone is what makes a variant unreadable.
    let view = guarded_view();
    let finance = view.identity("airflow", "finance-reports").unwrap();
    let plain = Variant {
        placement: Placement::Layout,
        key_case: vec![],
        value_case: vec![],
        dollar: false,
        trailing_dot: false,
        padding: "",
        scope: Some(0),
        byte_order_mark: false,
        duplicate_key: None,
        around: "",
    };
    assert!(read(&spelled_for(&plain, &finance, "svc-reports")).is_ok());
    let spelled_as = |change: &dyn Fn(&mut Variant)| {
        let mut variant = plain.clone();
        change(&mut variant);
        spelled_for(&variant, &finance, "svc-reports")
    };
    let readable = [
        spelled_as(&|v| v.key_case = vec![true, false]),
        spelled_as(&|v| v.value_case = vec![true]),
        spelled_as(&|v| v.dollar = true),
        spelled_as(&|v| v.trailing_dot = true),
        spelled_as(&|v| v.padding = " "),
        spelled_as(&|v| v.scope = None),
        spelled_as(&|v| v.placement = Placement::MachineAccountOnly),
        spelled_as(&|v| v.around = "\n "),
    ];
    for text in readable {
        let named = identities_named(&read(&text).unwrap().named, &view);
        assert_eq!(
            named.iter().map(|i| name_of(i)).collect::<Vec<_>>(),
            ["finance-reports"],
            "{text}"
        );
    }
    for text in [
        spelled_as(&|v| v.byte_order_mark = true),
        spelled_as(&|v| v.duplicate_key = Some(1)),
    ] {
        assert!(read(&text).is_err(), "{text}");
    }
}

#[test]
fn an_account_in_another_domain_is_not_the_identitys_but_no_domain_at_all_is() {
    let view = guarded_view();
    let named = |text: &str| {
        identities_named(&read(text).unwrap().named, &view)
            .iter()
            .map(|i| name_of(i).to_owned())
            .collect::<Vec<_>>()
    };
    let other_domain = r#"{"ActiveDirectoryConfig": {"GroupManagedServiceAccounts": [{"Name": "svc-reports", "Scope": "lab.example.org"}]},
        "DomainJoinConfig": {"DnsName": "lab.example.org", "NetBiosName": "LAB"}}"#;
    assert!(named(other_domain).is_empty());
    let no_domain = r#"{"ActiveDirectoryConfig": {"GroupManagedServiceAccounts": [{"Name": "svc-reports"}]}}"#;
    assert_eq!(named(no_domain), ["finance-reports"]);
    // The scope of the entry or any domain the join config gives: either one that is the identity's.
    let scope_elsewhere_join_here = r#"{"ActiveDirectoryConfig": {"GroupManagedServiceAccounts": [{"Name": "svc-reports", "Scope": "lab.example.org"}]},
        "DomainJoinConfig": {"NetBiosName": "corp"}}"#;
    assert_eq!(named(scope_elsewhere_join_here), ["finance-reports"]);
    // Another identity's plugin input, whatever the accounts say.
    let plugin = r#"{"ActiveDirectoryConfig": {"GroupManagedServiceAccounts": [{"Name": "svc-webapp", "Scope": "CORP"}],
        "HostAccountConfig": {"PluginGUID": "{x}", "PluginInput": " airflow:payroll-host "}}}"#;
    assert_eq!(named(plugin), ["payroll-export"]);
}

#[test]
fn the_cluster_wide_webhook_denies_an_identitys_gmsa_everywhere_and_passes_the_rest() {
    let view = guarded_view();
    let finance = view.identity("airflow", "finance-reports").unwrap();
    let own = inline_credential_spec(&finance);
    for place in 0..4 {
        let decision = validate_gmsa(&request("CREATE", carrying(&own, place), None), &view);
        let (reason, message) = denial(&decision);
        assert_eq!(reason, "GmsaAccountOfIdentity", "{place}");
        assert!(message.contains("identity \"finance-reports\""), "{message}");
        assert!(!message.contains("svc-reports"), "names the identity only: {message}");
        assert_eq!(decision.audit.concerns.as_deref(), Some("finance-reports"));
        // Without any gmsaCredentialSpecName too.
        let mut nameless = carrying(&own, place);
        let text = nameless
            .to_string()
            .replace(r#""gmsaCredentialSpecName":"webapp-gmsa","#, "");
        nameless = serde_json::from_str(&text).unwrap();
        assert_eq!(
            denial(&validate_gmsa(&request("CREATE", nameless, None), &view)).0,
            "GmsaAccountOfIdentity"
        );
    }
    let by_name = unlabelled(base_with(
        json!({"securityContext": {"windowsOptions": {"gmsaCredentialSpecName": "airflow.finance-reports"}}}),
    ));
    let (reason, message) = denied(validate_gmsa(&request("CREATE", by_name, None), &view));
    assert_eq!(reason, "UnlabelledGmsaUse");
    assert!(message.contains("winflow.io/identity=finance-reports"), "{message}");
    let unreadable = carrying(
        r#"{"ActiveDirectoryConfig": {"GroupManagedServiceAccounts": "svc-reports"}}"#,
        2,
    );
    let (reason, message) = denied(validate_gmsa(&request("CREATE", unreadable, None), &view));
    assert_eq!(reason, "GmsaContentUnreadable");
    assert!(
        message.contains("container \"base\"")
            && message.contains("ActiveDirectoryConfig.GroupManagedServiceAccounts is a string, not an array")
            && message.contains("admitted only as one JSON object"),
        "{message}"
    );

    // Not winflow's business: another gMSA, contents naming nothing, no gMSA at all, nor
    // Secrets and service accounts (rules of enforcement namespaces only).
    let webapp =
        r#"{"ActiveDirectoryConfig": {"GroupManagedServiceAccounts": [{"Name": "svc-webapp", "Scope": "CORP"}]}}"#;
    let secret = json!({"serviceAccountName": "payroll-export",
        "volumes": [{"name": "v", "secret": {"secretName": "payroll-export-token"}}]});
    for object in [carrying(webapp, 0), carrying("{}", 2), unlabelled(base_with(secret))] {
        assert!(validate_gmsa(&request("CREATE", object, None), &view).response.allowed);
    }
    // An identity's own pod is judged by pods.winflow.io.
    assert!(
        validate_gmsa(&request("CREATE", mutated_pod(&view, pod()), None), &view)
            .response
            .allowed
    );
}

#[test]
fn contents_winflow_did_not_read_are_denied_in_enforcement_namespaces() {
    let view = guarded_view();
    let variants = [
        (
            "MachineAccountName",
            r#"{"DomainJoinConfig": {"MachineAccountName": "svc-reports", "DnsName": "corp.example.com"}}"#,
            "GmsaAccountOfIdentity",
        ),
        (
            "another identity's plugin input",
            r#"{"ActiveDirectoryConfig": {"HostAccountConfig": {"PluginGUID": "{e4781092-f116-4b79-b55e-28eb6a224e26}", "PluginInput": "airflow:payroll-host"}}}"#,
            "GmsaAccountOfIdentity",
        ),
        (
            "key case",
            r#"{"activedirectoryconfig": {"groupmanagedserviceaccounts": [{"name": "svc-reports", "scope": "CORP"}]}}"#,
            "GmsaAccountOfIdentity",
        ),
        (
            "trailing dot and $",
            r#"{"ActiveDirectoryConfig": {"GroupManagedServiceAccounts": [{"Name": "SVC-REPORTS$", "Scope": "corp.example.com."}]}}"#,
            "GmsaAccountOfIdentity",
        ),
        (
            "byte-order mark",
            "\u{feff}{\"ActiveDirectoryConfig\": {\"GroupManagedServiceAccounts\": [{\"Name\": \"svc-reports\", \"Scope\": \"CORP\"}]}}",
            "GmsaContentUnreadable",
        ),
        (
            "duplicate key",
            r#"{"ActiveDirectoryConfig": {"GroupManagedServiceAccounts": [{"Name": "svc-reports", "Scope": "CORP"}]}, "ActiveDirectoryConfig": {}}"#,
            "GmsaContentUnreadable",
        ),
    ];
    for (what, contents, expected) in variants {
        let decision = validate(&request("CREATE", carrying(contents, 2), None), &view);
        assert_eq!(denial(&decision).0, expected, "{what}");
        let decision = validate_gmsa(&request("CREATE", carrying(contents, 2), None), &view);
        assert_eq!(denial(&decision).0, expected, "{what}");
    }
}

#[test]
fn an_identitys_pod_carries_exactly_its_own_contents() {
    let view = guarded_view();
    let finance = view.identity("airflow", "finance-reports").unwrap();
    let own = credential_spec_document("airflow", &finance.spec);
    let with_contents = |contents: &str| {
        let mut object = mutated_pod(&view, pod());
        object["spec"]["securityContext"]["windowsOptions"]["gmsaCredentialSpec"] = json!(contents);
        object
    };
    // Spacing and key order are not contents.
    let pretty = serde_json::to_string_pretty(&own).unwrap();
    assert!(
        validate(&request("CREATE", with_contents(&pretty), None), &view)
            .response
            .allowed
    );
    let mut recased = own.clone();
    let adc = recased
        .as_object_mut()
        .unwrap()
        .remove("ActiveDirectoryConfig")
        .unwrap();
    recased["activeDirectoryConfig"] = adc;
    let mut machine = own.clone();
    machine["DomainJoinConfig"]["MachineAccountName"] = json!("svc-payroll");
    for other in [recased.to_string(), machine.to_string()] {
        assert_eq!(
            denial(&validate(&request("CREATE", with_contents(&other), None), &view)).0,
            "GmsaConflict"
        );
    }
    let duplicated = own.to_string().replacen('{', r#"{"cmsplugins": [], "#, 1);
    let (reason, message) = denied(validate(&request("CREATE", with_contents(&duplicated), None), &view));
    assert_eq!(reason, "GmsaContentUnreadable");
    assert!(message.contains("\"CmsPlugins\" is given twice"), "{message}");

    // What the user sets before mutation: the same rule, denied rather than replaced.
    let mut unmutated = pod();
    unmutated["spec"]["securityContext"] = json!({"windowsOptions": {"gmsaCredentialSpec": duplicated}});
    assert_eq!(
        denial(&mutate(&request("CREATE", unmutated.clone(), None), &view)).0,
        "GmsaContentUnreadable"
    );
    unmutated["spec"]["securityContext"]["windowsOptions"]["gmsaCredentialSpec"] = json!(pretty);
    assert!(mutate(&request("CREATE", unmutated, None), &view).response.allowed);
}

/// The recorded 1.36 review of an ephemeral container added to a pod of "payroll-export" (a
/// whole Pod), moved to the namespace of the test identities, its debugger carrying `options`.
fn recorded_ephemeral_review(
    labelled: bool,
    options: Value,
) -> kube::core::admission::AdmissionRequest<kube::core::DynamicObject> {
    let review: Value = serde_json::from_str(include_str!(
        "../../../../tests/data/k8s-1.36-reviews/03-validate-update-ephemeralcontainers.json"
    ))
    .unwrap();
    let request = &review["request"];
    let mut object = request["object"].clone();
    let mut old = request["oldObject"].clone();
    for pod in [&mut object, &mut old] {
        pod["metadata"]["namespace"] = json!("airflow");
        if !labelled {
            let labels = pod["metadata"]["labels"].as_object_mut().unwrap();
            labels.remove("winflow.io/identity");
            let spec = pod["spec"].as_object_mut().unwrap();
            spec.remove("securityContext");
            spec.remove("volumes");
        }
    }
    object["spec"]["ephemeralContainers"][0]["securityContext"] = json!({"windowsOptions": options});
    request_as("UPDATE", object, Some(old), Some("ephemeralcontainers"))
}

#[test]
fn ephemeral_containers_get_every_gmsa_rule() {
    let view = guarded_view();
    let payroll = view.identity("airflow", "payroll-export").unwrap();
    let finance = view.identity("airflow", "finance-reports").unwrap();
    let allowed = Some(&Access::Allowed);
    let ephemeral =
        |labelled, options| validate_ephemeral(&recorded_ephemeral_review(labelled, options), &view, &allowed);

    // A pod of an identity: only its own credential spec, by name and contents.
    assert!(ephemeral(true, json!({})).response.allowed);
    let own = json!({"gmsaCredentialSpecName": "airflow.payroll-export", "gmsaCredentialSpec": inline_credential_spec(&payroll)});
    assert!(ephemeral(true, own).response.allowed);
    let others = json!({"gmsaCredentialSpecName": "airflow.payroll-export", "gmsaCredentialSpec": inline_credential_spec(&finance)});
    let (reason, message) = denied(ephemeral(true, others));
    assert_eq!(reason, "GmsaConflict");
    assert!(message.contains("ephemeral container \"debugger\""), "{message}");
    let named = json!({"gmsaCredentialSpecName": "airflow.finance-reports"});
    assert_eq!(denial(&ephemeral(true, named)).0, "GmsaConflict");
    let nameless = json!({"gmsaCredentialSpec": inline_credential_spec(&payroll)});
    assert_eq!(denial(&ephemeral(true, nameless)).0, "GmsaContentWithoutName");

    // Any other pod: the cluster-wide webhook, and the enforcement one.
    let forged =
        json!({"gmsaCredentialSpecName": "webapp-gmsa", "gmsaCredentialSpec": inline_credential_spec(&finance)});
    let review = recorded_ephemeral_review(false, forged);
    let (reason, message) = denied(validate_gmsa(&review, &view));
    assert_eq!(reason, "GmsaAccountOfIdentity");
    assert!(message.contains("ephemeral container \"debugger\""), "{message}");
    assert_eq!(denial(&validate(&review, &view)).0, "GmsaAccountOfIdentity");
    assert!(
        validate_gmsa(&recorded_ephemeral_review(false, json!({})), &view)
            .response
            .allowed
    );
}
