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

/// What the transport knows of one delivery, apart from the event: how many times it has been
/// delivered (1 the first time; JetStream's count, or the `serve` adapter's own per event id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered(pub u64);

impl Delivered {
    /// The first delivery (a handler called directly, as by a test or the requests controller).
    pub const FIRST: Delivered = Delivered(1);

    /// Whether the event was delivered before.
    pub fn is_redelivery(self) -> bool {
        self.0 > 1
    }
}

/// A function's event handler: transport-free (`CloudEvent in -> effects + events out`).
pub trait Handler: Clone + Send + Sync + 'static {
    /// The events it takes, typed, so the handler needs no arm for the others.
    type Event: Send + 'static;
    /// Its error type.
    type Error: Classified + Send;
    /// The event this handler takes out of a payload; `None` for any other type, which the
    /// adapters acknowledge untouched (the consumer's subject filter and the Triggers keep
    /// those away; an HTTP sender may not).
    fn accept(payload: Payload) -> Option<Self::Event>;
    /// Handles one event.
    fn handle(
        &self,
        event: Self::Event,
        delivered: Delivered,
    ) -> impl Future<Output = Result<Outcome, Self::Error>> + Send;
}
