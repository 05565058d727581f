//! The test bed: the real services image-backup runs against, started on loopback for tests,
//! benchmarks and the demo. Nothing here is a mock of a service; the product never depends on it.
//!
//! # Layout
//! - [`process`]: child-process guards (killed on drop, also on panic), free ports.
//! - [`nats_server`]: a real `nats-server -js` (2.10 or newer).
//! - [`registry`]: real `docker-registry` instances, anonymous or htpasswd-protected.
//! - [`image`]: generated multi-arch images pushed to a registry, and read-back helpers.
#![forbid(unsafe_code)]

pub mod image;
pub mod nats_server;
pub mod process;
pub mod registry;

pub use image::{Format, ImageSpec, PushedImage, Pusher};
pub use nats_server::NatsServer;
pub use registry::{Credentials, Registry, RegistryOptions};
