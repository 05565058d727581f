//! `watcher plan`: the offline dry run. It reads workload YAML and prints what `watcher run`
//! would publish for it — the same planning, no cluster, no NATS — as JSON lines (the contract)
//! or a table for people. Users put it in CI.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use shared::NamingPolicy;
use shared::events::Payload;
use shared::workload::Workload;

/// `watcher plan`'s output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// JSON lines (the contract).
    Json,
    /// An aligned table.
    Table,
}

fn read(path: &Path) -> std::io::Result<String> {
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        Ok(s)
    } else {
        std::fs::read_to_string(path)
    }
}

/// Prints what `watcher run` would publish for the workloads in `files` (`-`: stdin), as
/// JSON lines or as a table, to stdout; problems go to stderr. Exit code 1 when a file cannot
/// be read or a document or image reference is invalid (the valid ones are still printed).
pub fn plan(files: &[PathBuf], naming: &NamingPolicy, output: Output) -> ExitCode {
    let mut failed = false;
    let mut rows = Vec::new();
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
            if output == Output::Table {
                rows.extend(crate::table::rows(&w, naming));
            }
            // The same planning `watcher run` does (no ServiceAccount is known offline).
            let plan = w.plan_with_secrets(None, naming);
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
            if output == Output::Table {
                continue;
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
    if output == Output::Table {
        print!("{}", crate::table::render(&rows));
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
