//! `Delivery<T>`: one JetStream message and its decoded value, with the acknowledgement made
//! explicit and idempotent (wadm's `ScopedMessage`, with the gaps filled): `ack` (double ack:
//! the server confirms it, retried), `nak` with a delay that grows with the delivery count,
//! `term`, and `in_progress` to keep a long piece of work from being redelivered. A `Delivery`
//! dropped without a decision sends a Nak (after a short delay), so an early return or a panic
//! never strands a message until its ack wait runs out.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind};

/// How many times an ack is tried before giving up (the message is then redelivered, which
/// every handler tolerates).
const ACK_TRIES: u32 = 3;
/// The Nak delay when a `Delivery` is dropped undecided.
const DROP_NAK_DELAY: Duration = Duration::from_secs(1);

/// The pause before the next delivery after `delivered` deliveries failed transiently: 1 s, 2 s,
/// 4 s, … up to `max`.
pub fn redelivery_delay(delivered: u64, max: Duration) -> Duration {
    let exp = Duration::from_secs(1).saturating_mul(1u32 << delivered.saturating_sub(1).min(16));
    exp.min(max)
}

/// A decoded JetStream message awaiting its acknowledgement.
pub struct Delivery<T> {
    /// The decoded value.
    pub value: T,
    /// How many times the server delivered this message (1 on the first delivery).
    pub delivered: u64,
    /// The subject it was published on.
    pub subject: String,
    message: Option<jetstream::Message>,
}

impl<T> std::fmt::Debug for Delivery<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("subject", &self.subject)
            .field("delivered", &self.delivered)
            .field("decided", &self.message.is_none())
            .finish()
    }
}

// === impl Delivery ===

impl<T> Delivery<T> {
    /// Wraps `message` with its decoded `value`.
    pub fn new(message: jetstream::Message, value: T) -> Self {
        let delivered = message
            .info()
            .map(|i| u64::try_from(i.delivered).unwrap_or(1))
            .unwrap_or(1);
        Self {
            value,
            delivered,
            subject: message.subject.to_string(),
            message: Some(message),
        }
    }

    /// Acknowledges the message (double ack, so the server confirms; retried). Later calls do
    /// nothing.
    pub async fn ack(&mut self) {
        if let Some(m) = self.message.take() {
            for attempt in 1..=ACK_TRIES {
                match tokio::time::timeout(crate::nats::REQUEST_TIMEOUT, m.double_ack()).await {
                    Ok(Ok(())) => return,
                    Ok(Err(e)) => tracing::debug!(error = %e, attempt, "ack failed"),
                    Err(_) => tracing::debug!(attempt, "ack timed out"),
                }
            }
            tracing::warn!(subject = %self.subject, "ack not confirmed; the message will be redelivered");
        }
    }

    /// Asks for redelivery after `delay`. Later calls do nothing.
    pub async fn nak(&mut self, delay: Duration) {
        if let Some(m) = self.message.take() {
            send(&m, AckKind::Nak(Some(delay))).await;
        }
    }

    /// Ends redelivery for good (the message can never be handled). Later calls do nothing.
    pub async fn term(&mut self) {
        if let Some(m) = self.message.take() {
            send(&m, AckKind::Term).await;
        }
    }

    /// Tells the server the work goes on (resets the ack wait). Does not decide.
    pub async fn in_progress(&self) {
        if let Some(m) = &self.message {
            send(m, AckKind::Progress).await;
        }
    }

    /// A handle that can send in-progress signals from another task while this one works.
    pub fn progress_handle(&self) -> Option<ProgressHandle> {
        self.message.clone().map(ProgressHandle)
    }
}

impl<T> Drop for Delivery<T> {
    fn drop(&mut self) {
        if let Some(m) = self.message.take()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            handle.spawn(async move { send(&m, AckKind::Nak(Some(DROP_NAK_DELAY))).await });
        }
    }
}

/// Sends in-progress for a message being worked on elsewhere.
#[derive(Clone)]
pub struct ProgressHandle(jetstream::Message);

impl ProgressHandle {
    /// Resets the message's ack wait.
    pub async fn in_progress(&self) {
        send(&self.0, AckKind::Progress).await;
    }
}

async fn send(m: &jetstream::Message, kind: AckKind) {
    match tokio::time::timeout(crate::nats::REQUEST_TIMEOUT, m.ack_with(kind)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "acknowledgement failed"),
        Err(_) => tracing::debug!("acknowledgement timed out"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redelivery_delays_grow_and_are_capped() {
        let max = Duration::from_secs(60);
        assert_eq!(redelivery_delay(1, max), Duration::from_secs(1));
        assert_eq!(redelivery_delay(2, max), Duration::from_secs(2));
        assert_eq!(redelivery_delay(4, max), Duration::from_secs(8));
        assert_eq!(redelivery_delay(40, max), max);
        assert_eq!(redelivery_delay(0, max), Duration::from_secs(1));
    }
}
