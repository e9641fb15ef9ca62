//! The glue between the HTTPS layer and the decisions: caches of identities and shares, the
//! creator's authorization (asked before deciding), one audit line per decision, metrics, and
//! on every denial an Event and a count on the identity concerned.

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::core::admission::{AdmissionRequest, AdmissionResponse};
use kube::core::{DeserializeGuard, DynamicObject, PartialObjectMeta};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;

use super::access::AccessReviewer;
use super::decide::{self, Audit, Decision, ResourceView};
use super::denial_count::DenialCounts;
use super::denial_events::DenialEvents;
use super::server::{AdmissionHandler, ReviewKind};
use crate::api::{WindowsShare, WindowsTaskIdentity};
use crate::cluster::watch_health::Watcher;
use crate::metrics::Metrics;

/// winflow's resources as watches keep them; every replica has its own, so every replica can
/// decide.
#[derive(Clone)]
pub struct ResourceCache {
    identities: Store<DeserializeGuard<WindowsTaskIdentity>>,
    shares: Store<DeserializeGuard<WindowsShare>>,
}

/// A watch of `K` (in `namespace`, or all) into a store, and the task that keeps it filled.
fn cached<K>(
    client: Client,
    namespace: Option<&str>,
    metrics: &Metrics,
) -> (Store<DeserializeGuard<K>>, tokio::task::JoinHandle<()>)
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let api: Api<DeserializeGuard<K>> = match namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    let (store, writer) = reflector::store();
    let events = crate::cluster::watch::events(api, watcher::Config::default(), Watcher::Webhook, metrics)
        .modify(crate::cluster::watch::drop_unread_metadata);
    let stream = reflector::reflector(writer, events).applied_objects();
    (store, tokio::spawn(stream.for_each(|_| async {})))
}

fn decoded<K: Clone>(guarded: &DeserializeGuard<K>) -> Option<Arc<K>> {
    guarded.0.as_ref().ok().map(|object| Arc::new(object.clone()))
}

/// Shows `visit` the decodable objects of a store in `namespace` (all when `None`), uncopied.
fn each_decoded<K: Resource + Clone>(
    store: &Store<DeserializeGuard<K>>,
    namespace: Option<&str>,
    visit: &mut dyn FnMut(&K),
) where
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    for guarded in store.state() {
        if let Ok(object) = &guarded.0
            && (namespace.is_none() || object.meta().namespace.as_deref() == namespace)
        {
            visit(object);
        }
    }
}

impl ResourceCache {
    /// Starts watching identities and shares (in `namespace`, or all).
    pub fn start(client: Client, namespace: Option<&str>, metrics: &Metrics) -> Self {
        let (identities, _identity_task) = cached(client.clone(), namespace, metrics);
        let (shares, _share_task) = cached(client, namespace, metrics);
        Self { identities, shares }
    }

    /// Whether both caches hold their initial list (`false` when a watch is gone).
    pub async fn synced(&self) -> bool {
        crate::cluster::store_synced(&self.identities).await && crate::cluster::store_synced(&self.shares).await
    }
}

impl ResourceView for ResourceCache {
    fn identity(&self, namespace: &str, name: &str) -> Option<Arc<WindowsTaskIdentity>> {
        decoded(&*self.identities.get(&ObjectRef::new(name).within(namespace))?)
    }

    fn each_identity(&self, namespace: Option<&str>, visit: &mut dyn FnMut(&WindowsTaskIdentity)) {
        each_decoded(&self.identities, namespace, visit);
    }

    fn each_share(&self, namespace: &str, visit: &mut dyn FnMut(&WindowsShare)) {
        each_decoded(&self.shares, Some(namespace), visit);
    }

    fn identities_with_account(&self, account: &str) -> Vec<Arc<WindowsTaskIdentity>> {
        self.identities_where(|identity| decide::account_keys(&identity.spec).any(|key| key == account))
    }

    fn identities_with_plugin_input(&self, input: &str) -> Vec<Arc<WindowsTaskIdentity>> {
        self.identities_where(|identity| decide::plugin_input(identity).as_deref() == Some(input))
    }
}

impl ResourceCache {
    /// The identities (any namespace) that `wanted` picks: a scan of the cache.
    fn identities_where(&self, wanted: impl Fn(&WindowsTaskIdentity) -> bool) -> Vec<Arc<WindowsTaskIdentity>> {
        let mut found = Vec::new();
        each_decoded(&self.identities, None, &mut |identity| {
            if wanted(identity) {
                found.push(Arc::new(identity.clone()));
            }
        });
        found
    }
}

/// winflow's admission webhook.
pub struct PodWebhook {
    /// Reads the pod of a 1.20 ephemeral-containers request (its labels only).
    pub client: Client,
    pub resources: ResourceCache,
    pub access: AccessReviewer,
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
    /// The I/O a decision needs (the pod's labels for a 1.20 ephemeral-containers request, the
    /// authorizer's answer about the requester), then the decision.
    async fn decide(&self, kind: ReviewKind, request: &AdmissionRequest<DynamicObject>) -> (&'static str, Decision) {
        let webhook = match kind {
            ReviewKind::Mutate => "mutate",
            ReviewKind::Validate => "validate",
            ReviewKind::ValidateEphemeral => "validate-ephemeral",
            ReviewKind::ValidateGmsa => "validate-gmsa",
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
        let access = match decide::identity_to_authorize(kind, request) {
            Some((namespace, identity)) => Some(self.access.may_use(&request.user_info, &namespace, &identity).await),
            None => None,
        };
        let view = &self.resources;
        let decision = match kind {
            ReviewKind::Mutate => decide::mutate(request, view, access.as_ref()),
            ReviewKind::Validate => decide::validate(request, view, access.as_ref()),
            ReviewKind::ValidateEphemeral => decide::validate_ephemeral(request, view, access.as_ref()),
            ReviewKind::ValidateGmsa => decide::validate_gmsa(request, view),
        };
        (webhook, decision)
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
