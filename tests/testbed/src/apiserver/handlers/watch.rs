//! Watch: synthetic ADDED events or the history after a resourceVersion, then live changes;
//! BOOKMARKs, `sendInitialEvents` (refused, as with kube-apiserver's WatchList off, when a test
//! turns it off), `timeoutSeconds`, 410 as an ERROR event, and the cut fault.

use super::*;

/// One watch event: a JSON line, or a length-prefixed protobuf frame.
pub(super) fn watch_event(kind: &str, object: Value, protobuf: bool) -> Bytes {
    if protobuf {
        let frame = super::super::protobuf::watch_frame(kind, &object).or_else(|| {
            let status = ApiError::internal(format!(
                "{} {} has no protobuf form",
                object["apiVersion"], object["kind"]
            ))
            .status();
            super::super::protobuf::watch_frame("ERROR", &status)
        });
        return Bytes::from(frame.unwrap_or_default());
    }
    json_line(kind, &object)
}

/// A JSON watch event line for `object` as it is, without copying it.
fn json_line(kind: &str, object: &Value) -> Bytes {
    let mut line = Vec::with_capacity(4096);
    line.extend_from_slice(b"{\"type\":\"");
    line.extend_from_slice(kind.as_bytes());
    line.extend_from_slice(b"\",\"object\":");
    if serde_json::to_writer(&mut line, object).is_err() {
        return Bytes::new();
    }
    line.extend_from_slice(b"}\n");
    Bytes::from(line)
}

pub(super) async fn watch(
    state: &Arc<ApiState>,
    target: &Target,
    query: &BTreeMap<String, String>,
    table: bool,
    protobuf: bool,
) -> Result<Response> {
    let watch_list = state
        .faults
        .lock()
        .map(|f| !f.no_watch_list)
        .unwrap_or(true);
    super::super::validation::watch_options(query, watch_list)?;
    let protobuf = protobuf
        && !table
        && super::super::protobuf::has_form(&target.resource.api_version(), &target.resource.kind);
    let filter = Filter::from_query(query, &target.resource)?;
    let filter_live = Filter::from_query(query, &target.resource)?;
    let resource = target.resource.clone();
    let storage_key = resource.storage_key();
    let namespace = target.namespace.clone();
    let bookmarks = is_true(query.get("allowWatchBookmarks"));
    // `sendInitialEvents` given decides; without it, a watch from "" or "0" starts with the
    // current objects and one from a resourceVersion with the history after it.
    let asked_initial = query.get("sendInitialEvents").map(|v| v == "true");
    let initial_events = asked_initial == Some(true);
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let cut_after = state.faults.lock().ok().and_then(|f| f.cut_watches_after);
    let rv_param = query.get("resourceVersion").cloned().unwrap_or_default();

    // Under the store lock: the initial events and a subscription, so nothing falls between.
    let (initial, mut live, start_rv, mut epoch) = {
        let store = state.store()?;
        let live = store.subscribe();
        let epoch = store.epoch();
        let start_rv = store.resource_version();
        let from_now = rv_param.is_empty() || rv_param == "0";
        let synthetic = asked_initial.unwrap_or(from_now);
        let initial: std::result::Result<Vec<(ChangeType, Value)>, ApiError> = if synthetic {
            Ok(store
                .list(&storage_key, namespace.as_deref())
                .into_iter()
                .map(|o| (ChangeType::Added, o))
                .collect())
        } else if from_now {
            Ok(Vec::new())
        } else {
            match rv_param.parse::<u64>() {
                Ok(rv) => store.since(&storage_key, rv).map(|changes| {
                    changes
                        .into_iter()
                        .filter(|c| {
                            c.storage_key == storage_key
                                && namespace.as_ref().is_none_or(|ns| *ns == c.namespace)
                        })
                        .map(|c| (c.kind, c.object.clone()))
                        .collect()
                }),
                Err(_) => Err(ApiError::bad_request(format!(
                    "invalid resourceVersion {rv_param:?}"
                ))),
            }
        };
        (initial, live, start_rv, epoch)
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    let query = query.clone();
    let render = move |kind: ChangeType, object: Value| -> Option<Bytes> {
        let object = with_version(object, &resource);
        if !filter.matches(&object) {
            return None;
        }
        let object = if table {
            to_table(&resource, &[object], &query, None)
        } else {
            object
        };
        Some(watch_event(kind.as_str(), object, protobuf))
    };
    // A change goes out as stored (its JSON line shared by every watch) unless this watch
    // wants a table, protobuf or another version of it (events.k8s.io's view of an Event).
    let as_stored = {
        let api_version = target.resource.api_version();
        let plain = !table && !protobuf && !events::is_events_v1(&target.resource);
        move |object: &Value| plain && object["apiVersion"] == api_version.as_str()
    };
    let bookmark_kind = target.resource.kind.clone();
    let bookmark_version = target.resource.api_version();
    tokio::spawn(async move {
        let mut sent = 0usize;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last_rv = start_rv;
        let bookmark = |rv: u64, end: bool| {
            let mut meta = json!({"resourceVersion": rv.to_string()});
            if end {
                meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
            }
            watch_event(
                "BOOKMARK",
                json!({"kind": bookmark_kind, "apiVersion": bookmark_version, "metadata": meta}),
                protobuf,
            )
        };
        match initial {
            Err(e) => {
                let _ = tx.send(watch_event("ERROR", e.status(), protobuf)).await;
                return;
            }
            Ok(events) => {
                for (kind, object) in events {
                    if let Some(line) = render(kind, object) {
                        if tx.send(line).await.is_err() {
                            return;
                        }
                        sent += 1;
                        if cut_after.is_some_and(|n| sent >= n) {
                            return;
                        }
                    }
                }
            }
        }
        if initial_events && bookmarks && tx.send(bookmark(start_rv, true)).await.is_err() {
            return;
        }
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                _ = epoch.changed() => return,
                _ = ticker.tick(), if bookmarks => {
                    if tx.send(bookmark(last_rv, false)).await.is_err() { return; }
                }
                change = live.recv() => {
                    let change = match change {
                        Ok(c) => c,
                        // The server stopping, or a watcher that cannot keep up (`Lagged`):
                        // closed as kube-apiserver's cacher closes one ("Forcing watcher close
                        // due to unresponsiveness"), with no error event; the client watches
                        // again from the last resourceVersion it saw (410 Gone only if the
                        // history no longer holds it).
                        Err(_) => return,
                    };
                    last_rv = change.rv;
                    if change.rv <= start_rv || change.storage_key != storage_key || namespace.as_ref().is_some_and(|ns| *ns != change.namespace) {
                        continue;
                    }
                    let line = if as_stored(&change.object) {
                        filter_live.matches(&change.object).then(|| {
                            change.json_line.get_or_init(|| json_line(change.kind.as_str(), &change.object)).clone()
                        })
                    } else {
                        render(change.kind, change.object.clone())
                    };
                    if let Some(line) = line {
                        if tx.send(line).await.is_err() { return; }
                        sent += 1;
                        if cut_after.is_some_and(|n| sent >= n) { return; }
                    }
                }
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(
            header::CONTENT_TYPE,
            if protobuf {
                super::super::protobuf::WATCH_MEDIA_TYPE
            } else {
                "application/json"
            },
        )
        .header("transfer-encoding", "chunked")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| ApiError::invalid("response").into_response()))
}
