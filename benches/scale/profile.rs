//! The API server's own CPU profile while identities converge (`WINFLOW_BENCH_PROFILE_SECONDS`):
//! saved for `go tool pprof`, and summed up by the code paths the API server spent it in, so
//! the convergence figure comes with where its time went.

use std::path::Path;
use std::process::Command;

use futures::AsyncReadExt;

/// Code paths of kube-apiserver, each named by the function its time is counted under.
/// Shares are cumulative (a path includes what it calls), so they overlap.
const PATHS: &[(&str, &str)] = &[
    (
        "updates, patches and applies (storage)",
        "etcd3.(*store).GuaranteedUpdate",
    ),
    ("custom-resource status writes", "customresource.(*StatusREST).Update"),
    ("server-side apply merges", "fieldmanager.(*FieldManager).Apply"),
    (
        "managed-fields bookkeeping of other writes",
        "fieldmanager.(*FieldManager).UpdateNoErrors",
    ),
    (
        "custom-resource schema validation",
        "validate.(*SchemaValidator).Validate",
    ),
    ("creates (storage)", "etcd3.(*store).Create"),
    ("GETs", "handlers.GetResource.func1"),
    (
        "decoding etcd events for the watch caches",
        "etcd3.(*watchChan).processEvent",
    ),
    ("sending watch events", "handlers.serveWatch"),
    ("admission plugins", "admission.chainAdmissionHandler.Admit"),
    ("audit log", "filters.processAuditEvent"),
    ("TLS writes", "crypto/tls.(*Conn).Write"),
    ("Go garbage collection (marking)", "runtime.gcDrain"),
];

/// A CPU profile of the API server over `seconds` (its /debug/pprof, served by default).
pub async fn take(client: kube::Client, seconds: u64) -> Result<Vec<u8>, String> {
    let request = http::Request::get(format!("/debug/pprof/profile?seconds={seconds}"))
        .body(Vec::new())
        .expect("a valid request");
    let mut body = client.request_stream(request).await.map_err(|e| e.to_string())?;
    let mut profile = Vec::new();
    body.read_to_end(&mut profile).await.map_err(|e| e.to_string())?;
    Ok(profile)
}

/// The share of the profiled CPU time (%) each path took, read from `go tool pprof`; `None`
/// when Go is not installed or cannot read the profile.
pub fn shares(profile: &Path) -> Option<Vec<(&'static str, f64)>> {
    let output = Command::new("go")
        .args(["tool", "pprof", "-top", "-cum", "-nodecount=100000"])
        .arg(profile)
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| shares_in(&String::from_utf8_lossy(&output.stdout)))
}

/// Rows of `pprof -top -cum` are `flat flat% sum% cum cum% function`.
fn shares_in(top: &str) -> Vec<(&'static str, f64)> {
    PATHS
        .iter()
        .map(|(what, function)| {
            let share = top
                .lines()
                .filter_map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let name = fields.get(5)?;
                    let cum = fields.get(4)?.strip_suffix('%')?.parse::<f64>().ok()?;
                    name.ends_with(function).then_some(cum)
                })
                .fold(0.0, f64::max);
            (*what, share)
        })
        .collect()
}
