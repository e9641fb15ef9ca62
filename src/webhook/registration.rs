//! The Mutating and Validating webhook configurations that point the API server at winflow.
//! Only pods labelled `winflow.io/identity` are sent (objectSelector), so unrelated pods never
//! wait on winflow; enforcement namespaces also send unlabelled pods for validation.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ValidatingWebhook,
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
        ]),
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
        assert_eq!(hooks.len(), 3);
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
}
