//! The AdmissionReviews the webhook-latency rows send to `/validate-pods`: reviews that need
//! no SubjectAccessReview, and creates of the identity's pod whose creator's `use` of the
//! identity the webhook asks the API server about, as one user every time (cache hits) or a
//! new user every time (misses, allowed and denied).

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

/// The group the bench's RoleBinding grants `use` of the identity.
pub const CREATORS_GROUP: &str = "bench-creators";

/// Who sends the reviews of a row.
#[derive(Clone, Copy)]
enum Users {
    /// One user, in [`CREATORS_GROUP`], on every review.
    Same,
    /// A new username on every review, in [`CREATORS_GROUP`] (allowed) or not (denied).
    Distinct { allowed: bool },
}

/// One row of the webhook-latency table.
pub struct Case {
    pub name: &'static str,
    /// The reason the answer's audit annotations must carry for a review to count as done.
    pub expect: &'static str,
    /// A review this row sends first, outside the figures (fills the cache for hits).
    pub warm_up: bool,
    request: Value,
    users: Users,
}

impl Case {
    /// The AdmissionReview body of request `i` of this row at `rate`.
    pub fn body(&self, rate: u32, i: usize) -> Vec<u8> {
        let mut request = self.request.clone();
        request["userInfo"] = match self.users {
            Users::Same => json!({"username": "bench-creator", "uid": "bench-creator-uid",
                "groups": [CREATORS_GROUP, "system:authenticated"]}),
            Users::Distinct { allowed: true } => json!({"username": format!("bench-creator-{rate}-{i}"),
                "groups": [CREATORS_GROUP, "system:authenticated"]}),
            Users::Distinct { allowed: false } => json!({"username": format!("bench-user-{rate}-{i}"),
                "groups": ["system:authenticated"]}),
        };
        serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}))
            .unwrap()
    }
}

/// A pod as a create's review carries it: what the API server stored, without what only a
/// stored pod has (its managed fields are set before admission, so they stay).
fn as_sent(pod: &Pod) -> Value {
    let mut pod = pod.clone();
    let metadata = &mut pod.metadata;
    metadata.uid = None;
    metadata.resource_version = None;
    metadata.creation_timestamp = None;
    pod.status = None;
    serde_json::to_value(pod).unwrap()
}

fn request(namespace: &str, operation: &str, object: Value, old: Option<Value>) -> Value {
    let name = object["metadata"]["name"].clone();
    json!({"uid": "4d3c2b1a-0000-4000-8000-000000000001",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "name": name, "namespace": namespace, "operation": operation,
        "object": object, "oldObject": old})
}

/// The rows, in the order the table prints them; the first is the no-SAR baseline.
/// `admitted` is a pod of the identity as the webhook admitted it through the API server,
/// so that a create of it is allowed once its creator may use the identity.
pub fn cases(namespace: &str, admitted: &Pod) -> Vec<Case> {
    let create = request(namespace, "CREATE", as_sent(admitted), None);
    let running = serde_json::to_value(admitted).unwrap();
    let mut annotated = running.clone();
    annotated["metadata"]["annotations"]["bench.winflow.io/note"] = json!("metadata only");
    let unlabelled = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "plain", "namespace": namespace, "labels": {"app": "plain"}},
        "spec": {"containers": [{"name": "base", "image": "registry.example.com/plain:1"}]}});
    let case = |name, expect, warm_up, request: &Value, users| Case {
        name,
        expect,
        warm_up,
        request: request.clone(),
        users,
    };
    vec![
        case(
            "no SAR: labelled pod, metadata-only UPDATE",
            "Allowed",
            false,
            &request(namespace, "UPDATE", annotated, Some(running)),
            Users::Same,
        ),
        case(
            "no SAR: unlabelled pod CREATE",
            "Allowed",
            false,
            &request(namespace, "CREATE", unlabelled, None),
            Users::Same,
        ),
        case(
            "SAR cache hit: one user, allowed",
            "Allowed",
            true,
            &create,
            Users::Same,
        ),
        case(
            "SAR cache miss: new user each, allowed",
            "Allowed",
            false,
            &create,
            Users::Distinct { allowed: true },
        ),
        case(
            "SAR cache miss: new user each, denied",
            "CreatorNotAllowed",
            false,
            &create,
            Users::Distinct { allowed: false },
        ),
    ]
}
