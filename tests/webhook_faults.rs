//! Fault tests of the admission webhook, served in-process with its real handler and identity
//! cache on a real control plane: ten thousand hostile requests, and ten certificate rotations
//! under load. Figures are printed (`--nocapture`); speed is the benchmarks' business, so no
//! assertion here is about it (a request unanswered after a few seconds is a hang, not slowness).

use winflow_test_support as support;

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use serde_json::{Value, json};
use support::{Operator, TestEnv};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsConnector;
use winflow::api::WindowsTaskIdentity;

/// A request unanswered by then hangs, and counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The server's body limit (`MAX_BODY` in src/webhook/server.rs).
const MAX_BODY: usize = 4 * 1024 * 1024;
const FUZZ_CASES: usize = 10_000;
const FUZZ_CONNECTIONS: usize = 4;
const FUZZ_DEADLINE: Duration = Duration::from_secs(90);
/// Good requests interleaved with the fuzz, and before and after it.
const PROBE_INTERVAL: Duration = Duration::from_millis(10);
/// 8 connections with a request every 40 ms each: 200 requests per second.
const LOAD_CONNECTIONS: usize = 8;
const LOAD_INTERVAL: Duration = Duration::from_millis(40);
const ROTATIONS: usize = 10;

/// A namespace whose payroll identity is Ready, and the operator that keeps it so.
async fn ready_identity(test: &str) -> (TestEnv, Operator) {
    let env = TestEnv::new(test).await;
    let operator = env.start_operator(Duration::from_secs(300));
    support::apply_file(&env, "examples/identity-azure-key-vault.yaml").await;
    let _: WindowsTaskIdentity = support::wait_for_condition(&env, "payroll-export", "Ready", "True", None).await;
    (env, operator)
}

/// A CA that issues serving certificates for 127.0.0.1, as cert-manager does on every renewal.
struct Ca(CertifiedIssuer<'static, KeyPair>);

struct Pair {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

impl Ca {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "winflow fault test CA");
        Self(CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap())
    }

    fn issue(&self) -> Pair {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec![Ipv4Addr::LOCALHOST.to_string()]).unwrap();
        let cert = params.signed_by(&key, &self.0).unwrap();
        let (cert_pem, key_pem, der) = (cert.pem(), key.serialize_pem(), cert.der().to_vec());
        Pair { cert_pem, key_pem, der }
    }

    /// Full handshakes only (no resumption), so that every new connection shows the served certificate.
    fn connector(&self) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        roots.add(self.0.der().clone()).unwrap();
        let mut config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.resumption = Resumption::disabled();
        TlsConnector::from(Arc::new(config))
    }
}

/// Publishes a pair the way the kubelet updates a Secret volume: the files in a new directory,
/// then one rename of the `..data` symlink, so both change at once; the old directory goes.
fn publish(dir: &Path, generation: usize, pair: &Pair) {
    let version = format!("..generation-{generation}");
    std::fs::create_dir(dir.join(&version)).unwrap();
    std::fs::write(dir.join(&version).join("tls.crt"), &pair.cert_pem).unwrap();
    std::fs::write(dir.join(&version).join("tls.key"), &pair.key_pem).unwrap();
    std::os::unix::fs::symlink(&version, dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    for name in ["tls.crt", "tls.key"] {
        if dir.join(name).symlink_metadata().is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(name), dir.join(name)).unwrap();
        }
    }
    if generation > 0 {
        std::fs::remove_dir_all(dir.join(format!("..generation-{}", generation - 1))).unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// A small HTTP/1.1 keep-alive client

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

struct Connection {
    reader: BufReader<ReadHalf<Tls>>,
    writer: WriteHalf<Tls>,
    certificate: Vec<u8>,
    /// False once the server said it closes, or an exchange failed.
    reusable: bool,
}

#[derive(Debug)]
struct Reply {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

impl Connection {
    async fn open(addr: SocketAddr, connector: &TlsConnector) -> io::Result<Self> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let localhost = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into());
        let tls = connector.connect(localhost, tcp).await?;
        let certificate = tls.get_ref().1.peer_certificates().expect("a server certificate")[0].to_vec();
        let (reader, writer) = tokio::io::split(tls);
        let reader = BufReader::new(reader);
        Ok(Self {
            reader,
            writer,
            certificate,
            reusable: true,
        })
    }

    /// One exchange within [`REQUEST_TIMEOUT`]. The request is written while the answer is read,
    /// so an answer given before the whole body was read is seen.
    async fn exchange(&mut self, request: &[u8], head_only: bool) -> io::Result<Reply> {
        self.reusable = false;
        let (reader, writer) = (&mut self.reader, &mut self.writer);
        let write = async {
            writer.write_all(request).await?;
            // rustls may hold encrypted bytes until flushed.
            writer.flush().await
        };
        let exchange = async {
            let (written, reply) = tokio::join!(write, read_reply(reader, head_only));
            reply.map(|(reply, keep_alive)| (reply, keep_alive && written.is_ok()))
        };
        let timed_out = |_| io::Error::new(io::ErrorKind::TimedOut, "no answer within the request timeout");
        let (reply, keep_alive) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(timed_out)??;
        self.reusable = keep_alive;
        Ok(reply)
    }
}

/// Reads one response, and whether the connection stays open.
async fn read_reply(reader: &mut BufReader<ReadHalf<Tls>>, head_only: bool) -> io::Result<(Reply, bool)> {
    let mut line = String::new();
    if reader.read_line(&mut line).await? == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed without an answer"));
    }
    let status = line.split(' ').nth(1).and_then(|s| s.parse().ok());
    let status = status.ok_or_else(|| io::Error::other(format!("not a status line: {line:?}")))?;
    let (mut length, mut keep_alive, mut content_type) = (None, true, String::new());
    loop {
        line.clear();
        reader.read_line(&mut line).await?;
        let header = line.trim_end().to_ascii_lowercase();
        match header.split_once(':').map(|(name, value)| (name, value.trim())) {
            None if header.is_empty() => break,
            None => return Err(io::Error::other(format!("not a header: {line:?}"))),
            Some(("content-length", value)) => length = value.parse().ok(),
            Some(("connection", value)) => keep_alive = value != "close",
            Some(("content-type", value)) => content_type = value.to_owned(),
            Some(_) => {}
        }
    }
    let mut body = Vec::new();
    match length {
        _ if head_only => {}
        Some(length) => {
            body.resize(length, 0);
            reader.read_exact(&mut body).await?;
        }
        None => {
            keep_alive = false;
            reader.read_to_end(&mut body).await?;
        }
    }
    let reply = Reply {
        status,
        content_type,
        body,
    };
    Ok((reply, keep_alive))
}

fn http_request(method: &str, path: &str, content_type: Option<&str>, body: &[u8], chunked: bool) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    if let Some(content_type) = content_type {
        head += &format!("Content-Type: {content_type}\r\n");
    }
    if !chunked {
        head += &format!("Content-Length: {}\r\n\r\n", body.len());
        return [head.as_bytes(), body].concat();
    }
    let mut raw = (head + "Transfer-Encoding: chunked\r\n\r\n").into_bytes();
    for chunk in body.chunks(64 * 1024) {
        raw.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        raw.extend_from_slice(chunk);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    raw
}

// ---------------------------------------------------------------------------------------
// Good requests

/// A task pod of the payroll identity, as the API server sends it for review.
fn review(namespace: &str, uid: &str) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "fault-test", "namespace": namespace, "operation": "CREATE",
            // The Airflow scheduler, a creator the example identity lists in spec.access.
            "userInfo": {"username": format!("system:serviceaccount:{namespace}:airflow-scheduler")},
            "object": {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "fault-test", "namespace": namespace, "labels": {
                    "winflow.io/identity": "payroll-export", "dag_id": "payroll_export", "task_id": "upload"}},
                "spec": {"containers": [{"name": "base", "image": "registry.example.com/payroll/export-win:2.0"}]}}}
    })
}

/// Good requests and what became of them, by phase (in the rotation test: certificate generation).
#[derive(Default)]
struct Load {
    sent: usize,
    latencies: Vec<(usize, Duration)>,
    failures: Vec<String>,
    /// Each new connection: the worker, the phase it was opened in, the certificate served.
    handshakes: Vec<(usize, usize, Vec<u8>)>,
}

impl Load {
    fn latencies(&self, phase: impl Fn(usize) -> bool) -> String {
        let mut latencies: Vec<_> = self
            .latencies
            .iter()
            .filter(|(p, _)| phase(*p))
            .map(|(_, d)| *d)
            .collect();
        latencies.sort();
        let at = |q: f64| match latencies.len() {
            0 => f64::NAN,
            n => latencies[((n - 1) as f64 * q).round() as usize].as_secs_f64() * 1000.0,
        };
        format!(
            "n={:>5}  p50 {:>7.2} ms  p99 {:>7.2} ms",
            latencies.len(),
            at(0.5),
            at(0.99)
        )
    }
}

/// One connection of good requests, one every `interval`: the good pod must be admitted with the
/// identity's patch, under its uid. A new connection in every phase and every 25 requests, so
/// that handshakes meet every certificate; phase `usize::MAX` stops it.
async fn good_load(
    worker: usize,
    (addr, connector): (SocketAddr, TlsConnector),
    (namespace, interval): (String, Duration),
    mut phase: watch::Receiver<usize>,
    load: Arc<Mutex<Load>>,
) {
    let mut next = tokio::time::Instant::now() + interval.mul_f64(worker as f64 / LOAD_CONNECTIONS as f64);
    let mut connection: Option<Connection> = None;
    for n in 0.. {
        tokio::time::sleep_until(next).await;
        next += interval;
        let fresh = phase.has_changed().unwrap_or(true) || n % 25 == 0;
        let current = *phase.borrow_and_update();
        if current == usize::MAX {
            return;
        }
        let (started, uid) = (Instant::now(), format!("good-{worker}-{n}"));
        let body = serde_json::to_vec(&review(&namespace, &uid)).unwrap();
        let request = http_request("POST", "/mutate-pods", Some("application/json"), &body, false);
        let mut handshake = None;
        let opened = match connection.take().filter(|c| c.reusable && !fresh) {
            Some(c) => Ok(c),
            None => Connection::open(addr, &connector)
                .await
                .inspect(|c| handshake = Some(c.certificate.clone())),
        };
        let reply = match opened {
            Ok(mut c) => {
                let reply = c.exchange(&request, false).await;
                connection = Some(c);
                reply.map_err(|e| format!("{uid}: {e}"))
            }
            Err(e) => Err(format!("{uid}: cannot connect: {e}")),
        };
        let admitted = reply.and_then(|reply| {
            let answer: Value = serde_json::from_slice(&reply.body).unwrap_or_default();
            let response = &answer["response"];
            let patched = response["allowed"] == true && response["patchType"] == "JSONPatch";
            match reply.status == 200 && response["uid"] == uid && patched {
                true => Ok(()),
                false => Err(format!("{uid}: answered {} {answer}", reply.status)),
            }
        });
        let mut load = load.lock().unwrap();
        load.sent += 1;
        if let Some(certificate) = handshake {
            load.handshakes.push((worker, current, certificate));
        }
        match admitted {
            Ok(()) => load.latencies.push((current, started.elapsed())),
            Err(problem) => load.failures.push(format!("phase {current}: {problem}")),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Hostile requests

/// What a generated request gets wrong; an index picks a field of the review.
#[derive(Clone, Debug)]
enum Fault {
    Truncated(Index),
    RandomBytes(Vec<u8>),
    ByteFlips(Vec<(Index, u8)>),
    /// A field (a string field only, when so marked) set to a value, or removed; named by family.
    Field(&'static str, bool, Index, Option<Value>),
    /// A field the server checks before any decision, set to a value it must refuse or review.
    Envelope(&'static str, Value),
    InvalidString(&'static [u8]),
    /// Depth, and whether objects (or arrays), the whole body (or a label value), closed.
    Nested(usize, [bool; 3]),
    /// The review padded to a size, sent with its length or chunked.
    Sized(usize, bool),
    /// Method, path and content type.
    Http(&'static str, String, Option<String>),
}

// Lists of choices, separated by `|`.
/// JSON strings no valid document holds: lone surrogates, raw control bytes, bad UTF-8, bad escapes.
const RAW_STRINGS: &[u8] =
    b"\"\\ud800\"|\"\\udc00\\ud800\"|\"\xff\xfe\"|\"a\x00b\"|\"\\u0000\"|\"\x1b[2J\"|\"\\x41\"|\"\\|\
    \"\xc0\xaf\"|\"\xed\xa0\x80\"";
const VERSIONS: &str = "admission.k8s.io/v1beta1|admission.k8s.io/V1|v1|";
const KINDS: &str = "admissionreview|Pod|AdmissionResponse|";
const OPERATIONS: &str = "UPDATE|DELETE|CONNECT|create|Create| CREATE|";
/// group/version/resource of what is not a pod, or not one the webhook reviews.
const RESOURCES: &str = "/v1/configmaps|/v1/secrets|apps/v1/deployments|metrics.k8s.io/v1beta1/pods|\
    winflow.io/v1alpha1/windowstaskidentities|/v1/Pods|/v2/pods";
const SUBRESOURCES: &str = "status|exec|ephemeralcontainers|binding|log|";
const CONTENT_TYPES: &str = "text/plain|application/jsonx|application/json-patch+json|application/yaml|*/*|\
    multipart/form-data; boundary=x|APPLICATION/JSON|application/json; charset=utf-16|application/json, text/plain|";
const METHODS: &str = "GET|PUT|DELETE|PATCH|HEAD|OPTIONS|TRACE|BREW";
const PATHS: &str = "/|/mutate-pods/|/MUTATE-PODS|/mutate-pods?dryRun=true|\
    /validate-pods/../mutate-pods|/%2e%2e/mutate-pods|/mutate-pods%00|//mutate-pods|*|/healthz|/metrics";
/// Near-misses of the identity's name, NUL, bidirectional and zero-width characters.
const NEAR_MISSES: &str = "\0|payroll-export\0|payroll-export\u{200b}|PAYROLL-EXPORT|../payroll-export|\
    \u{202e}tropxe-llorayp|\u{feff}payroll-export|\u{10ffff}|payroll-export\r\nX: y|";

fn choose(choices: &'static str) -> impl Strategy<Value = &'static str> {
    select(choices.split('|').collect::<Vec<_>>())
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "\\PC{0,16}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        let object = proptest::collection::btree_map("[a-z]{1,8}", inner.clone(), 0..4);
        prop_oneof![
            proptest::collection::vec(inner, 0..4).prop_map(Value::Array),
            object.prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// A field the server checks before any decision, and a value it must refuse or review all the same.
fn envelope() -> impl Strategy<Value = (&'static str, Value)> {
    let operation = prop_oneof![choose(OPERATIONS).prop_map(str::to_owned), "\\PC{0,10}"];
    let resource = |gvr: &str| {
        let [group, version, resource] = gvr.split('/').collect::<Vec<_>>().try_into().unwrap();
        json!({"group": group, "version": version, "resource": resource})
    };
    prop_oneof![
        choose(VERSIONS).prop_map(|version| ("/apiVersion", json!(version))),
        choose(KINDS).prop_map(|kind| ("/kind", json!(kind))),
        operation.prop_map(|operation| ("/request/operation", json!(operation))),
        choose(RESOURCES).prop_map(move |gvr| ("/request/resource", resource(gvr))),
        choose(SUBRESOURCES).prop_map(|sub| ("/request/subResource", json!(sub))),
    ]
}

fn faults() -> impl Strategy<Value = Fault> {
    let index = any::<Index>;
    let hostile = prop_oneof![
        any::<String>(),
        "[\\x00-\\x1f]{1,8}",
        choose(NEAR_MISSES).prop_map(str::to_owned)
    ];
    let depth = prop_oneof![1..200usize, 200..100_000usize, Just(100_000usize)];
    let size = prop_oneof![Just(MAX_BODY - 1), Just(MAX_BODY), MAX_BODY + 1..MAX_BODY + 65_536];
    // Many of these use the right method and path, so that they meet the content type check.
    let endpoint = choose("/mutate-pods|/validate-pods").prop_map(str::to_owned);
    let path = prop_oneof![2 => endpoint, 1 => choose(PATHS).prop_map(str::to_owned), 1 => "/[a-z0-9._~%/?=&-]{0,60}"];
    let method = prop_oneof![3 => Just("POST"), 1 => choose(METHODS)];
    let content_type = prop_oneof![choose(CONTENT_TYPES).prop_map(str::to_owned), "[ -~]{0,30}"];
    let http = (method, path, proptest::option::of(content_type));
    let huge = || Some(json!("x".repeat(1 << 20)));
    // Weights per thousand requests.
    prop_oneof![
        120 => index().prop_map(Fault::Truncated),
        80 => proptest::collection::vec(any::<u8>(), 0..4096).prop_map(Fault::RandomBytes),
        150 => proptest::collection::vec((index(), 1..=255u8), 1..8).prop_map(Fault::ByteFlips),
        150 => (index(), any_json()).prop_map(|(i, value)| Fault::Field("wrong type", false, i, Some(value))),
        80 => index().prop_map(|i| Fault::Field("missing field", false, i, None)),
        100 => (index(), hostile).prop_map(|(i, s)| Fault::Field("unicode and NUL", true, i, Some(json!(s)))),
        10 => index().prop_map(move |i| Fault::Field("1 MiB string", true, i, huge())),
        40 => select(RAW_STRINGS.split(|b| *b == b'|').collect::<Vec<_>>()).prop_map(Fault::InvalidString),
        30 => (depth, any::<[bool; 3]>()).prop_map(|(depth, how)| Fault::Nested(depth, how)),
        140 => envelope().prop_map(|(field, value)| Fault::Envelope(field, value)),
        5 => (size, any::<bool>()).prop_map(|(size, chunked)| Fault::Sized(size, chunked)),
        95 => http.prop_map(|(method, path, content_type)| Fault::Http(method, path, content_type)),
    ]
}

/// JSON pointers to the fields under `value`, with whether each holds a string.
fn fields(value: &Value, at: &str, out: &mut Vec<(String, bool)>) {
    let children: Vec<(String, &Value)> = match value {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| (k.replace('~', "~0").replace('/', "~1"), v))
            .collect(),
        Value::Array(items) => items.iter().enumerate().map(|(i, v)| (i.to_string(), v)).collect(),
        _ => Vec::new(),
    };
    for (key, child) in children {
        let pointer = format!("{at}/{key}");
        out.push((pointer.clone(), child.is_string()));
        fields(child, &pointer, out);
    }
}

/// Sets (or, with `None`, removes) the field at a JSON pointer.
fn set(mut review: Value, pointer: &str, value: Option<Value>) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let key = key.replace("~1", "/").replace("~0", "~");
    match (review.pointer_mut(parent).unwrap(), value) {
        (Value::Object(map), Some(value)) => drop(map.insert(key, value)),
        (Value::Object(map), None) => drop(map.remove(&key)),
        (Value::Array(items), Some(value)) => items[key.parse::<usize>().unwrap()] = value,
        (Value::Array(items), None) => drop(items.remove(key.parse::<usize>().unwrap())),
        (other, _) => panic!("{parent} is {other}"),
    }
    review
}

fn replace_all(haystack: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let (mut out, mut rest) = (Vec::new(), haystack);
    while let Some(at) = rest.windows(needle.len()).position(|w| w == needle) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(with);
        rest = &rest[at + needle.len()..];
    }
    [out.as_slice(), rest].concat()
}

/// A generated request: its family, its bytes, and the uid of its review if it has a string one.
struct Case {
    family: &'static str,
    request: Vec<u8>,
    uid: Option<String>,
    head: bool,
}

/// The good review, sent to `path`, spoiled by `fault`.
fn spoil(fault: Fault, review: Value, path: &'static str) -> Case {
    let json = |review: &Value| serde_json::to_vec(review).unwrap();
    let (mut method, mut path, mut content_type) = ("POST", path.to_owned(), Some("application/json".to_owned()));
    let mut chunked = false;
    let (family, body) = match fault {
        Fault::Truncated(cut) => {
            let body = json(&review);
            ("truncated JSON", body[..cut.index(body.len())].to_vec())
        }
        Fault::RandomBytes(bytes) => ("random bytes", bytes),
        Fault::ByteFlips(flips) => {
            let mut body = json(&review);
            for (at, mask) in flips {
                let at = at.index(body.len());
                body[at] ^= mask;
            }
            ("byte flips", body)
        }
        Fault::Field(family, strings_only, i, value) => {
            let mut all = Vec::new();
            fields(&review, "", &mut all);
            all.retain(|(_, is_string)| *is_string || !strings_only);
            let pointer = all[i.index(all.len())].0.clone();
            (family, json(&set(review, &pointer, value)))
        }
        Fault::Envelope(field, value) => (field, json(&set(review, field, Some(value)))),
        Fault::InvalidString(raw) => (
            "invalid string bytes",
            replace_all(&json(&review), b"\"fault-test\"", raw),
        ),
        Fault::Nested(depth, [objects, whole, closed]) => {
            let (open, close) = if objects { ("{\"a\":", "}") } else { ("[", "]") };
            let nested = format!(
                "{}0{}",
                open.repeat(depth),
                close.repeat(if closed { depth } else { 0 })
            );
            let body = match whole {
                true => nested.into_bytes(),
                false => replace_all(&json(&review), b"\"payroll_export\"", nested.as_bytes()),
            };
            ("deep nesting", body)
        }
        Fault::Sized(size, chunk) => {
            // A `padding` label brings the review to the size.
            let label = "/request/object/metadata/labels/padding";
            let length = json(&set(review.clone(), label, Some(json!("")))).len();
            let body = json(&set(review, label, Some(json!("x".repeat(size - length)))));
            chunked = chunk;
            let family = if size > MAX_BODY {
                "oversized body"
            } else {
                "body at the limit"
            };
            (family, body)
        }
        Fault::Http(m, p, c) => {
            (method, path, content_type) = (m, p, c);
            ("method, path, content type", json(&review))
        }
    };
    let uid = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| Some(v.pointer("/request/uid")?.as_str()?.to_owned()));
    let request = http_request(method, &path, content_type.as_deref(), &body, chunked);
    Case {
        family,
        request,
        uid,
        head: method == "HEAD",
    }
}

/// A 4xx, or a well-formed AdmissionReview answering the request's uid; returns the answer's class.
fn judge(case: &Case, reply: &Reply) -> Result<String, String> {
    if (400..500).contains(&reply.status) {
        return Ok(reply.status.to_string());
    }
    let answer: Value = serde_json::from_slice(&reply.body).unwrap_or_default();
    let response = &answer["response"];
    let well_formed = reply.status == 200
        && reply.content_type == "application/json"
        && answer["apiVersion"] == "admission.k8s.io/v1"
        && answer["kind"] == "AdmissionReview"
        && response["allowed"].is_boolean()
        && response["uid"].is_string()
        && case.uid.as_ref().is_none_or(|uid| response["uid"] == **uid);
    match (well_formed, response["allowed"] == true) {
        (true, true) => Ok("200 allowed".to_owned()),
        (true, false) => Ok("200 denied".to_owned()),
        (false, _) => Err(format!("{} {}", reply.status, String::from_utf8_lossy(&reply.body))),
    }
}

type Tally = BTreeMap<(&'static str, String), usize>;

/// Sends queued cases on one keep-alive connection (a new one once the server closed it).
async fn fuzz_worker(
    (addr, connector): (SocketAddr, TlsConnector),
    queue: Arc<tokio::sync::Mutex<mpsc::Receiver<(usize, Case)>>>,
) -> (Tally, Vec<String>) {
    let (mut tally, mut failures, mut connection) = (Tally::new(), Vec::new(), None::<Connection>);
    // The previous answer on the connection, for failures that only show on the next request.
    let mut previous = String::new();
    while let Some((index, case)) = queue.lock().await.recv().await {
        let mut c = match connection.take().filter(|c| c.reusable) {
            Some(c) => c,
            None => {
                previous = "none (new connection)".to_owned();
                Connection::open(addr, &connector)
                    .await
                    .expect("the webhook accepts connections")
            }
        };
        let reply = c.exchange(&case.request, case.head).await.map_err(|e| e.to_string());
        connection = Some(c);
        let class = reply.and_then(|reply| judge(&case, &reply)).unwrap_or_else(|problem| {
            let sent = String::from_utf8_lossy(&case.request[..case.request.len().min(300)]).into_owned();
            let family = case.family;
            failures.push(format!(
                "case {index} ({family}): {problem:.300}; previous answer {previous}; sent {sent:?}"
            ));
            "FAILED".to_owned()
        });
        previous = format!("{class} ({})", case.family);
        *tally.entry((case.family, class)).or_default() += 1;
    }
    (tally, failures)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_hostile_reviews_get_a_4xx_or_a_well_formed_answer() {
    let (env, operator) = ready_identity("webhook-fuzz").await;
    let (certs, ca) = (tempfile::tempdir().unwrap(), Ca::new());
    publish(certs.path(), 0, &ca.issue());
    let served = support::webhook::serve(&env, certs.path(), Duration::from_secs(5), "faults").await;
    let server = (served.addr, ca.connector());
    // Good requests on a connection of their own: before (phase 0), during (1) and after (2) the fuzz.
    let (phase, phases) = watch::channel(0);
    let good = Arc::new(Mutex::new(Load::default()));
    let probe = (env.namespace.clone(), PROBE_INTERVAL);
    let good_task = tokio::spawn(good_load(0, server.clone(), probe, phases, good.clone()));
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Generated from a fixed seed on a thread of their own, sent on several connections at once.
    let (queue, cases) = mpsc::channel(64);
    let namespace = env.namespace.clone();
    let generator = std::thread::spawn(move || {
        let strategy = ("[0-9a-f]{8}-[0-9a-f]{4}", any::<bool>(), faults());
        let mut runner = TestRunner::deterministic();
        for index in 0..FUZZ_CASES {
            let (uid, validate, fault) = strategy.new_tree(&mut runner).unwrap().current();
            let path = if validate { "/validate-pods" } else { "/mutate-pods" };
            queue
                .blocking_send((index, spoil(fault, review(&namespace, &uid), path)))
                .unwrap();
        }
    });
    phase.send(1).unwrap();
    let (started, cases) = (Instant::now(), Arc::new(tokio::sync::Mutex::new(cases)));
    let workers: Vec<_> = (0..FUZZ_CONNECTIONS)
        .map(|_| tokio::spawn(fuzz_worker(server.clone(), cases.clone())))
        .collect();
    let (mut tally, mut failures) = (Tally::new(), Vec::new());
    let all_answered = async {
        for worker in workers {
            let (t, f) = worker.await.unwrap();
            t.into_iter().for_each(|(key, n)| *tally.entry(key).or_default() += n);
            failures.extend(f);
        }
    };
    // Bounds the test should the server hang on many requests (each then waits out its timeout).
    tokio::time::timeout(FUZZ_DEADLINE, all_answered)
        .await
        .expect("the fuzz finished in time");
    let fuzz_time = started.elapsed();
    generator.join().unwrap();
    phase.send(2).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    phase.send(usize::MAX).unwrap();
    good_task.await.unwrap();
    let good = Arc::into_inner(good).unwrap().into_inner().unwrap();

    let seconds = fuzz_time.as_secs_f64();
    println!("\n{FUZZ_CASES} hostile requests in {seconds:.1} s on {FUZZ_CONNECTIONS} connections; answers by family:");
    let (mut families, mut classes) = (BTreeMap::<_, Vec<_>>::new(), BTreeMap::<_, usize>::new());
    for ((family, class), n) in &tally {
        families.entry(family).or_default().push(format!("{class}: {n}"));
        *classes.entry(class).or_default() += n;
    }
    families
        .iter()
        .for_each(|(family, answers)| println!("  {family:<28} {}", answers.join(", ")));
    println!("  {:<28} {classes:?}", "all");
    let events = support::metric_sum(&served.metrics, "winflow_api_writes_total{kind=\"Event\"");
    let denied: usize = tally
        .iter()
        .filter(|((_, class), _)| class == "200 denied")
        .map(|(_, n)| n)
        .sum();
    let denied = denied as u64;
    println!("denial Events the webhook wrote meanwhile: {events} for {denied} denials");
    // One Event per identity and rule per window, not one per denial.
    assert!(events * 5 < denied.max(1), "{events} Events for {denied} denials");
    for (name, p) in [("before", 0), ("during", 1), ("after", 2)] {
        println!("good requests {name} the fuzz: {}", good.latencies(|phase| phase == p));
    }

    assert_eq!(tally.values().sum::<usize>(), FUZZ_CASES, "every case was sent");
    let first = &failures[..failures.len().min(10)];
    assert!(
        failures.is_empty(),
        "{} requests failed; the first: {first:#?}",
        failures.len()
    );
    for (family, class) in tally.keys() {
        match *family {
            "oversized body" => assert_eq!(class, "413", "a body over the limit is refused as too large"),
            "body at the limit" => assert!(class.starts_with("200"), "a body within the limit is reviewed"),
            _ => {}
        }
    }
    assert!(good.failures.is_empty(), "good requests failed: {:#?}", good.failures);
    let phases_seen: BTreeSet<_> = good.latencies.iter().map(|(phase, _)| *phase).collect();
    assert_eq!(
        phases_seen,
        [0, 1, 2].into(),
        "good requests were answered before, during and after"
    );
    assert!(!served.task.is_finished(), "the webhook server still runs");
    operator.stop().await;
}

// ---------------------------------------------------------------------------------------
// Certificate rotation under load

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_certificate_rotations_under_200_requests_per_second_fail_no_request() {
    let (env, operator) = ready_identity("webhook-rotation").await;
    let (certs, ca) = (tempfile::tempdir().unwrap(), Ca::new());
    let mut generations = vec![ca.issue()];
    publish(certs.path(), 0, &generations[0]);
    let served = support::webhook::serve(&env, certs.path(), Duration::from_millis(200), "faults").await;
    let connector = ca.connector();

    let (rotate, generation) = watch::channel(0usize);
    let load = Arc::new(Mutex::new(Load::default()));
    let workers: Vec<_> = (0..LOAD_CONNECTIONS)
        .map(|w| {
            let (server, traffic) = ((served.addr, connector.clone()), (env.namespace.clone(), LOAD_INTERVAL));
            tokio::spawn(good_load(w, server, traffic, generation.clone(), load.clone()))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut time_to_serve = Vec::new();
    for next in 1..=ROTATIONS {
        let (pair, published) = (ca.issue(), Instant::now());
        publish(certs.path(), next, &pair);
        support::wait_until(
            &format!("certificate {next} served"),
            Duration::from_secs(10),
            || async {
                let probe = Connection::open(served.addr, &connector).await.ok()?;
                (probe.certificate == pair.der).then_some(())
            },
        )
        .await;
        time_to_serve.push(published.elapsed());
        generations.push(pair);
        rotate.send(next).unwrap();
        // Every load connection reconnects and meets the new certificate; the load runs on a while.
        support::wait_until(
            &format!("load reconnected after rotation {next}"),
            Duration::from_secs(10),
            || async {
                let load = load.lock().unwrap();
                let workers: BTreeSet<_> = load
                    .handshakes
                    .iter()
                    .filter(|(_, g, _)| *g == next)
                    .map(|(w, ..)| w)
                    .collect();
                (workers.len() == LOAD_CONNECTIONS).then_some(())
            },
        )
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    rotate.send(usize::MAX).unwrap();
    for worker in workers {
        worker.await.unwrap();
    }

    let load = Arc::into_inner(load).unwrap().into_inner().unwrap();
    let generation_of = |der: &[u8]| generations.iter().position(|pair| pair.der == der);
    // A connection opened once generation g was announced (so served) must be served g or newer.
    let handshakes = load
        .handshakes
        .iter()
        .map(|(_, opened_in, der)| (*opened_in, generation_of(der)));
    let stale: Vec<_> = handshakes
        .filter(|(opened_in, served)| served.is_none_or(|g| g < *opened_in))
        .collect();
    let met: BTreeSet<_> = load
        .handshakes
        .iter()
        .filter_map(|(_, _, der)| generation_of(der))
        .collect();
    let (sent, failed, connections) = (load.sent, load.failures.len(), load.handshakes.len());
    let (fastest, slowest) = (time_to_serve.iter().min().unwrap(), time_to_serve.iter().max().unwrap());
    println!("\ncertificate rotation under load ({LOAD_CONNECTIONS} connections, 200 requests/s)");
    println!(
        "requests sent {sent}, failed {failed}, rotations observed {}/{ROTATIONS}",
        time_to_serve.len()
    );
    println!(
        "new TLS connections {connections}, certificates they were served {}",
        met.len()
    );
    println!("a new certificate was served after {fastest:?} to {slowest:?}");
    println!("latency before rotations: {}", load.latencies(|g| g == 0));
    println!("latency during rotations: {}", load.latencies(|g| g > 0));

    assert!(load.failures.is_empty(), "failed requests: {:#?}", load.failures);
    assert_eq!(stale, [], "connections served an older certificate (opened in, served)");
    assert_eq!(met.len(), ROTATIONS + 1, "load connections met every certificate");
    assert!(!served.task.is_finished(), "the webhook server still runs");
    operator.stop().await;
}
