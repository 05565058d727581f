//! `backup copy`: one image copied once, from the command line, by the same engine the
//! function uses — no cluster, no NATS. Prints the copy's summary as JSON; a progress display on
//! a terminal.

use shared::config::RegistryArgs;
use shared::reference::Reference;

use crate::copy::{Copier, ReferrersMode, RegistryClient};

/// Copies `source` to `target` once, as `backup copy` does: both references checked, the
/// credentials of `--docker-config`, the copy engine with its progress drawn on stderr when
/// `show_progress`. `Ok`: the copy's summary as one JSON line; `Err`: `<Class>: <message>`.
pub async fn run(
    source: &str,
    target: &str,
    registries: &RegistryArgs,
    concurrency: usize,
    referrers: ReferrersMode,
    show_progress: bool,
) -> Result<String, String> {
    let source = Reference::parse_normalized(source)
        .map_err(|e| format!("Invalid: source {source:?}: {e}"))?
        .with_default_tag();
    let target = Reference::parse_normalized(target)
        .map_err(|e| format!("Invalid: target {target:?}: {e}"))?
        .with_default_tag();
    registries
        .check_backup_host(target.domain())
        .map_err(|e| format!("Invalid: {e}"))?;
    let credentials = registries
        .load_docker_config()
        .map_err(|e| format!("Invalid: {e}"))?;
    let options = registries
        .client_options(credentials, None)
        .map_err(|e| format!("Invalid: {e}"))?;
    let client = RegistryClient::new(options).map_err(|e| format!("{}: {e}", e.class()))?;
    let copier = Copier::new(client, concurrency).with_referrers(referrers);
    let (progress, display) = if show_progress {
        let (tx, rx) = tokio::sync::watch::channel(crate::copy::Progress::default());
        (Some(tx), Some(tokio::spawn(crate::progress::display(rx))))
    } else {
        (None, None)
    };
    let result = copier.copy(&source, &target, progress).await;
    // The sender is gone with the copy: the display draws its last state and ends.
    if let Some(display) = display {
        let _ = display.await;
    }
    let summary = result.map_err(|e| format!("{}: {e}", e.class()))?;
    serde_json::to_string(&summary).map_err(|e| format!("Internal: {e}"))
}
