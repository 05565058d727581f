//! The rollout function: once every external image of a workload is backed up (Completed, and
//! the backup still resolves to its digest at the registry), patch the workload to the backups
//! in one guarded patch, which rolls it out once.
//!
//! # Layout
//! - [`decide`]: the pure decision and the guarded JSON patch.
//! - [`run`]: the caches, the handler (`image.completed`, `workload.changed`), the resync.
//! - [`metrics`]: the `imagebackup_rollout_*` metrics.
#![deny(missing_docs)]

pub mod decide;
pub mod metrics;
pub mod run;
