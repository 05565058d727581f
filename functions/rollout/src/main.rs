//! `rollout`: once every external image of a workload is backed up, patches the workload to the
//! backups, pinned by digest. Wiring only: decisions in `decide`, actions in `handler` through `ports`.
//!
//! - `rollout run`: the JetStream adapter (durable consumer `rollout`).
//! - `rollout serve --listen ADDR`: the HTTP adapter for Knative.

use std::time::Duration;

use clap::{Parser, Subcommand};
use rollout::decide::Pin;
use rollout::handler::{Context, Safety};
use rollout::metrics::Metrics;
use rollout::pacing::Slots;
use rollout::pull_access::{PullAccess, SecretName};
use shared::config::{
    AdminArgs, BackupArgs, NatsArgs, RegistryArgs, ServeArgs, SinkArgs, WatchArgs,
};
use shared::kube_events::KubeEvents;
use shared::publish::Publisher;
use shared::registry::auth::DockerConfig;
use shared::registry::{ClientOptions, RegistryClient};
use shared::runtime::Mode;

/// The CloudEvents `source` of the rollout's events.
const SOURCE: &str = "/image-backup/rollout";

/// Moves workloads onto their backup images once all of them are completed.
#[derive(Debug, Parser)]
#[command(name = "rollout", version, about, after_long_help = shared::cli::EXIT_CODES)]
struct Cli {
    #[command(flatten)]
    log: shared::config::LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Consume `image.completed` and `workload.changed` from the durable consumer `rollout` and
    /// patch workloads whose every external image is backed up.
    #[command(
        after_help = "Example:\n  KUBECONFIG=~/.kube/config rollout run --backup-registry registry.local/backup --nats-url nats://nats:4222 --pin digest"
    )]
    Run(Box<FunctionArgs>),
    /// The same handler behind an HTTP endpoint receiving CloudEvents (Knative Service).
    #[command(
        after_help = "Example:\n  K_SINK=http://broker rollout serve --listen 0.0.0.0:8000 --backup-registry registry.local/backup"
    )]
    Serve {
        #[command(flatten)]
        serve: ServeArgs,
        #[command(flatten)]
        function: Box<FunctionArgs>,
    },
    /// Print a shell completion script.
    #[command(
        after_help = "Example:\n  rollout completions fish > ~/.config/fish/completions/rollout.fish"
    )]
    Completions {
        /// The shell.
        shell: shared::cli::Shell,
    },
}

#[derive(Debug, clap::Args)]
struct FunctionArgs {
    #[command(flatten)]
    nats: NatsArgs,
    #[command(flatten)]
    backup: BackupArgs,
    #[command(flatten)]
    registries: RegistryArgs,
    #[command(flatten)]
    admin: AdminArgs,
    #[command(flatten)]
    watch: WatchArgs,
    #[command(flatten)]
    sink: SinkArgs,
    /// `digest`: `target:tag@sha256:…`; `tag`: `target:tag`.
    #[arg(long, env = "PIN", value_enum, default_value_t = Pin::Digest)]
    pin: Pin,
    /// Evaluate and publish what would be done (`workload.rolledout` with `dryRun: true`);
    /// patch nothing.
    #[arg(long, env = "DRY_RUN")]
    dry_run: bool,
    /// Seconds between two resyncs (every workload re-evaluated against the ImageBackups).
    #[arg(long, env = "RESYNC_SECONDS", default_value_t = 300)]
    resync_seconds: u64,
    /// This pod's name (downward API), for the Events it records.
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// The rollout's own namespace (downward API; default: the kubeconfig's or the service
    /// account's): where the pacing Lease lives and `--backup-pull-secret` defaults to.
    #[arg(long, env = "POD_NAMESPACE")]
    pod_namespace: Option<String>,
    /// `[NAMESPACE/]NAME` of a `kubernetes.io/dockerconfigjson` Secret with pull credentials
    /// for the backup registry: copied into each workload's namespace and added to its
    /// `imagePullSecrets` with the rollout (unless it can pull from the backup registry
    /// already). Without it, a workload is only patched if the backup registry serves its
    /// backups to anonymous pulls.
    #[arg(long, env = "BACKUP_PULL_SECRET", value_parser = secret_name)]
    backup_pull_secret: Option<String>,
    /// At most this many workloads rolling out at once, cluster-wide across replicas (from the
    /// patch until Ready at the new generation); 0: no limit.
    #[arg(long, env = "MAX_CONCURRENT_ROLLOUTS", default_value_t = 10)]
    max_concurrent_rollouts: usize,
    /// A patched workload not Ready within this many seconds is reverted to its original
    /// images (default: the Deployment's progressDeadlineSeconds, 600 for a DaemonSet).
    #[arg(long, env = "ROLLOUT_TIMEOUT_SECONDS", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    rollout_timeout_seconds: Option<u64>,
}

/// `--backup-pull-secret` checked at the command line (a usage error, before anything
/// connects); the namespace defaults later, once the rollout's own is known.
fn secret_name(value: &str) -> Result<String, String> {
    SecretName::parse(value, "default").map(|_| value.to_string())
}

async fn function(args: FunctionArgs, mode: Mode) -> anyhow::Result<()> {
    let mut metrics = Metrics::default();
    let runtime = shared::runtime::Runtime::start("rollout", &args.admin, |r| {
        metrics = Metrics::default().register(r);
    })
    .await?;
    let mut shutdown = runtime.shutdown.clone();
    let client = runtime.client.clone();
    let caches = rollout::loops::Caches::start(&client, args.watch.initial_list);
    let (deployments, daemonsets, backups) = (
        caches.deployments.clone(),
        caches.daemonsets.clone(),
        caches.backups.clone(),
    );
    let synced = async {
        deployments.wait_until_ready().await?;
        daemonsets.wait_until_ready().await?;
        backups.wait_until_ready().await
    };
    tokio::select! {
        _ = shutdown.wait() => return Ok(()),
        r = synced => r?,
    }
    let credentials = args.registries.load_docker_config()?;
    args.registries
        .check_backup_host(args.backup.backup_registry.host())?;
    // Read once (the CA files too); the anonymous client differs only in its credentials.
    let options = args.registries.client_options(credentials, None)?;
    let anonymous = RegistryClient::new(ClientOptions {
        credentials: DockerConfig::default(),
        ..options.clone()
    })?;
    let registry = RegistryClient::new(options)?;
    let namespace = args
        .pod_namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let source_secret = args
        .backup_pull_secret
        .as_deref()
        .map(|s| SecretName::parse(s, &namespace))
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let safety = Safety {
        pull: PullAccess::new(
            client.clone(),
            source_secret,
            args.backup.backup_registry.host(),
            anonymous,
        ),
        slots: Slots::new(client.clone(), &namespace, args.max_concurrent_rollouts),
        timeout: args.rollout_timeout_seconds.map(Duration::from_secs),
    };
    let ctx = Context::new(
        client.clone(),
        shared::cache::WorkloadCache {
            deployments,
            daemonsets,
        },
        backups,
        args.backup.naming(),
        args.pin,
        args.dry_run,
        registry,
        KubeEvents::for_function(
            client,
            "image-backup-rollout",
            args.pod_name.clone(),
            "RollOut",
        ),
        metrics,
        safety,
    );
    let sink = Publisher::sink(args.sink.sink.as_ref(), SOURCE);
    let nats = match (&mode, &sink) {
        (Mode::Run, _) | (_, None) => {
            let Some(ready) = shared::nats::connect_until_ready(
                args.nats.url()?.expose(),
                "image-backup-rollout",
                usize::from(args.nats.stream_replicas),
                &mut shutdown,
            )
            .await
            else {
                return Ok(());
            };
            Some(ready)
        }
        _ => None,
    };
    let publisher = match (&sink, &nats) {
        (Some(p), _) => p.clone(),
        (None, Some((_, js, _))) => Publisher::jetstream(js.clone(), SOURCE),
        (None, None) => return Ok(()),
    };
    let loops = rollout::loops::spawn(
        &ctx,
        &publisher,
        caches.changed,
        Duration::from_secs(args.resync_seconds.max(1)),
        &shutdown,
    );
    match mode {
        Mode::Run => {
            let Some((_, js, stream)) = nats else {
                return Ok(());
            };
            let Some(consumer) = shared::nats::bind_until_ready(
                &stream,
                shared::nats::ConsumerName::Rollout,
                None,
                usize::from(args.nats.stream_replicas),
                &mut shutdown,
            )
            .await
            else {
                return Ok(());
            };
            // Ready once it can do work: the consumer is bound.
            runtime.readiness.set(true);
            let ack_wait = consumer.cached_info().config.ack_wait;
            shared::consumer::run(
                consumer,
                js,
                ctx,
                publisher,
                shared::consumer::ConsumerSettings {
                    concurrency: 4,
                    ack_wait,
                    max_redelivery_delay: Duration::from_secs(60),
                },
                shutdown,
            )
            .await?;
        }
        Mode::Serve {
            listen,
            reply_timeout,
        } => {
            runtime.readiness.set(true);
            shared::serve::run(
                ctx,
                shared::serve::ServeSettings {
                    listen,
                    reply_timeout,
                    sink,
                    source: SOURCE.into(),
                },
                shutdown,
                None,
            )
            .await?;
        }
    }
    loops.abort();
    runtime.finish().await;
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    shared::telemetry::init_logging(&cli.log);
    let result = match cli.command {
        Command::Completions { shell } => {
            shared::cli::completions::<Cli>(shell, &mut std::io::stdout());
            Ok(())
        }
        Command::Run(args) => function(*args, Mode::Run).await,
        Command::Serve {
            serve,
            function: args,
        } => function(*args, Mode::from(&serve)).await,
    };
    shared::runtime::exit_code("rollout", result.map_err(|e| format!("{e:#}")))
}
