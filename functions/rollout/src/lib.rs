//! The rollout function: once every external image of a workload is backed up (Completed, and
//! the backup still resolves to its digest at the registry), patch the workload to the backups
//! in one guarded patch, which rolls it out once.
//!
//! # Layout
//! - [`decide`]: the pure decision and the guarded JSON patches (rollout, end, revert).
//! - [`handler`]: the caches, the handler (`image.completed`, `workload.changed`), the pacer,
//!   the resync.
//! - [`loops`]: the caches and the background loops (resync, changes, pacer, gate).
//! - [`ports`]: the cluster and registry calls the rollout makes, real and (in tests) fake.
//! - [`pull_access`]: the backups pullable by the workload's Pods (`--backup-pull-secret`).
//! - [`pacing`]: cluster-wide slots (`--max-concurrent-rollouts`).
//! - [`gate`]: the health gate and the automatic revert.
//! - [`metrics`]: the `imagebackup_rollout_*` metrics.
#![deny(missing_docs)]

pub mod decide;
#[cfg(test)]
mod fakes;
pub mod gate;
pub mod handler;
#[cfg(test)]
mod handler_tests;
pub mod loops;
pub mod metrics;
pub mod pacing;
pub mod ports;
pub mod pull_access;
