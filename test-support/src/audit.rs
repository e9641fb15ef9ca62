//! The API server's audit log of write requests: who wrote what, and when; and whether it
//! agrees with winflow's own count of its writes.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use serde_json::Value;
use winflow::metrics::Metrics;

/// One write request as the API server recorded it.
#[derive(Clone, Debug)]
pub struct AuditedWrite {
    /// The user the request acted as: the impersonated user when there was one.
    pub user: String,
    /// The client's User-Agent (each counted test client has one of its own).
    pub user_agent: String,
    pub verb: String,
    pub resource: String,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub code: u16,
    pub received: Timestamp,
    pub completed: Timestamp,
}

/// Every write in the audit log at `path` (one JSON event per line).
pub fn writes(path: &Path) -> Vec<AuditedWrite> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter_map(|event| parse(&event))
        .collect()
}

fn parse(event: &Value) -> Option<AuditedWrite> {
    let text = |v: &Value| v.as_str().map(str::to_owned);
    let user = text(&event["impersonatedUser"]["username"]).or_else(|| text(&event["user"]["username"]))?;
    let object = &event["objectRef"];
    Some(AuditedWrite {
        user,
        user_agent: text(&event["userAgent"]).unwrap_or_default(),
        verb: text(&event["verb"])?,
        resource: text(&object["resource"]).unwrap_or_default(),
        subresource: text(&object["subresource"]),
        namespace: text(&object["namespace"]),
        name: text(&object["name"]),
        code: event["responseStatus"]["code"].as_u64().unwrap_or(0) as u16,
        received: event["requestReceivedTimestamp"].as_str()?.parse().ok()?,
        completed: event["stageTimestamp"].as_str()?.parse().ok()?,
    })
}

/// Write requests by the audit log's verb: `create`, `update`, `patch`, `delete`.
pub type ByVerb = BTreeMap<String, u64>;

pub fn by_verb<'a>(writes: impl IntoIterator<Item = &'a AuditedWrite>) -> ByVerb {
    let mut counts = ByVerb::new();
    for write in writes {
        *counts.entry(write.verb.clone()).or_default() += 1;
    }
    counts
}

/// winflow's own count (`winflow_api_writes_total` in the metrics text `metrics`) in the
/// audit log's verbs: a server-side apply and every other patch are `patch`, a replace is
/// `update`, a status write counts as the verb it was sent with.
pub fn counted_by_verb(metrics: &str) -> ByVerb {
    let mut counts = ByVerb::new();
    for line in metrics.lines() {
        let Some(labels) = line.strip_prefix("winflow_api_writes_total{") else {
            continue;
        };
        let verb = labels
            .split("verb=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("every write is counted with its verb");
        let audit_verb = match verb.trim_end_matches("-status") {
            "replace" => "update",
            "apply" => "patch",
            other => other,
        };
        let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        *counts.entry(audit_verb.to_owned()).or_default() += value as u64;
    }
    counts.retain(|_, n| *n > 0);
    counts
}

/// How long the audit log may lag behind the answers the client got.
const AUDIT_LAG: Duration = Duration::from_secs(15);

/// The API server's record of one client's writes, and winflow's count as it stood when the
/// two agreed.
#[derive(Debug)]
pub struct Agreed {
    pub writes: Vec<AuditedWrite>,
    /// The metrics text (`Metrics::encode`) at that moment.
    pub metrics: String,
}

impl Agreed {
    /// How many of the recorded writes are `verb` on `resource` (`secrets`,
    /// `windowstaskidentities/status`).
    pub fn count(&self, verb: &str, resource: &str) -> u64 {
        let (resource, subresource) = match resource.split_once('/') {
            Some((resource, subresource)) => (resource, Some(subresource)),
            None => (resource, None),
        };
        self.writes
            .iter()
            .filter(|w| w.verb == verb && w.resource == resource && w.subresource.as_deref() == subresource)
            .count() as u64
    }

    /// The sum of winflow's samples whose line starts with `prefix`, at that moment.
    pub fn counted(&self, prefix: &str) -> u64 {
        super::process::sum_samples(&self.metrics, prefix)
    }
}

/// The writes the API server recorded from the client whose User-Agent is `user_agent`, once
/// they agree, verb by verb, with winflow's count in `metrics` (the log is written just after
/// each answer, so it may lag a moment); panics with both counts when they still differ after
/// `AUDIT_LAG`.
pub async fn agreeing(path: &Path, metrics: &Metrics, user_agent: &str) -> Agreed {
    let started = Instant::now();
    loop {
        let text = metrics.encode();
        let writes: Vec<AuditedWrite> = writes(path)
            .into_iter()
            .filter(|w| w.user_agent == user_agent)
            .collect();
        let (audited, counted) = (by_verb(&writes), counted_by_verb(&text));
        if audited == counted {
            return Agreed { writes, metrics: text };
        }
        assert!(
            started.elapsed() < AUDIT_LAG,
            "the API server recorded other writes of {user_agent} than winflow counted: audit log {audited:?}, winflow_api_writes_total {counted:?}\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
