//! Who may use an identity: a pod's creator must be allowed verb `use` on the
//! `windowstaskidentities` object the pod names, in the pod's namespace, as Kubernetes RBAC
//! (or any other authorizer the cluster runs) answers a SubjectAccessReview. The answers are
//! kept briefly, keyed by the whole user and the identity; an API server that cannot answer
//! is a denial, never an allow.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::UserInfo;
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::api::PostParams;
use kube::{Api, Client};
use quick_cache::sync::Cache;

use crate::api::WindowsTaskIdentity;
use kube::Resource;

/// The verb that grants a pod's creator the identity (as Pod Security Policies had `use`).
pub const USE_VERB: &str = "use";
/// The plural the SubjectAccessReview names.
pub const IDENTITY_RESOURCE: &str = "windowstaskidentities";

/// How long an allow is kept: a revoked grant takes at most this long to bite.
const ALLOWED_FOR: Duration = Duration::from_secs(10);
/// How long a denial is kept: short, so that a grant made after a denial works at once.
const DENIED_FOR: Duration = Duration::from_secs(2);
/// At most this many answers are kept (one per user, namespace and identity).
const CAPACITY: usize = 4096;
/// The webhook itself has 10 s; the authorization check gets a part of it.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(3);

/// What the cluster's authorizer said about a creator and an identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    Allowed,
    /// Not allowed; the authorizer's own reason when it gave one.
    Denied(String),
    /// The check could not be made (the API server did not answer, or refused the review).
    Unavailable(String),
}

/// The question, as the cache keys it: the whole user (name, uid, groups, extra), the
/// namespace and the identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Question {
    username: String,
    uid: String,
    groups: Vec<String>,
    extra: BTreeMap<String, Vec<String>>,
    namespace: String,
    identity: String,
}

impl Question {
    fn new(user: &UserInfo, namespace: &str, identity: &str) -> Self {
        Self {
            username: user.username.clone().unwrap_or_default(),
            uid: user.uid.clone().unwrap_or_default(),
            groups: user.groups.clone().unwrap_or_default(),
            extra: user.extra.clone().unwrap_or_default(),
            namespace: namespace.to_owned(),
            identity: identity.to_owned(),
        }
    }

    fn review(&self) -> SubjectAccessReview {
        let non_empty = |s: &String| (!s.is_empty()).then(|| s.clone());
        SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: non_empty(&self.username),
                uid: non_empty(&self.uid),
                groups: (!self.groups.is_empty()).then(|| self.groups.clone()),
                extra: (!self.extra.is_empty()).then(|| self.extra.clone()),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(WindowsTaskIdentity::group(&()).into_owned()),
                    version: Some(WindowsTaskIdentity::version(&()).into_owned()),
                    resource: Some(IDENTITY_RESOURCE.to_owned()),
                    namespace: Some(self.namespace.clone()),
                    name: Some(self.identity.clone()),
                    verb: Some(USE_VERB.to_owned()),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        }
    }
}

/// The answer of one review, as the API server gave it.
fn answer_of(review: &SubjectAccessReview) -> Access {
    let Some(status) = &review.status else {
        return Access::Unavailable("the SubjectAccessReview came back without a status".to_owned());
    };
    if status.allowed && status.denied != Some(true) {
        return Access::Allowed;
    }
    match (status.reason.as_deref(), status.evaluation_error.as_deref()) {
        (_, Some(error)) if !error.is_empty() => Access::Unavailable(format!("authorization error: {error}")),
        (Some(reason), _) if !reason.is_empty() => Access::Denied(reason.to_owned()),
        _ => Access::Denied(String::new()),
    }
}

/// Asks the API server, keeping answers briefly.
pub struct AccessReviewer {
    client: Client,
    answers: Cache<Question, (Instant, Access)>,
}

impl AccessReviewer {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            answers: Cache::new(CAPACITY),
        }
    }

    /// May `user` create pods in `namespace` that use `identity`?
    pub async fn may_use(&self, user: &UserInfo, namespace: &str, identity: &str) -> Access {
        let question = Question::new(user, namespace, identity);
        if let Some((until, access)) = self.answers.get(&question)
            && Instant::now() < until
        {
            return access;
        }
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let asked = tokio::time::timeout(REVIEW_TIMEOUT, api.create(&PostParams::default(), &question.review())).await;
        let access = match asked {
            Ok(Ok(review)) => answer_of(&review),
            Ok(Err(error)) => Access::Unavailable(format!("the SubjectAccessReview failed: {error}")),
            Err(_) => Access::Unavailable(format!(
                "the API server did not answer the SubjectAccessReview within {}s",
                REVIEW_TIMEOUT.as_secs()
            )),
        };
        let keep_for = match access {
            Access::Allowed => Some(ALLOWED_FOR),
            Access::Denied(_) => Some(DENIED_FOR),
            // Never kept: the next request asks again.
            Access::Unavailable(_) => None,
        };
        if let Some(keep_for) = keep_for {
            self.answers
                .insert(question, (Instant::now() + keep_for, access.clone()));
        }
        access
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authorization::v1::SubjectAccessReviewStatus;

    fn user() -> UserInfo {
        UserInfo {
            username: Some("system:serviceaccount:airflow:airflow-worker".into()),
            uid: Some("7f0c".into()),
            groups: Some(vec!["system:serviceaccounts".into(), "system:authenticated".into()]),
            extra: Some(BTreeMap::from([("scopes".into(), vec!["a".into()])])),
        }
    }

    #[test]
    fn the_review_asks_for_use_of_exactly_one_identity_as_the_whole_user() {
        let review = Question::new(&user(), "airflow", "payroll-export").review();
        let spec = review.spec;
        assert_eq!(
            spec.user.as_deref(),
            Some("system:serviceaccount:airflow:airflow-worker")
        );
        assert_eq!(spec.uid.as_deref(), Some("7f0c"));
        assert_eq!(spec.groups.unwrap().len(), 2);
        assert_eq!(spec.extra.unwrap()["scopes"], ["a"]);
        let attributes = spec.resource_attributes.unwrap();
        assert_eq!(attributes.group.as_deref(), Some("winflow.io"));
        assert_eq!(attributes.resource.as_deref(), Some("windowstaskidentities"));
        assert_eq!(attributes.name.as_deref(), Some("payroll-export"));
        assert_eq!(attributes.namespace.as_deref(), Some("airflow"));
        assert_eq!(attributes.verb.as_deref(), Some("use"));
    }

    #[test]
    fn users_that_differ_in_any_part_are_different_questions() {
        let base = Question::new(&user(), "airflow", "payroll-export");
        let mut other = user();
        other.groups = Some(vec!["system:masters".into()]);
        assert_ne!(base, Question::new(&other, "airflow", "payroll-export"));
        let mut other = user();
        other.extra = None;
        assert_ne!(base, Question::new(&other, "airflow", "payroll-export"));
        assert_ne!(base, Question::new(&user(), "airflow", "finance-reports"));
        assert_ne!(base, Question::new(&user(), "other", "payroll-export"));
    }

    #[test]
    fn only_an_allowed_and_not_denied_answer_allows() {
        let with = |status: Option<SubjectAccessReviewStatus>| {
            answer_of(&SubjectAccessReview {
                status,
                ..SubjectAccessReview::default()
            })
        };
        let status = |allowed, denied, reason: &str, error: &str| {
            Some(SubjectAccessReviewStatus {
                allowed,
                denied,
                reason: Some(reason.to_owned()),
                evaluation_error: Some(error.to_owned()),
            })
        };
        assert_eq!(with(status(true, None, "", "")), Access::Allowed);
        assert_eq!(with(status(true, Some(true), "", "")), Access::Denied(String::new()));
        assert_eq!(
            with(status(false, None, "no RBAC policy matched", "")),
            Access::Denied("no RBAC policy matched".into())
        );
        assert!(matches!(
            with(status(false, None, "", "webhook down")),
            Access::Unavailable(_)
        ));
        assert!(matches!(with(None), Access::Unavailable(_)));
    }
}
