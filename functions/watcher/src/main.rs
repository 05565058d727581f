//! `watcher`: finds the images of Ready Deployments and DaemonSets that are not yet in the backup
//! registry and announces them as `workload.changed` events.
//!
//! - `watcher run`: the long-running function (Kubernetes in, JetStream or an HTTP sink out).
//! - `watcher plan`: the offline dry run: it reads workload YAML and prints, as JSON lines, what
//!   `watcher run` would publish, contacting nothing. Users put it in CI.
//!
//! This file is wiring only: the decisions live in `decide`, the loop in `run`, the dry run in
//! `plan`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use shared::config::{AdminArgs, BackupArgs, NatsArgs, SinkArgs, WatchArgs};
use shared::publish::Publisher;
use watcher::decide::{DEFAULT_EXCLUDED, Policy};
use watcher::metrics::Metrics;
use watcher::plan::Output;

/// The CloudEvents `source` of the watcher's events.
const SOURCE: &str = "/image-backup/watcher";

/// Watches Deployments and DaemonSets and announces images that need a backup.
#[derive(Debug, Parser)]
#[command(name = "watcher", version, about, after_long_help = shared::cli::EXIT_CODES)]
struct Cli {
    #[command(flatten)]
    log: shared::config::LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Watch Deployments and DaemonSets and publish `workload.changed` events for Ready ones
    /// that run images not yet in the backup registry. Kubernetes from KUBECONFIG or the
    /// in-cluster config.
    #[command(
        after_help = "Example:\n  KUBECONFIG=~/.kube/config watcher run --backup-registry registry.local/backup --nats-url nats://nats:4222"
    )]
    Run(Box<RunArgs>),
    /// Print, as JSON lines, what would be published for the workloads in YAML files (contacts
    /// nothing). Exits 1 when an image reference or a document is invalid; valid images are
    /// still printed.
    #[command(
        after_help = "Examples:\n  watcher plan -f deploy.yaml --backup-registry docker.io/acme\n  kubectl get deploy -A -o yaml | watcher plan -f - --backup-registry docker.io/acme -o table"
    )]
    Plan {
        /// Workload YAML (Deployment, DaemonSet, List; multi-document); `-` reads stdin.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        backup: BackupArgs,
        /// `json`: one line per workload, what `watcher run` would publish (the contract);
        /// `table`: one row per container image, for people.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Json)]
        output: Output,
    },
    /// Print a shell completion script.
    #[command(after_help = "Example:\n  watcher completions bash > /etc/bash_completion.d/watcher")]
    Completions {
        /// The shell.
        shell: shared::cli::Shell,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    #[command(flatten)]
    nats: NatsArgs,
    #[command(flatten)]
    backup: BackupArgs,
    #[command(flatten)]
    admin: AdminArgs,
    #[command(flatten)]
    watch: WatchArgs,
    #[command(flatten)]
    sink: SinkArgs,
    /// Namespaces never looked at (the function's own, from POD_NAMESPACE, is added).
    #[arg(
        long = "exclude-namespace",
        env = "EXCLUDE_NAMESPACES",
        value_delimiter = ',',
        default_values_t = DEFAULT_EXCLUDED.map(String::from)
    )]
    exclude_namespaces: Vec<String>,
    /// Only these namespaces (default: every namespace).
    #[arg(long = "namespace", env = "WATCH_NAMESPACES", value_delimiter = ',')]
    namespaces: Vec<String>,
    /// Seconds between two resyncs (every workload re-evaluated and republished if needed).
    #[arg(long, env = "RESYNC_SECONDS", default_value_t = 600)]
    resync_seconds: u64,
    /// This pod's namespace (downward API); excluded.
    #[arg(long, env = "POD_NAMESPACE")]
    pod_namespace: Option<String>,
    /// This pod's name (downward API), for the Events it records.
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut metrics = Metrics::default();
    let runtime = shared::runtime::Runtime::start("watcher", &args.admin, |r| {
        metrics = Metrics::default().register(r);
    })
    .await?;
    let mut shutdown = runtime.shutdown.clone();
    let client = runtime.client.clone();
    let publisher = match Publisher::sink(args.sink.sink.as_ref(), SOURCE) {
        Some(sink) => sink,
        None => {
            let url = args.nats.url()?;
            let Some((_, js, _)) = shared::nats::connect_until_ready(
                url.expose(),
                "image-backup-watcher",
                usize::from(args.nats.stream_replicas),
                &mut shutdown,
            )
            .await
            else {
                return Ok(());
            };
            Publisher::jetstream(js, SOURCE)
        }
    };
    let mut excluded: BTreeSet<String> = args.exclude_namespaces.iter().cloned().collect();
    excluded.extend(args.pod_namespace.clone());
    let policy = Policy {
        naming: args.backup.naming(),
        excluded_namespaces: excluded,
        namespaces: args.namespaces.iter().cloned().collect(),
    };
    let ctx = watcher::run::Context {
        events: shared::kube_events::KubeEvents::for_function(
            client.clone(),
            "image-backup-watcher",
            args.pod_name.clone(),
            "PlanBackup",
        ),
        publisher,
        policy: Arc::new(policy),
        metrics,
        readiness: runtime.readiness.clone(),
        resync: Duration::from_secs(args.resync_seconds),
    };
    watcher::run::run(client, ctx, args.watch.initial_list, shutdown).await;
    runtime.finish().await;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    shared::telemetry::init_logging(&cli.log);
    match cli.command {
        Command::Plan {
            files,
            backup,
            output,
        } => watcher::plan::plan(&files, &backup.naming(), output),
        Command::Completions { shell } => {
            shared::cli::completions::<Cli>(shell, &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Run(args) => shared::runtime::exit_code(
            "watcher run",
            run(*args).await.map_err(|e| format!("{e:#}")),
        ),
    }
}
