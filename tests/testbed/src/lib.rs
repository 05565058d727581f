//! The test bed: the real services image-backup runs against, started on loopback for tests,
//! benchmarks and the demo. Nothing here is a mock of a service; the product never depends on it.
//!
//! # Layout
//! Services:
//! - [`nats_server`]: a real `nats-server -js` (2.10 or newer).
//! - [`nats_cluster`]: a real JetStream cluster of N nodes (kill, wipe, restart; who leads).
//! - [`registry`]: real `docker-registry` instances, anonymous or htpasswd-protected.
//! - [`token_auth`]: a registry behind `auth: token` and its test token issuer.
//! - [`hostile_registry`]: a registry that misbehaves on purpose (endless bodies, traversal
//!   digests, drip-fed blobs, absurd token lifetimes), counting the bytes it serves.
//! - [`fault_proxy`]: a proxy in front of a registry that injects 429/503, cuts and corruption.
//! - [`apiserver`]: the test Kubernetes API server (kube-rs and kubectl talk to it unchanged).
//! - [`broker`]: a minimal Knative-style Broker (fan-out by type, replies fed back) for `serve`.
//! - `tls`: the per-run test CA and server certificates (the API server's HTTPS).
//!
//! Content and helpers:
//! - [`image`]: generated multi-arch images pushed to a registry, and read-back helpers.
//! - [`referrers`]: signatures and attestations attached to pushed images.
//! - [`stream`]: what the IMAGEBACKUP stream holds, decoded.
//! - [`process`]: child-process guards (killed on drop, also on panic), free ports.
//! - [`tools`]: where the programs it runs are (workspace binaries, built once per test
//!   process; nats-server and Python from the project's `.venv`).
//!
//! Putting it together:
//! - [`cluster`]: API server + CRD, NATS + stream, source and backup registries, functions.
//! - [`function`]: a function binary run as a process (start, SIGTERM, admin endpoints, log).
//! - [`demo`]: `testbed demo`, the whole flow as a person watches it (the README's run command).
//! - [`bench`](mod@bench): the benchmarks — the copy benchmark against skopeo (`bench-copy`),
//!   `bench::backup`, `bench::referrers`, `bench::scale`, `bench::watcher`.
#![forbid(unsafe_code)]

pub mod apiserver;
pub mod bench;
pub mod broker;
pub mod cluster;
pub mod demo;
pub mod fault_proxy;
pub mod function;
pub mod hostile_registry;
pub mod image;
pub mod nats_cluster;
pub mod nats_server;
pub mod process;
pub mod referrers;
pub mod registry;
pub mod stream;
pub(crate) mod tls;
pub mod token_auth;
pub mod tools;

pub use apiserver::ApiServer;
pub use fault_proxy::FaultProxy;
pub use hostile_registry::HostileRegistry;
pub use image::{Format, ImageSpec, PushedImage, Pusher};
pub use nats_cluster::{Nats, NatsCluster};
pub use nats_server::NatsServer;
pub use registry::{Credentials, Registry, RegistryOptions};
pub use tools::workspace_binary;
