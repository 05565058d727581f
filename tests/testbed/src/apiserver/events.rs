//! core/v1 Events and events.k8s.io/v1 Events are two views of one store, as in
//! kube-apiserver: objects are kept in the core form and converted field by field when served
//! or written as events.k8s.io/v1 (`regarding` ↔ `involvedObject`, `note` ↔ `message`,
//! `reportingController` ↔ `reportingComponent`, `deprecated*` ↔ `count`, `source`,
//! `firstTimestamp`, `lastTimestamp`). So an Event a function records through kube-rs's
//! `Recorder` (events.k8s.io) shows in `kubectl describe` (core, by `involvedObject.*`).

use serde_json::{Map, Value};

use super::resources::Resource;

/// (events.k8s.io/v1 field, core/v1 field).
const RENAMES: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedCount", "count"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
];

/// Whether `resource` is the events.k8s.io view.
pub fn is_events_v1(resource: &Resource) -> bool {
    resource.group == "events.k8s.io" && resource.plural == "events"
}

fn rename(object: &mut Value, from_index: usize) {
    let Some(map) = object.as_object_mut() else {
        return;
    };
    let mut renamed = Map::new();
    for (events_name, core_name) in RENAMES {
        let (from, to) = if from_index == 0 {
            (*events_name, *core_name)
        } else {
            (*core_name, *events_name)
        };
        if let Some(v) = map.remove(from) {
            renamed.insert(to.to_string(), v);
        }
    }
    map.extend(renamed);
}

/// An events.k8s.io/v1 Event in the stored (core/v1) form.
pub fn to_core(mut event: Value) -> Value {
    rename(&mut event, 0);
    event
}

/// A stored (core/v1) Event as events.k8s.io/v1 serves it.
pub fn from_core(mut event: Value) -> Value {
    rename(&mut event, 1);
    event
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_two_views_round_trip() {
        let v1 = json!({"regarding": {"kind": "Deployment", "name": "web"}, "note": "copied",
                        "reportingController": "image-backup", "reason": "Completed",
                        "deprecatedCount": 2, "metadata": {"name": "e"}});
        let core = to_core(v1.clone());
        assert_eq!(core["involvedObject"]["name"], "web");
        assert_eq!(core["message"], "copied");
        assert_eq!(core["reportingComponent"], "image-backup");
        assert_eq!(core["count"], 2);
        assert_eq!(core["reason"], "Completed");
        assert_eq!(from_core(core), v1);
    }
}
