//! Kubernetes Events, recorded the same way by every function: events.k8s.io/v1 Events as
//! kube-runtime's `Recorder` and client-go write them (a repeat within [`SERIES_TTL`] of the
//! same Event extends its `series` instead of creating another), the note bounded (the API
//! server refuses notes over 1 KiB), a failure to record logged at debug and otherwise
//! ignored — an Event is a courtesy to the person running `kubectl describe`, never a reason
//! to fail work.
//!
//! Not kube-runtime's `Recorder`: it keeps every Event it published for six minutes and walks
//! all of them on every publish, so a rollout of 10,000 workloads (one `RolledOut` Event each)
//! held about 37 MB of Events and spent CPU quadratic in their number. Here only what a repeat
//! needs is kept (the Event's name and count, by what makes two Events the same), at most
//! [`SERIES_CAPACITY`] of them ([`crate::recent::Recent`]).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};

use crate::recent::Recent;

pub use kube::runtime::events::EventType;

/// The longest note kept, in bytes (kube-apiserver refuses notes over 1,024 bytes).
pub const NOTE_CAP: usize = 1000;
/// How long after an Event a repeat of it extends its series (client-go's and kube-runtime's
/// six minutes).
pub const SERIES_TTL: Duration = Duration::from_secs(6 * 60);
/// The most series remembered at once: past it, the oldest are forgotten (a repeat then
/// starts a new Event).
pub const SERIES_CAPACITY: usize = 4096;
/// The longest an Event's write is waited for: the work that records it is never held up
/// longer by a slow API server (the client's own read timeout is minutes).
pub const RECORD_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a function's Kubernetes Events go: a port, so a handler that records Events is
/// tested with an in-memory fake. [`KubeEvents`] is the real one.
pub trait Events: Send + Sync + 'static {
    /// Records one Event about `about`: `reason` (a CamelCase word) and `note` (cut to
    /// [`NOTE_CAP`]); a failure is only logged.
    fn record(
        &self,
        about: &ObjectReference,
        type_: EventType,
        reason: &str,
        note: &str,
    ) -> impl Future<Output = ()> + Send;
}

/// `note` cut to at most [`NOTE_CAP`] bytes, at a character's boundary (a registry's error
/// in the note may be any text).
fn capped(note: &str) -> &str {
    let mut end = note.len().min(NOTE_CAP);
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    &note[..end]
}

/// What makes two Events the same (a repeat extends the first one's series): client-go's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SeriesKey {
    warning: bool,
    reason: String,
    note: String,
    kind: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
    uid: Option<String>,
}

/// A recorded Event a repeat extends: its name and how often it happened.
#[derive(Debug, Clone)]
struct Series {
    name: String,
    count: i32,
}

/// Events written through the API as `controller` (`image-backup-backup`), all with one
/// `action` (what the function was doing: `Backup`, `RollOut`, `PlanBackup`). Cheap to clone:
/// clones share the series.
#[derive(Clone)]
pub struct KubeEvents {
    client: kube::Client,
    controller: String,
    instance: String,
    action: &'static str,
    series: Arc<Mutex<Recent<SeriesKey, Series>>>,
}

impl KubeEvents {
    /// Events reported by `controller`, naming `instance` (the pod or claim holder) when
    /// known, through `client`.
    pub fn for_function(
        client: kube::Client,
        controller: &str,
        instance: Option<String>,
        action: &'static str,
    ) -> Self {
        Self {
            client,
            controller: controller.into(),
            instance: instance.unwrap_or_else(|| controller.into()),
            action,
            series: Arc::new(Mutex::new(Recent::new(SERIES_TTL, SERIES_CAPACITY))),
        }
    }

    /// The Event first recorded for `key` (a new series).
    fn first(&self, about: &ObjectReference, key: &SeriesKey, now: Timestamp) -> K8sEvent {
        K8sEvent {
            metadata: ObjectMeta {
                namespace: about.namespace.clone(),
                // client-go's and kube-runtime's names: unique per nanosecond.
                name: Some(format!(
                    "{}.{:x}",
                    about.name.as_deref().unwrap_or(&self.controller),
                    now.as_nanosecond()
                )),
                ..ObjectMeta::default()
            },
            action: Some(self.action.into()),
            reason: Some(key.reason.clone()),
            note: Some(key.note.clone()),
            type_: Some(if key.warning { "Warning" } else { "Normal" }.into()),
            event_time: Some(MicroTime(now)),
            regarding: Some(about.clone()),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..K8sEvent::default()
        }
    }

    /// Records the Event, extending its series when it repeats one: the recorded Event's
    /// series, or `Err` with the API's answer.
    async fn publish(
        &self,
        about: &ObjectReference,
        key: &SeriesKey,
    ) -> Result<Series, kube::Error> {
        let api: Api<K8sEvent> = Api::namespaced(
            self.client.clone(),
            about.namespace.as_deref().unwrap_or("default"),
        );
        let now = Timestamp::now();
        let repeat = self
            .series
            .lock()
            .ok()
            .and_then(|s| s.get(key, Instant::now()).cloned());
        if let Some(series) = repeat {
            let count = series.count.saturating_add(1);
            let patch = serde_json::json!({
                "series": EventSeries { count, last_observed_time: MicroTime(now) }
            });
            match api
                .patch(&series.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    return Ok(Series {
                        name: series.name,
                        count,
                    });
                }
                // Gone (expired, deleted): this repeat starts a new series.
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let event = self.first(about, key, now);
        let name = event.metadata.name.clone().unwrap_or_default();
        api.create(&PostParams::default(), &event).await?;
        Ok(Series { name, count: 1 })
    }
}

impl Events for KubeEvents {
    async fn record(&self, about: &ObjectReference, type_: EventType, reason: &str, note: &str) {
        let key = SeriesKey {
            warning: matches!(type_, EventType::Warning),
            reason: reason.into(),
            note: capped(note).into(),
            kind: about.kind.clone(),
            namespace: about.namespace.clone(),
            name: about.name.clone(),
            uid: about.uid.clone(),
        };
        let published = tokio::time::timeout(RECORD_TIMEOUT, self.publish(about, &key)).await;
        match published.unwrap_or_else(|_| {
            Err(kube::Error::Service(
                format!("no answer within {RECORD_TIMEOUT:?}").into(),
            ))
        }) {
            Ok(series) => {
                if let Ok(mut s) = self.series.lock() {
                    s.insert(key, series, Instant::now());
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, reason, "cannot record the event");
                if let Ok(mut s) = self.series.lock() {
                    s.remove(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_note_is_cut_to_the_byte_cap_at_a_character_boundary() {
        assert_eq!(capped("short"), "short");
        let long = "é".repeat(NOTE_CAP);
        let cut = capped(&long);
        assert!(cut.len() <= NOTE_CAP && cut.len() >= NOTE_CAP - 1);
        assert!(cut.chars().all(|c| c == 'é'));
        assert_eq!(capped(&"x".repeat(5000)).len(), NOTE_CAP);
    }
}
