//! Which identities contents name: one of the identity's accounts in one of its domains (or
//! with no domain given at all: fail closed), or the host-account plugin input winflow writes
//! for it. Looked up by key (`ResourceView`'s indexes), never by scanning every identity.

use std::sync::Arc;

use super::contents::Named;
use crate::api::WindowsTaskIdentity;
use crate::api::identity::WindowsTaskIdentitySpec;
use crate::names::{account_key, domain_key};
use crate::webhook::decide::ResourceView;

/// The identities (any namespace) the contents name, each once, in the order found.
pub(crate) fn identities_named(named: &Named, view: &dyn ResourceView) -> Vec<Arc<WindowsTaskIdentity>> {
    let mut found: Vec<Arc<WindowsTaskIdentity>> = Vec::new();
    let mut add = |identity: Arc<WindowsTaskIdentity>| {
        if !found.iter().any(|f| f.metadata == identity.metadata) {
            found.push(identity);
        }
    };
    let scoped = named.accounts.iter().map(|(account, scope)| (account, scope.as_ref()));
    let machine = named.machine_account.iter().map(|account| (account, None));
    for (account, scope) in scoped.chain(machine) {
        let given: Vec<&String> = scope.into_iter().chain(&named.join_domains).collect();
        for identity in view.identities_with_account(account) {
            let domains = domain_keys(&identity.spec);
            if given.is_empty() || given.iter().any(|d| domains.contains(d)) {
                add(identity);
            }
        }
    }
    if let Some(input) = &named.plugin_input {
        view.identities_with_plugin_input(input).into_iter().for_each(add);
    }
    found
}

/// The identity's gMSA accounts, as `names::account_key` spells them.
pub(crate) fn account_keys(spec: &WindowsTaskIdentitySpec) -> impl Iterator<Item = String> + '_ {
    std::iter::once(&spec.gmsa.account)
        .chain(&spec.gmsa.additional_accounts)
        .map(|account| account_key(account))
}

/// The identity's domain names (DNS, NetBIOS, forest), as `names::domain_key` spells them.
fn domain_keys(spec: &WindowsTaskIdentitySpec) -> Vec<String> {
    let domain = &spec.domain;
    [
        Some(&domain.dns_name),
        Some(&domain.netbios_name),
        domain.forest_name.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|name| domain_key(name))
    .collect()
}

/// The host-account plugin input winflow writes for the identity, trimmed, if it has one.
pub(crate) fn plugin_input(identity: &WindowsTaskIdentity) -> Option<String> {
    let namespace = identity.metadata.namespace.as_deref().unwrap_or_default();
    crate::build::host_account_plugin_input(namespace, &identity.spec).map(|input| input.trim().to_owned())
}
