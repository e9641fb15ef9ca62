//! The least any operator could take: the bench itself makes, for each identity, exactly the
//! writes a converge needs (the identity, its children by server-side apply, the finalizer,
//! the status winflow wrote) and nothing else: no reads, no Events, no watches, no reconcile
//! loop. Winflow's convergence time over this one's is what winflow's own work costs; this
//! one's over the floor is what those writes cost next to raw ConfigMap creates.

use std::time::{Duration, Instant};

use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::core::NamespaceResourceScope;
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use winflow::api::{GMSACredentialSpec, WindowsTaskIdentity};
use winflow::names::{FIELD_MANAGER, FINALIZER, credential_spec_name};

use crate::support::TestEnv;
use crate::workload::{identity_name, identity_named, template_identity};
use crate::{CLIENT_CONCURRENCY, run_all};

/// Time until `identities` identities were written as a converged operator leaves them,
/// `concurrency` identities at a time (as the operator's `--concurrency`), each given
/// `status`. Runs in a namespace of its own, which stays: its identities carry winflow's
/// finalizer and no operator would remove it. Their credential specs are deleted afterwards,
/// because the later phases' operator watches credential specs cluster-wide.
pub async fn converge(identities: usize, concurrency: u16, status: &Value) -> Duration {
    let env = TestEnv::new(&format!("scale-ideal-n{identities}-c{concurrency}")).await;
    let template = template_identity();
    let started = Instant::now();
    run_all(identities, usize::from(concurrency), |i| {
        let identity = identity_named(&template, &identity_name(i));
        write_converged(env.client.clone(), env.namespace.clone(), identity, status.clone())
    })
    .await;
    let elapsed = started.elapsed();
    let specs: Api<GMSACredentialSpec> = Api::all(env.client.clone());
    run_all(identities, CLIENT_CONCURRENCY, |i| {
        let (specs, name) = (specs.clone(), credential_spec_name(&env.namespace, &identity_name(i)));
        async move { specs.delete(&name, &DeleteParams::default()).await.map(|_| ()) }
    })
    .await;
    elapsed
}

async fn write_converged(
    client: kube::Client,
    namespace: String,
    identity: WindowsTaskIdentity,
    status: Value,
) -> Result<(), kube::Error> {
    let identities: Api<WindowsTaskIdentity> = Api::namespaced(client.clone(), &namespace);
    let created = identities.create(&PostParams::default(), &identity).await?;
    let children = winflow::build::children_for(&created).expect("the template identity is valid");
    let name = created.name_any();
    apply(&Api::all(client.clone()), &children.credential_spec).await?;
    apply(&namespaced(&client, &namespace), &children.role).await?;
    apply(&namespaced(&client, &namespace), &children.role_binding).await?;
    apply(&namespaced(&client, &namespace), &children.use_role).await?;
    apply(&namespaced(&client, &namespace), &children.use_role_binding).await?;
    if let Some(service_account) = &children.service_account {
        apply(&namespaced(&client, &namespace), service_account).await?;
    }
    apply(&namespaced(&client, &namespace), &children.pod_templates).await?;
    let finalizer = json!([{ "op": "add", "path": "/metadata/finalizers", "value": [FINALIZER] }]);
    let finalizer = Patch::Json::<()>(serde_json::from_value(finalizer).expect("a JSON patch"));
    identities.patch(&name, &PatchParams::default(), &finalizer).await?;
    let status = json!({
        "apiVersion": WindowsTaskIdentity::api_version(&()),
        "kind": WindowsTaskIdentity::kind(&()),
        "metadata": { "name": name },
        "status": status,
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    identities.patch_status(&name, &params, &Patch::Apply(status)).await?;
    Ok(())
}

fn namespaced<K>(client: &kube::Client, namespace: &str) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
{
    Api::namespaced(client.clone(), namespace)
}

async fn apply<K>(api: &Api<K>, child: &K) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(&child.name_any(), &params, &Patch::Apply(child))
        .await
        .map(|_| ())
}
