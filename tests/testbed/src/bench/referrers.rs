//! The referrers benchmark: an image with three referrers (cosign's `.sig` and `.att` tags and
//! an SBOM in the referrers tag schema) copied cold by `backup copy --referrers all` and
//! `--referrers none` (median of N runs each, a fresh target every run), and the requests a warm
//! copy makes per referrer source it checks. Prints Markdown for docs/benchmarks.md.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context as _, bail};

use super::median;
use crate::referrers::{add_to_tag_schema, push_artifact, push_cosign_tag};
use crate::{FaultProxy, Format, ImageSpec, Pusher, Registry};

/// Runs `backup copy` once; returns (seconds, the summary line as JSON).
fn backup_copy(
    bin: &Path,
    source: &str,
    target: &str,
    insecure: &str,
    referrers: &str,
) -> anyhow::Result<(f64, serde_json::Value)> {
    let started = Instant::now();
    let out = std::process::Command::new(bin)
        .args([
            "copy",
            source,
            target,
            "--insecure-registry",
            insecure,
            "--referrers",
            referrers,
            "--quiet",
        ])
        .output()
        .with_context(|| format!("run {}", bin.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "backup copy failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((seconds, serde_json::from_slice(&out.stdout)?))
}

/// The round trip of the "remote" registries of the warm comparison.
const REMOTE_RTT: std::time::Duration = std::time::Duration::from_millis(10);

/// Runs the benchmark with `runs` cold copies per mode of `bin` (`backup`); returns Markdown.
pub async fn run(bin: &Path, runs: usize) -> anyhow::Result<String> {
    let src = Registry::start().await?;
    let pusher = Pusher::new(&src.host(), None);
    let spec = ImageSpec::multi_arch(Format::Oci, 3, 1024 * 1024, 7);
    let image = pusher.push_image("bench/app", "1", &spec).await?;
    push_cosign_tag(&pusher, "bench/app", &image.digest, "sig", &[7u8; 512]).await?;
    push_cosign_tag(&pusher, "bench/app", &image.digest, "att", &[8u8; 4096]).await?;
    let top_size = image
        .manifests
        .iter()
        .find(|(d, _, _)| *d == image.digest)
        .map_or(0, |(_, _, b)| b.len() as u64);
    let sbom = push_artifact(
        &pusher,
        "bench/app",
        None,
        "application/spdx+json",
        "application/spdx+json",
        &[9u8; 64 * 1024],
        Some((&image.digest, &image.media_type, top_size)),
    )
    .await?;
    add_to_tag_schema(&pusher, "bench/app", &image.digest, &sbom.descriptor).await?;
    let source = format!("{}/bench/app:1", src.host());

    let mut rows = String::from(
        "| copy | referrers | median seconds | referrers copied |\n|---|---|---|---|\n",
    );
    for mode in ["all", "none"] {
        let mut times = Vec::new();
        let mut copied = 0;
        for _ in 0..runs.max(1) {
            let dst = Registry::start().await?;
            let insecure = format!("{},{}", src.host(), dst.host());
            let target = format!("{}/bk/app:1", dst.host());
            let (seconds, summary) = backup_copy(bin, &source, &target, &insecure, mode)?;
            times.push(seconds);
            copied = summary["referrersCopied"].as_u64().unwrap_or(0);
        }
        rows.push_str(&format!(
            "| cold | {mode} | {:.3} | {copied} |\n",
            median(times)
        ));
    }

    // Warm, timed: the target complete, `all` against `none` in the same run.
    let dst = Registry::start().await?;
    let insecure = format!("{},{}", src.host(), dst.host());
    let target = format!("{}/bk/app:1", dst.host());
    backup_copy(bin, &source, &target, &insecure, "all")?;
    for mode in ["all", "none"] {
        let mut times = Vec::new();
        for _ in 0..runs.max(1) {
            times.push(backup_copy(bin, &source, &target, &insecure, mode)?.0);
        }
        rows.push_str(&format!("| warm | {mode} | {:.4} | 0 |\n", median(times)));
    }

    // Warm, timed against registries a round trip away: both behind proxies that hold every
    // request back REMOTE_RTT, where round trips (not requests) decide.
    let src_far = FaultProxy::start(&src.host()).await?;
    let dst_far = FaultProxy::start(&dst.host()).await?;
    src_far.delay_requests(REMOTE_RTT);
    dst_far.delay_requests(REMOTE_RTT);
    let insecure = format!("{},{}", src_far.host(), dst_far.host());
    let far_source = format!("{}/bench/app:1", src_far.host());
    let far_target = format!("{}/bk/app:1", dst_far.host());
    let mut far = Vec::new();
    for mode in ["all", "none"] {
        let mut times = Vec::new();
        for _ in 0..runs.max(1) {
            times.push(backup_copy(bin, &far_source, &far_target, &insecure, mode)?.0);
        }
        far.push(median(times));
    }
    rows.push_str(&format!(
        "\nWarm, each registry {} ms away (every request held back that long by a proxy): `all` {:.4} s, `none` {:.4} s = {:.2}x.\n",
        REMOTE_RTT.as_millis(),
        far[0],
        far[1],
        far[0] / far[1].max(f64::EPSILON)
    ));

    // Warm: every request through counting proxies.
    let dst = Registry::start().await?;
    let src_proxy = FaultProxy::start(&src.host()).await?;
    let dst_proxy = FaultProxy::start(&dst.host()).await?;
    let insecure = format!("{},{}", src_proxy.host(), dst_proxy.host());
    let source = format!("{}/bench/app:1", src_proxy.host());
    let target = format!("{}/bk/app:1", dst_proxy.host());
    backup_copy(bin, &source, &target, &insecure, "all")?;
    src_proxy.reset_requests();
    dst_proxy.reset_requests();
    let (seconds, warm) = backup_copy(bin, &source, &target, &insecure, "all")?;
    let requests = src_proxy.requests().len() + dst_proxy.requests().len();
    // Per manifest of the image and per referrer with a subject: the referrers API and the tag
    // schema; per manifest of the image: cosign's three tags.
    let own = image.manifests.len();
    let sources = (own + 1) * 2 + own * 3;
    rows.push_str(&format!(
        "\nWarm copy (everything present): {requests} requests ({} to the source, {} to the target) for {sources} referrer sources checked = {:.2} per source; {} referrers found present; {seconds:.3} s.\n",
        src_proxy.requests().len(),
        dst_proxy.requests().len(),
        requests as f64 / sources as f64,
        warm["referrersPresent"].as_u64().unwrap_or(0)
    ));
    Ok(rows)
}
