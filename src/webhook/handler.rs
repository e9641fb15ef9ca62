//! The glue between the HTTPS layer and the decisions: the creator's authorization (asked
//! before deciding), the decision itself off the async workers under a deadline, one audit
//! line per decision, metrics, and on every denial an Event and a count on the identity
//! concerned.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::core::admission::{AdmissionRequest, AdmissionResponse};
use kube::core::{DynamicObject, PartialObjectMeta};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client, Resource};

use super::access::{Access, AccessReviewer};
use super::decide::{self, Audit, Authorizations, Decision, ResourceView};
use super::decision_pool::DecisionPool;
use super::denial_count::DenialCounts;
use super::denial_events::DenialEvents;
pub use super::resource_cache::ResourceCache;
use super::server::{AdmissionHandler, ReviewKind};
use crate::api::WindowsTaskIdentity;
use crate::metrics::Metrics;

/// The authorizer's answers for one review, by (namespace, identity).
pub type Answers = BTreeMap<(String, String), Access>;

/// SubjectAccessReviews asked at once for one admission review.
const CONCURRENT_ACCESS_REVIEWS: usize = 8;

/// winflow's admission webhook.
pub struct PodWebhook {
    /// Reads the pod of an exec, attach or port-forward request and of a 1.20
    /// ephemeral-containers request (its labels only).
    pub client: Client,
    pub resources: ResourceCache,
    pub access: AccessReviewer,
    /// Where decisions run, and their deadline.
    pub decisions: DecisionPool,
    pub metrics: Metrics,
    pub recorder: Recorder,
    pub denial_events: DenialEvents,
    pub denial_counts: Arc<DenialCounts>,
}

impl AdmissionHandler for PodWebhook {
    fn review<'a>(
        &'a self,
        kind: ReviewKind,
        request: &'a AdmissionRequest<DynamicObject>,
    ) -> BoxFuture<'a, AdmissionResponse> {
        Box::pin(async move {
            let started = Instant::now();
            let (webhook, decision) = self.decide(kind, request).await;
            self.metrics.admission_decided(
                webhook,
                decision.audit.allowed,
                decision.audit.reason.as_str(),
                started.elapsed(),
            );
            log_audit(webhook, request, &decision.audit);
            // A dry run (kubectl --dry-run=server, a pipeline's check) changes nothing: no
            // count, no Event (the webhooks declare sideEffects: NoneOnDryRun).
            if !decision.audit.allowed && !request.dry_run {
                self.record_denial(&decision.audit);
            }
            decision.response
        })
    }
}

impl PodWebhook {
    /// The I/O a decision needs (the pod's labels when the review lacks them, the authorizer's
    /// answers about the requester), then the decision.
    async fn decide(&self, kind: ReviewKind, request: &AdmissionRequest<DynamicObject>) -> (&'static str, Decision) {
        let webhook = match kind {
            ReviewKind::Mutate => "mutate",
            ReviewKind::Validate => "validate",
            ReviewKind::ValidateEphemeral => "validate-ephemeral",
            ReviewKind::ValidateGmsa => "validate-gmsa",
            ReviewKind::ValidateConnect => "validate-connect",
            ReviewKind::ValidateWorkload => "validate-workloads",
        };
        let looked_up;
        let request = match decide::pod_to_look_up(request) {
            None => request,
            Some((namespace, name)) => {
                let pods: Api<PartialObjectMeta<Pod>> = Api::namespaced(self.client.clone(), &namespace);
                match pods.get_metadata(&name).await {
                    Ok(pod) => {
                        looked_up = decide::with_pod_labels(request, pod.metadata.labels.unwrap_or_default());
                        &looked_up
                    }
                    Err(error) => return (webhook, decide::pod_lookup_failed(request, &error.to_string())),
                }
            }
        };
        let view = &self.resources;
        // Deduplicated, a few at a time, and each answer cached by the reviewer: a creator's
        // service account that creates pods of many identities does not flood the API server.
        let answers: Answers = futures::stream::iter(decide::identities_to_authorize(kind, request, view))
            .map(|(namespace, identity)| async move {
                let access = self.access.may_use(&request.user_info, &namespace, &identity).await;
                ((namespace, identity), access)
            })
            .buffer_unordered(CONCURRENT_ACCESS_REVIEWS)
            .collect()
            .await;
        let decision = decide_in(&self.decisions, kind, request, self.resources.clone(), answers).await;
        (webhook, decision)
    }
}

/// The decision of `kind`, the one place that picks it.
fn decision_of(
    kind: ReviewKind,
    request: &AdmissionRequest<DynamicObject>,
    view: &dyn ResourceView,
    access: &dyn Authorizations,
) -> Decision {
    match kind {
        ReviewKind::Mutate => decide::mutate(request, view, access),
        ReviewKind::Validate => decide::validate(request, view, access),
        ReviewKind::ValidateEphemeral => decide::validate_ephemeral(request, view, access),
        ReviewKind::ValidateGmsa => decide::validate_gmsa(request, view),
        ReviewKind::ValidateConnect => decide::validate_connect(request, access),
        ReviewKind::ValidateWorkload => decide::validate_workload(request, view, access),
    }
}

/// The decision, taken in `pool` (off the async workers, under its deadline); denied when the
/// deadline passes first.
pub async fn decide_in<V: ResourceView + Send + 'static>(
    pool: &DecisionPool,
    kind: ReviewKind,
    request: &AdmissionRequest<DynamicObject>,
    view: V,
    answers: Answers,
) -> Decision {
    let owned = request.clone();
    match pool.run(move || decision_of(kind, &owned, &view, &answers)).await {
        Ok(decision) => decision,
        Err(_timed_out) => {
            tracing::warn!(
                uid = %request.uid,
                namespace = request.namespace.as_deref().unwrap_or_default(),
                pod = %request.name,
                deadline = ?pool.deadline(),
                "an admission decision did not finish within its deadline; denied"
            );
            decide::decision_timed_out(request, pool.deadline())
        }
    }
}

/// One structured line per decision; never the pod's content.
fn log_audit(webhook: &str, request: &AdmissionRequest<DynamicObject>, audit: &Audit) {
    tracing::info!(
        target: "winflow::audit",
        webhook,
        operation = ?request.operation,
        subresource = request.sub_resource.as_deref().unwrap_or_default(),
        user = %audit.creator,
        identity = audit.identity_concerned().unwrap_or_default(),
        namespace = %audit.namespace,
        kind = %audit.kind,
        pod = %audit.pod,
        dag_id = audit.dag_id.as_deref().unwrap_or_default(),
        task_id = audit.task_id.as_deref().unwrap_or_default(),
        run_id = audit.run_id.as_deref().unwrap_or_default(),
        try_number = audit.try_number.as_deref().unwrap_or_default(),
        decision = if audit.allowed { "allowed" } else { "denied" },
        reason = audit.reason.as_str(),
        message = %audit.message,
        "admission"
    );
}

impl PodWebhook {
    /// Counts the denial on the identity it concerns (when that identity exists) and writes a
    /// Warning Event there, so `kubectl describe wti` shows denials: the reason is the rule, at
    /// most one per identity and rule per `denial_events::WINDOW`.
    fn record_denial(&self, audit: &Audit) {
        let Some(identity) = audit.identity_concerned().map(str::to_owned) else {
            return;
        };
        if self.resources.identity(&audit.namespace, &identity).is_none() {
            return;
        }
        self.denial_counts.add(&audit.namespace, &identity);
        let Some(held_back) =
            self.denial_events
                .admit(&audit.namespace, &identity, audit.reason.as_str(), Instant::now())
        else {
            return;
        };
        let what = if audit.kind == "Pod" { "pod" } else { &audit.kind };
        let mut note = format!("{what} {} denied: {}", audit.pod, audit.message);
        if held_back > 0 {
            note = format!(
                "{held_back} more denial(s) for this rule since the last Event (see winflow_admission_decisions_total and the audit log); {note}"
            );
        }
        let reference = ObjectReference {
            api_version: Some(WindowsTaskIdentity::api_version(&()).into_owned()),
            kind: Some(WindowsTaskIdentity::kind(&()).into_owned()),
            namespace: Some(audit.namespace.clone()),
            name: Some(identity),
            ..ObjectReference::default()
        };
        let event = Event {
            type_: EventType::Warning,
            reason: audit.reason.as_str().to_owned(),
            note: Some(crate::text::truncate(&note, 1000)),
            action: "Admission".to_owned(),
            secondary: None,
        };
        let recorder = self.recorder.clone();
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&event, &reference).await {
                tracing::warn!(error = %e, "could not record denial event");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::WindowsShare;
    use crate::webhook::reason::AdmissionReason;
    use kube::core::admission::AdmissionReview;
    use std::time::Duration;

    /// A view that takes `delay` to show a namespace's identities.
    #[derive(Clone)]
    struct View {
        delay: Duration,
    }

    impl ResourceView for View {
        fn identity(&self, _namespace: &str, _name: &str) -> Option<Arc<WindowsTaskIdentity>> {
            None
        }
        fn each_identity(&self, _namespace: Option<&str>, _visit: &mut dyn FnMut(&WindowsTaskIdentity)) {
            std::thread::sleep(self.delay);
        }
        fn each_share(&self, _namespace: &str, _visit: &mut dyn FnMut(&WindowsShare)) {}
        fn identities_with_account(&self, _account: &str) -> Vec<Arc<WindowsTaskIdentity>> {
            Vec::new()
        }
        fn identities_with_plugin_input(&self, _input: &str) -> Vec<Arc<WindowsTaskIdentity>> {
            Vec::new()
        }
        fn protected(&self, namespace: &str) -> Arc<decide::Protected> {
            Arc::new(decide::Protected::of_namespace(self, namespace))
        }
        fn identities_created_by(&self, _namespace: &str, _name: &str) -> Vec<(String, String)> {
            Vec::new()
        }
    }

    /// An unlabelled pod's CREATE, which reads its namespace's identities.
    fn request(uid: &str) -> AdmissionRequest<DynamicObject> {
        let review: AdmissionReview<DynamicObject> = serde_json::from_value(serde_json::json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": uid,
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "operation": "CREATE",
                "name": uid,
                "namespace": "airflow",
                "userInfo": {"username": "someone"},
                "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": uid, "namespace": "airflow"},
                           "spec": {"containers": [{"name": "base", "image": "busybox"}]}},
            }
        }))
        .unwrap();
        review.try_into().unwrap()
    }

    // One async worker: a decision run on it would hold every other review.
    #[tokio::test(flavor = "current_thread")]
    async fn a_decision_past_its_deadline_is_denied_while_other_reviews_are_answered() {
        let pool = DecisionPool::new(2, Duration::from_millis(300));
        let slow = View {
            delay: Duration::from_secs(2),
        };
        let quick = View { delay: Duration::ZERO };
        let (slow_request, quick_request) = (request("slow"), request("quick"));

        let slow_decision = decide_in(&pool, ReviewKind::Validate, &slow_request, slow, Answers::new());
        let quick_decision = async {
            // Asked after the slow one has started.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let started = Instant::now();
            let decision = decide_in(&pool, ReviewKind::Validate, &quick_request, quick, Answers::new()).await;
            (decision, started.elapsed())
        };
        let started = Instant::now();
        let (slow_decision, (quick_decision, quick_took)) = tokio::join!(slow_decision, quick_decision);
        let slow_took = started.elapsed();

        assert!(quick_decision.audit.allowed, "{:?}", quick_decision.audit);
        assert!(
            quick_took < Duration::from_millis(200),
            "the quick review took {quick_took:?}"
        );
        assert!(!slow_decision.audit.allowed);
        assert_eq!(slow_decision.audit.reason, AdmissionReason::DecisionTimeout);
        assert!(
            slow_decision.audit.message.contains("within its deadline of 0.3 s"),
            "{}",
            slow_decision.audit.message
        );
        assert_eq!(slow_decision.response.uid, "slow");
        assert!(!slow_decision.response.allowed);
        assert!(slow_took < Duration::from_secs(1), "denied after {slow_took:?}");
    }
}
