//! The SubjectAccessReview side of the bench: a group that may `use` the identity (so that new
//! users in it are allowed misses), and how many SubjectAccessReviews the API server answered
//! (so that the table shows which rows were hits).

use std::time::{Duration, Instant};

use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Api;
use kube::api::PostParams;
use serde_json::json;
use winflow::webhook::access::{IDENTITY_RESOURCE, USE_VERB};

use crate::support::TestEnv;

/// Grants `use` of `identity` to everyone in `group` (a Role and a RoleBinding of the bench's
/// own), and waits until the API server's authorizer says so.
pub async fn grant_use_to_group(env: &TestEnv, identity: &str, group: &str) {
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "bench-use-identity"},
        "rules": [{"apiGroups": ["winflow.io"], "resources": [IDENTITY_RESOURCE],
            "resourceNames": [identity], "verbs": [USE_VERB]}]
    }))
    .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "bench-use-identity"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "bench-use-identity"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group}]
    }))
    .unwrap();
    env.api::<Role>().create(&PostParams::default(), &role).await.unwrap();
    env.api::<RoleBinding>()
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    let reviews: Api<SubjectAccessReview> = Api::all(env.client.clone());
    let question = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some("bench-probe".to_owned()),
            groups: Some(vec![group.to_owned()]),
            resource_attributes: Some(ResourceAttributes {
                group: Some("winflow.io".to_owned()),
                resource: Some(IDENTITY_RESOURCE.to_owned()),
                namespace: Some(env.namespace.clone()),
                name: Some(identity.to_owned()),
                verb: Some(USE_VERB.to_owned()),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = reviews.create(&PostParams::default(), &question).await.unwrap();
        if answer.status.is_some_and(|s| s.allowed) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the RoleBinding for group {group} never took effect"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// SubjectAccessReviews the API server has answered so far (`apiserver_request_total`).
pub async fn answered(client: &kube::Client) -> u64 {
    let request = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client.request_text(request).await.expect("the API server's /metrics");
    text.lines()
        .filter(|line| {
            line.starts_with("apiserver_request_total{") && line.contains("resource=\"subjectaccessreviews\"")
        })
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>() as u64
}
