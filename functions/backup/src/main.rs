//! `backup`: the backup function's binary, wiring only.
//!
//! - `backup run`: the JetStream adapter (durable consumer `backup`), plus expiry.
//! - `backup serve --listen ADDR`: the HTTP adapter for Knative, plus expiry.
//! - `backup copy SRC DST`: one verified copy, one JSON summary line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use backup::copy::{Copier, DEFAULT_CONCURRENCY, ReferrersMode, RegistryClient};
use backup::handler::{Context, Settings};
use backup::metrics::Metrics;
use clap::{Parser, Subcommand};
use shared::config::{
    AdminArgs, BackupArgs, NatsArgs, RegistryArgs, ServeArgs, SinkArgs, WatchArgs,
};
use shared::kube_events::KubeEvents;
use shared::publish::Publisher;
use shared::runtime::Mode;

/// The CloudEvents `source` of the backup function's events.
const SOURCE: &str = "/image-backup/backup";
/// The most events in hand at once: the backup consumer's `max_ack_pending`
/// (`nats/consumer-backup.json`); JetStream delivers no more than that unacknowledged.
const MAX_EVENTS: usize = 1000;

/// Backs up images to the backup registry.
#[derive(Debug, Parser)]
#[command(name = "backup", version, about, after_long_help = shared::cli::EXIT_CODES)]
struct Cli {
    #[command(flatten)]
    log: shared::config::LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Consume `workload.changed` events from the durable JetStream consumer `backup`, copy each
    /// image once, record it in its ImageBackup, publish `image.completed`/`image.failed`.
    #[command(
        after_help = "Example:\n  KUBECONFIG=~/.kube/config backup run --nats-url nats://nats:4222 --docker-config /etc/backup/config.json"
    )]
    Run(Box<FunctionArgs>),
    /// The same handler behind an HTTP endpoint receiving CloudEvents (Knative Service).
    #[command(
        after_help = "Example:\n  K_SINK=http://broker backup serve --listen 0.0.0.0:8000 --docker-config /etc/backup/config.json"
    )]
    Serve {
        #[command(flatten)]
        serve: ServeArgs,
        #[command(flatten)]
        function: Box<FunctionArgs>,
    },
    /// Copy one image (every platform of an index), verifying every blob, and print a JSON
    /// summary: digest, media type, platforms, blobs copied/skipped/mounted, bytes, seconds.
    /// On a terminal, a progress display on stderr (bytes, rate, ETA, blobs); none otherwise.
    #[command(
        after_help = "Examples:\n  backup copy nginx:1.14.0 registry.local/backup/library_nginx:1.14.0 --docker-config ~/.docker/config.json\n  backup copy localhost:5000/app:1 localhost:5001/bk/app:1 --insecure-registry localhost:5000,localhost:5001 --quiet"
    )]
    Copy {
        /// Source reference (`nginx:1.14.0`, `quay.io/a/b@sha256:…`).
        source: String,
        /// Target reference with a tag (`registry.local/backup/library_nginx:1.14.0`).
        target: String,
        /// Copy every platform of an index. Always on: a partial index would change the digest.
        #[arg(long, default_value_t = true)]
        all_platforms: bool,
        #[command(flatten)]
        registries: RegistryArgs,
        /// How many blobs move at once.
        #[arg(long, env = "COPY_CONCURRENCY", default_value_t = DEFAULT_CONCURRENCY)]
        concurrency: usize,
        /// Which referrers (signatures, attestations, SBOMs) are copied with the image.
        #[arg(long, env = "REFERRERS", value_enum, default_value_t = ReferrersMode::All)]
        referrers: ReferrersMode,
        /// No progress display, even on a terminal.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Print a shell completion script.
    #[command(after_help = "Example:\n  backup completions zsh > ~/.zfunc/_backup")]
    Completions {
        /// The shell.
        shell: shared::cli::Shell,
    },
}

/// Settings of the long-running modes.
#[derive(Debug, clap::Args)]
struct FunctionArgs {
    #[command(flatten)]
    nats: NatsArgs,
    #[command(flatten)]
    registries: RegistryArgs,
    #[command(flatten)]
    admin: AdminArgs,
    #[command(flatten)]
    watch: WatchArgs,
    #[command(flatten)]
    sink: SinkArgs,
    /// Where backups go and how they are named: the only source of targets (an event's
    /// target must equal it), and where `--target-username` applies.
    #[command(flatten)]
    backup: BackupArgs,
    /// User name for the backup registry (with `--target-password-file`), as an alternative to
    /// `--docker-config`.
    #[arg(long, env = "TARGET_USERNAME")]
    target_username: Option<String>,
    /// A file holding the backup registry's password (a mounted Secret key).
    #[arg(long, env = "TARGET_PASSWORD_FILE")]
    target_password_file: Option<PathBuf>,
    /// Images copied at once by this process.
    #[arg(long, env = "MAX_CONCURRENT_COPIES", default_value_t = 4)]
    max_concurrent_copies: usize,
    /// Events handled at once by this process (`run`): checking an event against the cluster
    /// and finding its images backed up already does not wait for a copy slot, so many more
    /// events than copies can be in hand.
    #[arg(long, env = "MAX_CONCURRENT_EVENTS", default_value_t = 32)]
    max_concurrent_events: usize,
    /// Images copied at once from one source registry by this process.
    #[arg(long, env = "PER_REGISTRY_COPIES", default_value_t = 2)]
    per_registry_copies: usize,
    /// Blobs moved at once per copy.
    #[arg(long, env = "COPY_CONCURRENCY", default_value_t = DEFAULT_CONCURRENCY)]
    blob_concurrency: usize,
    /// Which referrers (signatures, attestations, SBOMs) are copied with the image.
    #[arg(long, env = "REFERRERS", value_enum, default_value_t = ReferrersMode::All)]
    referrers: ReferrersMode,
    /// Seconds a claim lasts without renewal (renewed every third of it while copying).
    #[arg(long, env = "CLAIM_LEASE_SECONDS", default_value_t = 60)]
    claim_lease_seconds: u64,
    /// Seconds a Completed ImageBackup is kept before it is deleted (the copy stays); 0 keeps it.
    #[arg(long, env = "COMPLETED_TTL_SECONDS", default_value_t = 86_400)]
    completed_ttl_seconds: u64,
    /// Attempts before a transiently failing image is marked Failed.
    #[arg(long, env = "MAX_ATTEMPTS", default_value_t = 5)]
    max_attempts: u32,
    /// Longest pause before a transiently failed image is tried again (the pause grows 2 s,
    /// 8 s, 32 s, ... up to this).
    #[arg(long, env = "MAX_RETRY_DELAY_SECONDS", default_value_t = 300)]
    max_retry_delay_seconds: u64,
    /// Seconds JetStream waits for an ack before redelivering (default: nats/consumer-backup.json,
    /// 60). In-progress signals keep long copies alive; this bounds how long a crashed worker's
    /// event waits. Give every replica the same value.
    #[arg(long, env = "ACK_WAIT_SECONDS")]
    ack_wait_seconds: Option<u64>,
    /// This pod's name (downward API): the claim holder's identity.
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
}

async fn function(args: FunctionArgs, mode: Mode) -> anyhow::Result<()> {
    let mut metrics = Metrics::default();
    let runtime = shared::runtime::Runtime::start("backup", &args.admin, |r| {
        metrics = Metrics::default().register(r);
    })
    .await?;
    let (readiness, mut shutdown, client) = (
        runtime.readiness.clone(),
        runtime.shutdown.clone(),
        runtime.client.clone(),
    );
    // The CRD must be installed: say so plainly instead of failing on every event.
    kube::Api::<shared::crd::ImageBackup>::all(client.clone())
        .list(&kube::api::ListParams::default().limit(1))
        .await
        .context(
            "cannot list imagebackups.k8slab.io: is the CRD installed (kubectl apply -f crds/)?",
        )?;

    let mut credentials = args.registries.load_docker_config()?;
    let registry = &args.backup.backup_registry;
    if let (Some(user), Some(file)) = (&args.target_username, &args.target_password_file) {
        let password = tokio::fs::read_to_string(file)
            .await
            .with_context(|| format!("cannot read {}", file.display()))?;
        credentials.insert_basic(registry.host(), user, password.trim_end());
    }
    let holder = format!(
        "{}/{:08x}",
        args.pod_name
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "backup".into()),
        rand_id()
    );
    args.registries.check_backup_host(registry.host())?;
    // The claim holder names the instance: registry logs then name the replica that pushed.
    let client_options = args
        .registries
        .client_options(credentials, Some(holder.clone()))?;
    let copier = Copier::new(RegistryClient::new(client_options)?, args.blob_concurrency)
        .with_referrers(args.referrers);
    let lease = Duration::from_secs(args.claim_lease_seconds.max(3));
    let settings = Settings {
        holder: holder.clone(),
        lease,
        ttl: (args.completed_ttl_seconds > 0)
            .then(|| Duration::from_secs(args.completed_ttl_seconds)),
        max_attempts: args.max_attempts.max(1),
        max_copies: args.max_concurrent_copies.max(1),
        per_registry: args.per_registry_copies.max(1),
        max_retry_delay: Duration::from_secs(args.max_retry_delay_seconds.max(1)),
        naming: args.backup.naming(),
    };
    let events = KubeEvents::for_function(
        client.clone(),
        "image-backup-backup",
        Some(holder.clone()),
        "Backup",
    );
    let handler = Context::new(client.clone(), copier, settings, metrics.clone(), events);
    let initial = args.watch.initial_list;
    let expiry = tokio::spawn(backup::expiry::run(
        client.clone(),
        metrics,
        initial,
        shutdown.clone(),
    ));
    let sink = Publisher::sink(args.sink.sink.as_ref(), SOURCE);
    tracing::info!(%holder, "backup starting");
    match mode {
        Mode::Run => {
            let replicas = usize::from(args.nats.stream_replicas);
            let Some((_, js, stream)) = shared::nats::connect_until_ready(
                args.nats.url()?.expose(),
                "image-backup-backup",
                replicas,
                &mut shutdown,
            )
            .await
            else {
                return Ok(());
            };
            let Some(consumer) = shared::nats::bind_until_ready(
                &stream,
                shared::nats::ConsumerName::Backup,
                args.ack_wait_seconds.map(|s| Duration::from_secs(s.max(1))),
                replicas,
                &mut shutdown,
            )
            .await
            else {
                return Ok(());
            };
            let ack_wait = consumer.cached_info().config.ack_wait;
            let publisher = sink.unwrap_or_else(|| Publisher::jetstream(js.clone(), SOURCE));
            let requests = tokio::spawn(backup::requests::run(
                client.clone(),
                initial,
                handler.clone(),
                Some(publisher.clone()),
                shutdown.clone(),
            ));
            readiness.set(true);
            shared::consumer::run(
                consumer,
                js,
                handler,
                publisher,
                shared::consumer::ConsumerSettings {
                    concurrency: args.max_concurrent_events.clamp(1, MAX_EVENTS),
                    ack_wait,
                    max_redelivery_delay: Duration::from_secs(300),
                },
                shutdown,
            )
            .await?;
            let _ = requests.await;
        }
        Mode::Serve {
            listen,
            reply_timeout,
        } => {
            let requests = tokio::spawn(backup::requests::run(
                client.clone(),
                initial,
                handler.clone(),
                sink.clone(),
                shutdown.clone(),
            ));
            readiness.set(true);
            shared::serve::run(
                handler,
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
            let _ = requests.await;
        }
    }
    let _ = expiry.await;
    runtime.finish().await;
    Ok(())
}

/// A per-process id, so two processes with one pod name never share a claim.
fn rand_id() -> u32 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish() as u32
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    shared::telemetry::init_logging(&cli.log);
    let run = |r: anyhow::Result<()>| {
        shared::runtime::exit_code("backup", r.map_err(|e| format!("{e:#}")))
    };
    match cli.command {
        Command::Run(args) => run(function(*args, Mode::Run).await),
        Command::Serve {
            serve,
            function: args,
        } => run(function(*args, Mode::from(&serve)).await),
        Command::Completions { shell } => {
            shared::cli::completions::<Cli>(shell, &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Copy {
            source,
            target,
            registries,
            concurrency,
            referrers,
            quiet,
            all_platforms: _,
        } => {
            use std::io::IsTerminal as _;
            let show = !quiet && std::io::stderr().is_terminal();
            match backup::copy_cmd::run(&source, &target, &registries, concurrency, referrers, show)
                .await
            {
                Ok(line) => {
                    println!("{line}");
                    ExitCode::SUCCESS
                }
                Err(message) => {
                    eprintln!("backup copy: {message}");
                    ExitCode::from(1)
                }
            }
        }
    }
}
