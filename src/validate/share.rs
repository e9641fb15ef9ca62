//! Rules for `WindowsShare`.

use std::net::IpAddr;

use super::{Checker, Violation};
use crate::api::share::WindowsShareSpec;
use crate::names::{MAX_NAME_LENGTH, persistent_volume_name};

/// Characters Windows forbids in share names.
const SHARE_FORBIDDEN: &str = "\\/[]:|<>+=;,?*\"";

/// Checks a share named `name` in `namespace`.
pub fn check_share(namespace: &str, name: &str, spec: &WindowsShareSpec) -> Result<(), Vec<Violation>> {
    let mut c = Checker::default();
    if persistent_volume_name(namespace, name).len() > MAX_NAME_LENGTH {
        let allowed = MAX_NAME_LENGTH - namespace.len() - 1;
        c.fail(
            "metadata.name",
            format!("is too long for its PersistentVolume: at most {allowed} characters in namespace {namespace:?}"),
        );
    }
    check_server(&mut c, &spec.server);
    let share = &spec.share;
    if share.is_empty()
        || share.chars().count() > 80
        || share.chars().any(|ch| SHARE_FORBIDDEN.contains(ch) || ch.is_control())
    {
        c.fail("spec.share", format!("{share:?} is not an SMB share name (allowed: 1 to 80 characters, none of {SHARE_FORBIDDEN}); put folders below the share in subDir"));
    }
    if let Some(sub_dir) = &spec.sub_dir {
        let segments: Vec<&str> = sub_dir.split('/').collect();
        if sub_dir.contains('\\') || segments.iter().any(|s| s.is_empty() || *s == "." || *s == "..") {
            c.fail("spec.subDir", format!("{sub_dir:?} is not a relative folder path (allowed: folder names separated by '/', no leading or trailing '/', no '.' or '..')"));
        }
    }
    if !is_quantity(&spec.capacity) {
        c.fail(
            "spec.capacity",
            format!("{:?} is not a storage quantity (for example 100Gi)", spec.capacity),
        );
    }
    c.finish()
}

fn check_server(c: &mut Checker, server: &str) {
    if server.starts_with("\\\\") || server.contains('/') || server.contains('\\') {
        c.fail(
            "spec.server",
            format!(
                "{server:?} must be only the server's name or IP address, without slashes; the share goes in spec.share"
            ),
        );
        return;
    }
    if server.parse::<IpAddr>().is_ok() {
        return;
    }
    let lower = server.to_ascii_lowercase();
    let lower = lower.trim_end_matches('.');
    if lower.ends_with(".svc") || lower.contains(".svc.") || lower.ends_with(".cluster.local") {
        c.fail("spec.server", format!("{server:?} is a cluster-internal name, which Windows nodes cannot resolve (the SMB driver mounts from the node); use a name in the node's DNS or an IP address"));
        return;
    }
    let valid_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-')
    };
    if lower.len() > 253 || !lower.split('.').all(valid_label) {
        c.fail(
            "spec.server",
            format!("{server:?} is not a host name or IP address (allowed: letters, digits, '-' and '.')"),
        );
    }
}

/// A Kubernetes quantity as storage sizes are written: digits, an optional fraction and an
/// optional binary or decimal suffix.
fn is_quantity(text: &str) -> bool {
    let number_end = text
        .find(|ch: char| !(ch.is_ascii_digit() || ch == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(number_end);
    let number_ok = !number.is_empty() && number.split('.').count() <= 2 && number.split('.').all(|p| !p.is_empty());
    number_ok && ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "k", "M", "G", "T", "P", "E"].contains(&suffix)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::share::LocalSecretReference;

    fn spec(server: &str, share: &str, sub_dir: Option<&str>) -> WindowsShareSpec {
        WindowsShareSpec {
            server: server.into(),
            share: share.into(),
            sub_dir: sub_dir.map(Into::into),
            credentials_secret_ref: LocalSecretReference { name: "smb".into() },
            capacity: "100Gi".into(),
            read_only: false,
        }
    }

    fn fields(spec: &WindowsShareSpec) -> Vec<String> {
        check_share("airflow", "reports", spec)
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.field)
            .collect()
    }

    #[test]
    fn node_resolvable_servers_are_accepted() {
        for server in ["fs01.corp.example.com", "FS01", "10.20.30.40", "fd00::10"] {
            assert_eq!(
                fields(&spec(server, "reports", Some("finance/2026"))),
                Vec::<String>::new(),
                "{server}"
            );
        }
    }

    #[test]
    fn cluster_internal_names_are_refused_with_the_reason() {
        for server in [
            "smb-server.default.svc.cluster.local",
            "smb.samba.svc",
            "files.cluster.local",
        ] {
            let v = check_share("airflow", "reports", &spec(server, "reports", None)).unwrap_err();
            assert_eq!(v[0].field, "spec.server");
            assert!(v[0].message.contains("cannot resolve"), "{}", v[0].message);
        }
    }

    #[test]
    fn unc_paths_and_bad_share_names_are_refused() {
        assert_eq!(fields(&spec("\\\\fs01\\reports", "reports", None)), ["spec.server"]);
        assert_eq!(fields(&spec("fs01", "reports/finance", None)), ["spec.share"]);
        assert_eq!(fields(&spec("fs01", "rep*", None)), ["spec.share"]);
    }

    #[test]
    fn sub_dirs_must_be_relative() {
        for bad in ["/abs", "a/../b", "a\\b", "a//b", "trailing/"] {
            assert_eq!(fields(&spec("fs01", "reports", Some(bad))), ["spec.subDir"], "{bad}");
        }
    }

    #[test]
    fn quantities() {
        assert!(is_quantity("100Gi"));
        assert!(is_quantity("1.5Ti"));
        assert!(is_quantity("500"));
        assert!(!is_quantity("100GB"));
        assert!(!is_quantity("Gi"));
        assert!(!is_quantity("1..5Gi"));
    }
}
