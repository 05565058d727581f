//! `testbed`: starts the real services of the test bed on loopback for a person to play with.
//!
//! `testbed up` starts nats-server (JetStream), a source registry, a backup registry and an
//! htpasswd-protected registry, prints their endpoints, and stops them all on Ctrl-C.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use testbed::{Credentials, Format, ImageSpec, NatsServer, Registry, RegistryOptions};

/// The image-backup test bed: real NATS and registries on loopback.
#[derive(Debug, Parser)]
#[command(name = "testbed", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start nats-server, three registries (source, backup, auth) and the test API server (with
    /// the ImageBackup CRD installed), print the endpoints and a kubeconfig path, and run until
    /// Ctrl-C or SIGTERM.
    Up,
    /// The whole flow, start to finish: a test cluster, sample workloads, watcher, backup and
    /// rollout as processes, what a person would watch; exits 0 only if both workloads end on
    /// their verified backups. Build the workspace first (`./dev demo` does).
    Demo {
        /// Leave everything running afterwards (prints the kubeconfig and NATS URL).
        #[arg(long)]
        keep: bool,
    },
    /// Run the test Kubernetes API server on ADDR and write a kubeconfig for it (kubectl and
    /// kube-rs work against it unchanged); runs until Ctrl-C or SIGTERM.
    Apiserver {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:6443")]
        listen: std::net::SocketAddr,
        /// Where to write the kubeconfig.
        #[arg(long)]
        kubeconfig: std::path::PathBuf,
        /// Do not simulate Deployments and DaemonSets becoming Ready.
        #[arg(long)]
        no_simulation: bool,
    },
    /// The watcher's start-up on many Ready workloads: seconds until every event is stored,
    /// Kubernetes API requests made, peak RSS; prints a Markdown table row.
    BenchWatcher {
        /// Workloads (every fourth a DaemonSet).
        #[arg(long, default_value_t = 1200)]
        workloads: usize,
        /// Namespaces.
        #[arg(long, default_value_t = 50)]
        namespaces: usize,
        /// Distinct images.
        #[arg(long, default_value_t = 100)]
        images: usize,
    },
    /// The whole flow at scale: watcher, backup and rollout on Ready workloads in 50 namespaces
    /// referencing distinct small images; seconds until all run their backups, copies, API
    /// requests and NATS messages per workload, peak RSS and CPU seconds of each function
    /// (Markdown rows). Workloads look as clusters hold them (labels, annotations, an app and a
    /// sidecar with probes, env, resources), with `managedFields`, unless `--bare`.
    BenchScale {
        /// Workload counts to run, one row each.
        #[arg(long, value_delimiter = ',', default_value = "120,1200")]
        workloads: Vec<usize>,
        /// Distinct images.
        #[arg(long, default_value_t = 100)]
        images: usize,
        /// The rollout's MAX_CONCURRENT_ROLLOUTS values to run each size with (0: no limit).
        #[arg(long, value_delimiter = ',', default_value = "0")]
        max_concurrent_rollouts: Vec<usize>,
        /// One bare container per workload (the objects of earlier runs).
        #[arg(long)]
        bare: bool,
        /// The functions' INITIAL_LIST (auto, streaming, paged).
        #[arg(long, value_enum, default_value_t = shared::initial_list::InitialList::Auto)]
        initial_list: shared::initial_list::InitialList,
        /// The test API server refuses streaming lists, as kube-apiserver with WatchList off.
        #[arg(long)]
        no_watch_list: bool,
    },
    /// The backup function: events for distinct images handled by 2 `backup run` processes,
    /// against the sum of one-shot `backup copy` times; prints a Markdown table.
    BenchBackup {
        /// Distinct images.
        #[arg(long, default_value_t = 20)]
        images: usize,
        /// Events (spread over the images).
        #[arg(long, default_value_t = 100)]
        events: usize,
        /// Size of each per-platform layer, KiB (3 platforms × 3 layers, plus a shared base
        /// of half that).
        #[arg(long, default_value_t = 4096)]
        layer_kib: usize,
        /// NATS nodes: 1 (one server) or 3 (a JetStream cluster, the stream replicated 3×).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
        nats_nodes: u8,
    },
    /// Copies of an image with three referrers: cold with `--referrers all` against `none`, and
    /// the requests of a warm copy per referrer source checked (Markdown for
    /// docs/benchmarks.md).
    BenchReferrers {
        /// Cold copies per mode (median is reported).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// The backup binary to time (default: next to this binary).
        #[arg(long)]
        backup: Option<std::path::PathBuf>,
    },
    /// Peak RSS of `backup copy` against every mode of the hostile registry (build with
    /// `--release` first); prints a Markdown table for docs/benchmarks.md.
    BenchHostile {
        /// The backup binary to measure (default: next to this binary).
        #[arg(long)]
        backup: Option<std::path::PathBuf>,
    },
    /// Benchmark `backup copy` against `skopeo copy` on four image shapes (and, cold, against
    /// the raw-bytes floor, `move-bytes`), and its warm copy with referrers against
    /// `--referrers none` (build with `--release` first); prints Markdown tables for
    /// docs/benchmarks.md.
    BenchCopy {
        /// Runs per cold measurement (median is reported); warm ones run five times as often.
        #[arg(long, default_value_t = 5)]
        runs: u32,
        /// Only this shape (small, medium, many, large).
        #[arg(long)]
        only: Option<String>,
        /// The backup binary to time (default: next to this binary).
        #[arg(long)]
        backup: Option<std::path::PathBuf>,
        /// Both registries serve HTTPS (each with a certificate of its own test CA), as
        /// registries on the internet do; plain HTTP otherwise.
        #[arg(long)]
        https: bool,
    },
    /// Generate an image (random layers, an OCI index over linux/amd64 and linux/arm64/v8) and
    /// push it to a plain-HTTP registry, such as `testbed up`'s source, as
    /// `HOST/REPOSITORY:TAG`; prints its digest. For trying the flow with no internet registry
    /// at hand.
    PushImage {
        /// Where to push: `127.0.0.1:5000/team/web:1.0`.
        reference: String,
        /// Random layers per platform.
        #[arg(long, default_value_t = 2)]
        layers: usize,
        /// KiB per random layer.
        #[arg(long, default_value_t = 512)]
        layer_kib: usize,
        /// One platform (linux/amd64), a single manifest with no index.
        #[arg(long)]
        single: bool,
        /// Seed of the random layers: the same seed, the same image; another seed, another.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// The copy benchmark's raw-bytes floor: move an image (`host/repo:tag`) to another
    /// registry with no verification or checks of any kind — a measuring instrument, never a
    /// way to back anything up. Plain HTTP, or HTTPS with `--ca-file`.
    MoveBytes {
        source: String,
        target: String,
        /// Blobs moved at once (`backup copy`'s default).
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Speak HTTPS to both registries, trusting the CA certificates in this PEM file.
        #[arg(long)]
        ca_file: Option<std::path::PathBuf>,
    },
}

async fn up() -> anyhow::Result<()> {
    let nats = NatsServer::start().await.context("starting nats-server")?;
    let source = Registry::start()
        .await
        .context("starting the source registry")?;
    let backup = Registry::start()
        .await
        .context("starting the backup registry")?;
    let creds = Credentials {
        username: "testbed".into(),
        password: "testbed-password".into(),
    };
    let auth = Registry::start_with(RegistryOptions {
        htpasswd: Some(creds.clone()),
        ..Default::default()
    })
    .await
    .context("starting the auth registry")?;
    let apiserver = testbed::ApiServer::start()
        .await
        .context("starting the test API server")?;
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    apiserver.write_kubeconfig(&kubeconfig)?;
    apiserver
        .install_imagebackup_crd()
        .await
        .context("installing the ImageBackup CRD")?;
    let env = [
        ("NATS_URL", nats.url()),
        ("KUBECONFIG", kubeconfig.display().to_string()),
        ("BACKUP_REGISTRY", format!("{}/backup", backup.host())),
        (
            "INSECURE_REGISTRIES",
            format!("{},{},{}", source.host(), backup.host(), auth.host()),
        ),
    ];
    // The same variables as a file a shell sources, for the functions and kubectl run in other
    // terminals.
    let env_file = dir.path().join("env.sh");
    let exports: String = env
        .iter()
        .map(|(name, value)| format!("export {name}={}\n", testbed::tools::sh_quote(value)))
        .collect();
    std::fs::write(&env_file, exports).context("writing env.sh")?;
    let endpoints = serde_json::json!({
        "nats": {"url": nats.url(), "version": nats.version()},
        "apiserver": {"url": apiserver.url(), "kubeconfig": kubeconfig},
        "registries": {
            "source": source.host(),
            "backup": backup.host(),
            "auth": {"host": auth.host(), "username": creds.username, "password": creds.password},
        },
        "env": env
            .iter()
            .map(|(name, value)| (name.to_string(), serde_json::Value::from(value.as_str())))
            .collect::<serde_json::Map<_, _>>(),
        "env_file": env_file,
    });
    println!("{}", serde_json::to_string_pretty(&endpoints)?);
    eprintln!(
        "testbed: running; Ctrl-C stops everything.\n\
         In another terminal: . {}\n\
         An image to back up: testbed push-image {}/team/web:1.0",
        env_file.display(),
        source.host()
    );
    wait_for_signal().await?;
    eprintln!("testbed: stopping");
    Ok(())
}

/// Pushes a generated image to `reference` (a registry host, a repository and a tag, checked
/// as the product checks image references) over plain HTTP.
async fn push_image(reference: &str, spec: &ImageSpec) -> anyhow::Result<testbed::PushedImage> {
    let parsed = shared::reference::Reference::parse(reference)
        .with_context(|| format!("{reference}: expected HOST/REPOSITORY:TAG"))?;
    let (Some(tag), None, false) = (parsed.tag(), parsed.digest(), parsed.domain().is_empty())
    else {
        anyhow::bail!(
            "{reference}: expected HOST/REPOSITORY:TAG (a registry host, a tag, no digest)"
        );
    };
    testbed::Pusher::new(parsed.domain(), None)
        .push_image(parsed.path(), tag, spec)
        .await
        .with_context(|| format!("pushing to {reference}"))
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}

async fn apiserver(
    listen: std::net::SocketAddr,
    kubeconfig: &std::path::Path,
    no_simulation: bool,
) -> anyhow::Result<()> {
    let server = testbed::ApiServer::start_on(listen).await?;
    server.simulate_workloads(!no_simulation);
    server.write_kubeconfig(kubeconfig)?;
    println!(
        "{}",
        serde_json::json!({"server": server.url(), "https": server.https_url(), "kubeconfig": kubeconfig})
    );
    eprintln!(
        "testbed apiserver: serving {} and {} (the kubeconfig's, as admin); KUBECONFIG={} kubectl get ns",
        server.url(),
        server.https_url(),
        kubeconfig.display()
    );
    wait_for_signal().await
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Up => up().await,
        Command::Apiserver {
            listen,
            kubeconfig,
            no_simulation,
        } => apiserver(listen, &kubeconfig, no_simulation).await,
        Command::BenchCopy {
            runs,
            only,
            backup,
            https,
        } => {
            let bin = backup.unwrap_or_else(testbed::bench::default_backup_binary);
            let report = testbed::bench::run(&bin, runs.max(1), only.as_deref(), https).await?;
            println!("{report}");
            Ok(())
        }
        Command::PushImage {
            reference,
            layers,
            layer_kib,
            single,
            seed,
        } => {
            let spec = if single {
                ImageSpec::single(Format::Oci, layers, layer_kib * 1024, seed)
            } else {
                ImageSpec::multi_arch(Format::Oci, layers, layer_kib * 1024, seed)
            };
            let pushed = push_image(&reference, &spec).await?;
            println!(
                "{}@{} ({} blob bytes)",
                pushed.reference,
                pushed.digest,
                pushed.blob_bytes()
            );
            Ok(())
        }
        Command::MoveBytes {
            source,
            target,
            concurrency,
            ca_file,
        } => {
            let ca = match &ca_file {
                Some(path) => Some(
                    std::fs::read_to_string(path)
                        .with_context(|| format!("--ca-file {}", path.display()))?,
                ),
                None => None,
            };
            let moved =
                testbed::bench::floor::move_image(&source, &target, concurrency, ca.as_deref())
                    .await?;
            println!("{moved} blob bytes moved");
            Ok(())
        }
        Command::Demo { keep } => testbed::demo::run(keep).await,
        Command::BenchWatcher {
            workloads,
            namespaces,
            images,
        } => {
            let shape = testbed::bench::watcher::Shape {
                workloads,
                namespaces: namespaces.max(1),
                images: images.max(1),
            };
            println!(
                "| workloads | namespaces | images | seconds until all stored | API requests | peak RSS (MiB) |\n|---|---|---|---|---|---|"
            );
            print!("{}", testbed::bench::watcher::run(shape).await?);
            Ok(())
        }
        Command::BenchScale {
            workloads,
            images,
            max_concurrent_rollouts,
            bare,
            initial_list,
            no_watch_list,
        } => {
            println!(
                "| workloads | images | rollout limit | initial lists | seconds until all rolled out | peak rolling out at once | copies | API requests per workload | NATS messages per workload | peak RSS watcher / backup / rollout (MiB) | CPU seconds watcher / backup / rollout |\n|---|---|---|---|---|---|---|---|---|---|---|"
            );
            for n in workloads {
                for &limit in &max_concurrent_rollouts {
                    let shape = testbed::bench::scale::Shape {
                        workloads: n.max(1),
                        namespaces: 50,
                        images: images.max(1),
                        max_concurrent_rollouts: limit,
                        realistic: !bare,
                        initial_list,
                        watch_list: !no_watch_list,
                    };
                    print!("{}", testbed::bench::scale::run(shape).await?);
                }
            }
            Ok(())
        }
        Command::BenchBackup {
            images,
            events,
            layer_kib,
            nats_nodes,
        } => {
            println!(
                "| run | sum of `backup copy` (s) | until all Completed (s) | overhead | API writes per image | peak RSS per worker (MiB) |\n|---|---|---|---|---|---|"
            );
            print!(
                "{}",
                testbed::bench::backup::run(testbed::bench::backup::Shape {
                    images: images.max(1),
                    events: events.max(1),
                    layer_kib: layer_kib.max(1),
                    nats_nodes: usize::from(nats_nodes),
                })
                .await?
            );
            Ok(())
        }
        Command::BenchReferrers { runs, backup } => {
            let bin = backup.unwrap_or_else(testbed::bench::default_backup_binary);
            print!("{}", testbed::bench::referrers::run(&bin, runs).await?);
            Ok(())
        }
        Command::BenchHostile { backup } => {
            let bin = backup.unwrap_or_else(testbed::bench::default_backup_binary);
            println!("{}", testbed::bench::run_hostile(&bin).await?);
            Ok(())
        }
    }
}
