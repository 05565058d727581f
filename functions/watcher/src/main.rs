//! `watcher`: finds the images of Ready Deployments and DaemonSets that are not yet in the backup
//! registry and announces them as `workload.changed` events.
//!
//! `watcher plan` is the offline dry run: it reads workload YAML and prints, as JSON lines, what
//! `watcher run` would publish, contacting nothing. Users put it in CI.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shared::config::BackupArgs;
use shared::events::Payload;
use shared::workload::Workload;

/// Watches Deployments and DaemonSets and announces images that need a backup.
#[derive(Debug, Parser)]
#[command(name = "watcher", version, about)]
struct Cli {
    #[command(flatten)]
    log: shared::config::LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print, as JSON lines, what would be published for the workloads in YAML files (contacts
    /// nothing). Exits 1 when an image reference or a document is invalid; valid images are
    /// still printed.
    Plan {
        /// Workload YAML (Deployment, DaemonSet, List; multi-document); `-` reads stdin.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        backup: BackupArgs,
    },
}

fn read(path: &PathBuf) -> std::io::Result<String> {
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        Ok(s)
    } else {
        std::fs::read_to_string(path)
    }
}

fn plan(files: &[PathBuf], backup: &BackupArgs) -> ExitCode {
    let naming = backup.naming();
    let mut failed = false;
    for path in files {
        let text = match read(path) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("watcher plan: cannot read {}: {e}", path.display());
                failed = true;
                continue;
            }
        };
        let (workloads, skipped) = Workload::from_yaml(&text);
        for s in skipped {
            eprintln!(
                "watcher plan: {}: skipping {s} (not a Deployment or DaemonSet)",
                path.display()
            );
        }
        for w in workloads {
            let w = match w {
                Ok(w) => w,
                Err(e) => {
                    eprintln!("watcher plan: {}: {e}", path.display());
                    failed = true;
                    continue;
                }
            };
            let plan = w.plan(&naming);
            let r = &plan.event.workload;
            for bad in &plan.invalid {
                eprintln!(
                    "watcher plan: {}: {:?} {}/{} container {:?}: invalid image {:?}: {}",
                    path.display(),
                    r.kind,
                    r.namespace,
                    r.name,
                    bad.container,
                    bad.image,
                    bad.error
                );
                failed = true;
            }
            let data = serde_json::to_value(&plan.event).unwrap_or_default();
            let payload = Payload::WorkloadChanged(plan.event);
            let line = serde_json::json!({
                "type": payload.event_type(),
                "subject": payload.subject(),
                "id": payload.id(),
                "data": data,
                "invalid": plan.invalid,
            });
            println!("{line}");
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    shared::telemetry::init_logging(&cli.log);
    match cli.command {
        Command::Plan { files, backup } => plan(&files, &backup),
    }
}
