//! The CEL rules (`x-kubernetes-validations`) of the CRDs in crds/, evaluated with a CEL
//! interpreter on the cases winflow's own validation (`winflow::validate`) knows: each rule
//! fails exactly where `validate` reports InvalidSpec, with the same field and message, and
//! passes on the examples. Kubernetes 1.25 and later enforce them at `kubectl apply`; the
//! local 1.20 server ignores them, hence this test of the expressions themselves.

use std::path::Path;

use cel_interpreter::{Context, Program, Value as Cel};
use serde_json::{Value, json};
use winflow::api::WindowsTaskIdentitySpec;
use winflow::api::share::WindowsShareSpec;
use winflow::validate::{Violation, check_identity, check_share};

/// One rule and where in the object it applies (`spec.token`: it sees that object as `self`).
#[derive(Clone, Debug)]
struct Rule {
    path: Vec<String>,
    rule: String,
    message: Option<String>,
    message_expression: Option<String>,
    field_path: Option<String>,
}

impl Rule {
    fn field(&self) -> String {
        let mut field = self.path.join(".");
        if let Some(extra) = &self.field_path {
            field.push_str(extra);
        }
        field
    }
}

/// Every rule of the CRD `file` (crds/), with its path from the object's root.
fn rules(file: &str) -> Vec<Rule> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("crds").join(file)).unwrap();
    let crd: Value = serde_yaml_ng::from_str(&text).unwrap();
    let mut found = Vec::new();
    for version in crd["spec"]["versions"].as_array().unwrap() {
        collect(&version["schema"]["openAPIV3Schema"], &mut Vec::new(), &mut found);
    }
    assert!(!found.is_empty(), "{file} has no CEL rules");
    found
}

fn collect(schema: &Value, path: &mut Vec<String>, found: &mut Vec<Rule>) {
    for rule in schema["x-kubernetes-validations"].as_array().into_iter().flatten() {
        let text = |key: &str| rule[key].as_str().map(str::to_owned);
        found.push(Rule {
            path: path.clone(),
            rule: text("rule").unwrap(),
            message: text("message"),
            message_expression: text("messageExpression"),
            field_path: text("fieldPath"),
        });
    }
    // A rule under a list would need its element's index in the field; none is there.
    assert!(
        schema["items"]["x-kubernetes-validations"].is_null(),
        "a rule inside a list at {path:?}"
    );
    for (name, property) in schema["properties"].as_object().into_iter().flatten() {
        path.push(name.clone());
        collect(property, path, found);
        path.pop();
    }
}

fn evaluate(expression: &str, object: &Value) -> Cel {
    let program = Program::compile(expression).unwrap_or_else(|e| panic!("{expression}: {e}"));
    let mut context = Context::default();
    context.add_variable("self", object.clone()).unwrap();
    program
        .execute(&context)
        .unwrap_or_else(|e| panic!("{expression} on {object}: {e:?}"))
}

/// What the API server would refuse `object` with: (field, message) of each failed rule.
fn cel_violations(rules: &[Rule], object: &Value) -> Vec<(String, String)> {
    let mut failed = Vec::new();
    for rule in rules {
        let Some(value) = rule.path.iter().try_fold(object, |v, key| v.get(key)) else {
            continue;
        };
        match evaluate(&rule.rule, value) {
            Cel::Bool(true) => {}
            Cel::Bool(false) => {
                let message = match (&rule.message_expression, &rule.message) {
                    (Some(expression), _) => match evaluate(expression, value) {
                        Cel::String(message) => message.to_string(),
                        other => panic!("{expression} gave {other:?}"),
                    },
                    (None, Some(message)) => message.clone(),
                    (None, None) => panic!("rule {} has no message", rule.rule),
                };
                failed.push((rule.field(), message));
            }
            other => panic!("{} gave {other:?}", rule.rule),
        }
    }
    failed.sort();
    failed
}

fn pairs(violations: Result<(), Vec<Violation>>) -> Vec<(String, String)> {
    let mut pairs: Vec<_> = violations
        .err()
        .unwrap_or_default()
        .into_iter()
        .map(|v| (v.field, v.message))
        .collect();
    pairs.sort();
    pairs
}

fn example(file: &str, document: usize) -> Value {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(file)).unwrap();
    let document = serde_yaml_ng::Deserializer::from_str(&text).nth(document).unwrap();
    serde::Deserialize::deserialize(document).unwrap()
}

/// Merges `change` into `base` (objects key by key; null removes).
fn merged(mut base: Value, change: &Value) -> Value {
    match change {
        Value::Object(fields) => {
            if !base.is_object() {
                base = json!({});
            }
            for (key, value) in fields {
                if value.is_null() {
                    base.as_object_mut().unwrap().remove(key);
                } else {
                    let slot = base.as_object_mut().unwrap().entry(key.clone()).or_insert(Value::Null);
                    *slot = merged(slot.take(), value);
                }
            }
            base
        }
        other => other.clone(),
    }
}

/// (field, message) pairs refused by the CEL rules, and by winflow's own validation.
type Refusals = (Vec<(String, String)>, Vec<(String, String)>);

/// The identity example with a token by client secret, changed by `change` (under `spec`).
/// The object the rules see is the spec as winflow reads it (defaults filled in, as the API
/// server defaults before it validates).
fn identity_case(change: Value) -> Refusals {
    let mut object = example("identity-azure-key-vault.yaml", 0);
    object["spec"]["token"] = json!({
        "issuerUrl": "https://login.microsoftonline.com/6f1c2b1e-0000-4000-8000-000000000001/v2.0",
        "clientId": "3c9a7e55-0000-4000-8000-000000000002",
        "clientSecretRef": {"name": "payroll-oidc", "key": "client-secret"}
    });
    object["spec"] = merged(object["spec"].take(), &change);
    let spec: WindowsTaskIdentitySpec = serde_json::from_value(object["spec"].clone()).unwrap();
    let defaulted = json!({"spec": serde_json::to_value(&spec).unwrap()});
    (
        cel_violations(&rules("windowstaskidentities.winflow.io.yaml"), &defaulted),
        pairs(check_identity("airflow", "payroll-export", &spec)),
    )
}

fn share_case(change: Value) -> Refusals {
    let mut object = example("share-reports.yaml", 1);
    object["spec"] = merged(object["spec"].take(), &change);
    let spec: WindowsShareSpec = serde_json::from_value(object["spec"].clone()).unwrap();
    let defaulted = json!({"spec": serde_json::to_value(&spec).unwrap()});
    (
        cel_violations(&rules("windowsshares.winflow.io.yaml"), &defaulted),
        pairs(check_share("airflow", "finance-reports-share", &spec)),
    )
}

/// Each case's CEL refusals equal winflow's own; every bad case is refused; every rule fails
/// in some case.
fn check_cases(file: &str, good: &[Value], bad: &[Value], case: fn(Value) -> Refusals) {
    for change in good {
        let (cel, validate) = case(change.clone());
        assert_eq!(validate, [], "validate refuses the good case {change}");
        assert_eq!(cel, [], "CEL refuses the good case {change}");
    }
    let mut failed_fields = Vec::new();
    for change in bad {
        let (cel, validate) = case(change.clone());
        assert!(!validate.is_empty(), "validate admits the bad case {change}");
        assert_eq!(cel, validate, "case {change}");
        failed_fields.extend(cel);
    }
    for rule in rules(file) {
        assert!(
            failed_fields.iter().any(|(field, _)| *field == rule.field()),
            "no case fails the rule {} at {}",
            rule.rule,
            rule.field()
        );
    }
}

#[test]
fn identity_rules_refuse_what_winflow_refuses_with_its_message() {
    check_cases(
        "windowstaskidentities.winflow.io.yaml",
        &[
            json!({}),
            json!({"token": {"clientSecretRef": null, "workloadIdentity": {"audience": "api://AzureADTokenExchange"}}}),
            json!({"token": {"secretName": "payroll-token"}}),
            json!({"pod": {"runAsUserName": "ContainerAdministrator", "allowAdministrator": true}}),
            json!({"pod": {"runAsUserName": "CORP\\svc-payroll"}}),
            json!({"pod": {"nodeSelector": {"kubernetes.io/os": "windows", "pool": "win"}}}),
        ],
        &[
            json!({"token": {"workloadIdentity": {"audience": "api://AzureADTokenExchange"}}}),
            json!({"token": {"clientSecretRef": null}}),
            json!({"token": {"secretName": "payroll-oidc"}}),
            json!({"pod": {"runAsUserName": "ContainerAdministrator"}}),
            json!({"pod": {"runAsUserName": "containeradministrator", "allowAdministrator": false}}),
            json!({"pod": {"nodeSelector": {"kubernetes.io/os": "linux"}}}),
            json!({"serviceAccount": {"name": "default"}}),
        ],
        identity_case,
    );
}

#[test]
fn share_rules_refuse_what_winflow_refuses_with_its_message() {
    check_cases(
        "windowsshares.winflow.io.yaml",
        &[
            json!({}),
            json!({"server": "10.0.0.5"}),
            json!({"server": "files.svcs.example.com"}),
            json!({"subDir": "finance/2026/.reports"}),
            json!({"subDir": null}),
        ],
        &[
            json!({"server": "fs01.corp.example.com/reports"}),
            json!({"server": "smb.files.svc.cluster.local"}),
            json!({"server": "smb.files.svc"}),
            json!({"server": "SMB.Files.SVC."}),
            json!({"server": "smb.svc.internal"}),
            json!({"server": "fs01.cluster.local"}),
            json!({"subDir": "finance/../payroll"}),
            json!({"subDir": "/finance"}),
            json!({"subDir": "finance/"}),
            json!({"subDir": "finance//2026"}),
            json!({"subDir": "."}),
        ],
        share_case,
    );
}

#[test]
fn a_backslash_is_refused_by_both_though_the_messages_quote_it_differently() {
    // winflow quotes values as Rust does (a backslash doubled); CEL's message has it as is.
    for change in [
        json!({"server": "\\\\fs01\\reports"}),
        json!({"subDir": "finance\\2026"}),
    ] {
        let (cel, validate) = share_case(change.clone());
        let fields = |v: &[(String, String)]| v.iter().map(|(f, _)| f.clone()).collect::<Vec<_>>();
        assert_eq!(fields(&cel), fields(&validate), "case {change}");
        assert_eq!(cel.len(), 1, "case {change}: {cel:?}");
    }
}
