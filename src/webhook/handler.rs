//! The glue between the HTTPS layer and the decisions: an identity cache, one audit line per
//! decision, metrics, and an Event on the identity for every denial.

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::core::admission::{AdmissionRequest, AdmissionResponse};
use kube::core::{DeserializeGuard, DynamicObject};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};

use super::decide::{self, Audit, IdentityLookup};
use super::denial_events::DenialEvents;
use super::server::{AdmissionHandler, ReviewKind};
use crate::api::WindowsTaskIdentity;
use crate::metrics::Metrics;

type Guarded = DeserializeGuard<WindowsTaskIdentity>;

/// Identities as a watch keeps them; every replica has its own, so every replica can decide.
#[derive(Clone)]
pub struct IdentityCache(Store<Guarded>);

impl IdentityCache {
    /// Starts watching identities (in `namespace`, or all) and returns the cache and the task
    /// that keeps it filled.
    pub fn start(client: Client, namespace: Option<&str>) -> (Self, tokio::task::JoinHandle<()>) {
        let api: Api<Guarded> = match namespace {
            Some(ns) => Api::namespaced(client, ns),
            None => Api::all(client),
        };
        let (store, writer) = reflector::store();
        let events = crate::controller::watches::events(api, watcher::Config::default())
            .modify(crate::controller::watches::drop_unread_metadata);
        let stream = reflector::reflector(writer, events).applied_objects();
        let task = tokio::spawn(stream.for_each(|_| async {}));
        (Self(store), task)
    }

    /// Whether the cache holds the initial list (`false` when its watch is gone).
    pub async fn synced(&self) -> bool {
        crate::controller::store_synced(&self.0).await
    }
}

impl IdentityLookup for IdentityCache {
    fn identity(&self, namespace: &str, name: &str) -> Option<Arc<WindowsTaskIdentity>> {
        let guarded = self.0.get(&ObjectRef::new(name).within(namespace))?;
        guarded.0.as_ref().ok().map(|identity| Arc::new(identity.clone()))
    }
}

/// winflow's admission webhook.
pub struct PodWebhook {
    pub identities: IdentityCache,
    pub metrics: Metrics,
    pub recorder: Recorder,
    pub denial_events: DenialEvents,
}

impl AdmissionHandler for PodWebhook {
    fn review(&self, kind: ReviewKind, request: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
        let started = Instant::now();
        let (webhook, decision) = match kind {
            ReviewKind::Mutate => ("mutate", decide::mutate(request, &self.identities)),
            ReviewKind::Validate => ("validate", decide::validate(request, &self.identities)),
        };
        self.metrics.admission_decided(
            webhook,
            decision.audit.allowed,
            decision.audit.reason,
            started.elapsed(),
        );
        log_audit(webhook, request, &decision.audit);
        if !decision.audit.allowed {
            self.record_denial(&decision.audit);
        }
        decision.response
    }
}

/// One structured line per decision; never the pod's content.
fn log_audit(webhook: &str, request: &AdmissionRequest<DynamicObject>, audit: &Audit) {
    tracing::info!(
        target: "winflow::audit",
        webhook,
        operation = ?request.operation,
        user = request.user_info.username.as_deref().unwrap_or_default(),
        identity = audit.identity.as_deref().unwrap_or_default(),
        namespace = %audit.namespace,
        pod = %audit.pod,
        dag_id = audit.dag_id.as_deref().unwrap_or_default(),
        task_id = audit.task_id.as_deref().unwrap_or_default(),
        decision = if audit.allowed { "allowed" } else { "denied" },
        reason = audit.reason,
        message = %audit.message,
        "admission"
    );
}

impl PodWebhook {
    /// A Warning Event on the identity the pod named, so `kubectl describe wti` shows denials:
    /// the reason is the rule, at most one per identity and rule per `denial_events::WINDOW`.
    fn record_denial(&self, audit: &Audit) {
        let Some(identity) = audit.identity.clone() else { return };
        let Some(held_back) = self
            .denial_events
            .admit(&audit.namespace, &identity, audit.reason, Instant::now())
        else {
            return;
        };
        let mut note = format!("pod {} denied: {}", audit.pod, audit.message);
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
            reason: audit.reason.to_owned(),
            note: Some(crate::text::truncate(&note, 1000)),
            action: "Admission".to_owned(),
            secondary: None,
        };
        let recorder = self.recorder.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            metrics.api_write("Event", "create");
            if let Err(e) = recorder.publish(&event, &reference).await {
                tracing::warn!(error = %e, "could not record denial event");
            }
        });
    }
}
