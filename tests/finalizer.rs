//! winflow's finalizer next to another controller's, on a real API server: winflow adds and
//! removes `winflow.io/cleanup` from a stale view (an object read before the other
//! controller's write, as a cache lagging behind would hold it) and never drops the other one.

use winflow_test_support as support;

use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::{TestEnv, audit, identities};
use winflow::api::WindowsTaskIdentity;
use winflow::cluster::finalizer;
use winflow::metrics::Metrics;
use winflow::names::FINALIZER;

const OTHER: &str = "example.com/other-controller";
/// The finalizer patches winflow sent (the first one from the stale view fails its test).
const PATCHES: &str = r#"winflow_api_writes_total{kind="WindowsTaskIdentity",verb="patch"}"#;

/// winflow's side: the identities through a client that counts its writes as the operator's
/// does.
struct Winflow {
    api: Api<WindowsTaskIdentity>,
    metrics: Metrics,
    user_agent: String,
}

impl Winflow {
    fn new(env: &TestEnv) -> Self {
        let metrics = Metrics::default();
        let (client, user_agent) = support::counted_client(env.config.clone(), &metrics);
        Self {
            api: Api::namespaced(client, &env.namespace),
            metrics,
            user_agent,
        }
    }

    /// The finalizer patches winflow counted, once the API server's audit log records as many.
    async fn patches(&self) -> u64 {
        let audited = audit::agreeing(&support::audit_log_path(), &self.metrics, &self.user_agent).await;
        let counted = audited.counted(PATCHES);
        assert_eq!(
            audited.count("patch", "windowstaskidentities"),
            counted,
            "the API server recorded as many finalizer patches as winflow counted"
        );
        counted
    }
}

async fn created(env: &TestEnv, name: &str) -> (Api<WindowsTaskIdentity>, WindowsTaskIdentity) {
    let api = env.api::<WindowsTaskIdentity>();
    let identity = api
        .create(&PostParams::default(), &identities::example_identity(name))
        .await
        .unwrap();
    (api, identity)
}

/// Another controller's JSON patch on the finalizer list, as it would write it.
async fn other_controller_patches(api: &Api<WindowsTaskIdentity>, name: &str, patch: serde_json::Value) {
    let patch: json_patch::Patch = serde_json::from_value(patch).unwrap();
    api.patch(name, &PatchParams::default(), &Patch::Json::<()>(patch))
        .await
        .unwrap();
}

async fn finalizers(api: &Api<WindowsTaskIdentity>, name: &str) -> Vec<String> {
    api.get(name).await.unwrap().metadata.finalizers.unwrap_or_default()
}

#[tokio::test]
async fn adding_from_a_stale_view_keeps_the_finalizer_another_controller_added_just_before() {
    let env = TestEnv::new("finalizer-add").await;
    // Seen without finalizers; the other controller then creates the list.
    let (api, stale) = created(&env, "no-list-yet").await;
    assert_eq!(stale.metadata.finalizers, None);
    other_controller_patches(
        &api,
        "no-list-yet",
        json!([{"op": "add", "path": "/metadata/finalizers", "value": [OTHER]}]),
    )
    .await;
    let winflow = Winflow::new(&env);
    assert!(finalizer::ensure(&winflow.api, &stale).await.unwrap());
    assert_eq!(finalizers(&api, "no-list-yet").await, [OTHER, FINALIZER]);
    assert_eq!(
        winflow.patches().await,
        2,
        "the stale patch failed its test and was rebuilt"
    );

    // Seen with a list; the other controller then appends to it.
    let (api, _) = created(&env, "with-a-list").await;
    let first = json!([{"op": "add", "path": "/metadata/finalizers", "value": ["example.com/first"]}]);
    other_controller_patches(&api, "with-a-list", first).await;
    let stale = api.get("with-a-list").await.unwrap();
    let append = json!([{"op": "add", "path": "/metadata/finalizers/-", "value": OTHER}]);
    other_controller_patches(&api, "with-a-list", append).await;
    let winflow = Winflow::new(&env);
    assert!(finalizer::ensure(&winflow.api, &stale).await.unwrap());
    assert_eq!(
        finalizers(&api, "with-a-list").await,
        ["example.com/first", OTHER, FINALIZER]
    );
    assert_eq!(winflow.patches().await, 2);

    // Up to date, and already there: no write at all.
    let current = api.get("with-a-list").await.unwrap();
    let winflow = Winflow::new(&env);
    assert!(finalizer::ensure(&winflow.api, &current).await.unwrap());
    assert_eq!(winflow.patches().await, 0);
    // Gone: nothing left to reconcile.
    clear_finalizers(&api, "with-a-list").await;
    api.delete("with-a-list", &DeleteParams::default()).await.unwrap();
    assert!(!finalizer::ensure(&Winflow::new(&env).api, &stale).await.unwrap());
    clear_finalizers(&api, "no-list-yet").await;
}

#[tokio::test]
async fn removing_from_a_stale_view_keeps_the_finalizers_others_added_or_removed_meanwhile() {
    let env = TestEnv::new("finalizer-remove").await;
    let winflow = Winflow::new(&env);
    // Seen as [winflow's]; the other controller then puts its own in front, moving winflow's.
    let (api, fresh) = created(&env, "inserted-before").await;
    assert!(finalizer::ensure(&winflow.api, &fresh).await.unwrap());
    let stale = api.get("inserted-before").await.unwrap();
    let insert = json!([{"op": "add", "path": "/metadata/finalizers/0", "value": OTHER}]);
    other_controller_patches(&api, "inserted-before", insert).await;
    finalizer::remove(&winflow.api, &stale).await.unwrap();
    assert_eq!(finalizers(&api, "inserted-before").await, [OTHER]);

    // Seen as [other's, winflow's]; the identity is being deleted, and while winflow cleans up
    // the other controller finishes first and removes its own, moving winflow's.
    let (api, _) = created(&env, "removed-before").await;
    let both = json!([{"op": "add", "path": "/metadata/finalizers", "value": [OTHER, FINALIZER]}]);
    other_controller_patches(&api, "removed-before", both).await;
    api.delete("removed-before", &DeleteParams::default()).await.unwrap();
    let stale = api.get("removed-before").await.unwrap();
    assert!(stale.metadata.deletion_timestamp.is_some());
    let remove_other = json!([
        {"op": "test", "path": "/metadata/finalizers/0", "value": OTHER},
        {"op": "remove", "path": "/metadata/finalizers/0"}
    ]);
    other_controller_patches(&api, "removed-before", remove_other).await;
    finalizer::remove(&winflow.api, &stale).await.unwrap();
    assert!(
        api.get_opt("removed-before").await.unwrap().is_none(),
        "the last finalizer went, so did the identity"
    );
    // Already gone: nothing to remove, no error.
    finalizer::remove(&winflow.api, &stale).await.unwrap();
    winflow.patches().await;
    clear_finalizers(&api, "inserted-before").await;
}

/// Lets the namespace go when the tests are done.
async fn clear_finalizers(api: &Api<WindowsTaskIdentity>, name: &str) {
    let patch = json!({"metadata": {"finalizers": null}});
    let _ = api.patch(name, &PatchParams::default(), &Patch::Merge(patch)).await;
}
