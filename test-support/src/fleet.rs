//! Many identities at once, for fault tests and benchmarks: create them, count the Ready
//! ones, and check that each has exactly its own children.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{ListParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use winflow::api::{GMSACredentialSpec, WindowsTaskIdentity};

use crate::identities::example_identity;
use crate::{TestEnv, wait_until};

const MANAGED: &str = "app.kubernetes.io/managed-by=winflow";

/// `prefix-0000` … : names that sort in creation order.
pub fn names(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}-{i:04}")).collect()
}

/// Creates the example identity under every name, `in_flight` requests at a time.
pub async fn create_identities(env: &TestEnv, names: &[String], in_flight: usize) {
    let api = env.api::<WindowsTaskIdentity>();
    futures::stream::iter(names.iter().map(|name| {
        let api = api.clone();
        async move {
            api.create(&PostParams::default(), &example_identity(name))
                .await
                .map(|_| ())
        }
    }))
    .buffer_unordered(in_flight)
    .try_collect::<()>()
    .await
    .expect("identities created");
}

/// Identities whose `Ready` condition is True for their current generation.
pub async fn ready_count(env: &TestEnv) -> usize {
    let Ok(list) = env.api::<WindowsTaskIdentity>().list(&ListParams::default()).await else {
        return 0;
    };
    list.items.iter().filter(|i| is_ready(i)).count()
}

pub fn is_ready(identity: &WindowsTaskIdentity) -> bool {
    identity.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True" && c.observed_generation == identity.metadata.generation)
    })
}

/// Waits until `count` identities are Ready.
pub async fn wait_all_ready(env: &TestEnv, count: usize, timeout: Duration) {
    wait_until(&format!("{count} identities Ready"), timeout, || async {
        (ready_count(env).await >= count).then_some(())
    })
    .await;
}

/// What is wrong with the children winflow manages in the test's namespace: every kind must
/// hold exactly the objects winflow names for each identity (two Roles and RoleBindings, one
/// of every other kind), each owned by that identity (its current uid). Empty when all is well.
pub async fn child_problems(env: &TestEnv) -> Vec<String> {
    let identities: BTreeMap<String, String> = env
        .api::<WindowsTaskIdentity>()
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|i| (i.name_any(), i.uid().unwrap_or_default()))
        .collect();
    let mut problems = Vec::new();
    let config_map = |i: &str| vec![winflow::names::pod_templates_config_map_name(i)];
    let roles = |i: &str| vec![winflow::names::gmsa_role_name(i), winflow::names::use_role_name(i)];
    problems.extend(check_kind::<ConfigMap>(env, &identities, config_map).await);
    problems.extend(check_kind::<Role>(env, &identities, roles).await);
    problems.extend(check_kind::<RoleBinding>(env, &identities, roles).await);
    // The example identity's service account has the identity's name (`example_identity`).
    problems.extend(check_kind::<ServiceAccount>(env, &identities, |i: &str| vec![i.to_owned()]).await);
    let specs: Vec<GMSACredentialSpec> = credential_specs(env).await;
    let mut seen = BTreeMap::<String, usize>::new();
    for spec in &specs {
        let spec_name = spec.name_any();
        let identity = winflow::names::identity_of_credential_spec(&spec_name)
            .map(|(_, identity)| identity.to_owned())
            .unwrap_or_default();
        *seen.entry(identity.clone()).or_default() += 1;
        if !identities.contains_key(&identity) {
            problems.push(format!("orphaned GMSACredentialSpec {}", spec.name_any()));
        }
    }
    for name in identities.keys() {
        if seen.get(name).copied().unwrap_or(0) != 1 {
            problems.push(format!(
                "identity {name} has {} credential specs",
                seen.get(name).copied().unwrap_or(0)
            ));
        }
    }
    problems
}

/// winflow's credential specs for identities of the test's namespace.
pub async fn credential_specs(env: &TestEnv) -> Vec<GMSACredentialSpec> {
    Api::<GMSACredentialSpec>::all(env.client.clone())
        .list(&ListParams::default().labels(MANAGED))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|s| {
            winflow::names::identity_of_credential_spec(&s.name_any()).is_some_and(|(ns, _)| ns == env.namespace)
        })
        .collect()
}

async fn check_kind<K>(
    env: &TestEnv,
    identities: &BTreeMap<String, String>,
    names_of: impl Fn(&str) -> Vec<String>,
) -> Vec<String>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let kind = K::kind(&());
    let objects = env
        .api::<K>()
        .list(&ListParams::default().labels(MANAGED))
        .await
        .unwrap()
        .items;
    let mut problems = Vec::new();
    // (identity, object name) -> how many objects of that name it owns
    let mut by_identity = BTreeMap::<(String, String), usize>::new();
    for object in &objects {
        let owner = object
            .owner_references()
            .iter()
            .find(|o| o.kind == "WindowsTaskIdentity" && o.controller == Some(true));
        let Some(owner) = owner else {
            problems.push(format!("{kind} {} has no owning identity", object.name_any()));
            continue;
        };
        match identities.get(&owner.name) {
            Some(uid) if *uid == owner.uid && names_of(&owner.name).contains(&object.name_any()) => {
                *by_identity.entry((owner.name.clone(), object.name_any())).or_default() += 1;
            }
            Some(_) => problems.push(format!(
                "{kind} {} is owned by a stale or misnamed {}",
                object.name_any(),
                owner.name
            )),
            None => problems.push(format!(
                "orphaned {kind} {} (identity {} is gone)",
                object.name_any(),
                owner.name
            )),
        }
    }
    for name in identities.keys() {
        for child in names_of(name) {
            let count = by_identity.get(&(name.clone(), child.clone())).copied().unwrap_or(0);
            if count != 1 {
                problems.push(format!("identity {name} has {count} {kind}s named {child}"));
            }
        }
    }
    problems
}
