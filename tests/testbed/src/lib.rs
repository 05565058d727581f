//! The test bed: the real services image-backup runs against, started on loopback for tests,
//! benchmarks and the demo. Nothing here is a mock of a service; the product never depends on it.
//!
//! # Layout
//! - [`process`]: child-process guards (killed on drop, also on panic), free ports.
//! - [`nats_server`]: a real `nats-server -js` (2.10 or newer).
//! - [`nats_cluster`]: a real JetStream cluster of N nodes (kill, wipe, restart; who leads).
//! - [`registry`]: real `docker-registry` instances, anonymous or htpasswd-protected.
//! - [`token_auth`]: a registry behind `auth: token` and its test token issuer.
//! - [`image`]: generated multi-arch images pushed to a registry, and read-back helpers.
//! - [`apiserver`]: the test Kubernetes API server (kube-rs and kubectl talk to it unchanged).
//! - [`bench`](mod@bench): the copy benchmark (`testbed bench-copy`), against skopeo.
//! - [`broker`]: a minimal Knative-style Broker (fan-out by type, replies fed back) for `serve`.
//! - [`cluster`]: API server + CRD, NATS + stream, source and backup registries, functions.
//! - [`demo`]: `testbed demo`, the whole flow as a person watches it (the README's run command).
//! - [`function`]: a function binary run as a process (start, SIGTERM, admin endpoints, log).
//! - [`stream`]: what the IMAGEBACKUP stream holds, decoded.
//! - [`bench_backup`]: the backup function's benchmark (`testbed bench-backup`).
//! - [`bench_scale`]: the end-to-end scale benchmark (`testbed bench-scale`).
//! - [`bench_watcher`]: the watcher's start-up benchmark (`testbed bench-watcher`).
//! - [`fault_proxy`]: a proxy in front of a registry that injects 429/503, cuts and corruption.
//! - [`tools`]: where the programs it runs are (workspace binaries, built once per test
//!   process; nats-server and Python from the project's `.venv`).
//! - [`hostile_registry`]: a registry that misbehaves on purpose (endless bodies, traversal
//!   digests, drip-fed blobs, absurd token lifetimes), counting the bytes it serves.
#![forbid(unsafe_code)]

pub mod apiserver;
pub mod bench;
pub mod bench_backup;
pub mod bench_referrers;
pub mod bench_scale;
pub mod bench_watcher;
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
pub mod tls;
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
