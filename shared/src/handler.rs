//! What a function's event handler is, apart from any transport: a [`Handler`] takes one
//! typed event and returns an [`Outcome`] (events to publish, maybe a retry) or an error whose
//! [`Classified::class`] decides what the transport does with the input. The two adapters —
//! [`crate::consumer`] (JetStream) and [`crate::serve`] (HTTP, Knative) — drive the same
//! handler, so a handler is tested without either.

use std::future::Future;
use std::time::Duration;

use crate::error::ErrorClass;
use crate::events::Payload;

/// What handling an event produced.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Events to publish before the input is acked.
    pub events: Vec<Payload>,
    /// Some of the work must be tried again later (e.g. one image of several is claimed by
    /// another worker): the input is Nak'ed with this delay after the events are published.
    pub retry_after: Option<Duration>,
}

/// An error a handler returns; its class decides the acknowledgement.
pub trait Classified: std::fmt::Display {
    /// The class of the failure.
    fn class(&self) -> ErrorClass;
}

/// A function's event handler: transport-free (`CloudEvent in -> effects + events out`).
pub trait Handler: Clone + Send + Sync + 'static {
    /// Its error type.
    type Error: Classified + Send;
    /// Handles one event. `delivered` is how many times it was delivered (1 the first time).
    fn handle(
        &self,
        event: Payload,
        delivered: u64,
    ) -> impl Future<Output = Result<Outcome, Self::Error>> + Send;
}
