//! The backup function: makes sure each external image has exactly one `ImageBackup` and a
//! verified, byte-identical copy in the backup registry.
//!
//! # Layout
//! - [`copy`]: the copy engine (registry client, auth, verification, the `Copier`), also behind
//!   the one-shot `backup copy` command.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod copy;
