//! Kubernetes Events, recorded the same way by every function: the note bounded (the API server
//! refuses notes over 1 KiB), a failure to record logged at debug and otherwise ignored — an
//! Event is a courtesy to the person running `kubectl describe`, never a reason to fail work.

use std::future::Future;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder};

/// The longest note kept, in characters (kube-apiserver's limit is 1 KiB).
pub const NOTE_CAP: usize = 1000;

/// Records one Event about `about`: `reason` (a CamelCase word), `note` (cut to [`NOTE_CAP`]),
/// `action` (what the function was doing: `Backup`, `RollOut`, `PlanBackup`).
pub async fn record(
    recorder: &Recorder,
    about: &ObjectReference,
    type_: EventType,
    reason: &str,
    action: &str,
    note: &str,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(NOTE_CAP).collect()),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, about).await {
        tracing::debug!(error = %e, reason, "cannot record the event");
    }
}

/// Where a function's Kubernetes Events go: a port, so a handler that records Events is
/// tested with an in-memory fake. [`KubeEvents`] is the real one.
pub trait Events: Send + Sync + 'static {
    /// Records one Event about `about` (as [`record`]: bounded note, failures only logged).
    fn record(
        &self,
        about: &ObjectReference,
        type_: EventType,
        reason: &str,
        note: &str,
    ) -> impl Future<Output = ()> + Send;
}

/// Events recorded through a `kube` [`Recorder`], all with one `action`.
#[derive(Clone)]
pub struct KubeEvents {
    recorder: Recorder,
    action: &'static str,
}

impl KubeEvents {
    /// Events from `recorder`, for the function doing `action` (`Backup`, `RollOut`,
    /// `PlanBackup`).
    pub fn new(recorder: Recorder, action: &'static str) -> Self {
        Self { recorder, action }
    }

    /// Events reported by `controller` (`image-backup-backup`), naming `instance` (the pod or
    /// claim holder) when known, through `client`.
    pub fn for_function(
        client: kube::Client,
        controller: &str,
        instance: Option<String>,
        action: &'static str,
    ) -> Self {
        let reporter = kube::runtime::events::Reporter {
            controller: controller.into(),
            instance,
        };
        Self::new(Recorder::new(client, reporter), action)
    }
}

impl Events for KubeEvents {
    async fn record(&self, about: &ObjectReference, type_: EventType, reason: &str, note: &str) {
        record(&self.recorder, about, type_, reason, self.action, note).await;
    }
}
