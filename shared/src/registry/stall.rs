//! The minimum-throughput watchdog of a blob transfer. A source that drips a byte every 20 s
//! never trips a read timeout, and a target that stops reading holds a copy forever; both are
//! caught here: the bytes taken from the source are counted, and a transfer that moves fewer
//! than [`StallPolicy::min_bytes`] in a [`StallPolicy::window`] is abandoned.
//!
//! Which side stalled is known from where the transfer waits: if the last poll of the source
//! stream returned `Pending`, we were waiting for the source; otherwise the source had bytes
//! ready and the target did not take them (back-pressure stopped the polling).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;

/// The slowest transfer we keep waiting for.
#[derive(Debug, Clone)]
pub struct StallPolicy {
    /// How long a measurement window is.
    pub window: Duration,
    /// Bytes a transfer must move in each window (until its last byte).
    pub min_bytes: u64,
}

impl Default for StallPolicy {
    /// 64 KiB per 30 s (about 2 KiB/s): far below any working link, far above a drip.
    fn default() -> Self {
        Self {
            window: Duration::from_secs(30),
            min_bytes: 64 * 1024,
        }
    }
}

/// Which end of a transfer stopped moving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The source did not send.
    Source,
    /// The target did not take.
    Target,
}

impl Side {
    /// `source` or `target`, for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Source => "source",
            Side::Target => "target",
        }
    }
}

/// A transfer that fell below the minimum: who stalled and how much moved in the last window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stall {
    /// The side that stalled.
    pub side: Side,
    /// Bytes moved in the last window.
    pub moved: u64,
}

/// What the watchdog reads: bytes received from the source, and whether we are waiting on it.
#[derive(Debug, Default)]
pub struct Meter {
    received: AtomicU64,
    waiting_on_source: AtomicBool,
}

/// A source stream that reports to a [`Meter`].
pub struct Metered<S> {
    inner: S,
    meter: Arc<Meter>,
}

impl<S> Metered<S> {
    /// Wraps `inner`; the meter is shared with [`watch`].
    pub fn new(inner: S, meter: Arc<Meter>) -> Self {
        Self { inner, meter }
    }
}

impl<S, T, E> Stream for Metered<S>
where
    S: Stream<Item = Result<T, E>> + Unpin,
    T: AsRef<[u8]>,
{
    type Item = Result<T, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let poll = Pin::new(&mut self.inner).poll_next(cx);
        let waiting = poll.is_pending();
        self.meter
            .waiting_on_source
            .store(waiting, Ordering::Relaxed);
        if let Poll::Ready(Some(Ok(chunk))) = &poll {
            self.meter
                .received
                .fetch_add(chunk.as_ref().len() as u64, Ordering::Relaxed);
        }
        poll
    }
}

/// Runs `transfer` of `total` bytes, abandoning it (dropping the future, which aborts its
/// requests) when a window passes with fewer than the minimum bytes moved before the last one.
pub async fn watch<F: Future>(
    transfer: F,
    meter: &Meter,
    policy: &StallPolicy,
    total: u64,
) -> Result<F::Output, Stall> {
    let window = policy.window.max(Duration::from_millis(10));
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + window, window);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(transfer);
    let mut last = 0u64;
    loop {
        tokio::select! {
            biased;
            out = &mut transfer => return Ok(out),
            _ = ticks.tick() => {
                let now = meter.received.load(Ordering::Relaxed);
                let moved = now.saturating_sub(last);
                if moved < policy.min_bytes && now < total {
                    let side = if meter.waiting_on_source.load(Ordering::Relaxed) {
                        Side::Source
                    } else {
                        Side::Target
                    };
                    return Err(Stall { side, moved });
                }
                last = now;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn policy() -> StallPolicy {
        StallPolicy {
            window: Duration::from_secs(30),
            min_bytes: 100,
        }
    }

    /// A source that sends one byte every 20 s.
    fn drip() -> impl Stream<Item = Result<Vec<u8>, ()>> + Unpin {
        Box::pin(futures::stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_secs(20)).await;
            Some((Ok(vec![0u8]), ()))
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn a_drip_fed_source_is_named_as_the_stalled_side() {
        let meter = Arc::new(Meter::default());
        let mut source = Metered::new(drip(), meter.clone());
        let transfer = async move { while source.next().await.is_some() {} };
        let stall = watch(transfer, &meter, &policy(), 1_000_000)
            .await
            .unwrap_err();
        assert_eq!(stall.side, Side::Source);
        assert!(stall.moved < 100);
    }

    #[tokio::test(start_paused = true)]
    async fn a_target_that_stops_reading_is_named_as_the_stalled_side() {
        let meter = Arc::new(Meter::default());
        let mut source = Metered::new(
            futures::stream::iter(vec![Ok::<_, ()>(vec![0u8; 10])]),
            meter.clone(),
        );
        let transfer = async move {
            // Takes one chunk, then never reads again (a target that stopped).
            let _ = source.next().await;
            std::future::pending::<()>().await;
        };
        let stall = watch(transfer, &meter, &policy(), 1_000_000)
            .await
            .unwrap_err();
        assert_eq!(stall.side, Side::Target);
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_transfer_and_a_finished_one_are_left_alone() {
        let meter = Arc::new(Meter::default());
        let mut source = Metered::new(
            Box::pin(futures::stream::unfold(0, |n| async move {
                if n == 10 {
                    return None;
                }
                tokio::time::sleep(Duration::from_secs(10)).await;
                Some((Ok::<_, ()>(vec![0u8; 1000]), n + 1))
            })),
            meter.clone(),
        );
        let transfer = async move {
            let mut n = 0;
            while let Some(Ok(c)) = source.next().await {
                n += c.len();
            }
            n
        };
        assert_eq!(watch(transfer, &meter, &policy(), 10_000).await, Ok(10_000));
    }
}
