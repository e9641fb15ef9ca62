//! The WindowsTaskIdentity controller: credential spec, RBAC, service account and pod
//! templates; status (with the namespace's enforcement, the task pods and the token issuer's
//! outcome) and Events; finalizer cleanup of the cluster-scoped credential spec. Tokens are
//! kept by the token issuer beside it (`token::Issuer`), which the reconcile never waits for.

use std::sync::{Arc, OnceLock};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::core::error_boundary::InvalidObject;
use kube::core::{DeserializeGuard, PartialObjectMeta};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{PredicateConfig, WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use tracing::{info, warn};

use super::exposure;
use super::status::{self, Observed, ServiceAccountState, ShareState, identity_conditions, invalid_spec_conditions};
use super::{Context, Error, Namespaces};
use crate::api::conditions::{self, ConditionState};
use crate::api::creators::creator_accounts;
use crate::api::identity::{ExposureStatus, PodTemplateStatus, PodsStatus};
use crate::api::{GMSACredentialSpec, WindowsShare, WindowsTaskIdentity, WindowsTaskIdentityStatus, refs};
use crate::build::{self, IdentityChildren};
use crate::cluster::apply::{ChildReport, delete_managed_child, ensure_child};
use crate::cluster::watch_health::Watcher;
use crate::cluster::{finalizer, report, scoped, watch as watches};
use crate::names::{
    self, ENFORCE_LABEL, EXECUTOR_TEMPLATE_KEY, IDENTITY_LABEL, MANAGED_BY_LABEL, MANAGED_BY_VALUE,
    WINDOWS_TEMPLATE_KEY,
};
use crate::pod_refs::ReferringPod;
use crate::task_pod::{self, TaskPod};
use crate::token::{IdentityKey, Issuer};
use crate::{pods, validate};

const CONTROLLER: &str = "identity";

type Guarded = DeserializeGuard<WindowsTaskIdentity>;

/// What the identity reconciles need besides the shared `Context`: the controller's caches
/// of task pods and namespaces, and the token issuer, all made by `run` before the controller
/// starts.
struct IdentityContext {
    shared: Arc<Context>,
    identities: reflector::Store<Guarded>,
    task_pods: reflector::Store<TaskPod>,
    referring_pods: reflector::Store<ReferringPod>,
    namespaces: reflector::Store<Namespaces>,
    /// Until when reconciles wait for the caches' initial lists (set by the first that waits).
    task_pods_deadline: OnceLock<tokio::time::Instant>,
    referring_pods_deadline: OnceLock<tokio::time::Instant>,
    namespaces_deadline: OnceLock<tokio::time::Instant>,
    issuer: Issuer,
}

/// Runs the controller, and the token issuer beside it, until `shutdown` completes.
pub async fn run(
    ctx: Arc<Context>,
    readiness: crate::admin::Readiness,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let namespace = ctx.config.namespace.clone();
    let identities: Api<Guarded> = scoped(client.clone(), namespace.as_deref());
    let credential_specs: Api<PartialObjectMeta<GMSACredentialSpec>> = Api::all(client.clone());
    let (store, store_writer) = reflector::store();
    let identity_events = reflector::reflector(
        store_writer,
        watches::events(
            identities,
            watcher::Config::default().any_semantic(),
            Watcher::Identity,
            &ctx.metrics,
        )
        .modify(watches::drop_unread_metadata),
    );
    let identity_changes = identity_events
        .applied_objects()
        .predicate_filter(watches::spec_or_deletion, PredicateConfig::default());
    let controller = Controller::for_stream(identity_changes, store.clone());
    tokio::spawn(crate::cluster::report_ready_when_synced(store.clone(), readiness));
    let shares: Api<DeserializeGuard<WindowsShare>> = scoped(client.clone(), namespace.as_deref());
    let share_changes =
        watches::events(shares, watcher::Config::default(), Watcher::Identity, &ctx.metrics).touched_objects();
    // Reconciles read task pods from this cache instead of listing them on every pod event;
    // it keeps only the fields the status is made of.
    let (pod_store, pod_writer) = reflector::store();
    let pod_watch = watches::events(
        scoped::<TaskPod>(client.clone(), namespace.as_deref()),
        watcher::Config::default().labels(IDENTITY_LABEL),
        Watcher::Identity,
        &ctx.metrics,
    )
    .modify(task_pod::keep_summarized_fields);
    let task_pods = reflector::reflector(pod_writer, pod_watch).touched_objects();
    // Every pod that has not finished, reduced while decoding to its name, identity label and
    // the Secrets and claims it names: pods that reach an identity's credentials although a
    // new pod like them would be denied (created before the identity, its share or the
    // enforcement label). A pod that appears or goes re-checks the identities it exposes.
    let (referring_store, referring_writer) = reflector::store();
    let referring_watch = watches::events(
        scoped::<ReferringPod>(client.clone(), namespace.as_deref()),
        watcher::Config::default().fields("status.phase!=Succeeded,status.phase!=Failed"),
        Watcher::Exposure,
        &ctx.metrics,
    );
    let referring_pods = reflector::reflector(referring_writer, referring_watch).touched_objects();
    let exposed_by = store.clone();
    // Namespaces as metadata: reconciles read the winflow.io/enforce label (the Enforced
    // condition) from this cache, and a change of that label re-checks the namespace's
    // identities. Only the watched namespace when there is one.
    let (namespace_store, namespace_writer) = reflector::store();
    let namespace_watch = watches::events(
        Api::<Namespaces>::all(client.clone()),
        match namespace.as_deref() {
            Some(ns) => watcher::Config::default().fields(&format!("metadata.name={ns}")),
            None => watcher::Config::default(),
        },
        Watcher::Identity,
        &ctx.metrics,
    )
    .modify(|ns| {
        ns.metadata.managed_fields = None;
        ns.metadata.annotations = None;
    });
    let enforcement_changes =
        watches::value_changes(reflector::reflector(namespace_writer, namespace_watch), is_enforced);
    let in_namespace = store.clone();
    // Children report deletions and changes made by others; winflow's own writes are no news.
    let ns = namespace.as_deref();
    let managed = || watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"));
    let config_maps = child_changes(
        scoped::<PartialObjectMeta<ConfigMap>>(client.clone(), ns),
        managed(),
        &ctx,
    );
    let roles = child_changes(scoped::<PartialObjectMeta<Role>>(client.clone(), ns), managed(), &ctx);
    let role_bindings = child_changes(
        scoped::<PartialObjectMeta<RoleBinding>>(client.clone(), ns),
        managed(),
        &ctx,
    );
    let service_accounts = child_changes(
        scoped::<PartialObjectMeta<ServiceAccount>>(client.clone(), ns),
        managed(),
        &ctx,
    );
    let credential_specs = child_changes(credential_specs, managed(), &ctx);
    // Secrets as metadata only, all of them: a token Secret changed or deleted by someone
    // else, and a client secret that appears or changes, re-check the identity at once.
    let secrets = child_changes(
        scoped::<PartialObjectMeta<Secret>>(client.clone(), ns),
        watcher::Config::default(),
        &ctx,
    );
    let referrers = store.clone();
    let (issuer, token_outcomes) = Issuer::new(
        client.clone(),
        ctx.metrics.clone(),
        ctx.config.token.clone(),
        ctx.child_versions.clone(),
    );
    let concurrency = ctx.config.concurrency;
    let identity_ctx = Arc::new(IdentityContext {
        shared: ctx,
        identities: store.clone(),
        task_pods: pod_store,
        referring_pods: referring_store,
        namespaces: namespace_store,
        task_pods_deadline: OnceLock::new(),
        referring_pods_deadline: OnceLock::new(),
        namespaces_deadline: OnceLock::new(),
        issuer,
    });
    controller
        .owns_stream(config_maps)
        .owns_stream(roles)
        .owns_stream(role_bindings)
        .owns_stream(service_accounts)
        .watches_stream(credential_specs, |spec| {
            let (namespace, name) = names::identity_of_credential_spec(spec.metadata.name.as_deref()?)?;
            Some(ObjectRef::<Guarded>::new(name).within(namespace))
        })
        // A share that appears, binds or breaks re-checks the identities that mount it.
        .watches_stream(share_changes, move |share| {
            let namespace = share.meta().namespace.clone();
            let name = share.meta().name.clone().unwrap_or_default();
            store
                .state()
                .into_iter()
                .filter_map(|guarded| guarded.0.as_ref().ok().cloned())
                .filter(|identity| {
                    identity.metadata.namespace == namespace && identity.spec.shares.iter().any(|s| s.name == name)
                })
                .map(|identity| {
                    ObjectRef::<Guarded>::new(&identity.name_any()).within(&identity.namespace().unwrap_or_default())
                })
                .collect::<Vec<_>>()
        })
        .watches_stream(secrets, move |secret| identities_using_secret(&referrers, &secret))
        .watches_stream(enforcement_changes, move |ns| {
            identities_in_namespace(&in_namespace, &ns.name_any())
        })
        // Task pods are reported back on the identity their label names, at most once per
        // POD_TRIGGER_PERIOD for each identity: a burst of pod changes is one status write.
        .watches_stream(throttled(task_pods), |pod| {
            let name = pod.identity()?;
            Some(ObjectRef::<Guarded>::new(name).within(pod.metadata.namespace.as_deref()?))
        })
        .watches_stream(referring_pods, move |pod| identities_exposed_to(&exposed_by, &pod))
        // The token issuer's outcome changed: the status says so.
        .reconcile_on(
            token_outcomes.map(|IdentityKey { namespace, name }| ObjectRef::<Guarded>::new(&name).within(&namespace)),
        )
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, identity_ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "identity controller event");
            }
        })
        .await;
}

/// The watch of one kind of child (as metadata only: versions and owners are all a trigger
/// needs), as triggers: deletions, and versions winflow did not write itself. Keeps
/// `ctx.child_versions` current. Objects the watch sees that are not winflow's (`config`
/// may select more) are triggers whenever they change.
fn child_changes<K>(
    api: Api<K>,
    config: watcher::Config,
    ctx: &Arc<Context>,
) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let ctx = ctx.clone();
    watches::events(api, config, Watcher::Identity, &ctx.metrics).filter_map(move |event| {
        let versions = &ctx.child_versions;
        let trigger = match event {
            Ok(watcher::Event::Apply(child) | watcher::Event::InitApply(child)) => {
                (!is_managed(&child) || versions.observed(&child)).then_some(Ok(child))
            }
            Ok(watcher::Event::Delete(child)) => {
                versions.deleted(&child);
                Some(Ok(child))
            }
            Ok(watcher::Event::Init) => {
                versions.relisting::<K>();
                None
            }
            Ok(watcher::Event::InitDone) => None,
            Err(error) => Some(Err(error)),
        };
        std::future::ready(trigger)
    })
}

/// Whether an object carries winflow's managed-by label (its children all do).
fn is_managed<K: Resource>(object: &K) -> bool {
    let labels = object.meta().labels.as_ref();
    labels.and_then(|l| l.get(MANAGED_BY_LABEL)).map(String::as_str) == Some(MANAGED_BY_VALUE)
}

/// How often, at most, task pod changes re-check their identity.
const POD_TRIGGER_PERIOD: std::time::Duration = std::time::Duration::from_secs(2);

/// Task pod changes throttled per identity (namespace and label).
fn throttled(
    pods: impl futures::Stream<Item = Result<TaskPod, watcher::Error>> + Send + 'static,
) -> impl futures::Stream<Item = Result<TaskPod, watcher::Error>> + Send + 'static {
    let identity_of = |pod: &TaskPod| (pod.metadata.namespace.clone(), pod.identity().map(str::to_owned));
    let pods = pods.filter_map(|pod| std::future::ready(pod.ok()));
    crate::cluster::throttle::per_key(pods, POD_TRIGGER_PERIOD, identity_of).map(Ok)
}

/// Whether a namespace is labelled `winflow.io/enforce: "true"`.
fn is_enforced(namespace: &Namespaces) -> bool {
    let labels = namespace.metadata.labels.as_ref();
    labels.and_then(|l| l.get(ENFORCE_LABEL)).is_some_and(|v| v == "true")
}

fn identities_in_namespace(store: &reflector::Store<Guarded>, namespace: &str) -> Vec<ObjectRef<Guarded>> {
    store
        .state()
        .into_iter()
        .filter_map(|guarded| {
            let identity = guarded.0.as_ref().ok()?;
            (identity.metadata.namespace.as_deref() == Some(namespace)).then(|| identity.name_any())
        })
        .map(|name| ObjectRef::new(&name).within(namespace))
        .collect()
}

/// The identities a Secret matters to: the one whose token it holds (by winflow's labels) and
/// those that name it (`api::refs`: token, client secret, host account).
fn identities_using_secret(
    store: &reflector::Store<Guarded>,
    secret: &PartialObjectMeta<Secret>,
) -> Vec<ObjectRef<Guarded>> {
    let Some(namespace) = secret.metadata.namespace.clone() else {
        return Vec::new();
    };
    let name = secret.metadata.name.clone().unwrap_or_default();
    let labels = secret.metadata.labels.clone().unwrap_or_default();
    let holder = (labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY_VALUE))
        .then(|| labels.get(IDENTITY_LABEL).cloned())
        .flatten();
    let mut found: Vec<ObjectRef<Guarded>> = store
        .state()
        .into_iter()
        .filter_map(|guarded| guarded.0.as_ref().ok().cloned())
        .filter(|identity| {
            identity.metadata.namespace.as_deref() == Some(namespace.as_str())
                && refs::identity_secrets(identity).iter().any(|r| r.name == name)
        })
        .map(|identity| ObjectRef::new(&identity.name_any()).within(&namespace))
        .collect();
    found.extend(holder.map(|identity| ObjectRef::new(&identity).within(&namespace)));
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found.dedup();
    found
}

/// The identities of the pod's namespace whose credentials it names and may not reach.
fn identities_exposed_to(store: &reflector::Store<Guarded>, pod: &ReferringPod) -> Vec<ObjectRef<Guarded>> {
    let Some(namespace) = pod.metadata.namespace.as_deref().filter(|_| !pod.references.is_empty()) else {
        return Vec::new();
    };
    let lists_share = shares_listed_in(store, namespace);
    store
        .state()
        .iter()
        .filter_map(|guarded| guarded.0.as_ref().ok())
        .filter(|identity| identity.metadata.namespace.as_deref() == Some(namespace))
        .filter(|identity| !exposure::exposed_references(identity, pod, &lists_share).is_empty())
        .map(|identity| ObjectRef::new(&identity.name_any()).within(namespace))
        .collect()
}

/// Whether an identity of `namespace` (by name) lists a share (by name), from the cache.
fn shares_listed_in<'a>(store: &'a reflector::Store<Guarded>, namespace: &'a str) -> impl Fn(&str, &str) -> bool + 'a {
    move |identity, share| {
        let found = store.get(&ObjectRef::new(identity).within(namespace));
        found.is_some_and(|guarded| {
            let listed = guarded
                .0
                .as_ref()
                .ok()
                .map(|i| i.spec.shares.iter().any(|s| s.name == share));
            listed.unwrap_or(false)
        })
    }
}

fn object_key(ns: &str, name: &str) -> String {
    format!("{ns}/{name}")
}

async fn reconcile(guard: Arc<Guarded>, identity_ctx: Arc<IdentityContext>) -> Result<Action, Error> {
    let ctx = &identity_ctx.shared;
    let work = async {
        match &guard.0 {
            Ok(identity) if identity.metadata.deletion_timestamp.is_some() => cleanup(identity, &identity_ctx).await,
            Ok(identity) => reconcile_identity(identity, &identity_ctx).await,
            Err(invalid) => report_undecodable(invalid, ctx).await,
        }
    };
    super::measured(CONTROLLER, &guard, ctx, work).await
}

fn error_policy(guard: Arc<Guarded>, error: &Error, identity_ctx: Arc<IdentityContext>) -> Action {
    super::retry_with_backoff(CONTROLLER, &guard, error, &identity_ctx.shared)
}

fn identities_api(ctx: &Context, namespace: &str) -> Api<WindowsTaskIdentity> {
    Api::namespaced(ctx.client.clone(), namespace)
}

async fn reconcile_identity(identity: &WindowsTaskIdentity, identity_ctx: &IdentityContext) -> Result<Action, Error> {
    let ctx = &identity_ctx.shared;
    let namespace = identity.namespace().unwrap_or_default();
    let name = identity.name_any();
    if !finalizer::ensure(&identities_api(ctx, &namespace), identity)
        .await
        .map_err(Error::Finalizer)?
    {
        return Ok(Action::await_change());
    }
    // Task pods are reported whether or not the spec is valid: they may still be running.
    let tasks = observe_pods(identity, identity_ctx).await;
    let recheck = tasks.recheck;
    let enforced = observe_enforcement(identity, identity_ctx).await;
    let exposure = observe_exposure(identity, identity_ctx).await;

    let children = match build::children_for(identity) {
        Ok(children) => children,
        Err(violations) => {
            let message = validate::describe(&violations);
            warn!(identity = %object_key(&namespace, &name), %message, "invalid spec");
            let wanted = invalid_spec_conditions(message);
            let observed = Outside {
                tasks,
                enforced,
                exposure,
            };
            update_status(identity, ctx, wanted, None, observed).await?;
            return Ok(recheck.map_or_else(Action::await_change, Action::requeue));
        }
    };
    let token_exposed_to = &exposure.token_exposed_to;
    let Some((wanted, summary, look_again)) =
        apply_children(identity, &children, token_exposed_to, identity_ctx).await?
    else {
        // The token issuer has no outcome for the current token settings yet; it wakes this
        // identity when it has one (at the latest when the attempt is reported pending), and
        // the status is written then: once, for a provider that answers at once.
        return Ok(Action::requeue(ctx.config.retry_period));
    };
    let ready = wanted.last().is_some_and(|c| c.status);
    let observed = Outside {
        tasks,
        enforced,
        exposure,
    };
    update_status(identity, ctx, wanted, Some(summary), observed).await?;
    let next = if ready {
        ctx.config.resync_period
    } else {
        ctx.config.retry_period
    };
    let next = [Some(next), recheck, look_again]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(next);
    Ok(Action::requeue(next))
}

/// The identity's task pods, summarised for its status.
struct TaskPods {
    /// `None` while winflow cannot list them: the status keeps what it said.
    status: Option<PodsStatus>,
    healthy: ConditionState,
    /// When `TasksHealthy` may change without any pod changing.
    recheck: Option<std::time::Duration>,
}

/// Pods that expose the identity's credentials, for its status and its token.
struct Exposure {
    /// `status.exposure`; the outer `None` while winflow cannot list pods (the status keeps
    /// what it said).
    status: Option<Option<ExposureStatus>>,
    contained: ConditionState,
    /// The pods that are not the identity's own and name its token Secret.
    token_exposed_to: Vec<String>,
}

/// What the status reports beside the configuration conditions, never inside `Ready`.
struct Outside {
    tasks: TaskPods,
    enforced: ConditionState,
    exposure: Exposure,
}

/// The pods of the identity's namespace that name its credentials and may not, from the
/// cache of every unfinished pod; the metric follows.
async fn observe_exposure(identity: &WindowsTaskIdentity, identity_ctx: &IdentityContext) -> Exposure {
    let store = &identity_ctx.referring_pods;
    let (namespace, name) = (identity.namespace().unwrap_or_default(), identity.name_any());
    let metrics = &identity_ctx.shared.metrics;
    // Until the first list is in, an empty cache would report no exposure.
    if !initial_list_in(store, &identity_ctx.referring_pods_deadline).await {
        metrics.exposed_pods(&namespace, &name, None);
        return Exposure {
            status: None,
            contained: exposure::unknown(),
            token_exposed_to: Vec::new(),
        };
    }
    let pods = store.state();
    let lists_share = shares_listed_in(&identity_ctx.identities, &namespace);
    let exposed = exposure::exposed_pods(identity, pods.iter().map(|p| p.as_ref()), &lists_share);
    metrics.exposed_pods(&namespace, &name, Some(exposed.len().try_into().unwrap_or(i64::MAX)));
    let (status, contained) = exposure::report(&exposed);
    Exposure {
        status: Some(status),
        contained,
        token_exposed_to: exposure::token_exposed_to(&exposed),
    }
}

/// How long the first reconciles wait for a cache's initial list. It comes within
/// milliseconds, unless winflow may not list that kind: then reconciles wait until a shared
/// deadline after the first one, none after it, and the condition says why it cannot tell.
const INITIAL_LIST_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether `store` holds its initial list, waiting for it until `deadline` (set by the first
/// caller).
async fn initial_list_in<K>(store: &reflector::Store<K>, deadline: &OnceLock<tokio::time::Instant>) -> bool
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    let deadline = *deadline.get_or_init(|| tokio::time::Instant::now() + INITIAL_LIST_WAIT);
    tokio::time::timeout_at(deadline, crate::cluster::store_synced(store))
        .await
        .unwrap_or(false)
}

async fn observe_pods(identity: &WindowsTaskIdentity, identity_ctx: &IdentityContext) -> TaskPods {
    let namespace = identity.namespace();
    let name = identity.name_any();
    let store = &identity_ctx.task_pods;
    // Until the first list is in, an empty cache would report zero pods.
    if !initial_list_in(store, &identity_ctx.task_pods_deadline).await {
        return TaskPods {
            status: None,
            healthy: status::tasks_unknown(),
            // Without a list there are no pod events either: look again for when there is.
            recheck: Some(identity_ctx.shared.config.retry_period),
        };
    }
    let all = store.state();
    let pods = all
        .iter()
        .map(|pod| pod.as_ref())
        .filter(|pod| pod.metadata.namespace == namespace && pod.identity() == Some(name.as_str()));
    let denied = identity
        .status
        .as_ref()
        .and_then(|s| s.pods.as_ref())
        .map_or(0, |p| p.denied);
    let (status, healthy, recheck) = pods::summarize(pods, denied, jiff::Timestamp::now());
    TaskPods {
        status: Some(status),
        healthy,
        recheck,
    }
}

/// Applies every child that is winflow's to write and reports the conditions (`Ready` last),
/// the status fields they come with, and when to look again (at once when someone else wrote
/// a child meanwhile); `None` while the token issuer has no outcome for the current token
/// settings.
async fn apply_children(
    identity: &WindowsTaskIdentity,
    children: &IdentityChildren,
    token_exposed_to: &[String],
    identity_ctx: &IdentityContext,
) -> Result<
    Option<(
        Vec<ConditionState>,
        WindowsTaskIdentityStatus,
        Option<std::time::Duration>,
    )>,
    Error,
> {
    let ctx = &identity_ctx.shared;
    let namespace = identity.namespace().unwrap_or_default();
    let name = identity.name_any();
    let client = ctx.client.clone();
    let versions = Some(&*ctx.child_versions);
    let credential_spec = ensure_child(&Api::all(client.clone()), &children.credential_spec, versions)
        .await
        .map_err(Error::applying(&children.credential_spec))?;
    let service_account = ensure_service_account(identity, children, ctx).await?;
    let (roles, bindings) = (
        Api::namespaced(client.clone(), &namespace),
        Api::namespaced(client.clone(), &namespace),
    );
    let role = ensure_child(&roles, &children.role, versions)
        .await
        .map_err(Error::applying(&children.role))?;
    let role_binding = ensure_child(&bindings, &children.role_binding, versions)
        .await
        .map_err(Error::applying(&children.role_binding))?;
    let use_role = ensure_child(&roles, &children.use_role, versions)
        .await
        .map_err(Error::applying(&children.use_role))?;
    let use_role_binding = ensure_child(&bindings, &children.use_role_binding, versions)
        .await
        .map_err(Error::applying(&children.use_role_binding))?;
    let config_maps = Api::namespaced(client, &namespace);
    let pod_templates = ensure_child(&config_maps, &children.pod_templates, versions)
        .await
        .map_err(Error::applying(&children.pod_templates))?;

    for report in [
        &credential_spec,
        &role,
        &role_binding,
        &use_role,
        &use_role_binding,
        &pod_templates,
    ] {
        if report.state == crate::cluster::apply::ChildState::Applied {
            info!(identity = %object_key(&namespace, &name), kind = %report.kind, child = %report.name, "applied");
        }
    }
    // Someone else wrote a child while winflow did: its watch event was held back as
    // possibly winflow's own, so look again at once rather than wait for the next trigger.
    let versions = &ctx.child_versions;
    let changed_meanwhile = [
        versions.take_changed_meanwhile(&children.credential_spec),
        versions.take_changed_meanwhile(&children.role),
        versions.take_changed_meanwhile(&children.role_binding),
        versions.take_changed_meanwhile(&children.use_role),
        versions.take_changed_meanwhile(&children.use_role_binding),
        versions.take_changed_meanwhile(&children.pod_templates),
        (children.service_account.as_ref()).is_some_and(|sa| versions.take_changed_meanwhile(sa)),
    ]
    .contains(&true);
    let shares = observe_shares(identity, ctx).await?;
    // After the service account: a workload-identity token is requested in its name.
    let issued = identity_ctx.issuer.report(identity, token_exposed_to).await;
    let Some(token) = issued.map_err(Error::Token)? else {
        return Ok(None);
    };
    let service_account_name = identity.spec.service_account.name.clone();
    let creators = subjects_of(&children.use_role_binding);
    let wanted = identity_conditions(&Observed {
        credential_spec: &credential_spec,
        role: &role,
        role_binding: &role_binding,
        use_role: &use_role,
        use_role_binding: &use_role_binding,
        creators: &creators,
        service_account_name: &service_account_name,
        service_account,
        pod_templates: &pod_templates,
        shares: &shares,
        token: token.condition,
    });
    let summary = WindowsTaskIdentityStatus {
        credential_spec_name: Some(credential_spec.name.clone()),
        service_account_name: Some(service_account_name),
        pod_template: Some(PodTemplateStatus {
            config_map_name: pod_templates.name.clone(),
            windows_key: WINDOWS_TEMPLATE_KEY.to_owned(),
            executor_key: EXECUTOR_TEMPLATE_KEY.to_owned(),
        }),
        token: token.status,
        ..WindowsTaskIdentityStatus::default()
    };
    let look_again = changed_meanwhile.then_some(std::time::Duration::ZERO);
    Ok(Some((wanted, summary, look_again)))
}

/// A RoleBinding's subjects as `Kind name`, service accounts as `ServiceAccount namespace/name`.
fn subjects_of(binding: &RoleBinding) -> Vec<String> {
    let subjects = binding.subjects.iter().flatten();
    subjects
        .map(|s| match &s.namespace {
            Some(ns) => format!("{} {ns}/{}", s.kind, s.name),
            None => format!("{} {}", s.kind, s.name),
        })
        .collect()
}

/// Whether the identity's namespace is labelled `winflow.io/enforce: "true"`, from the
/// namespace cache, as the `Enforced` condition.
async fn observe_enforcement(identity: &WindowsTaskIdentity, identity_ctx: &IdentityContext) -> ConditionState {
    let namespace = identity.namespace().unwrap_or_default();
    let store = &identity_ctx.namespaces;
    // Until the first list is in, an empty cache would report every namespace unlabelled.
    if !initial_list_in(store, &identity_ctx.namespaces_deadline).await {
        return status::enforcement_unknown(&namespace);
    }
    let enforced_namespace = |name: &str| store.get(&ObjectRef::new(name)).is_some_and(|ns| is_enforced(&ns));
    if !enforced_namespace(&namespace) {
        return status::enforced_condition(&namespace, false);
    }
    // A pod that runs as a creator's service account acts as the creator: the webhook checks
    // who starts it only in enforcement namespaces.
    let mut unenforced: Vec<Option<String>> = creator_accounts(identity)
        .iter()
        .map(|accounts| accounts.namespace().map(str::to_owned))
        .filter(|ns| ns.as_deref().is_none_or(|ns| !enforced_namespace(ns)))
        .collect();
    unenforced.sort();
    unenforced.dedup();
    if unenforced.is_empty() {
        status::enforced_condition(&namespace, true)
    } else {
        status::creator_namespaces_not_enforced(&namespace, &unenforced)
    }
}

/// The state of every share the identity mounts, from the shares' own `Ready` conditions.
async fn observe_shares(identity: &WindowsTaskIdentity, ctx: &Context) -> Result<Vec<(String, ShareState)>, Error> {
    let api: Api<DeserializeGuard<WindowsShare>> =
        Api::namespaced(ctx.client.clone(), &identity.namespace().unwrap_or_default());
    let mut states = Vec::new();
    for mount in &identity.spec.shares {
        let read = api.get_opt(&mount.name).await;
        let state = match read.map_err(Error::reading(format_args!("WindowsShare {}", mount.name)))? {
            None => ShareState::Missing,
            Some(DeserializeGuard(Err(invalid))) => ShareState::NotReady(format!("InvalidSpec: {}", invalid.error)),
            Some(DeserializeGuard(Ok(share))) => {
                let conditions = share.status.map(|s| s.conditions).unwrap_or_default();
                match conditions::find(&conditions, conditions::READY) {
                    Some(ready) if ready.status == "True" => ShareState::Ready,
                    Some(ready) => ShareState::NotReady(format!("{}: {}", ready.reason, ready.message)),
                    None => ShareState::NotReady("not reconciled yet".to_owned()),
                }
            }
        };
        states.push((mount.name.clone(), state));
    }
    Ok(states)
}

/// A service account winflow creates is applied like any child; one that exists without
/// winflow's labels is bound as it is and never taken over.
async fn ensure_service_account(
    identity: &WindowsTaskIdentity,
    children: &IdentityChildren,
    ctx: &Context,
) -> Result<ServiceAccountState, Error> {
    let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &identity.namespace().unwrap_or_default());
    match &children.service_account {
        Some(desired) => {
            let ChildReport { state, .. } = ensure_child(&api, desired, Some(&*ctx.child_versions))
                .await
                .map_err(Error::applying(desired))?;
            Ok(match state {
                crate::cluster::apply::ChildState::Conflict(_) => ServiceAccountState::ExistingUnmanaged,
                other => ServiceAccountState::Managed(other),
            })
        }
        None => Ok(
            match api
                .get_opt(&identity.spec.service_account.name)
                .await
                .map_err(Error::reading(format_args!(
                    "ServiceAccount {}",
                    identity.spec.service_account.name
                )))? {
                Some(_) => ServiceAccountState::ExistingUnmanaged,
                None => ServiceAccountState::Missing,
            },
        ),
    }
}

/// Removes the credential spec (cluster scoped, so no garbage collection) and then the
/// finalizer. Namespaced children (the token Secret too) go with their owner reference.
async fn cleanup(identity: &WindowsTaskIdentity, identity_ctx: &IdentityContext) -> Result<Action, Error> {
    let ctx = &identity_ctx.shared;
    if !finalizer::is_pending(identity) {
        return Ok(Action::await_change());
    }
    let namespace = identity.namespace().unwrap_or_default();
    let name = identity.name_any();
    let credential_spec = build::credential_spec_for(identity);
    if delete_managed_child(&Api::all(ctx.client.clone()), &credential_spec)
        .await
        .map_err(Error::deleting(&credential_spec))?
    {
        let spec_name = credential_spec.metadata.name.unwrap_or_default();
        info!(identity = %object_key(&namespace, &name), credential_spec = %spec_name, "deleted credential spec");
    }
    finalizer::remove(&identities_api(ctx, &namespace), identity)
        .await
        .map_err(Error::Finalizer)?;
    identity_ctx.issuer.forget(identity).await;
    ctx.metrics.exposed_pods(&namespace, &name, None);
    ctx.written_status.forget(&object_key(&namespace, &name));
    Ok(Action::await_change())
}

/// An identity that cannot even be decoded (for example stored before a schema change) gets
/// `Ready=False, InvalidSpec`; the other identities carry on.
async fn report_undecodable(invalid: &InvalidObject, ctx: &Context) -> Result<Action, Error> {
    let (Some(namespace), Some(name)) = (invalid.metadata.namespace.as_deref(), invalid.metadata.name.as_deref())
    else {
        return Ok(Action::await_change());
    };
    let message = format!(
        "the object does not match the WindowsTaskIdentity API: {}",
        invalid.error
    );
    warn!(identity = %object_key(namespace, name), %message, "undecodable identity");
    let conditions = report::next_conditions(&[], &invalid_spec_conditions(message), invalid.metadata.generation);
    let status = WindowsTaskIdentityStatus {
        observed_generation: invalid.metadata.generation,
        conditions,
        ..Default::default()
    };
    report::write_status(&identities_api(ctx, namespace), name, &status)
        .await
        .map_err(Error::Status)?;
    Ok(Action::await_change())
}

/// Writes the status only when it differs from the stored one, and records an Event for each
/// condition that changed status or reason.
async fn update_status(
    identity: &WindowsTaskIdentity,
    ctx: &Context,
    mut wanted: Vec<ConditionState>,
    summary: Option<WindowsTaskIdentityStatus>,
    outside: Outside,
) -> Result<(), Error> {
    let Outside {
        tasks,
        enforced,
        exposure,
    } = outside;
    let key = object_key(&identity.namespace().unwrap_or_default(), &identity.name_any());
    let uid = identity.uid().unwrap_or_default();
    let cached = identity.status.clone().unwrap_or_default();
    let previous = ctx.written_status.current(&key, &uid, &cached);
    let generation = identity.metadata.generation;
    let mut next = summary.unwrap_or_else(|| previous.clone());
    next.observed_generation = generation;
    // TasksHealthy, Enforced and CredentialsContained are reported beside the configuration
    // conditions, never inside Ready.
    wanted.push(tasks.healthy);
    wanted.push(enforced);
    wanted.push(exposure.contained);
    next.conditions = report::next_conditions(&previous.conditions, &wanted, generation);
    next.pods = tasks.status.or_else(|| previous.pods.clone());
    next.exposure = exposure.status.unwrap_or_else(|| previous.exposure.clone());
    if next == previous {
        return Ok(());
    }
    let api = identities_api(ctx, &identity.namespace().unwrap_or_default());
    match report::write_status(&api, &identity.name_any(), &without_denials(&next)).await {
        // Deleted since the cache saw it: no status to keep, no Events to tell.
        Err(e) if finalizer::is_not_found(&e) => return Ok(()),
        result => result.map_err(Error::Status)?,
    }
    ctx.written_status.remember(&key, &uid, next.clone());
    let reference = identity.object_ref(&());
    report::publish_transitions(&ctx.recorder, &reference, &previous.conditions, &next.conditions).await;
    Ok(())
}

/// The status as the controller writes it: `pods.denied` is the webhook's field (every replica
/// adds its denials with the resourceVersion it read, see `webhook::denial_count`), so the
/// controller never sends it and a stale cache cannot write an older count over a newer one.
fn without_denials(status: &WindowsTaskIdentityStatus) -> serde_json::Value {
    let mut body = serde_json::to_value(status).expect("the status serializes");
    if let Some(pods) = body.get_mut("pods").and_then(serde_json::Value::as_object_mut) {
        pods.remove("denied");
    }
    body
}
