//! `backup`: the backup function's binary. For now the one-shot `backup copy`, which copies one
//! image, verified and byte-identical, and prints one JSON summary line.

use std::path::PathBuf;
use std::process::ExitCode;

use backup::copy::auth::DockerConfig;
use backup::copy::{ClientOptions, Copier, DEFAULT_CONCURRENCY, RegistryClient};
use clap::{Parser, Subcommand};
use shared::Reference;

/// Backs up images to the backup registry.
#[derive(Debug, Parser)]
#[command(name = "backup", version, about)]
struct Cli {
    #[command(flatten)]
    log: shared::config::LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Copy one image (every platform of an index), verifying every blob, and print a JSON
    /// summary: digest, media type, platforms, blobs copied/skipped/mounted, bytes, seconds.
    Copy {
        /// Source reference (`nginx:1.14.0`, `quay.io/a/b@sha256:…`).
        source: String,
        /// Target reference with a tag (`registry.local/backup/library_nginx:1.14.0`).
        target: String,
        /// Copy every platform of an index. Always on: a partial index would change the digest.
        #[arg(long, default_value_t = true)]
        all_platforms: bool,
        #[command(flatten)]
        registries: shared::config::RegistryArgs,
        /// How many blobs move at once.
        #[arg(long, env = "COPY_CONCURRENCY", default_value_t = DEFAULT_CONCURRENCY)]
        concurrency: usize,
    },
}

/// Reads the docker config without blocking the runtime.
async fn load_credentials(path: Option<&PathBuf>) -> anyhow::Result<DockerConfig> {
    let Some(path) = path else {
        return Ok(DockerConfig::default());
    };
    let bytes =
        tokio::fs::read(path)
            .await
            .map_err(|source| backup::copy::auth::ConfigError::Read {
                path: path.display().to_string(),
                source,
            })?;
    Ok(DockerConfig::from_json(
        &bytes,
        &path.display().to_string(),
    )?)
}

async fn copy(
    source: &str,
    target: &str,
    registries: &shared::config::RegistryArgs,
    concurrency: usize,
) -> Result<String, String> {
    let source = Reference::parse_normalized(source)
        .map_err(|e| format!("Invalid: source {source:?}: {e}"))?
        .with_default_tag();
    let target = Reference::parse_normalized(target)
        .map_err(|e| format!("Invalid: target {target:?}: {e}"))?
        .with_default_tag();
    let credentials = load_credentials(registries.docker_config.as_ref())
        .await
        .map_err(|e| format!("Invalid: {e}"))?;
    let client = RegistryClient::new(ClientOptions {
        insecure: registries.insecure_registries.iter().cloned().collect(),
        credentials,
        ..Default::default()
    })
    .map_err(|e| format!("{}: {e}", e.class()))?;
    let copier = Copier::new(client, concurrency);
    let summary = copier
        .copy(&source, &target, None)
        .await
        .map_err(|e| format!("{}: {e}", e.class()))?;
    serde_json::to_string(&summary).map_err(|e| format!("Internal: {e}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    shared::telemetry::init_logging(&cli.log);
    match cli.command {
        Command::Copy {
            source,
            target,
            registries,
            concurrency,
            all_platforms: _,
        } => match copy(&source, &target, &registries, concurrency).await {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(message) => {
                eprintln!("backup copy: {message}");
                ExitCode::from(1)
            }
        },
    }
}
