//! The functions' Kubernetes Events (`shared::kube_events`) through the test API server: a
//! repeat extends the first Event's series, a different note or object is its own Event, a
//! series whose Event is gone starts again, and a note too long for the API is cut.

use k8s_openapi::api::core::v1::{Event as CoreEvent, ObjectReference};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams};
use shared::kube_events::{EventType, Events, KubeEvents, NOTE_CAP};
use testbed::ApiServer;

fn about(name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("apps/v1".into()),
        kind: Some("Deployment".into()),
        namespace: Some("default".into()),
        name: Some(name.into()),
        uid: Some(format!("uid-{name}")),
        ..ObjectReference::default()
    }
}

/// (object, reason, note, series count) of every Event, sorted.
async fn recorded(events: &Api<Event>) -> Vec<(String, String, String, i32)> {
    let mut all: Vec<_> = events
        .list(&ListParams::default())
        .await
        .expect("list events")
        .items
        .into_iter()
        .map(|e| {
            (
                e.regarding.and_then(|r| r.name).unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default(),
                e.series.map_or(1, |s| s.count),
            )
        })
        .collect();
    all.sort();
    all
}

#[tokio::test]
async fn a_repeated_event_extends_its_series_and_a_new_one_is_created() {
    let server = ApiServer::start().await.expect("server");
    let client = server.client().expect("client");
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let recorder =
        KubeEvents::for_function(client.clone(), "image-backup-rollout", None, "RollOut");

    for _ in 0..3 {
        recorder
            .record(&about("web"), EventType::Normal, "RolledOut", "on backups")
            .await;
    }
    recorder
        .record(
            &about("web"),
            EventType::Normal,
            "RolledOut",
            "another note",
        )
        .await;
    recorder
        .record(
            &about("api"),
            EventType::Warning,
            "RollbackFailed",
            "on backups",
        )
        .await;
    assert_eq!(
        recorded(&events).await,
        [
            (
                "api".into(),
                "RollbackFailed".into(),
                "on backups".into(),
                1
            ),
            ("web".into(), "RolledOut".into(), "another note".into(), 1),
            ("web".into(), "RolledOut".into(), "on backups".into(), 3),
        ]
    );
    // The same Event as `kubectl describe` reads it (core/v1), written as client-go writes it.
    let core: Api<CoreEvent> = Api::namespaced(client.clone(), "default");
    let web = core
        .list(&ListParams::default())
        .await
        .expect("core events")
        .items
        .into_iter()
        .find(|e| {
            e.message.as_deref() == Some("on backups") && e.reason.as_deref() == Some("RolledOut")
        })
        .expect("web's event");
    assert_eq!(web.involved_object.name.as_deref(), Some("web"));
    assert_eq!(
        web.reporting_component.as_deref(),
        Some("image-backup-rollout")
    );
    assert_eq!(web.action.as_deref(), Some("RollOut"));

    // Its Event deleted (expired, or by a person): the next repeat records a new one.
    let name = web.metadata.name.expect("name");
    events
        .delete(&name, &DeleteParams::default())
        .await
        .expect("delete");
    recorder
        .record(&about("web"), EventType::Normal, "RolledOut", "on backups")
        .await;
    let after = recorded(&events).await;
    assert!(
        after.contains(&("web".into(), "RolledOut".into(), "on backups".into(), 1)),
        "{after:?}"
    );

    // A note longer than the API takes (in bytes, not characters) is cut, not refused.
    let long = "é".repeat(NOTE_CAP);
    recorder
        .record(&about("db"), EventType::Warning, "BackupFailed", &long)
        .await;
    let db: Vec<_> = recorded(&events)
        .await
        .into_iter()
        .filter(|(object, ..)| object == "db")
        .collect();
    assert_eq!(db.len(), 1, "{db:?}");
    assert!(db[0].2.len() <= NOTE_CAP && db[0].2.starts_with('é'));
}
