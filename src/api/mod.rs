//! Kubernetes API types: winflow's own custom resources and the upstream gMSA credential spec.

pub mod conditions;
pub mod creators;
pub mod gmsa;
pub mod identity;
pub mod refs;
pub mod share;

pub use gmsa::GMSACredentialSpec;
pub use identity::{WindowsTaskIdentity, WindowsTaskIdentitySpec, WindowsTaskIdentityStatus};
pub use share::{WindowsShare, WindowsShareSpec, WindowsShareStatus};
