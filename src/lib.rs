//! winflow: a Kubernetes operator that runs Apache Airflow work on Windows nodes as
//! least-privileged Active Directory identities (gMSA).
#![forbid(unsafe_code)]
// What the binary, the tests and the benches do not use stays inside the crate.
#![warn(unreachable_pub)]

pub mod admin;
pub mod api;
pub mod build;
pub mod cluster;
pub mod crdgen;
pub mod names;
pub(crate) mod pod_refs;
pub(crate) mod pods;
pub(crate) mod process_metrics;
pub mod render;
pub(crate) mod task_pod;
pub mod validate;
pub mod webhook;

pub mod controller;
#[cfg(test)]
mod fixtures;
pub mod leader;
pub mod metrics;
pub mod telemetry;
pub(crate) mod text;
pub mod token;
