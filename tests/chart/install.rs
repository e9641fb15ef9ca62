//! `helm install`: under the chart's RBAC the operator brings the examples to Ready, and the
//! RBAC refuses what is not its job.

use std::time::Duration;

use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use winflow::api::{WindowsShare, WindowsTaskIdentity};

use crate::CHART;
use crate::support::helm::helm_async;
use crate::support::{self, TestEnv};

fn is_forbidden(result: Result<impl Sized, kube::Error>) -> bool {
    matches!(result, Err(kube::Error::Api(status)) if status.code == 403)
}

/// Asks the API server whether `user` may do `verb` on a resource.
async fn may(
    client: &Client,
    (user, groups): (&str, &[String]),
    verb: &str,
    (group, resource): (&str, &str),
    namespace: Option<&str>,
    name: Option<&str>,
) -> bool {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.to_owned()),
            groups: Some(groups.to_vec()),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.to_owned()),
                group: Some(group.to_owned()),
                resource: Some(resource.to_owned()),
                namespace: namespace.map(str::to_owned),
                name: name.map(str::to_owned),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .unwrap()
        .status
        .unwrap()
        .allowed
}

#[tokio::test]
async fn the_installed_charts_rbac_is_enough_for_the_examples_and_no_more() {
    let env = TestEnv::new("chart-install").await;
    let ns = env.namespace.clone();
    // The release is named after the test's namespace, so its cluster-scoped objects
    // (ClusterRoles, webhook configurations) collide with no other test's.
    let release = ns.clone();
    let fullname = format!("{release}-winflow");
    let kubeconfig = support::kubeconfig_path();
    // The CRDs are installed by the test support already (from crds/, which the chart's equal).
    let install: Vec<String> = ["install", &release, CHART, "--namespace", &ns, "--skip-crds"]
        .iter()
        .map(|a| a.to_string())
        .collect();
    helm_async(install, Some(kubeconfig.clone())).await;

    // The Deployment's pods never run here (no nodes): the operator runs in this process as
    // the chart's service account, under exactly the RBAC the chart installed.
    let user = format!("system:serviceaccount:{ns}:{fullname}");
    let groups = [
        "system:serviceaccounts".to_owned(),
        format!("system:serviceaccounts:{ns}"),
        "system:authenticated".to_owned(),
    ];
    let operator_config = env.config_as(&user, &groups);
    let operator_client = Client::try_from(operator_config.clone()).unwrap();
    // Labelled, so that every condition, Enforced too (read from a namespace watch), is True.
    Api::<Namespace>::all(env.client.clone())
        .patch(
            &ns,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"winflow.io/enforce": "true"}}})),
        )
        .await
        .unwrap();
    let operator = env.start_operator_as(operator_config, Duration::from_secs(300));
    support::apply_file(&env, "examples/share-reports.yaml").await;
    support::apply_file(&env, "examples/identity-domain-joined.yaml").await;
    support::apply_file(&env, "examples/identity-azure-key-vault.yaml").await;
    for name in ["finance-reports", "payroll-export"] {
        let identity: WindowsTaskIdentity = support::wait_for_condition(&env, name, "Ready", "True", None).await;
        let conditions = identity.status.unwrap().conditions;
        assert!(conditions.iter().all(|c| c.status == "True"), "{name}: {conditions:?}");
        assert!(
            conditions.iter().any(|c| c.type_ == "Enforced"),
            "{name}: {conditions:?}"
        );
    }
    let _: WindowsShare =
        support::wait_for_condition(&env, "finance-reports-share", "Ready", "True", Some("Bound")).await;
    operator.stop().await;

    // Outside its duties, the same identity is refused.
    assert!(is_forbidden(
        Api::<Namespace>::all(operator_client.clone())
            .delete(&ns, &DeleteParams::default())
            .await
    ));
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "probe"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}
    }))
    .unwrap();
    assert!(is_forbidden(
        Api::<Pod>::namespaced(operator_client.clone(), &ns)
            .create(&PostParams::default(), &pod)
            .await
    ));
    assert!(is_forbidden(
        Api::<ClusterRole>::all(operator_client.clone())
            .list(&ListParams::default())
            .await
    ));
    assert!(is_forbidden(
        Api::<Secret>::namespaced(operator_client.clone(), &ns)
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await
            .map(|_| ())
    ));

    // Leader election and the operator-managed webhook certificate are not exercised by the
    // in-process operator; the API server's own authorizer answers for their rules.
    let who = (user.as_str(), &groups[..]);
    let lease = ("coordination.k8s.io", "leases");
    let secrets = ("", "secrets");
    let mutating = ("admissionregistration.k8s.io", "mutatingwebhookconfigurations");
    let validating = ("admissionregistration.k8s.io", "validatingwebhookconfigurations");
    let cert_secret = format!("{fullname}-webhook-certs");
    let here = Some(ns.as_str());
    let c = &env.client;
    let checks = [
        (
            "get its Lease",
            may(c, who, "get", lease, here, Some(&fullname)).await,
            true,
        ),
        (
            "update its Lease",
            may(c, who, "update", lease, here, Some(&fullname)).await,
            true,
        ),
        ("create a Lease", may(c, who, "create", lease, here, None).await, true),
        (
            "update another Lease",
            may(c, who, "update", lease, here, Some("kube-scheduler")).await,
            false,
        ),
        (
            "delete its Lease",
            may(c, who, "delete", lease, here, Some(&fullname)).await,
            false,
        ),
        (
            "create a Lease elsewhere",
            may(c, who, "create", lease, Some("kube-system"), None).await,
            false,
        ),
        (
            "get its certificate Secret",
            may(c, who, "get", secrets, here, Some(&cert_secret)).await,
            true,
        ),
        (
            "update its certificate Secret",
            may(c, who, "update", secrets, here, Some(&cert_secret)).await,
            true,
        ),
        (
            "update another Secret",
            may(c, who, "update", secrets, here, Some("smb-finance")).await,
            false,
        ),
        (
            "update a Secret elsewhere",
            may(c, who, "update", secrets, Some("default"), Some(&cert_secret)).await,
            false,
        ),
        (
            "patch its mutating webhooks",
            may(c, who, "patch", mutating, None, Some(&fullname)).await,
            true,
        ),
        (
            "get its validating webhooks",
            may(c, who, "get", validating, None, Some(&fullname)).await,
            true,
        ),
        (
            "patch its validating webhooks",
            may(c, who, "patch", validating, None, Some(&fullname)).await,
            true,
        ),
        (
            "patch another mutating webhook",
            may(c, who, "patch", mutating, None, Some("istio-sidecar-injector")).await,
            false,
        ),
        (
            "patch another validating webhook",
            may(c, who, "patch", validating, None, Some("other")).await,
            false,
        ),
        (
            "delete its webhooks",
            may(c, who, "delete", mutating, None, Some(&fullname)).await,
            false,
        ),
        (
            "list webhook configurations",
            may(c, who, "list", validating, None, None).await,
            false,
        ),
        // The webhook's SubjectAccessReviews, not exercised by the in-process operator either.
        (
            "create SubjectAccessReviews",
            may(
                c,
                who,
                "create",
                ("authorization.k8s.io", "subjectaccessreviews"),
                None,
                None,
            )
            .await,
            true,
        ),
        (
            "create pods",
            may(c, who, "create", ("", "pods"), here, None).await,
            false,
        ),
        (
            "update a namespace's labels",
            may(c, who, "patch", ("", "namespaces"), None, Some(&ns)).await,
            false,
        ),
    ];
    let wrong: Vec<String> = checks
        .iter()
        .filter(|(_, allowed, expected)| allowed != expected)
        .map(|(what, allowed, _)| format!("{what}: allowed={allowed}"))
        .collect();
    assert!(
        wrong.is_empty(),
        "the chart's RBAC is not as intended:\n{}",
        wrong.join("\n")
    );

    let uninstall: Vec<String> = ["uninstall", &release, "--namespace", &ns]
        .iter()
        .map(|a| a.to_string())
        .collect();
    helm_async(uninstall, Some(kubeconfig)).await;
    assert!(
        Api::<ClusterRole>::all(env.client.clone())
            .get_opt(&fullname)
            .await
            .unwrap()
            .is_none(),
        "helm uninstall removes the ClusterRole"
    );
}
