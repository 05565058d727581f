//! A stream adapter that hashes a blob while it flows from source to target and refuses to let
//! the last bytes through unless the digest and size match. Holding back one chunk means a
//! corrupt blob never completes its upload: the body errors before its end, the PUT fails, and
//! the engine cancels the session. (The registry checks the `?digest=` too; we do not rely on it.)

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use sha2::{Digest as _, Sha256};

/// What the stream found, read by the engine after the upload ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Still streaming.
    Pending,
    /// Every byte matched.
    Verified,
    /// The bytes did not match: (expected, actual).
    Corrupt(String, String),
    /// The source stream failed (connection cut): the cause.
    SourceFailed(String),
}

/// Boxed source stream.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, reqwest::Error>> + Send>>;

/// The verifying stream. See the module docs.
pub struct VerifyingStream {
    inner: ByteStream,
    hasher: Sha256,
    expected_digest: String,
    expected_size: u64,
    seen: u64,
    held: Option<Bytes>,
    verdict: Arc<Mutex<Verdict>>,
    on_bytes: Box<dyn Fn(u64) + Send + Sync>,
    finished: bool,
}

impl VerifyingStream {
    /// Wraps `inner`; `on_bytes` is called with the size of each chunk released.
    pub fn new(
        inner: ByteStream,
        expected_digest: &str,
        expected_size: u64,
        on_bytes: Box<dyn Fn(u64) + Send + Sync>,
    ) -> (Self, Arc<Mutex<Verdict>>) {
        let verdict = Arc::new(Mutex::new(Verdict::Pending));
        (
            Self {
                inner,
                hasher: Sha256::new(),
                expected_digest: expected_digest.to_string(),
                expected_size,
                seen: 0,
                held: None,
                verdict: verdict.clone(),
                on_bytes,
                finished: false,
            },
            verdict,
        )
    }

    fn set(&self, v: Verdict) {
        if let Ok(mut guard) = self.verdict.lock() {
            *guard = v;
        }
    }

    fn fail(&mut self, v: Verdict) -> Poll<Option<Result<Bytes, std::io::Error>>> {
        let message = format!("{v:?}");
        self.set(v);
        self.finished = true;
        self.held = None;
        Poll::Ready(Some(Err(std::io::Error::other(message))))
    }

    fn release(&mut self, chunk: Bytes) -> Poll<Option<Result<Bytes, std::io::Error>>> {
        (self.on_bytes)(chunk.len() as u64);
        Poll::Ready(Some(Ok(chunk)))
    }
}

impl Stream for VerifyingStream {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.finished {
                return match this.held.take() {
                    Some(chunk) => this.release(chunk),
                    None => Poll::Ready(None),
                };
            }
            match this.inner.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => {
                    this.hasher.update(&chunk);
                    this.seen += chunk.len() as u64;
                    if this.seen > this.expected_size {
                        let (expected, actual) = (
                            format!("{} bytes", this.expected_size),
                            format!("more than {} bytes", this.seen - 1),
                        );
                        return this.fail(Verdict::Corrupt(expected, actual));
                    }
                    if let Some(previous) = this.held.replace(chunk) {
                        return this.release(previous);
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    return this.fail(Verdict::SourceFailed(super::response::transport_cause(&e)));
                }
                Poll::Ready(None) => {
                    let actual = format!(
                        "sha256:{}",
                        hex::encode(std::mem::take(&mut this.hasher).finalize())
                    );
                    if this.seen != this.expected_size {
                        return this.fail(Verdict::Corrupt(
                            format!("{} bytes", this.expected_size),
                            format!("{} bytes", this.seen),
                        ));
                    }
                    if actual != this.expected_digest {
                        let expected = this.expected_digest.clone();
                        return this.fail(Verdict::Corrupt(expected, actual));
                    }
                    this.set(Verdict::Verified);
                    this.finished = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn source(chunks: Vec<&'static [u8]>) -> ByteStream {
        Box::pin(futures::stream::iter(
            chunks.into_iter().map(|c| Ok(Bytes::from_static(c))),
        ))
    }

    fn digest(b: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(b)))
    }

    async fn drain(s: VerifyingStream) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        let mut errored = false;
        let mut s = s;
        while let Some(item) = s.next().await {
            match item {
                Ok(b) => out.extend_from_slice(&b),
                Err(_) => {
                    errored = true;
                    break;
                }
            }
        }
        (out, errored)
    }

    #[tokio::test]
    async fn good_bytes_pass_whole() {
        let counted = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let c = counted.clone();
        let (s, verdict) = VerifyingStream::new(
            source(vec![b"hello ", b"world"]),
            &digest(b"hello world"),
            11,
            Box::new(move |n| {
                c.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            }),
        );
        let (out, errored) = drain(s).await;
        assert_eq!((out.as_slice(), errored), (&b"hello world"[..], false));
        assert_eq!(*verdict.lock().unwrap(), Verdict::Verified);
        assert_eq!(counted.load(std::sync::atomic::Ordering::Relaxed), 11);
    }

    #[tokio::test]
    async fn a_flipped_byte_never_reaches_the_end() {
        let (s, verdict) = VerifyingStream::new(
            source(vec![b"hello ", b"worle"]),
            &digest(b"hello world"),
            11,
            Box::new(|_| {}),
        );
        let (out, errored) = drain(s).await;
        assert!(errored);
        assert_eq!(out, b"hello ", "the last chunk is held back");
        assert!(matches!(*verdict.lock().unwrap(), Verdict::Corrupt(..)));
    }

    #[tokio::test]
    async fn wrong_sizes_and_cut_sources() {
        let (s, v) = VerifyingStream::new(
            source(vec![b"hello world!"]),
            &digest(b"hello world"),
            11,
            Box::new(|_| {}),
        );
        assert!(drain(s).await.1);
        assert!(matches!(*v.lock().unwrap(), Verdict::Corrupt(..)));
        let (s, v) = VerifyingStream::new(
            source(vec![b"hello"]),
            &digest(b"hello world"),
            11,
            Box::new(|_| {}),
        );
        assert!(drain(s).await.1);
        assert!(matches!(*v.lock().unwrap(), Verdict::Corrupt(..)));
    }
}
