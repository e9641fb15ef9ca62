//! From what happened to the children to the identity's conditions. Pure.

use crate::api::conditions::*;
use crate::cluster::apply::{ChildReport, ChildState};
use crate::names::{ENFORCE_LABEL, IDENTITY_LABEL};

/// Whether the identity's service account is there to be bound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceAccountState {
    /// winflow created it (or keeps it).
    Managed(ChildState),
    /// It exists and belongs to someone else: bound, never taken over.
    ExistingUnmanaged,
    /// `create: false` and it does not exist.
    Missing,
}

/// Everything the conditions are computed from.
pub struct Observed<'a> {
    pub credential_spec: &'a ChildReport,
    pub role: &'a ChildReport,
    pub role_binding: &'a ChildReport,
    pub use_role: &'a ChildReport,
    pub use_role_binding: &'a ChildReport,
    /// The subjects of the use RoleBinding, as `Kind name` (`ServiceAccount namespace/name`).
    pub creators: &'a [String],
    pub service_account_name: &'a str,
    pub service_account: ServiceAccountState,
    pub pod_templates: &'a ChildReport,
    pub shares: &'a [(String, ShareState)],
    /// `TokenReady`, as the token reconcile reported it.
    pub token: ConditionState,
}

/// A share an identity names, as found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShareState {
    Missing,
    /// Not Ready, with the share's own reason and message.
    NotReady(String),
    Ready,
}

fn child_failure(report: &ChildReport) -> Option<(ConditionReason, String)> {
    match &report.state {
        ChildState::UpToDate | ChildState::Applied => None,
        ChildState::Conflict(message) => Some((ConditionReason::Conflict, message.clone())),
        ChildState::Rejected(message) => Some((ConditionReason::ApiError, message.clone())),
        ChildState::PrerequisiteMissing(message) => Some((ConditionReason::PrerequisiteMissing, message.clone())),
    }
}

fn from_children(type_: &'static str, reports: &[&ChildReport], ok_message: String) -> ConditionState {
    match reports.iter().find_map(|r| child_failure(r)) {
        Some((reason, message)) => ConditionState::new(type_, false, reason, message),
        None => ConditionState::new(type_, true, ConditionReason::Reconciled, ok_message),
    }
}

/// The configuration conditions followed by `Ready`, which summarises them.
pub fn identity_conditions(observed: &Observed<'_>) -> Vec<ConditionState> {
    let credential_spec = from_children(
        CREDENTIAL_SPEC_READY,
        &[observed.credential_spec],
        format!("GMSACredentialSpec {} is up to date", observed.credential_spec.name),
    );
    let access = match &observed.service_account {
        ServiceAccountState::Missing => ConditionState::new(
            ACCESS_GRANTED,
            false,
            ConditionReason::ServiceAccountMissing,
            format!(
                "service account {} does not exist and serviceAccount.create is false; create it or set create: true",
                observed.service_account_name
            ),
        ),
        ServiceAccountState::Managed(state) => {
            let sa = ChildReport {
                kind: "ServiceAccount".into(),
                name: observed.service_account_name.into(),
                state: state.clone(),
            };
            from_children(
                ACCESS_GRANTED,
                &[
                    &sa,
                    observed.role,
                    observed.role_binding,
                    observed.use_role,
                    observed.use_role_binding,
                ],
                access_message(observed, ""),
            )
        }
        ServiceAccountState::ExistingUnmanaged => from_children(
            ACCESS_GRANTED,
            &[
                observed.role,
                observed.role_binding,
                observed.use_role,
                observed.use_role_binding,
            ],
            access_message(
                observed,
                " (an existing service account that winflow uses but does not manage)",
            ),
        ),
    };
    let templates = from_children(
        POD_TEMPLATE_READY,
        &[observed.pod_templates],
        format!(
            "ConfigMap {} holds the Windows and executor pod templates",
            observed.pod_templates.name
        ),
    );
    let shares = shares_condition(observed.shares);
    let mut conditions = vec![credential_spec, access, templates, shares, observed.token.clone()];
    conditions.push(ready_summary(&conditions));
    conditions
}

/// `SharesReady`: true when every named share is Ready; otherwise names each one that is not.
pub fn shares_condition(shares: &[(String, ShareState)]) -> ConditionState {
    if shares.is_empty() {
        return ConditionState::new(
            SHARES_READY,
            true,
            ConditionReason::NotRequested,
            "spec.shares is not set",
        );
    }
    let problems: Vec<String> = shares
        .iter()
        .filter_map(|(name, state)| match state {
            ShareState::Ready => None,
            ShareState::Missing => Some(format!("WindowsShare {name} does not exist")),
            ShareState::NotReady(why) => Some(format!("WindowsShare {name} is not Ready ({why})")),
        })
        .collect();
    if problems.is_empty() {
        let names: Vec<&str> = shares.iter().map(|(name, _)| name.as_str()).collect();
        ConditionState::new(
            SHARES_READY,
            true,
            ConditionReason::Reconciled,
            format!("every share is bound: {}", names.join(", ")),
        )
    } else {
        ConditionState::new(SHARES_READY, false, ConditionReason::ShareNotReady, problems.join("; "))
    }
}

fn access_message(observed: &Observed<'_>, note: &str) -> String {
    let creators = if observed.creators.is_empty() {
        format!(
            "nobody is bound to Role {} by spec.access.creators (bind it to who may create this identity's pods)",
            observed.use_role.name
        )
    } else {
        format!(
            "{} may create this identity's pods through Role and RoleBinding {}",
            observed.creators.join(", "),
            observed.use_role.name
        )
    };
    format!(
        "service account {}{note} may use GMSACredentialSpec {} through Role and RoleBinding {}; {creators}",
        observed.service_account_name, observed.credential_spec.name, observed.role.name
    )
}

/// `Enforced`: whether pods without the identity label are checked in the identity's namespace
/// too. Reported beside the configuration conditions, never inside `Ready`.
pub fn enforced_condition(namespace: &str, enforced: bool) -> ConditionState {
    if enforced {
        ConditionState::new(
            ENFORCED,
            true,
            ConditionReason::NamespaceEnforced,
            format!(
                "namespace {namespace:?} is labelled {ENFORCE_LABEL}=true, so pods without the {IDENTITY_LABEL} label there are checked too: none of them can reach this identity's credentials"
            ),
        )
    } else {
        ConditionState::new(
            ENFORCED,
            false,
            ConditionReason::NamespaceNotEnforced,
            format!(
                "namespace {namespace:?} is not labelled {ENFORCE_LABEL}=true, so pods without the {IDENTITY_LABEL} label there are checked only for its gMSA (its credential spec and accounts, as in every namespace): they could mount this identity's token Secret, its shares' claims or credentials Secrets, or run as its service account; label the namespace to close that"
            ),
        )
    }
}

/// `Enforced=False` although the identity's own namespace is enforced: its creators include
/// service accounts of namespaces that are not (`unenforced`, `None` for the group of every
/// service account), where any pod may run as them unchecked and so act as a creator.
pub fn creator_namespaces_not_enforced(namespace: &str, unenforced: &[Option<String>]) -> ConditionState {
    let places: Vec<String> = unenforced
        .iter()
        .map(|ns| match ns {
            Some(ns) => format!("{ns:?}"),
            None => "every namespace (group system:serviceaccounts)".to_owned(),
        })
        .collect();
    ConditionState::new(
        ENFORCED,
        false,
        ConditionReason::CreatorNamespaceNotEnforced,
        format!(
            "namespace {namespace:?} is labelled {ENFORCE_LABEL}=true, but service accounts among this identity's creators (spec.access.creators) live in {}, not labelled so: any pod there may run as them unchecked and create this identity's pods as they would; label those namespaces or name creators from enforced ones",
            places.join(", ")
        ),
    )
}

/// `Enforced` while winflow cannot read namespaces (its namespace watch never listed them).
pub fn enforcement_unknown(namespace: &str) -> ConditionState {
    ConditionState::new(
        ENFORCED,
        false,
        ConditionReason::NamespaceUnknown,
        format!(
            "winflow cannot list namespaces (its ClusterRole needs get, list and watch on namespaces), so it cannot tell whether namespace {namespace:?} is labelled {ENFORCE_LABEL}=true"
        ),
    )
}

/// `TasksHealthy` while winflow cannot read task pods (its pod watch never listed them).
pub fn tasks_unknown() -> ConditionState {
    ConditionState::new(
        TASKS_HEALTHY,
        false,
        ConditionReason::PodsUnknown,
        format!(
            "winflow cannot list pods (its ClusterRole needs list and watch on pods), so it cannot tell how this identity's task pods (label {IDENTITY_LABEL}) are doing"
        ),
    )
}

/// `Ready` is true when every configuration condition is; otherwise it carries the first
/// failing condition's reason and message.
pub fn ready_summary(conditions: &[ConditionState]) -> ConditionState {
    match conditions.iter().find(|c| !c.status) {
        Some(failing) => ConditionState {
            type_: READY,
            status: false,
            reason: failing.reason,
            message: format!("{}: {}", failing.type_, failing.message),
        },
        None => ConditionState::new(
            READY,
            true,
            ConditionReason::Reconciled,
            "the credential spec, access rights and pod templates are in place",
        ),
    }
}

/// The conditions of an identity whose spec breaks a rule: only `Ready` changes, the other
/// conditions keep describing the children as last applied.
pub fn invalid_spec_conditions(message: String) -> Vec<ConditionState> {
    vec![ConditionState::new(READY, false, ConditionReason::InvalidSpec, message)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(kind: &str, state: ChildState) -> ChildReport {
        ChildReport {
            kind: kind.into(),
            name: format!("{kind}-name"),
            state,
        }
    }

    fn observed<'a>(
        cs: &'a ChildReport,
        role: &'a ChildReport,
        rb: &'a ChildReport,
        cm: &'a ChildReport,
        sa: ServiceAccountState,
    ) -> Observed<'a> {
        Observed {
            credential_spec: cs,
            role,
            role_binding: rb,
            use_role: role,
            use_role_binding: rb,
            creators: &[],
            service_account_name: "reports",
            service_account: sa,
            pod_templates: cm,
            shares: &[],
            token: ConditionState::new(
                TOKEN_READY,
                true,
                ConditionReason::NotRequested,
                "spec.token is not set",
            ),
        }
    }

    #[test]
    fn all_children_in_place_is_ready() {
        let ok = report("X", ChildState::UpToDate);
        let applied = report("Y", ChildState::Applied);
        let conditions = identity_conditions(&observed(
            &ok,
            &ok,
            &applied,
            &ok,
            ServiceAccountState::Managed(ChildState::Applied),
        ));
        assert!(conditions.iter().all(|c| c.status), "{conditions:?}");
        assert_eq!(conditions.last().unwrap().type_, READY);
    }

    #[test]
    fn conflict_on_the_credential_spec_is_reported_and_not_ready() {
        let ok = report("X", ChildState::UpToDate);
        let conflict = report("GMSACredentialSpec", ChildState::Conflict("taken".into()));
        let conditions = identity_conditions(&observed(
            &conflict,
            &ok,
            &ok,
            &ok,
            ServiceAccountState::ExistingUnmanaged,
        ));
        let cs = conditions.iter().find(|c| c.type_ == CREDENTIAL_SPEC_READY).unwrap();
        assert_eq!((cs.status, cs.reason), (false, ConditionReason::Conflict.as_str()));
        let ready = conditions.last().unwrap();
        assert_eq!(
            (ready.status, ready.reason),
            (false, ConditionReason::Conflict.as_str())
        );
        assert_eq!(ready.message, "CredentialSpecReady: taken");
        let access = conditions.iter().find(|c| c.type_ == ACCESS_GRANTED).unwrap();
        assert!(
            access.status && access.message.contains("does not manage"),
            "{access:?}"
        );
    }

    #[test]
    fn access_names_both_roles_and_the_creators() {
        let ok = |name: &str| ChildReport {
            kind: "Role".into(),
            name: name.into(),
            state: ChildState::UpToDate,
        };
        let (cs, gmsa, use_role) = (
            ok("airflow.reports"),
            ok("winflow-reports-gmsa"),
            ok("winflow-reports-use"),
        );
        let creators = [
            "ServiceAccount airflow/airflow-scheduler".to_owned(),
            "Group platform".to_owned(),
        ];
        let mut o = observed(
            &cs,
            &gmsa,
            &gmsa,
            &cs,
            ServiceAccountState::Managed(ChildState::UpToDate),
        );
        o.use_role = &use_role;
        o.use_role_binding = &use_role;
        o.creators = &creators;
        let access = identity_conditions(&o)
            .into_iter()
            .find(|c| c.type_ == ACCESS_GRANTED)
            .unwrap();
        assert_eq!(
            access.message,
            "service account reports may use GMSACredentialSpec airflow.reports through Role and RoleBinding winflow-reports-gmsa; ServiceAccount airflow/airflow-scheduler, Group platform may create this identity's pods through Role and RoleBinding winflow-reports-use"
        );
        o.creators = &[];
        let access = identity_conditions(&o)
            .into_iter()
            .find(|c| c.type_ == ACCESS_GRANTED)
            .unwrap();
        assert!(
            access.message.ends_with("nobody is bound to Role winflow-reports-use by spec.access.creators (bind it to who may create this identity's pods)"),
            "{}",
            access.message
        );
    }

    #[test]
    fn a_refused_use_role_denies_access_and_ready() {
        let ok = report("X", ChildState::UpToDate);
        let refused = ChildReport {
            kind: "Role".into(),
            name: "winflow-reports-use".into(),
            state: ChildState::Rejected("the API server refused Role winflow-reports-use: forbidden".into()),
        };
        let mut o = observed(&ok, &ok, &ok, &ok, ServiceAccountState::ExistingUnmanaged);
        o.use_role = &refused;
        let conditions = identity_conditions(&o);
        let access = conditions.iter().find(|c| c.type_ == ACCESS_GRANTED).unwrap();
        assert_eq!(
            (access.status, access.reason),
            (false, ConditionReason::ApiError.as_str())
        );
        assert!(
            access.message.contains("Role winflow-reports-use"),
            "{}",
            access.message
        );
        let ready = conditions.last().unwrap();
        assert_eq!((ready.type_, ready.status), (READY, false));
    }

    #[test]
    fn enforced_says_what_an_unlabelled_namespace_leaves_open() {
        let on = enforced_condition("airflow", true);
        assert_eq!(
            (on.type_, on.status, on.reason),
            (ENFORCED, true, ConditionReason::NamespaceEnforced.as_str())
        );
        let creators = creator_namespaces_not_enforced("airflow", &[Some("airflow-system".into()), None]);
        assert_eq!(
            (creators.status, creators.reason),
            (false, ConditionReason::CreatorNamespaceNotEnforced.as_str())
        );
        assert!(
            creators
                .message
                .contains("live in \"airflow-system\", every namespace (group system:serviceaccounts)"),
            "{}",
            creators.message
        );
        let off = enforced_condition("airflow", false);
        assert_eq!(
            (off.status, off.reason),
            (false, ConditionReason::NamespaceNotEnforced.as_str())
        );
        assert!(
            off.message
                .starts_with("namespace \"airflow\" is not labelled winflow.io/enforce=true")
                && off.message.contains("token Secret")
                && off.message.contains("checked only for its gMSA")
                && off.message.ends_with("label the namespace to close that"),
            "{}",
            off.message
        );
    }

    #[test]
    fn missing_service_account_denies_access() {
        let ok = report("X", ChildState::UpToDate);
        let conditions = identity_conditions(&observed(&ok, &ok, &ok, &ok, ServiceAccountState::Missing));
        let access = conditions.iter().find(|c| c.type_ == ACCESS_GRANTED).unwrap();
        assert_eq!(
            (access.status, access.reason),
            (false, ConditionReason::ServiceAccountMissing.as_str())
        );
    }

    #[test]
    fn shares_that_are_not_ready_block_ready_and_are_named() {
        let ok = report("X", ChildState::UpToDate);
        let shares = [
            ("reports".to_owned(), ShareState::Ready),
            ("archive".to_owned(), ShareState::Missing),
            ("scratch".to_owned(), ShareState::NotReady("Pending: waiting".into())),
        ];
        let mut o = observed(&ok, &ok, &ok, &ok, ServiceAccountState::Managed(ChildState::UpToDate));
        o.shares = &shares;
        let conditions = identity_conditions(&o);
        let ready = conditions.last().unwrap();
        assert!(!ready.status);
        assert_eq!(ready.reason, ConditionReason::ShareNotReady.as_str());
        assert_eq!(
            ready.message,
            "SharesReady: WindowsShare archive does not exist; WindowsShare scratch is not Ready (Pending: waiting)"
        );
        let all_ready = [("reports".to_owned(), ShareState::Ready)];
        let c = shares_condition(&all_ready);
        assert!(c.status && c.message == "every share is bound: reports");
        assert_eq!(shares_condition(&[]).reason, ConditionReason::NotRequested.as_str());
    }
}
