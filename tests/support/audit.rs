//! The API server's audit log of write requests: who wrote what, and when.

use std::path::Path;

use jiff::Timestamp;
use serde_json::Value;

/// One write request as the API server recorded it.
#[derive(Clone, Debug)]
pub struct AuditedWrite {
    /// The user the request acted as: the impersonated user when there was one.
    pub user: String,
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
