//! Semantic checks that the CRD schema cannot express, or that older API servers do not
//! enforce (CEL). Each violation names the field and what is allowed.

mod identity;
mod share;

use std::fmt;

pub use identity::check_identity;
pub use share::check_share;

/// One broken rule: the field path and a message saying what is allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub field: String,
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// All violations, joined into one condition message.
pub fn describe(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

#[derive(Default)]
struct Checker(Vec<Violation>);

impl Checker {
    fn fail(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Violation {
            field: field.into(),
            message: message.into(),
        });
    }

    fn finish(self) -> Result<(), Vec<Violation>> {
        if self.0.is_empty() { Ok(()) } else { Err(self.0) }
    }
}

/// A positive duration such as `5m`, `1h30m` or `90s`.
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let duration: jiff::SignedDuration = text.parse().ok()?;
    if duration.is_positive() {
        duration.try_into().ok()
    } else {
        None
    }
}

fn is_dns_name(name: &str) -> bool {
    let labels: Vec<&str> = name.split('.').collect();
    name.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("5m"), Some(std::time::Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Some(std::time::Duration::from_secs(5400)));
        assert_eq!(parse_duration("-5m"), None);
        assert_eq!(parse_duration("soon"), None);
    }

    #[test]
    fn dns_names() {
        assert!(is_dns_name("fs01.corp.example.com"));
        assert!(!is_dns_name("fs01"));
        assert!(!is_dns_name("-a.example.com"));
    }
}
