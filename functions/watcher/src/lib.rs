//! The watcher function: finds the images of Ready Deployments and DaemonSets that are not yet
//! in the backup registry and announces them as `workload.changed` events.
//!
//! # Layout
//! - [`decide`]: the pure decision for one workload (shared by `plan` and `run`).
//! - [`plan`]: `watcher plan`, the offline dry run (YAML in, what `run` would publish out).
//! - [`run`]: the long-running loop of `watcher run` (reflectors in, events out).
//! - [`state`]: that loop's state and decisions (dirty set, flush, resync), behind ports.
//! - [`table`]: `watcher plan -o table`.
//! - [`metrics`]: the `imagebackup_watcher_*` metrics.
#![deny(missing_docs)]

pub mod decide;
pub mod metrics;
pub mod plan;
pub mod run;
pub mod state;
#[cfg(test)]
mod state_tests;
pub mod table;
