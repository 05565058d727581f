//! Integration tests against the real services of the test bed. One binary, one process: every
//! module below is a group of tests; each test starts the services it needs on free ports.

mod apiserver;
mod backup;
mod chaos;
mod cli;
mod consumer_errors;
mod copy_engine;
mod credential_sweep;
mod demo;
mod deploy;
mod docs_design;
mod hostile_registry;
mod kube_events;
mod kubectl;
mod kubectl_session;
mod least_privilege;
mod metrics_auth;
mod mirrors;
mod nats_cluster;
mod nats_events;
mod nats_users;
mod publish;
mod readme;
mod referrers;
mod registry_images;
mod rollout;
mod rollout_changes;
mod safe_rollout;
mod testbed_up;
mod trust;
mod validation;
mod watcher;
