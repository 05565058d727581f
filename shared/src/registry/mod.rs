//! The registry client every function that talks to registries uses: the backup function's
//! copy engine, and the rollout's check that a backup still resolves to its digest. It treats
//! every registry and token service as possibly hostile (capped reads, validated digests,
//! refused credential downgrades, a throughput watchdog).
//!
//! - [`client`]: the distribution API calls (`RegistryClient`), one connection pool a process.
//! - `handshake`: authentication (basic, bearer tokens per scope, OAuth2 refresh tokens).
//! - [`auth`]: docker config credentials, challenges, the token cache.
//! - [`mirror`]: registry mirrors for pulls (containerd `hosts.toml` semantics).
//! - [`retry`]: which answers are retried and how long to wait.
//! - [`response`]: capped body reads, status → error.
//! - [`stall`]: the minimum-throughput watchdog of a transfer.
//! - [`error`]: `CopyError`, one variant per cause a user can act on, each with its class.

pub mod auth;
pub mod client;
pub mod error;
mod handshake;
pub mod mirror;
pub mod response;
pub mod retry;
pub mod stall;

pub use client::{Access, ClientOptions, RegistryClient, Repo};
pub use error::CopyError;
pub use mirror::{MirrorSpec, Mirrors};
pub use retry::RetryPolicy;
pub use stall::StallPolicy;
