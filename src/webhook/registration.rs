//! The Mutating and Validating webhook configurations that point the API server at winflow.
//! Only pods labelled `winflow.io/identity` are sent (objectSelector), so unrelated pods never
//! wait on winflow; enforcement namespaces also send unlabelled pods for validation, and every
//! other namespace the unlabelled pods that carry gMSA fields (a `matchConditions` expression
//! picks them out on Kubernetes 1.28 and later; older servers send every unlabelled pod).
//! Ephemeral containers, exec, attach and port-forward come without the pod's labels: winflow
//! looks the pod up.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MatchCondition, MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ValidatingWebhook,
    ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement, ObjectMeta};

use crate::names::{IDENTITY_LABEL, MANAGED_BY_LABEL, MANAGED_BY_VALUE};

pub use crate::names::ENFORCE_LABEL;

/// Where the API server reaches the webhook.
#[derive(Clone, Debug)]
pub enum Endpoint {
    /// `https://host:port` (local runs; the API server must reach it).
    Url(String),
    /// A Service in the cluster.
    Service { namespace: String, name: String, port: i32 },
}

/// What the configurations need to know.
#[derive(Clone, Debug)]
pub struct Registration {
    /// Name of both configuration objects.
    pub name: String,
    pub endpoint: Endpoint,
    /// PEM of the CA that signed the webhook's certificate.
    pub ca_bundle: Vec<u8>,
    /// `Fail` (default: no pod runs without its identity being enforced) or `Ignore`.
    pub failure_policy: String,
    /// Further restricts the namespaces whose pods are sent (for example to one namespace).
    pub namespace_selector: Option<LabelSelector>,
    /// Whether the API server evaluates webhooks' `matchConditions` (Kubernetes 1.28 and
    /// later): ask it with [`supports_match_conditions`], never assume.
    pub match_conditions: bool,
}

/// The first Kubernetes minor version (of 1.x) that evaluates `matchConditions` (beta and on
/// by default in 1.28, GA in 1.30).
const MATCH_CONDITIONS_SINCE: u32 = 28;

/// Whether the API server `client` talks to evaluates `matchConditions`, from its version.
pub async fn supports_match_conditions(client: &kube::Client) -> Result<bool, kube::Error> {
    let version = client.apiserver_version().await?;
    Ok(version_supports_match_conditions(
        &version.major,
        &version.minor,
        &version.git_version,
    ))
}

/// From the version the server reports: `major` and `minor` (managed offerings add a `+`, as
/// in `"28+"`), or else `git_version` (`v1.28.3-gke.100`). What cannot be read counts as an
/// older server: the webhook is then registered without the condition, which costs time, not
/// safety.
fn version_supports_match_conditions(major: &str, minor: &str, git_version: &str) -> bool {
    let number = |text: &str| -> Option<u32> {
        let digits: String = text.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    let from_git = || {
        let mut parts = git_version.trim_start_matches('v').split('.');
        Some((number(parts.next()?)?, number(parts.next()?)?))
    };
    match number(major).zip(number(minor)).or_else(from_git) {
        Some((major, minor)) => major > 1 || (major == 1 && minor >= MATCH_CONDITIONS_SINCE),
        None => false,
    }
}

/// The CEL expression true for pods that carry a gMSA field at pod level or in any container
/// (init, app, ephemeral): the only ones `gmsa.pods.winflow.io` needs to see. The chart's
/// webhookconfigurations.yaml holds the same text (tests/chart/ checks it).
pub fn gmsa_match_expression() -> String {
    let gmsa_in =
        |options: &str| format!("(has({options}.gmsaCredentialSpecName) || has({options}.gmsaCredentialSpec))");
    let pod_level = format!(
        "(has(object.spec.securityContext) && has(object.spec.securityContext.windowsOptions) && {})",
        gmsa_in("object.spec.securityContext.windowsOptions")
    );
    let containers = ["initContainers", "containers", "ephemeralContainers"].map(|list| {
        format!(
            "(has(object.spec.{list}) && object.spec.{list}.exists(c, has(c.securityContext) && has(c.securityContext.windowsOptions) && {}))",
            gmsa_in("c.securityContext.windowsOptions")
        )
    });
    let any = std::iter::once(pod_level)
        .chain(containers)
        .collect::<Vec<_>>()
        .join(" ||\n  ");
    format!("has(object.spec) && (\n  {any}\n)")
}

fn client_config(registration: &Registration, path: &str) -> WebhookClientConfig {
    let mut config = WebhookClientConfig {
        ca_bundle: Some(ByteString(registration.ca_bundle.clone())),
        ..WebhookClientConfig::default()
    };
    match &registration.endpoint {
        Endpoint::Url(base) => config.url = Some(format!("{}{path}", base.trim_end_matches('/'))),
        Endpoint::Service { namespace, name, port } => {
            config.service = Some(k8s_openapi::api::admissionregistration::v1::ServiceReference {
                namespace: namespace.clone(),
                name: name.clone(),
                path: Some(path.to_owned()),
                port: Some(*port),
            })
        }
    }
    config
}

/// Rules on pods: `operations` on `resources` (`pods`, `pods/ephemeralcontainers`).
fn pod_rules(rules: &[(&[&str], &[&str])]) -> Vec<RuleWithOperations> {
    let strings = |items: &[&str]| items.iter().map(|i| i.to_string()).collect();
    rules
        .iter()
        .map(|(operations, resources)| RuleWithOperations {
            api_groups: Some(vec![String::new()]),
            api_versions: Some(vec!["v1".to_owned()]),
            operations: Some(strings(operations)),
            resources: Some(strings(resources)),
            scope: Some("Namespaced".to_owned()),
        })
        .collect()
}

/// Rules on every built-in kind with a pod template, CREATE and UPDATE. CronJobs are
/// `batch/v1beta1` before Kubernetes 1.21; `matchPolicy: Equivalent` maps the rest.
fn workload_rules() -> Vec<RuleWithOperations> {
    let strings = |items: &[&str]| items.iter().map(|i| i.to_string()).collect();
    [
        (
            &["apps"][..],
            &["v1"][..],
            &["deployments", "replicasets", "statefulsets", "daemonsets"][..],
        ),
        (&["batch"], &["v1", "v1beta1"], &["jobs", "cronjobs"]),
        (&[""], &["v1"], &["replicationcontrollers"]),
    ]
    .iter()
    .map(|(groups, versions, resources)| RuleWithOperations {
        api_groups: Some(strings(groups)),
        api_versions: Some(strings(versions)),
        operations: Some(strings(&["CREATE", "UPDATE"])),
        resources: Some(strings(resources)),
        scope: Some("Namespaced".to_owned()),
    })
    .collect()
}

fn label_exists(exists: bool) -> LabelSelector {
    LabelSelector {
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: IDENTITY_LABEL.to_owned(),
            operator: if exists { "Exists" } else { "DoesNotExist" }.to_owned(),
            values: None,
        }]),
        match_labels: None,
    }
}

/// `extra` AND the enforcement label.
fn enforced_namespaces(extra: Option<&LabelSelector>) -> LabelSelector {
    let mut selector = extra.cloned().unwrap_or_default();
    selector
        .match_labels
        .get_or_insert_with(BTreeMap::new)
        .insert(ENFORCE_LABEL.to_owned(), "true".to_owned());
    selector
}

/// `extra` AND not the enforcement label (namespaces without it included).
fn unenforced_namespaces(extra: Option<&LabelSelector>) -> LabelSelector {
    let mut selector = extra.cloned().unwrap_or_default();
    selector
        .match_expressions
        .get_or_insert_with(Vec::new)
        .push(LabelSelectorRequirement {
            key: ENFORCE_LABEL.to_owned(),
            operator: "NotIn".to_owned(),
            values: Some(vec!["true".to_owned()]),
        });
    selector
}

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        labels: Some(BTreeMap::from([(
            MANAGED_BY_LABEL.to_owned(),
            MANAGED_BY_VALUE.to_owned(),
        )])),
        ..ObjectMeta::default()
    }
}

pub fn mutating_configuration(registration: &Registration) -> MutatingWebhookConfiguration {
    MutatingWebhookConfiguration {
        metadata: meta(&registration.name),
        webhooks: Some(vec![MutatingWebhook {
            name: "pods.winflow.io".to_owned(),
            admission_review_versions: vec!["v1".to_owned()],
            client_config: client_config(registration, "/mutate-pods"),
            failure_policy: Some(registration.failure_policy.clone()),
            match_policy: Some("Equivalent".to_owned()),
            namespace_selector: registration.namespace_selector.clone(),
            object_selector: Some(label_exists(true)),
            // Other webhooks may add containers after winflow: run again so they get the env.
            reinvocation_policy: Some("IfNeeded".to_owned()),
            rules: Some(pod_rules(&[(&["CREATE"], &["pods"])])),
            side_effects: "NoneOnDryRun".to_owned(),
            timeout_seconds: Some(10),
            ..MutatingWebhook::default()
        }]),
    }
}

pub fn validating_configuration(registration: &Registration) -> ValidatingWebhookConfiguration {
    let webhook = |name: &str, path: &str, namespace_selector, object_selector, rules| ValidatingWebhook {
        name: name.to_owned(),
        admission_review_versions: vec!["v1".to_owned()],
        client_config: client_config(registration, path),
        failure_policy: Some(registration.failure_policy.clone()),
        match_policy: Some("Equivalent".to_owned()),
        namespace_selector,
        object_selector,
        rules: Some(rules),
        side_effects: "NoneOnDryRun".to_owned(),
        timeout_seconds: Some(10),
        ..ValidatingWebhook::default()
    };
    ValidatingWebhookConfiguration {
        metadata: meta(&registration.name),
        webhooks: Some(vec![
            webhook(
                "pods.winflow.io",
                "/validate-pods",
                registration.namespace_selector.clone(),
                Some(label_exists(true)),
                pod_rules(&[(&["CREATE", "UPDATE"], &["pods"])]),
            ),
            webhook(
                "enforce.pods.winflow.io",
                "/validate-pods",
                Some(enforced_namespaces(registration.namespace_selector.as_ref())),
                Some(label_exists(false)),
                pod_rules(&[(&["CREATE"], &["pods"]), (&["UPDATE"], &["pods/ephemeralcontainers"])]),
            ),
            // An ephemeral container added to an identity's pod runs as the identity. Before
            // Kubernetes 1.22 the request carries no pod labels, so every pod's is sent (adding
            // one is a rare, manual act) and winflow looks the pod up.
            webhook(
                "ephemeral.pods.winflow.io",
                "/validate-ephemeral-containers",
                registration.namespace_selector.clone(),
                None,
                pod_rules(&[(&["UPDATE"], &["pods/ephemeralcontainers"])]),
            ),
            gmsa_webhook(
                registration,
                webhook(
                    "gmsa.pods.winflow.io",
                    "/validate-gmsa",
                    Some(unenforced_namespaces(registration.namespace_selector.as_ref())),
                    Some(label_exists(false)),
                    pod_rules(&[(&["CREATE"], &["pods"]), (&["UPDATE"], &["pods/ephemeralcontainers"])]),
                ),
            ),
            // exec, attach and port-forward run inside the pod, as its identity. The object is
            // the options (PodExecOptions, ...) without the pod's labels: no object selector
            // can pick out an identity's pods, so winflow looks the pod up.
            webhook(
                "connect.pods.winflow.io",
                "/validate-connect",
                registration.namespace_selector.clone(),
                None,
                pod_rules(&[(&["CONNECT"], &["pods/exec", "pods/attach", "pods/portforward"])]),
            ),
            // A workload whose pods run as a creator's service account lets whoever writes it
            // act as that creator; its pods are made by Kubernetes' controllers, so the
            // workload is checked where pods are checked, in enforcement namespaces.
            webhook(
                "workloads.winflow.io",
                "/validate-workloads",
                Some(enforced_namespaces(registration.namespace_selector.as_ref())),
                None,
                workload_rules(),
            ),
        ]),
    }
}

/// A node retrieves a gMSA for any pod whose credential spec names it, so unlabelled pods
/// outside enforcement namespaces are checked too; where the server can tell, only those
/// that carry a gMSA field are sent, so other pods never wait on winflow.
fn gmsa_webhook(registration: &Registration, webhook: ValidatingWebhook) -> ValidatingWebhook {
    let match_conditions = registration.match_conditions.then(|| {
        vec![MatchCondition {
            name: "carries-gmsa-fields".to_owned(),
            expression: gmsa_match_expression(),
        }]
    });
    ValidatingWebhook {
        match_conditions,
        ..webhook
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registration(endpoint: Endpoint) -> Registration {
        Registration {
            name: "winflow".into(),
            endpoint,
            ca_bundle: b"-----BEGIN CERTIFICATE-----".to_vec(),
            failure_policy: "Fail".into(),
            namespace_selector: None,
            match_conditions: false,
        }
    }

    #[test]
    fn only_labelled_pods_are_mutated() {
        let config = mutating_configuration(&registration(Endpoint::Url("https://127.0.0.1:8443/".into())));
        let hook = &config.webhooks.unwrap()[0];
        assert_eq!(
            hook.client_config.url.as_deref(),
            Some("https://127.0.0.1:8443/mutate-pods")
        );
        let selector = hook
            .object_selector
            .as_ref()
            .unwrap()
            .match_expressions
            .as_ref()
            .unwrap();
        assert_eq!(
            (selector[0].key.as_str(), selector[0].operator.as_str()),
            ("winflow.io/identity", "Exists")
        );
        assert_eq!(hook.side_effects, "NoneOnDryRun");
        assert_eq!(
            hook.rules.as_ref().unwrap()[0].operations.as_deref(),
            Some(&["CREATE".to_owned()][..])
        );
    }

    #[test]
    fn enforcement_namespaces_send_unlabelled_pods_for_validation() {
        let mut reg = registration(Endpoint::Service {
            namespace: "winflow-system".into(),
            name: "winflow-webhook".into(),
            port: 443,
        });
        reg.namespace_selector = Some(LabelSelector {
            match_labels: Some([("team".to_owned(), "finance".to_owned())].into()),
            match_expressions: None,
        });
        let config = validating_configuration(&reg);
        let hooks = config.webhooks.unwrap();
        assert_eq!(hooks.len(), 6);
        assert_eq!(
            hooks[0].client_config.service.as_ref().unwrap().path.as_deref(),
            Some("/validate-pods")
        );
        let enforce = &hooks[1];
        assert_eq!(
            enforce
                .object_selector
                .as_ref()
                .unwrap()
                .match_expressions
                .as_ref()
                .unwrap()[0]
                .operator,
            "DoesNotExist"
        );
        let namespaces = enforce
            .namespace_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap();
        assert_eq!(namespaces["winflow.io/enforce"], "true");
        assert_eq!(namespaces["team"], "finance");
        let resources = |hook: &ValidatingWebhook| -> Vec<(Vec<String>, Vec<String>)> {
            let rules = hook.rules.clone().unwrap();
            rules
                .into_iter()
                .map(|r| (r.operations.unwrap(), r.resources.unwrap()))
                .collect()
        };
        let strings = |items: &[&str]| items.iter().map(|i| i.to_string()).collect::<Vec<_>>();
        assert_eq!(
            resources(&hooks[0]),
            [(strings(&["CREATE", "UPDATE"]), strings(&["pods"]))]
        );
        assert_eq!(
            resources(enforce),
            [
                (strings(&["CREATE"]), strings(&["pods"])),
                (strings(&["UPDATE"]), strings(&["pods/ephemeralcontainers"]))
            ]
        );
        let ephemeral = &hooks[2];
        assert_eq!(
            resources(ephemeral),
            [(strings(&["UPDATE"]), strings(&["pods/ephemeralcontainers"]))]
        );
        assert!(
            ephemeral.object_selector.is_none(),
            "1.20 sends no pod labels with ephemeral containers"
        );
        assert_eq!(ephemeral.namespace_selector, reg.namespace_selector);
        assert_eq!(
            ephemeral.client_config.service.as_ref().unwrap().path.as_deref(),
            Some("/validate-ephemeral-containers")
        );
    }

    #[test]
    fn unlabelled_pods_outside_enforcement_namespaces_are_sent_for_the_gmsa_rules() {
        let mut reg = registration(Endpoint::Url("https://127.0.0.1:8443".into()));
        reg.namespace_selector = Some(LabelSelector {
            match_labels: Some([("team".to_owned(), "finance".to_owned())].into()),
            match_expressions: None,
        });
        let gmsa = |reg: &Registration| {
            validating_configuration(reg)
                .webhooks
                .unwrap()
                .into_iter()
                .find(|h| h.name == "gmsa.pods.winflow.io")
                .unwrap()
        };
        let old_server = gmsa(&reg);
        assert_eq!(
            old_server.client_config.url.as_deref(),
            Some("https://127.0.0.1:8443/validate-gmsa")
        );
        let namespaces = old_server.namespace_selector.clone().unwrap();
        assert_eq!(namespaces.match_labels.unwrap()["team"], "finance");
        let requirement = &namespaces.match_expressions.unwrap()[0];
        assert_eq!(
            (requirement.key.as_str(), requirement.operator.as_str()),
            ("winflow.io/enforce", "NotIn")
        );
        assert_eq!(requirement.values.as_deref(), Some(&["true".to_owned()][..]));
        let objects = old_server.object_selector.clone().unwrap().match_expressions.unwrap();
        assert_eq!(
            (objects[0].key.as_str(), objects[0].operator.as_str()),
            ("winflow.io/identity", "DoesNotExist")
        );
        let rules: Vec<_> = old_server
            .rules
            .clone()
            .unwrap()
            .into_iter()
            .map(|r| (r.operations.unwrap(), r.resources.unwrap()))
            .collect();
        assert_eq!(
            rules,
            [
                (vec!["CREATE".to_owned()], vec!["pods".to_owned()]),
                (vec!["UPDATE".to_owned()], vec!["pods/ephemeralcontainers".to_owned()])
            ]
        );
        assert!(
            old_server.match_conditions.is_none(),
            "a server before 1.28 would ignore matchConditions"
        );

        reg.match_conditions = true;
        let new_server = gmsa(&reg);
        let conditions = new_server.match_conditions.clone().unwrap();
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].name, "carries-gmsa-fields");
        assert_eq!(conditions[0].expression, gmsa_match_expression());
        // Everything else is the same; the other webhooks get no condition.
        assert_eq!(
            ValidatingWebhook {
                match_conditions: None,
                ..new_server
            },
            old_server
        );
        let others = validating_configuration(&reg).webhooks.unwrap();
        assert!(
            others
                .iter()
                .filter(|h| h.name != "gmsa.pods.winflow.io")
                .all(|h| h.match_conditions.is_none())
        );
    }

    #[test]
    fn the_match_condition_looks_at_every_place_a_pod_carries_gmsa_fields() {
        let expression = gmsa_match_expression();
        for place in [
            "object.spec.securityContext.windowsOptions.gmsaCredentialSpecName",
            "object.spec.securityContext.windowsOptions.gmsaCredentialSpec)",
            "object.spec.initContainers.exists(c,",
            "object.spec.containers.exists(c,",
            "object.spec.ephemeralContainers.exists(c,",
            "c.securityContext.windowsOptions.gmsaCredentialSpecName",
            "c.securityContext.windowsOptions.gmsaCredentialSpec)",
        ] {
            assert!(expression.contains(place), "{place} missing from {expression}");
        }
        // Every optional field is tested with has() before it is read: an evaluation error
        // would fail the request (failurePolicy Fail) instead of skipping the webhook.
        assert_eq!(
            expression
                .matches("has(object.spec.initContainers) && object.spec.initContainers")
                .count(),
            1
        );
        assert_eq!(expression.matches('(').count(), expression.matches(')').count());
    }

    #[test]
    fn match_conditions_are_used_from_kubernetes_1_28_on() {
        for (major, minor, git, supported) in [
            ("1", "20", "v1.20.2", false),
            ("1", "27", "v1.27.9", false),
            ("1", "28", "v1.28.0", true),
            ("1", "28+", "v1.28.3-gke.1", true),
            ("1", "36", "v1.36.2", true),
            ("", "", "v1.33.1+k3s1", true),
            ("", "", "v1.26.0", false),
            ("", "", "unknown", false),
        ] {
            assert_eq!(
                version_supports_match_conditions(major, minor, git),
                supported,
                "{major}.{minor} ({git})"
            );
        }
    }

    #[test]
    fn exec_attach_and_port_forward_are_sent_from_every_pod_of_the_selected_namespaces() {
        let mut reg = registration(Endpoint::Url("https://127.0.0.1:8443".into()));
        reg.namespace_selector = Some(LabelSelector {
            match_labels: Some([("kubernetes.io/metadata.name".to_owned(), "airflow".to_owned())].into()),
            match_expressions: None,
        });
        let config = validating_configuration(&reg);
        let hooks = config.webhooks.unwrap();
        let connect = hooks
            .iter()
            .find(|hook| hook.name == "connect.pods.winflow.io")
            .expect("the connect webhook");
        assert_eq!(
            connect.client_config.url.as_deref(),
            Some("https://127.0.0.1:8443/validate-connect")
        );
        let rules = connect.rules.clone().unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].operations.as_deref(), Some(&["CONNECT".to_owned()][..]));
        assert_eq!(
            rules[0].resources.as_deref(),
            Some(
                &[
                    "pods/exec".to_owned(),
                    "pods/attach".to_owned(),
                    "pods/portforward".to_owned()
                ][..]
            )
        );
        assert!(
            connect.object_selector.is_none(),
            "the options objects carry no pod labels"
        );
        assert_eq!(connect.namespace_selector, reg.namespace_selector);
        assert_eq!(connect.failure_policy.as_deref(), Some("Fail"));
        assert_eq!(connect.side_effects, "NoneOnDryRun");
    }
}
