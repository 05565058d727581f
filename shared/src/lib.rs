//! The common core of image-backup. Every rule that more than one function needs lives here,
//! once: how references are parsed, how backups are named, what Ready and needs-backup mean, what
//! an ImageBackup and each event look like, and how NATS is set up.
//!
//! # Layout
//! - [`reference`](mod@reference): parse and normalize image references (distribution/reference grammar).
//! - [`registry`]: the registry client (distribution API, auth, retries, capped reads).
//! - [`naming`]: backup targets, `ImageBackup` names, subject tokens.
//! - [`workload`]: Deployments and DaemonSets: images, the Ready rule, the backup plan.
//! - [`crd`]: the `ImageBackup` custom resource and its CRD.
//! - [`events`]: the CloudEvents types and their NATS and HTTP bindings.
//! - [`nats`]: stream and consumers from `nats/`, connect, publish with `Nats-Msg-Id`.
//! - [`error`]: `ErrorClass`, the one vocabulary of failures.
//! - [`cli`]: shell completions and the exit-code contract every binary shares.
//! - [`config`]: command-line settings shared by every function.
//! - [`secret`]: types whose `Debug`/`Display` never show a credential.
//! - [`telemetry`]: log set-up.
//! - [`cache`]: the Deployment and DaemonSet caches, seen as workloads.
//! - [`lean`](mod@lean): workloads parsed off the API into only what the caches keep.
//! - [`initial_list`]: streaming lists where the API server serves them, paged lists where not.
//! - [`admin`]: the admin server (`/healthz`, `/readyz`, `/metrics`) and readiness.
//! - [`metrics_auth`]: `/metrics` for callers Kubernetes authenticates and authorizes.
//! - [`runtime`]: start-up every function shares (signals, metrics, admin server, kube client).
//! - [`shutdown`]: SIGTERM/SIGINT: drain first, abort on the second.
//! - [`delivery`]: `Delivery<T>`, a JetStream message with explicit, idempotent acks.
//! - [`handler`]: what a function's handler is: `Handler`, `Outcome`, `Classified` errors.
//! - [`consumer`]: the `run` adapter: a durable pull consumer driving a transport-free handler.
//! - [`serve`]: the `serve` adapter: the same handler behind an HTTP CloudEvents endpoint.
//! - [`publish`]: one publisher trait, JetStream or an HTTP CloudEvents sink.
//! - [`tls`]: the process-wide TLS crypto provider (ring).
//! - [`api_error`]: what a failed Kubernetes API call means: retry now, back off, or record.
//! - [`kube_events`]: Kubernetes Events recorded the same way by every function.
//! - [`pull_secrets`]: pull secrets named by a workload or ServiceAccount.
//! - [`service_accounts`]: ServiceAccounts read for their pull secrets, each reused briefly.
//!
//! The crate never depends on the test bed and never on a function.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod admin;
pub mod api_error;
pub mod cache;
pub mod cli;
pub mod config;
pub mod consumer;
pub mod crd;
pub mod delivery;
pub mod error;
pub mod events;
pub mod handler;
pub mod initial_list;
pub mod intern;
pub mod kube_events;
pub mod lean;
pub mod metrics_auth;
pub mod naming;
pub mod nats;
pub mod publish;
pub mod pull_secrets;
pub mod recent;
pub mod reference;
pub mod registry;
pub mod runtime;
pub mod secret;
pub mod serve;
pub mod service_accounts;
pub mod shutdown;
pub mod slim;
pub mod telemetry;
pub mod tls;
pub mod workload;

pub use error::ErrorClass;
pub use naming::NamingPolicy;
pub use reference::Reference;
