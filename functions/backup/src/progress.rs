//! The progress display of `backup copy` on a terminal (indicatif, on stderr): bytes with rate
//! and ETA, and blobs done out of total with how many were skipped (already there), mounted
//! (from another backup repository) and uploaded. Nothing here runs when stderr is not a
//! terminal, so scripts see only the JSON summary on stdout.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::watch;

use crate::copy::Progress;

/// The text after the bar: `blobs 5/8: 2 skipped, 1 mounted, 2 uploaded, 3 moving`.
pub fn blobs_message(p: &Progress) -> String {
    let done = p.blobs_copied + p.blobs_mounted + p.blobs_skipped;
    format!(
        "blobs {done}/{}: {} skipped, {} mounted, {} uploaded, {} moving",
        p.blobs_total,
        p.blobs_skipped,
        p.blobs_mounted,
        p.blobs_copied,
        p.blobs_total.saturating_sub(done)
    )
}

/// Draws `progress` until its sender is dropped (the copy ended), then leaves the final line.
pub async fn display(mut progress: watch::Receiver<Progress>) {
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr_with_hz(10));
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    loop {
        let p = progress.borrow_and_update().clone();
        bar.set_length(p.bytes_total);
        bar.set_position(p.bytes_done.min(p.bytes_total));
        bar.set_message(blobs_message(&p));
        if progress.changed().await.is_err() {
            break;
        }
    }
    let p = progress.borrow().clone();
    bar.set_length(p.bytes_total.max(1));
    if p.blobs_total == 0 {
        // Nothing moved: the target already held this exact image (or the copy failed early;
        // then the error follows on stderr).
        bar.finish_and_clear();
    } else if p.blobs_copied + p.blobs_mounted + p.blobs_skipped == p.blobs_total {
        bar.set_position(p.bytes_total.max(1));
        bar.finish_with_message(format!("{} — 100%", blobs_message(&p)));
    } else {
        bar.abandon_with_message(blobs_message(&p));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_counts_every_kind_of_blob() {
        let p = Progress {
            blobs_total: 8,
            blobs_copied: 2,
            blobs_mounted: 1,
            blobs_skipped: 2,
            bytes_total: 100,
            bytes_done: 60,
        };
        assert_eq!(
            blobs_message(&p),
            "blobs 5/8: 2 skipped, 1 mounted, 2 uploaded, 3 moving"
        );
    }
}
