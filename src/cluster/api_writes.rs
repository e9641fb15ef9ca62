//! The operator's Kubernetes client, which counts every write it sends by kind and verb
//! (`winflow_api_writes_total`) in one place: a write path cannot forget it, and the Lease,
//! certificate, Event and TokenRequest writes are counted like the children's.

use std::borrow::Cow;
use std::sync::LazyLock;
use std::task::{Context, Poll};

use http::header::{CONTENT_TYPE, USER_AGENT};
use http::{HeaderValue, Method, Request};
use k8s_openapi::api::admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, PersistentVolumeClaim, Secret, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::client::ClientBuilder;
use kube::client::retry::RetryPolicy;
use kube::{Client, Config, Resource};
use tower::buffer::BufferLayer;
use tower::retry::RetryLayer;
use tower::{Layer, Service};

use crate::api::{GMSACredentialSpec, WindowsShare, WindowsTaskIdentity};
use crate::metrics::Metrics;

/// How the operator names itself to the API server (its audit log's `userAgent`).
const OPERATOR_USER_AGENT: &str = concat!("winflow/", env!("CARGO_PKG_VERSION"));

/// Requests waiting for the retried part of the client (kube's own client buffers as many).
const RETRY_BUFFER: usize = 1024;

/// A client from the environment (in-cluster service account or kubeconfig), as
/// `Client::try_default`, counting its writes.
pub async fn infer_client(metrics: &Metrics) -> Result<Client, kube::Error> {
    client(Config::infer().await.map_err(kube::Error::InferConfig)?, metrics)
}

/// The only way the operator builds a client: every write it sends is counted in `metrics`.
pub fn client(mut config: Config, metrics: &Metrics) -> Result<Client, kube::Error> {
    if !config.headers.iter().any(|(name, _)| name == USER_AGENT) {
        config
            .headers
            .push((USER_AGENT, HeaderValue::from_static(OPERATOR_USER_AGENT)));
    }
    // kube retries 429, 503 and 504 answers below any layer added here; retried above the
    // count instead, each attempt is counted, as the API server counts it. The buffer makes
    // the counted stack cloneable, which retrying needs.
    let retry = std::mem::replace(&mut config.default_retry, false);
    let counted = ClientBuilder::try_from(config)?.with_layer(&CountWritesLayer {
        metrics: metrics.clone(),
    });
    Ok(if retry {
        counted
            .with_layer(&BufferLayer::new(RETRY_BUFFER))
            .with_layer(&RetryLayer::new(RetryPolicy::server_retry()))
            .build()
    } else {
        counted.build()
    })
}

/// Counts each write request as it is sent.
#[derive(Clone)]
struct CountWritesLayer {
    metrics: Metrics,
}

impl<S> Layer<S> for CountWritesLayer {
    type Service = CountWrites<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CountWrites {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
struct CountWrites<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, B> Service<Request<B>> for CountWrites<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let content_type = request.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
        if let Some(write) = write_of(request.method(), request.uri().path(), content_type) {
            self.metrics.api_write(&write.kind, write.verb);
        }
        self.inner.call(request)
    }
}

/// A write as `winflow_api_writes_total` labels it.
#[derive(Debug, PartialEq, Eq)]
struct Write {
    /// The written kind (`Secret`), a subresource after it (`ServiceAccount/token`); the
    /// plural resource name for kinds winflow does not know.
    kind: String,
    /// `create`, `replace`, `apply`, `patch`, `delete`, `deletecollection`; a status write
    /// is `apply-status`, `patch-status`, ...
    verb: &'static str,
}

/// The write a request makes; `None` for reads and for reviews (SubjectAccessReview,
/// TokenReview), which are sent as creates but only ask.
fn write_of(method: &Method, path: &str, content_type: Option<&str>) -> Option<Write> {
    let target = Target::parse(path)?;
    if REVIEW_GROUPS.contains(&target.group) {
        return None;
    }
    let verb = match *method {
        Method::POST => "create",
        Method::PUT => "replace",
        Method::DELETE if target.name.is_none() => "deletecollection",
        Method::DELETE => "delete",
        Method::PATCH if content_type.is_some_and(|t| t.starts_with(APPLY_PATCH)) => "apply",
        Method::PATCH => "patch",
        _ => return None,
    };
    let kind = kind_of(target.resource);
    Some(match target.subresource {
        None => Write { kind, verb },
        Some("status") => Write {
            kind,
            verb: status_verb(verb),
        },
        Some(subresource) => Write {
            kind: format!("{kind}/{subresource}"),
            verb,
        },
    })
}

/// Server-side apply's content type.
const APPLY_PATCH: &str = "application/apply-patch+yaml";

/// API groups whose "creates" are questions answered at once, never stored.
const REVIEW_GROUPS: [&str; 2] = ["authorization.k8s.io", "authentication.k8s.io"];

fn status_verb(verb: &'static str) -> &'static str {
    match verb {
        "create" => "create-status",
        "replace" => "replace-status",
        "apply" => "apply-status",
        "patch" => "patch-status",
        _ => "delete-status",
    }
}

/// What a request path addresses, as the API server reads it.
#[derive(Debug, PartialEq, Eq)]
struct Target<'a> {
    /// `""` for the core group.
    group: &'a str,
    resource: &'a str,
    name: Option<&'a str>,
    subresource: Option<&'a str>,
}

impl<'a> Target<'a> {
    /// `/api/v1[/namespaces/NS]/RESOURCE[/NAME[/SUBRESOURCE]]` or the same under
    /// `/apis/GROUP/VERSION`; `None` for other paths (discovery, `/metrics`, `/version`).
    fn parse(path: &'a str) -> Option<Self> {
        let mut parts = path.trim_start_matches('/').split('/');
        let group = match parts.next()? {
            "api" => "",
            "apis" => parts.next()?,
            _ => return None,
        };
        parts.next()?;
        let mut rest: Vec<&str> = parts.filter(|p| !p.is_empty()).collect();
        // Namespaced resources; a namespace's own subresources (`status`, `finalize`) are
        // not resources in it.
        if rest.len() >= 3 && rest[0] == "namespaces" && !NAMESPACE_SUBRESOURCES.contains(&rest[2]) {
            rest.drain(..2);
        }
        let mut rest = rest.into_iter();
        Some(Target {
            group,
            resource: rest.next()?,
            name: rest.next(),
            subresource: rest.next(),
        })
    }
}

const NAMESPACE_SUBRESOURCES: [&str; 2] = ["status", "finalize"];

/// The kind of a plural resource name, for the kinds the operator writes; the resource name
/// itself for others, which still tells what was written.
fn kind_of(resource: &str) -> String {
    KINDS
        .iter()
        .find(|(plural, _)| plural == resource)
        .map_or(resource, |(_, kind)| kind)
        .to_owned()
}

static KINDS: LazyLock<Vec<(Cow<'static, str>, Cow<'static, str>)>> = LazyLock::new(|| {
    vec![
        names::<WindowsTaskIdentity>(),
        names::<WindowsShare>(),
        names::<GMSACredentialSpec>(),
        names::<ConfigMap>(),
        names::<Secret>(),
        names::<ServiceAccount>(),
        names::<Role>(),
        names::<RoleBinding>(),
        names::<PersistentVolume>(),
        names::<PersistentVolumeClaim>(),
        names::<Event>(),
        names::<Lease>(),
        names::<MutatingWebhookConfiguration>(),
        names::<ValidatingWebhookConfiguration>(),
    ]
});

fn names<K: Resource<DynamicType = ()>>() -> (Cow<'static, str>, Cow<'static, str>) {
    (K::plural(&()), K::kind(&()))
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use k8s_openapi::api::authorization::v1::SubjectAccessReview;
    use kube::api::{DeleteParams, GetParams, ListParams, Patch, PatchParams, PostParams};
    use kube::core::Request as ApiRequest;
    use serde_json::json;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::{TcpListener, TcpStream};
    use tower::ServiceExt;

    use super::*;

    fn api<K: Resource<DynamicType = ()>>(namespace: Option<&str>) -> ApiRequest {
        ApiRequest::new(K::url_path(&(), namespace))
    }

    /// The write of a request as kube's `Api` builds it.
    fn write(request: &Request<Vec<u8>>) -> Option<(String, &'static str)> {
        let content_type = request.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
        write_of(request.method(), request.uri().path(), content_type).map(|w| (w.kind, w.verb))
    }

    fn labels(kind: &str, verb: &'static str) -> Option<(String, &'static str)> {
        Some((kind.to_owned(), verb))
    }

    #[test]
    fn server_side_applies_of_children_and_status_are_told_apart() {
        let apply = PatchParams::apply("winflow").force();
        let body = Patch::Apply(json!({}));
        let spec = api::<GMSACredentialSpec>(None).patch("payroll", &apply, &body).unwrap();
        assert_eq!(write(&spec), labels("GMSACredentialSpec", "apply"));
        let status = api::<WindowsTaskIdentity>(Some("airflow"))
            .patch_subresource("status", "payroll", &apply, &body)
            .unwrap();
        assert_eq!(write(&status), labels("WindowsTaskIdentity", "apply-status"));
        let config_map = api::<ConfigMap>(Some("airflow")).patch("t", &apply, &body).unwrap();
        assert_eq!(write(&config_map), labels("ConfigMap", "apply"));
    }

    #[test]
    fn json_and_merge_patches_are_patches() {
        let patch: json_patch::Patch = serde_json::from_value(json!([])).unwrap();
        let finalizer = api::<WindowsTaskIdentity>(Some("airflow"))
            .patch("payroll", &PatchParams::default(), &Patch::<()>::Json(patch))
            .unwrap();
        assert_eq!(write(&finalizer), labels("WindowsTaskIdentity", "patch"));
        let denied = api::<WindowsTaskIdentity>(Some("airflow"))
            .patch_subresource("status", "payroll", &PatchParams::default(), &Patch::Merge(json!({})))
            .unwrap();
        assert_eq!(write(&denied), labels("WindowsTaskIdentity", "patch-status"));
        let bundle = api::<MutatingWebhookConfiguration>(None)
            .patch("winflow", &PatchParams::default(), &Patch::Strategic(json!({})))
            .unwrap();
        assert_eq!(write(&bundle), labels("MutatingWebhookConfiguration", "patch"));
    }

    #[test]
    fn creates_replaces_and_deletes() {
        let secrets = || api::<Secret>(Some("winflow-system"));
        let create = secrets().create(&PostParams::default(), vec![]).unwrap();
        assert_eq!(write(&create), labels("Secret", "create"));
        let replace = secrets().replace("certs", &PostParams::default(), vec![]).unwrap();
        assert_eq!(write(&replace), labels("Secret", "replace"));
        let delete = secrets().delete("token", &DeleteParams::default()).unwrap();
        assert_eq!(write(&delete), labels("Secret", "delete"));
        let all = secrets()
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .unwrap();
        assert_eq!(write(&all), labels("Secret", "deletecollection"));
        let lease = api::<Lease>(Some("winflow-system"))
            .replace("winflow", &PostParams::default(), vec![])
            .unwrap();
        assert_eq!(write(&lease), labels("Lease", "replace"));
        let event = api::<Event>(Some("airflow"))
            .create(&PostParams::default(), vec![])
            .unwrap();
        assert_eq!(write(&event), labels("Event", "create"));
    }

    #[test]
    fn a_token_request_is_a_create_of_the_token_subresource() {
        let request = api::<ServiceAccount>(Some("airflow"))
            .create_subresource("token", "airflow-worker", &PostParams::default(), vec![])
            .unwrap();
        assert_eq!(write(&request), labels("ServiceAccount/token", "create"));
    }

    #[test]
    fn reads_and_reviews_are_not_writes() {
        let get = api::<Secret>(Some("airflow"))
            .get("token", &GetParams::default())
            .unwrap();
        assert_eq!(write(&get), None);
        let list = api::<ConfigMap>(None).list(&ListParams::default()).unwrap();
        assert_eq!(write(&list), None);
        let review = api::<SubjectAccessReview>(None)
            .create(&PostParams::default(), vec![])
            .unwrap();
        assert_eq!(write(&review), None);
        assert_eq!(write_of(&Method::POST, "/metrics", None), None);
        assert_eq!(write_of(&Method::GET, "/apis/winflow.io/v1alpha1", None), None);
    }

    #[test]
    fn unknown_kinds_are_named_by_their_resource() {
        let path = "/apis/example.com/v1/namespaces/airflow/widgets/w1/scale";
        assert_eq!(
            write_of(&Method::PUT, path, None),
            Some(Write {
                kind: "widgets/scale".to_owned(),
                verb: "replace",
            })
        );
    }

    #[test]
    fn a_namespace_and_its_subresources_are_not_resources_in_it() {
        assert_eq!(
            Target::parse("/api/v1/namespaces/airflow/finalize"),
            Some(Target {
                group: "",
                resource: "namespaces",
                name: Some("airflow"),
                subresource: Some("finalize"),
            })
        );
        assert_eq!(
            write_of(&Method::DELETE, "/api/v1/namespaces/airflow", None),
            Some(Write {
                kind: "namespaces".to_owned(),
                verb: "delete",
            })
        );
        assert_eq!(
            Target::parse("/api/v1/namespaces/airflow/pods/p1/eviction"),
            Some(Target {
                group: "",
                resource: "pods",
                name: Some("p1"),
                subresource: Some("eviction"),
            })
        );
    }

    /// Reads one HTTP request; its User-Agent, or `None` once the client closed the connection.
    async fn read_request(stream: &mut BufReader<TcpStream>) -> Option<String> {
        let (mut length, mut agent, mut line) = (0, String::new(), String::new());
        loop {
            line.clear();
            if stream.read_line(&mut line).await.unwrap() == 0 {
                return None;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(value) = lower.strip_prefix("content-length:") {
                length = value.trim().parse().unwrap();
            }
            if let Some(value) = lower.strip_prefix("user-agent:") {
                value.trim().clone_into(&mut agent);
            }
            if line == "\r\n" {
                break;
            }
        }
        stream.read_exact(&mut vec![0; length]).await.unwrap();
        Some(agent)
    }

    /// Answers one request after the other with the next of `statuses`; returns the
    /// User-Agent of each.
    async fn answer(listener: TcpListener, statuses: Vec<u16>) -> Vec<String> {
        let body = r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"certs"}}"#;
        let (mut agents, mut connection) = (Vec::new(), None);
        for status in statuses {
            let stream = loop {
                let mut stream = match connection.take() {
                    Some(stream) => stream,
                    None => BufReader::new(listener.accept().await.unwrap().0),
                };
                if let Some(agent) = read_request(&mut stream).await {
                    agents.push(agent);
                    break connection.insert(stream);
                }
            };
            let response = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            stream.get_mut().write_all(response.as_bytes()).await.unwrap();
        }
        agents
    }

    #[tokio::test]
    async fn a_retried_write_counts_each_attempt_as_the_api_server_sees_it() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(answer(listener, vec![503, 429, 201]));
        let metrics = Metrics::default();
        let client = client(Config::new(url.parse().unwrap()), &metrics).unwrap();
        let secrets: kube::Api<Secret> = kube::Api::namespaced(client, "winflow-system");
        secrets
            .create(&PostParams::default(), &Secret::default())
            .await
            .unwrap();
        let agents = server.await.unwrap();
        assert_eq!(agents, [OPERATOR_USER_AGENT; 3]);
        let text = metrics.encode();
        assert!(
            text.contains(r#"winflow_api_writes_total{kind="Secret",verb="create"} 3"#),
            "{text}"
        );
    }

    #[tokio::test]
    async fn the_layer_counts_each_write_it_passes_on_and_nothing_else() {
        let metrics = Metrics::default();
        let answer = tower::service_fn(|_: Request<Vec<u8>>| async { Ok::<_, Infallible>(()) });
        let mut service = CountWritesLayer {
            metrics: metrics.clone(),
        }
        .layer(answer);
        let apply = PatchParams::apply("winflow").force();
        for _ in 0..2 {
            let request = api::<Role>(Some("airflow"))
                .patch("use", &apply, &Patch::Apply(json!({})))
                .unwrap();
            service.ready().await.unwrap().call(request).await.unwrap();
        }
        let read = api::<Role>(Some("airflow")).get("use", &GetParams::default()).unwrap();
        service.ready().await.unwrap().call(read).await.unwrap();
        let text = metrics.encode();
        assert!(
            text.contains(r#"winflow_api_writes_total{kind="Role",verb="apply"} 2"#),
            "{text}"
        );
        assert_eq!(text.matches("winflow_api_writes_total{").count(), 1, "{text}");
    }
}
