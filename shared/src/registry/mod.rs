//! The registry client every function that talks to registries uses: the backup function's
//! copy engine, and the rollout's check that a backup still resolves to its digest. It treats
//! every registry and token service as possibly hostile (capped reads, validated digests,
//! refused credential downgrades, a throughput watchdog).
//!
//! - [`client`]: the distribution API calls (`RegistryClient`), one connection pool a process.
//! - [`repo`]: what a call addresses (`Repo`) and does (`Access`).
//! - `transport`: connection pools, base URLs, credentials by host, sending with retries.
//! - `handshake`: authentication (basic, bearer tokens per scope, OAuth2 refresh tokens), on
//!   the transport; the client owns one.
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
pub mod repo;
pub mod response;
pub mod retry;
pub mod stall;
mod transport;

pub use client::RegistryClient;
pub use error::CopyError;
pub use mirror::{MirrorSpec, Mirrors};
pub use repo::{Access, Repo};
pub use retry::RetryPolicy;
pub use stall::StallPolicy;
pub use transport::ClientOptions;
