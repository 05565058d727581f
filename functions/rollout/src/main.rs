//! `rollout`: once every external image of a workload is backed up, patches the workload to the
//! backups, pinned by digest. The `run` and `serve` adapters arrive with the rollout issue; until
//! then the binary only documents its settings.

use clap::Parser;

/// Moves workloads onto their backup images once all of them are completed.
#[derive(Debug, Parser)]
#[command(name = "rollout", version, about)]
struct Cli {
    #[command(flatten)]
    nats: shared::config::NatsArgs,
    #[command(flatten)]
    log: shared::config::LogArgs,
}

fn main() -> std::process::ExitCode {
    let _cli = Cli::parse();
    eprintln!("rollout: no adapter is available in this version yet (see `rollout --help`)");
    std::process::ExitCode::from(2)
}
