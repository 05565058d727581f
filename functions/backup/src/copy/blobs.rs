//! One blob to the target: already there (skipped), mounted from another repository of the
//! target registry where this process last saw it, or streamed from the source through the
//! verifying hash and uploaded; transient failures of the whole transfer retried within the
//! budget.

use std::sync::Arc;

use tokio::sync::watch;

use super::client::{self, UploadStart};
use super::manifest::BlobRef;
use super::verify::{Verdict, VerifyingStream};
use super::{Copier, CopyError, LOCATION_CACHE, Progress, Repo, stall};

/// How one blob got to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BlobOutcome {
    Skipped,
    Mounted,
    Uploaded,
}

impl Copier {
    pub(super) fn known_location(&self, registry: &str, digest: &str) -> Option<String> {
        self.locations
            .lock()
            .ok()?
            .get(&(registry.to_string(), digest.to_string()))
            .cloned()
    }

    pub(super) fn remember(&self, dst: &Repo, digest: &str) {
        if let Ok(mut map) = self.locations.lock() {
            if map.len() >= LOCATION_CACHE {
                map.clear();
            }
            map.insert((dst.registry.clone(), digest.to_string()), dst.path.clone());
        }
    }

    /// Gets one blob to the target: skip, mount or verified upload, retrying transient failures
    /// of the whole transfer within the retry budget.
    pub(super) async fn move_blob(
        &self,
        src: &Repo,
        dst: &Repo,
        blob: &BlobRef,
        progress: &watch::Sender<Progress>,
    ) -> Result<BlobOutcome, CopyError> {
        match self
            .client
            .blob_size(dst, &blob.digest, client::Access::Push)
            .await?
        {
            Some(size) if size == blob.size => {
                self.remember(dst, &blob.digest);
                return Ok(BlobOutcome::Skipped);
            }
            // A HEAD that reports another size is not trusted: the verified upload settles it.
            Some(size) => tracing::debug!(
                digest = %blob.digest,
                declared = blob.size,
                reported = size,
                "target reports another size; uploading"
            ),
            None => {}
        }
        // Where the target registry already has this blob: a repository this process saw it
        // in, or the source repository itself when source and target share a registry.
        let mount_from = self
            .known_location(&dst.registry, &blob.digest)
            .or_else(|| (src.registry == dst.registry).then(|| src.path.clone()))
            .filter(|path| *path != dst.path)
            .map(|path| Repo {
                registry: dst.registry.clone(),
                path,
            });
        let policy = self.client.retry_policy().clone();
        let mut attempt = 0;
        loop {
            let mount = mount_from
                .as_ref()
                .filter(|_| attempt == 0)
                .map(|from| (blob.digest.as_str(), from));
            let session = match self.client.start_upload(dst, mount).await? {
                UploadStart::Mounted => {
                    self.remember(dst, &blob.digest);
                    return Ok(BlobOutcome::Mounted);
                }
                UploadStart::Session(location) => location,
            };
            match self.upload(src, dst, blob, &session, progress).await {
                Ok(()) => {
                    self.remember(dst, &blob.digest);
                    return Ok(BlobOutcome::Uploaded);
                }
                Err(e) => {
                    self.client.cancel_upload(dst, &session).await;
                    let transient = matches!(
                        e.class().disposition(),
                        shared::error::Disposition::Transient
                    );
                    attempt += 1;
                    if !transient || attempt >= policy.max_attempts {
                        return Err(e.with_attempts(attempt));
                    }
                    tracing::debug!(digest = %blob.digest, error = %e, attempt, "retrying blob");
                    tokio::time::sleep(policy.delay(attempt - 1, None)).await;
                }
            }
        }
    }

    /// One streamed, verified transfer into an open upload session.
    async fn upload(
        &self,
        src: &Repo,
        dst: &Repo,
        blob: &BlobRef,
        session: &str,
        progress: &watch::Sender<Progress>,
    ) -> Result<(), CopyError> {
        let resp = self.client.get_blob(src, &blob.digest).await?;
        if let Some(len) = resp.content_length()
            && len != blob.size
        {
            return Err(CopyError::Corrupt {
                what: format!("blob {} of {}", blob.digest, src.path),
                expected: format!("{} bytes", blob.size),
                actual: format!("{len} bytes"),
            });
        }
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = sent.clone();
        let progress_tx = progress.clone();
        let meter = Arc::new(stall::Meter::default());
        let (stream, verdict) = VerifyingStream::new(
            Box::pin(stall::Metered::new(
                Box::pin(resp.bytes_stream()),
                meter.clone(),
            )),
            &blob.digest,
            blob.size,
            Box::new(move |n| {
                counter.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                progress_tx.send_modify(|p| p.bytes_done += n);
            }),
        );
        let transfer = self.client.finish_upload(
            dst,
            session,
            &blob.digest,
            blob.size,
            reqwest::Body::wrap_stream(stream),
        );
        let policy = self.client.stall_policy();
        let result = match stall::watch(transfer, &meter, policy, blob.size).await {
            Ok(result) => result,
            Err(stall) => {
                let n = sent.load(std::sync::atomic::Ordering::Relaxed);
                progress.send_modify(|p| p.bytes_done = p.bytes_done.saturating_sub(n));
                let registry = match stall.side {
                    stall::Side::Source => &src.registry,
                    stall::Side::Target => &dst.registry,
                };
                return Err(CopyError::Stalled {
                    side: stall.side.as_str(),
                    registry: registry.clone(),
                    what: format!("blob {}", blob.digest),
                    moved: stall.moved,
                    window_seconds: policy.window.as_secs(),
                    min_bytes: policy.min_bytes,
                    attempts: 1,
                });
            }
        };
        let verdict = verdict
            .lock()
            .map(|v| v.clone())
            .unwrap_or(Verdict::Pending);
        let undo_progress = || {
            let n = sent.load(std::sync::atomic::Ordering::Relaxed);
            progress.send_modify(|p| p.bytes_done = p.bytes_done.saturating_sub(n));
        };
        match (verdict, result) {
            (Verdict::Corrupt(expected, actual), _) => {
                undo_progress();
                Err(CopyError::Corrupt {
                    what: format!("blob {} from {src}", blob.digest),
                    expected,
                    actual,
                })
            }
            (Verdict::SourceFailed(cause), _) => {
                undo_progress();
                Err(CopyError::Unavailable {
                    registry: src.registry.clone(),
                    what: format!("blob {}", blob.digest),
                    attempts: 1,
                    cause,
                })
            }
            (Verdict::Verified, Ok(())) => Ok(()),
            (_, Err(e)) => {
                undo_progress();
                Err(e)
            }
            (Verdict::Pending, Ok(())) => {
                undo_progress();
                Err(CopyError::Protocol {
                    registry: dst.registry.clone(),
                    what: format!("upload blob {}", blob.digest),
                    status: 201,
                    message: "the registry accepted the upload before the whole blob was sent"
                        .into(),
                })
            }
        }
    }
}
