//! What the rollout decides for one workload, as a pure function of the workload and the
//! ImageBackups it can see: patch every external image at once (only when all of them are
//! Completed with a digest), wait, or report the Failed ones that block it. The external images
//! come from the shared plan ([`Workload::plan`]), the same rule the watcher uses.
//!
//! The patch is a JSON patch whose `test` operations pin the current image values, so a change
//! a user made in between makes the API server refuse it (422) instead of overwriting it.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use shared::NamingPolicy;
use shared::crd::{ImageBackup, Phase};
use shared::events::ContainerChange;
use shared::reference::Reference;
use shared::workload::{Workload, needs_backup};

/// The annotation that keeps the original images (JSON: container → image) for audit and for
/// the revert.
pub const ORIGINAL_IMAGES_ANNOTATION: &str = "k8slab.io/original-images";
/// The in-flight marker ([`InFlight`], JSON): written with the patch, removed once the workload
/// is Ready on its backups (or reverted, or changed by someone else). Counted for pacing and
/// watched by the health gate, so both survive restarts and span replicas.
pub const ROLLOUT_ANNOTATION: &str = "k8slab.io/rollout";
/// Set by a revert ([`Reverted`], JSON): the same rollout is not tried again.
pub const REVERTED_ANNOTATION: &str = "k8slab.io/reverted";

/// A rollout in flight, as recorded on the workload.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InFlight {
    /// When the patch was made (RFC 3339).
    pub started_at: String,
    /// Container → the backup image written into it.
    pub images: BTreeMap<String, String>,
    /// Why the workload's owner holds the rollout (`paused`, `OnDelete`): then it is not
    /// waited on, not counted for pacing and not reverted for slowness.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
}

/// A reverted rollout, as recorded on the workload.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reverted {
    /// The Pod reason or `Timeout`.
    pub reason: String,
    /// [`fingerprint`] of the changes that were reverted.
    pub fingerprint: String,
}

/// A fingerprint of a set of (container, from, to) changes: the same rollout has the same one,
/// a change of images or of backups (a new digest) another.
pub fn fingerprint<'a>(changes: impl IntoIterator<Item = &'a ContainerChange>) -> String {
    use sha2::Digest as _;
    let mut lines: Vec<String> = changes
        .into_iter()
        .map(|c| format!("{}\n{}\n{}\n", c.container, c.from, c.to))
        .collect();
    lines.sort();
    hex::encode(&sha2::Sha256::digest(lines.concat().as_bytes())[..16])
}

/// A workload's annotation, if set.
pub fn annotation<'a>(w: &'a Workload, key: &str) -> Option<&'a str> {
    let meta = match w {
        Workload::Deployment(d) => &d.metadata,
        Workload::DaemonSet(d) => &d.metadata,
    };
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

/// Why the workload's owner holds a rollout: a paused Deployment, an `OnDelete` DaemonSet.
pub fn holder(w: &Workload) -> Option<&'static str> {
    match w {
        Workload::Deployment(d) => d
            .spec
            .as_ref()
            .and_then(|s| s.paused)
            .unwrap_or(false)
            .then_some("paused"),
        Workload::DaemonSet(d) => d
            .spec
            .as_ref()
            .and_then(|s| s.update_strategy.as_ref())
            .and_then(|u| u.type_.as_deref())
            .filter(|t| *t == "OnDelete")
            .map(|_| "OnDelete"),
    }
}

/// How the backup image is written into the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Pin {
    /// `target:tag@sha256:…` (tag for people, digest for the pull); `target@digest` for
    /// digest-only sources.
    Digest,
    /// `target:tag`, as the original design did.
    Tag,
}

/// One container image to change.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// JSON pointer of the image field (`/spec/template/spec/containers/0/image`).
    pub path: String,
    /// The change, for events.
    pub change: ContainerChange,
    /// The backup's target (without digest), to check it still resolves.
    pub target: String,
    /// The digest the target must resolve to.
    pub digest: String,
}

/// An image whose backup failed, blocking its workload's rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedBackup {
    /// The normalized source.
    pub source: String,
    /// The ImageBackup's last error.
    pub error: String,
}

/// The rollout's decision for one workload.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Nothing external runs here (already rolled out, or only backup images).
    NothingToDo,
    /// The workload is not Ready: a broken rollout is not piled on.
    NotReady,
    /// Some images are not backed up yet.
    Waiting(Vec<String>),
    /// Some images failed to back up.
    Blocked(Vec<FailedBackup>),
    /// Every external image is Completed: change all of them, in one patch.
    Patch(Vec<Change>),
    /// This very rollout was reverted before (reason): not tried again until the images or the
    /// backups change.
    Reverted(String),
}

fn image_of(target: &Reference, source: &Reference, digest: &str, pin: Pin) -> String {
    let repo = target.repository();
    match (
        pin,
        target.tag(),
        source.tag().is_none() && source.digest().is_some(),
    ) {
        (Pin::Tag, Some(tag), _) => format!("{repo}:{tag}"),
        (Pin::Digest, _, true) | (_, None, _) => format!("{repo}@{digest}"),
        (Pin::Digest, Some(tag), false) => format!("{repo}:{tag}@{digest}"),
    }
}

/// Every container of a pod spec, initContainers first (the order they run in): the container,
/// whether it is an init container, and the JSON pointer of its image field.
fn containers(
    spec: &k8s_openapi::api::core::v1::PodSpec,
) -> impl Iterator<Item = (&k8s_openapi::api::core::v1::Container, bool, String)> {
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, c)| {
            (
                c,
                true,
                format!("/spec/template/spec/initContainers/{i}/image"),
            )
        });
    let main = spec.containers.iter().enumerate().map(|(i, c)| {
        (
            c,
            false,
            format!("/spec/template/spec/containers/{i}/image"),
        )
    });
    init.chain(main)
}

/// Decides for `workload`; `backup_of` finds the ImageBackup of a normalized source.
pub fn decide<'a>(
    workload: &Workload,
    naming: &NamingPolicy,
    pin: Pin,
    backup_of: impl Fn(&str) -> Option<&'a ImageBackup>,
) -> Decision {
    let Some(spec) = workload.pod_spec() else {
        return Decision::NothingToDo;
    };
    let mut changes = Vec::new();
    let mut waiting = Vec::new();
    let mut blocked = Vec::new();
    for (container, is_init, path) in containers(spec) {
        let image = container.image.clone().unwrap_or_default();
        // Invalid references are the watcher's to report; they are never rolled out.
        let Ok(Some(source)) = needs_backup(&image, naming) else {
            continue;
        };
        let Ok(target) = naming.target(&source) else {
            continue;
        };
        match backup_of(&source.to_string()) {
            Some(ib) if ib.phase() == Phase::Completed => {
                let Some(digest) = ib.status.as_ref().and_then(|s| s.digest.clone()) else {
                    waiting.push(source.to_string());
                    continue;
                };
                changes.push(Change {
                    path,
                    change: ContainerChange {
                        container: container.name.clone(),
                        init: is_init,
                        from: image.clone(),
                        to: image_of(&target, &source, &digest, pin),
                    },
                    target: target.to_string(),
                    digest,
                });
            }
            Some(ib) if ib.phase() == Phase::Failed => blocked.push(FailedBackup {
                source: source.to_string(),
                error: ib
                    .status
                    .as_ref()
                    .and_then(|s| s.last_error.clone())
                    .unwrap_or_default(),
            }),
            _ => waiting.push(source.to_string()),
        }
    }
    if changes.is_empty() && waiting.is_empty() && blocked.is_empty() {
        return Decision::NothingToDo;
    }
    if !workload.is_ready() {
        return Decision::NotReady;
    }
    if !blocked.is_empty() {
        return Decision::Blocked(blocked);
    }
    if !waiting.is_empty() {
        return Decision::Waiting(waiting);
    }
    if let Some(r) = annotation(workload, REVERTED_ANNOTATION)
        .and_then(|a| serde_json::from_str::<Reverted>(a).ok())
        && r.fingerprint == fingerprint(changes.iter().map(|c| &c.change))
    {
        return Decision::Reverted(r.reason);
    }
    Decision::Patch(changes)
}

/// A JSON pointer token for an annotation key (`/` and `~` escaped).
fn pointer(key: &str) -> String {
    format!(
        "/metadata/annotations/{}",
        key.replace('~', "~0").replace('/', "~1")
    )
}

/// Ops that set annotations, creating the map when the workload has none.
fn set_annotations(workload: &Workload, values: &[(&str, String)]) -> Vec<Value> {
    let has_annotations = match workload {
        Workload::Deployment(d) => d.metadata.annotations.is_some(),
        Workload::DaemonSet(d) => d.metadata.annotations.is_some(),
    };
    if has_annotations {
        values
            .iter()
            .map(|(k, v)| json!({"op": "add", "path": pointer(k), "value": v}))
            .collect()
    } else {
        let map: serde_json::Map<String, Value> = values
            .iter()
            .map(|(k, v)| ((*k).to_string(), Value::String(v.clone())))
            .collect();
        vec![json!({"op": "add", "path": "/metadata/annotations", "value": map})]
    }
}

/// The guarded JSON patch for `changes`: a `test` of each current image, its replacement, the
/// original images and the in-flight marker recorded in annotations on the workload (not the
/// pod template, so the images are the only template change and `kubectl rollout undo`
/// restores them), and `pull_secret` added to the template's `imagePullSecrets`.
pub fn json_patch(
    workload: &Workload,
    changes: &[Change],
    in_flight: &InFlight,
    pull_secret: Option<&str>,
) -> Value {
    let mut ops = Vec::new();
    for c in changes {
        ops.push(json!({"op": "test", "path": c.path, "value": c.change.from}));
        ops.push(json!({"op": "replace", "path": c.path, "value": c.change.to}));
    }
    if let Some(name) = pull_secret {
        let listed = workload
            .pod_spec()
            .and_then(|s| s.image_pull_secrets.as_ref())
            .is_some();
        if listed {
            ops.push(json!({"op": "add", "path": "/spec/template/spec/imagePullSecrets/-", "value": {"name": name}}));
        } else {
            ops.push(json!({"op": "add", "path": "/spec/template/spec/imagePullSecrets", "value": [{"name": name}]}));
        }
    }
    let originals: BTreeMap<&str, &str> = changes
        .iter()
        .map(|c| (c.change.container.as_str(), c.change.from.as_str()))
        .collect();
    let originals = serde_json::to_string(&originals).unwrap_or_default();
    let marker = serde_json::to_string(in_flight).unwrap_or_default();
    ops.extend(set_annotations(
        workload,
        &[
            (ORIGINAL_IMAGES_ANNOTATION, originals),
            (ROLLOUT_ANNOTATION, marker),
        ],
    ));
    Value::Array(ops)
}

/// The patch that ends a rollout's flight without touching anything else: the marker is
/// removed only if it is still `raw` (another replica may have ended it already).
pub fn end_flight_patch(raw: &str) -> Value {
    json!([
        {"op": "test", "path": pointer(ROLLOUT_ANNOTATION), "value": raw},
        {"op": "remove", "path": pointer(ROLLOUT_ANNOTATION)},
    ])
}

/// Whether the images a rollout wrote are still in the workload (nobody changed them since).
pub fn still_ours(workload: &Workload, in_flight: &InFlight) -> bool {
    let now: BTreeMap<String, String> = workload
        .images()
        .into_iter()
        .map(|c| (c.container, c.image))
        .collect();
    in_flight
        .images
        .iter()
        .all(|(container, image)| now.get(container) == Some(image))
}

/// The guarded patch that puts the original images back: for each container the rollout
/// wrote, a `test` that it still runs the backup and its original image from
/// [`ORIGINAL_IMAGES_ANNOTATION`]; the marker (tested) removed; [`REVERTED_ANNOTATION`] set.
/// Returns the patch and the changes (backup → original); `None` when nothing is left to revert.
pub fn revert_patch(
    workload: &Workload,
    raw: &str,
    in_flight: &InFlight,
    reason: &str,
) -> Option<(Value, Vec<ContainerChange>)> {
    let originals: BTreeMap<String, String> =
        serde_json::from_str(annotation(workload, ORIGINAL_IMAGES_ANNOTATION)?).ok()?;
    let spec = workload.pod_spec()?;
    let mut ops = Vec::new();
    let mut reverted = Vec::new();
    for (container, init, path) in containers(spec) {
        let (Some(backup), Some(original)) = (
            in_flight.images.get(&container.name),
            originals.get(&container.name),
        ) else {
            continue;
        };
        if container.image.as_deref() != Some(backup.as_str()) {
            continue;
        }
        ops.push(json!({"op": "test", "path": path, "value": backup}));
        ops.push(json!({"op": "replace", "path": path, "value": original}));
        reverted.push(ContainerChange {
            container: container.name.clone(),
            init,
            from: backup.clone(),
            to: original.clone(),
        });
    }
    if reverted.is_empty() {
        return None;
    }
    // The fingerprint of the rollout as `decide` will see it again: original -> backup.
    let forward: Vec<ContainerChange> = reverted
        .iter()
        .map(|c| ContainerChange {
            container: c.container.clone(),
            init: c.init,
            from: c.to.clone(),
            to: c.from.clone(),
        })
        .collect();
    let record = Reverted {
        reason: reason.to_string(),
        fingerprint: fingerprint(&forward),
    };
    ops.push(json!({"op": "test", "path": pointer(ROLLOUT_ANNOTATION), "value": raw}));
    ops.push(json!({"op": "remove", "path": pointer(ROLLOUT_ANNOTATION)}));
    ops.push(json!({"op": "add", "path": pointer(REVERTED_ANNOTATION), "value": serde_json::to_string(&record).unwrap_or_default()}));
    Some((Value::Array(ops), reverted))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::crd::ImageBackupStatus;

    const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    fn naming() -> NamingPolicy {
        NamingPolicy::flat("localhost:5000/backup".parse().unwrap())
    }

    fn workload(ready: bool) -> Workload {
        let status = if ready {
            "status: {observedGeneration: 1, replicas: 1, updatedReplicas: 1, readyReplicas: 1, availableReplicas: 1, conditions: [{type: Available, status: \"True\"}]}"
        } else {
            ""
        };
        let yaml = format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web, namespace: web, generation: 1}}\nspec:\n  replicas: 1\n  selector: {{matchLabels: {{app: w}}}}\n  template:\n    metadata: {{labels: {{app: w}}}}\n    spec:\n      initContainers: [{{name: init, image: \"busybox:1.36\"}}]\n      containers: [{{name: web, image: \"nginx:1.14.0\"}}, {{name: done, image: \"localhost:5000/backup/library_redis:7\"}}, {{name: pinned, image: \"alpine@{DIGEST}\"}}]\n{status}\n"
        );
        Workload::from_yaml(&yaml).0.remove(0).unwrap()
    }

    fn ib(phase: Phase, digest: Option<&str>) -> ImageBackup {
        let r = Reference::parse_normalized("x").unwrap();
        let mut ib = ImageBackup::for_source(&r, &r);
        ib.status = Some(ImageBackupStatus {
            phase: Some(phase),
            digest: digest.map(str::to_string),
            last_error: (phase == Phase::Failed).then(|| "NotFound: gone".to_string()),
            ..Default::default()
        });
        ib
    }

    #[test]
    fn every_external_image_completed_patches_all_at_once_pinned_by_digest() {
        let done = ib(Phase::Completed, Some(DIGEST));
        let d = decide(&workload(true), &naming(), Pin::Digest, |_| Some(&done));
        let Decision::Patch(changes) = d else {
            panic!("{d:?}")
        };
        let tos: Vec<_> = changes
            .iter()
            .map(|c| (c.path.as_str(), c.change.to.as_str()))
            .collect();
        assert_eq!(
            tos,
            [
                (
                    "/spec/template/spec/initContainers/0/image",
                    format!("localhost:5000/backup/library_busybox:1.36@{DIGEST}").as_str()
                ),
                (
                    "/spec/template/spec/containers/0/image",
                    format!("localhost:5000/backup/library_nginx:1.14.0@{DIGEST}").as_str()
                ),
                (
                    "/spec/template/spec/containers/2/image",
                    format!("localhost:5000/backup/library_alpine@{DIGEST}").as_str()
                ),
            ]
        );
        let d = decide(&workload(true), &naming(), Pin::Tag, |_| Some(&done));
        let Decision::Patch(changes) = d else {
            panic!("{d:?}")
        };
        assert_eq!(
            changes[1].change.to,
            "localhost:5000/backup/library_nginx:1.14.0"
        );
        let marker = InFlight {
            started_at: "2026-01-01T00:00:00Z".into(),
            images: BTreeMap::new(),
            held: None,
        };
        let patch = json_patch(&workload(true), &changes, &marker, None);
        assert_eq!(
            patch[0],
            json!({"op": "test", "path": "/spec/template/spec/initContainers/0/image", "value": "busybox:1.36"})
        );
        assert_eq!(patch.as_array().unwrap().len(), 7);
        assert_eq!(patch[6]["path"], "/metadata/annotations");
    }

    #[test]
    fn one_missing_or_failed_image_holds_the_whole_workload() {
        let done = ib(Phase::Completed, Some(DIGEST));
        let copying = ib(Phase::Copying, None);
        let failed = ib(Phase::Failed, None);
        let w = workload(true);
        let only_nginx_pending = |s: &str| {
            if s.contains("nginx") {
                Some(&copying)
            } else {
                Some(&done)
            }
        };
        assert!(
            matches!(decide(&w, &naming(), Pin::Digest, only_nginx_pending), Decision::Waiting(v) if v == ["docker.io/library/nginx:1.14.0"])
        );
        assert!(
            matches!(decide(&w, &naming(), Pin::Digest, |_| None), Decision::Waiting(v) if v.len() == 3)
        );
        let nginx_failed = |s: &str| {
            if s.contains("nginx") {
                Some(&failed)
            } else {
                Some(&done)
            }
        };
        assert!(
            matches!(decide(&w, &naming(), Pin::Digest, nginx_failed), Decision::Blocked(v) if v[0].error == "NotFound: gone")
        );
        assert_eq!(
            decide(&workload(false), &naming(), Pin::Digest, |_| Some(&done)),
            Decision::NotReady
        );
    }

    /// The patched workload as the API server would store it.
    fn patched(w: &Workload, patch: &Value) -> Workload {
        let mut v = match w {
            Workload::Deployment(d) => serde_json::to_value(d).unwrap(),
            Workload::DaemonSet(d) => serde_json::to_value(d).unwrap(),
        };
        let p: json_patch::Patch = serde_json::from_value(patch.clone()).unwrap();
        json_patch::patch(&mut v, &p).unwrap();
        v["apiVersion"] = "apps/v1".into();
        v["kind"] = "Deployment".into();
        Workload::from_yaml(&serde_yaml::to_string(&v).unwrap())
            .0
            .remove(0)
            .unwrap()
    }

    #[test]
    fn a_reverted_rollout_is_not_tried_again_until_images_or_backups_change() {
        let done = ib(Phase::Completed, Some(DIGEST));
        let w = workload(true);
        let Decision::Patch(changes) = decide(&w, &naming(), Pin::Digest, |_| Some(&done)) else {
            panic!("a patch")
        };
        let marker = InFlight {
            started_at: "2026-01-01T00:00:00Z".into(),
            images: changes
                .iter()
                .map(|c| (c.change.container.clone(), c.change.to.clone()))
                .collect(),
            held: None,
        };
        let on_backup = patched(&w, &json_patch(&w, &changes, &marker, Some("backup-pull")));
        assert!(still_ours(&on_backup, &marker));
        assert_eq!(
            on_backup
                .pod_spec()
                .unwrap()
                .image_pull_secrets
                .as_ref()
                .unwrap()[0]
                .name,
            "backup-pull"
        );
        let raw = annotation(&on_backup, ROLLOUT_ANNOTATION)
            .unwrap()
            .to_string();
        let (revert, reverted) =
            revert_patch(&on_backup, &raw, &marker, "ErrImagePull").expect("a revert");
        assert_eq!(reverted.len(), 3);
        assert!(reverted.iter().all(|c| {
            c.from.starts_with("localhost:5000/backup/")
                && !c.to.starts_with("localhost:5000/backup/")
        }));
        let back = patched(&on_backup, &revert);
        assert_eq!(
            back.images(),
            w.images(),
            "the original images, the untouched one too"
        );
        assert!(
            annotation(&back, ROLLOUT_ANNOTATION).is_none(),
            "flight over"
        );
        // Same images, same backups: not again.
        let again = decide(&back, &naming(), Pin::Digest, |_| Some(&done));
        assert_eq!(again, Decision::Reverted("ErrImagePull".into()));
        // A new backup (another digest): tried again.
        let other = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
        let newer = ib(Phase::Completed, Some(other));
        assert!(matches!(
            decide(&back, &naming(), Pin::Digest, |_| Some(&newer)),
            Decision::Patch(_)
        ));
        // Someone changed an image the rollout wrote: not ours any more, nothing to revert
        // there.
        let mut changed_marker = marker.clone();
        changed_marker
            .images
            .insert("web".into(), "example.com/else:1".into());
        assert!(!still_ours(&on_backup, &changed_marker));
    }

    #[test]
    fn the_owner_holds_a_paused_deployment_and_an_on_delete_daemonset() {
        let mut w = workload(true);
        assert_eq!(holder(&w), None);
        if let Workload::Deployment(d) = &mut w {
            d.spec.as_mut().unwrap().paused = Some(true);
        }
        assert_eq!(holder(&w), Some("paused"));
        let ds = Workload::from_yaml(
            "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: a, namespace: b}\nspec:\n  selector: {matchLabels: {a: b}}\n  updateStrategy: {type: OnDelete}\n  template:\n    metadata: {labels: {a: b}}\n    spec: {containers: [{name: a, image: x}]}\n",
        )
        .0
        .remove(0)
        .unwrap();
        assert_eq!(holder(&ds), Some("OnDelete"));
    }
}
