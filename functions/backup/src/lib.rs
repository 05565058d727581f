//! The backup function: makes sure each external image has exactly one `ImageBackup` and a
//! verified, byte-identical copy in the backup registry.
//!
//! # Layout
//! - [`copy`]: the copy engine (registry client, auth, verification, the `Copier`), also behind
//!   the one-shot `backup copy` command.
//! - [`copy_cmd`]: `backup copy`, one copy from the command line.
//! - [`handler`]: `workload.changed` in, copies and `image.completed`/`image.failed` out.
//! - [`ports`]: the cluster and registry the handler reaches through, real and (in tests) fake.
//! - [`admit`]: what an event may ask for, decided against the workload in the cluster.
//! - [`claim`]: the lease that stops two workers copying one image.
//! - [`lease`]: holding that claim while the copy runs (renewed, fenced, lost).
//! - [`status`]: the ImageBackup status at each step.
//! - [`expiry`]: deletes Completed ImageBackups at `expiresAt`.
//! - [`requests`]: takes up ImageBackups no event carries (applied with kubectl, or left behind
//!   by a lost message or a dead worker).
//! - [`progress`]: `backup copy`'s progress display on a terminal.
//! - [`metrics`]: the `imagebackup_backup_*` metrics.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod admit;
pub mod claim;
pub mod copy;
pub mod copy_cmd;
pub mod expiry;
#[cfg(test)]
mod fakes;
pub mod handler;
#[cfg(test)]
mod handler_tests;
pub mod lease;
pub mod metrics;
pub mod ports;
pub mod progress;
pub mod requests;
pub mod status;
