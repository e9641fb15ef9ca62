//! gMSA: the one strict reader of credential spec contents (`contents`), which identities
//! they name (`matching`), the rules every pod path applies (`rules`), and the cluster-wide
//! webhook for pods winflow's other webhooks do not see (`cluster_wide`).

mod cluster_wide;
mod contents;
mod matching;
mod rules;
mod strict_json;
#[cfg(test)]
mod tests;

pub use cluster_wide::validate_gmsa;
pub(crate) use matching::{account_keys, plugin_input};
pub(super) use rules::{check_content_named, check_no_identitys_gmsa, check_own_contents, check_own_gmsa};
