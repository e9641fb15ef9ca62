//! What the bench measures: CPU time by process, the operator's memory and metrics (writes,
//! reconciles), and the API server's own request counts.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::process::{OperatorProcess, sum_samples};

/// The operator counts as settled once its write and reconcile counters stood still this long.
pub const QUIET: Duration = Duration::from_secs(3);

/// A memory figure of the operator from /proc/<pid>/status (`VmHWM`: peak resident memory;
/// `RssAnon`: its heap and stacks; `RssFile`: pages of the binary and libraries), in MiB.
pub fn status_mib(operator: &OperatorProcess, field: &str) -> f64 {
    operator.status_kib(field) as f64 / 1024.0
}

/// CPU time (clock ticks) of this process and everything it started, by command name, and
/// of the whole machine: who spent the CPU during a measurement, and how much went to
/// processes outside the benchmark (other builds and tests on the machine disturb it).
pub struct CpuSample {
    by_command: BTreeMap<String, u64>,
    machine_busy: u64,
    at: Instant,
}

/// The kernel's clock ticks per second (USER_HZ), 100 on Linux.
pub const TICKS_PER_SECOND: f64 = 100.0;

pub fn cpu_sample() -> CpuSample {
    // pid -> (parent, command, utime + stime)
    let mut processes = BTreeMap::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let command = stat[open + 1..close].to_owned();
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let number = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        // After the command: state, ppid, ... utime is the 12th, stime the 13th.
        processes.insert(pid, (number(1) as u32, command, number(11) + number(12)));
    }
    let me = std::process::id();
    let mut by_command = BTreeMap::new();
    for (pid, (_, command, ticks)) in &processes {
        let mut ancestor = *pid;
        let mine = loop {
            if ancestor == me {
                break true;
            }
            match processes.get(&ancestor) {
                Some((parent, _, _)) if *parent != 0 && *parent != ancestor => ancestor = *parent,
                _ => break false,
            }
        };
        if mine {
            let name = if *pid == me {
                "bench".to_owned()
            } else {
                command.clone()
            };
            *by_command.entry(name).or_default() += ticks;
        }
    }
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let cpu: Vec<u64> = stat
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...: busy is all but idle and iowait.
    let machine_busy = cpu.iter().sum::<u64>() - cpu[3] - cpu.get(4).copied().unwrap_or(0);
    CpuSample {
        by_command,
        machine_busy,
        at: Instant::now(),
    }
}

/// CPU seconds between two samples: `kube-apiserver`, `etcd`, `kube-controller`, `winflow`,
/// `bench`, and `other` (the rest of the machine); `wall` and `api_server_and_etcd` besides.
pub fn cpu_between(before: &CpuSample, after: &CpuSample) -> Value {
    let seconds = |ticks: u64| ticks as f64 / TICKS_PER_SECOND;
    let mut used = serde_json::Map::new();
    let mut mine = 0;
    for (command, ticks) in &after.by_command {
        let ticks = ticks.saturating_sub(before.by_command.get(command).copied().unwrap_or(0));
        mine += ticks;
        if ticks > 0 {
            used.insert(command.clone(), json!(seconds(ticks)));
        }
    }
    let busy = after.machine_busy.saturating_sub(before.machine_busy);
    let component = |name: &str| used.get(name).and_then(Value::as_f64).unwrap_or(0.0);
    let server = component("kube-apiserver") + component("etcd");
    used.insert("other".to_owned(), json!(seconds(busy.saturating_sub(mine))));
    used.insert("api_server_and_etcd".to_owned(), json!(server));
    used.insert(
        "wall".to_owned(),
        json!(after.at.duration_since(before.at).as_secs_f64()),
    );
    Value::Object(used)
}

/// The samples of one metric in Prometheus text: its labels and value.
pub fn samples<'a>(text: &'a str, metric: &str) -> Vec<(BTreeMap<&'a str, &'a str>, f64)> {
    let prefix = format!("{metric}{{");
    text.lines()
        .filter_map(|line| {
            let (labels, value) = line.strip_prefix(&prefix)?.split_once("} ")?;
            let labels = labels
                .split(',')
                .filter_map(|pair| {
                    let (key, value) = pair.split_once('=')?;
                    Some((key, value.trim_matches('"')))
                })
                .collect();
            Some((labels, value.trim().parse().ok()?))
        })
        .collect()
}

/// The API server's `apiserver_request_total` by "VERB resource[/subresource]".
pub async fn api_server_requests(client: &kube::Client) -> BTreeMap<String, u64> {
    let request = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client.request_text(request).await.expect("the API server's /metrics");
    let mut requests = BTreeMap::new();
    for (labels, count) in samples(&text, "apiserver_request_total") {
        let label = |key| labels.get(key).copied().unwrap_or_default();
        let resource = match label("subresource") {
            "" => label("resource").to_owned(),
            subresource => format!("{}/{subresource}", label("resource")),
        };
        *requests.entry(format!("{} {resource}", label("verb"))).or_default() += count as u64;
    }
    requests
}

/// Requests between two snapshots, leaving out watches (long-running, not load per object).
pub fn requests_between(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter(|(key, _)| !key.starts_with("WATCH"))
        .map(|(key, n)| (key.clone(), n - before.get(key).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

pub fn requests_with_verb(requests: &BTreeMap<String, u64>, verbs: &[&str]) -> u64 {
    requests
        .iter()
        .filter(|(key, _)| verbs.iter().any(|v| key.split(' ').next() == Some(v)))
        .map(|(_, n)| n)
        .sum()
}

pub const WRITE_VERBS: [&str; 5] = ["POST", "PUT", "PATCH", "APPLY", "DELETE"];

/// Mean identity reconcile duration, in milliseconds.
pub fn mean_reconcile_ms(metrics: &str) -> f64 {
    let identity = |metric| {
        samples(metrics, metric)
            .into_iter()
            .find(|(labels, _)| labels.get("controller") == Some(&"identity"))
            .map_or(0.0, |(_, value)| value)
    };
    identity("winflow_reconcile_duration_seconds_sum") / identity("winflow_reconcile_duration_seconds_count") * 1000.0
}

/// `winflow_api_writes_total` by (kind, verb).
pub type Writes = BTreeMap<(String, String), u64>;

pub fn writes_of(metrics: &str) -> Writes {
    let mut writes = Writes::new();
    for (labels, count) in samples(metrics, "winflow_api_writes_total") {
        let label = |key| labels.get(key).copied().unwrap_or_default().to_owned();
        *writes.entry((label("kind"), label("verb"))).or_default() += count as u64;
    }
    writes
}

/// `after - before`, leaving out what did not change.
pub fn writes_between(before: &Writes, after: &Writes) -> Writes {
    after
        .iter()
        .map(|(key, n)| (key.clone(), n - before.get(key).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

pub fn is_event(key: &(String, String)) -> bool {
    key.0 == "Event"
}

pub fn total(writes: &Writes, events: bool) -> u64 {
    writes
        .iter()
        .filter(|(key, _)| is_event(key) == events)
        .map(|(_, n)| n)
        .sum()
}

pub fn writes_json(writes: &Writes) -> Value {
    writes
        .iter()
        .map(|((kind, verb), n)| json!({"kind": kind, "verb": verb, "writes": n}))
        .collect()
}

pub async fn metrics_text(operator: &OperatorProcess) -> String {
    for _ in 0..50 {
        if let Some(text) = operator.metrics().await {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the operator's /metrics does not answer");
}

pub async fn writes_now(operator: &OperatorProcess) -> Writes {
    writes_of(&metrics_text(operator).await)
}

pub async fn identity_reconciles(operator: &OperatorProcess) -> u64 {
    sum_samples(
        &metrics_text(operator).await,
        "winflow_reconciles_total{controller=\"identity\"",
    )
}

/// Identity reconciles that ended in an error.
pub async fn reconcile_errors(operator: &OperatorProcess) -> u64 {
    let text = metrics_text(operator).await;
    let failed = samples(&text, "winflow_reconciles_total")
        .into_iter()
        .filter(|(labels, _)| {
            labels.get("controller") == Some(&"identity") && labels.get("result") != Some(&"success")
        });
    failed.map(|(_, n)| n as u64).sum()
}

/// Waits until the operator's writes and reconciles have stood still for `QUIET`; returns
/// how long that took (the quiet time not included).
pub async fn settle(operator: &OperatorProcess, timeout: Duration) -> Duration {
    let started = Instant::now();
    let mut last = (u64::MAX, u64::MAX);
    let mut still_since = Instant::now();
    loop {
        let text = metrics_text(operator).await;
        let now = (
            sum_samples(&text, "winflow_api_writes_total{"),
            sum_samples(&text, "winflow_reconciles_total{"),
        );
        if now != last {
            last = now;
            still_since = Instant::now();
        } else if still_since.elapsed() >= QUIET {
            return still_since.duration_since(started);
        }
        assert!(
            started.elapsed() < timeout,
            "the operator did not settle within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub fn identity_status_writes(writes: &Writes) -> u64 {
    writes
        .get(&("WindowsTaskIdentity".to_owned(), "apply-status".to_owned()))
        .copied()
        .unwrap_or(0)
}
