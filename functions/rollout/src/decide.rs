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

/// The annotation that keeps the original images (JSON: container → image) for audit.
pub const ORIGINAL_IMAGES_ANNOTATION: &str = "k8slab.io/original-images";

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

/// The rollout's decision for one workload.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Nothing external runs here (already rolled out, or only backup images).
    NothingToDo,
    /// The workload is not Ready: a broken rollout is not piled on.
    NotReady,
    /// Some images are not backed up yet.
    Waiting(Vec<String>),
    /// Some images failed to back up: (source, last error).
    Blocked(Vec<(String, String)>),
    /// Every external image is Completed: change all of them, in one patch.
    Patch(Vec<Change>),
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
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, c)| (c, true, i));
    let main = spec
        .containers
        .iter()
        .enumerate()
        .map(|(i, c)| (c, false, i));
    let mut changes = Vec::new();
    let mut waiting = Vec::new();
    let mut blocked = Vec::new();
    for (container, is_init, index) in init.chain(main) {
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
                let field = if is_init {
                    "initContainers"
                } else {
                    "containers"
                };
                changes.push(Change {
                    path: format!("/spec/template/spec/{field}/{index}/image"),
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
            Some(ib) if ib.phase() == Phase::Failed => blocked.push((
                source.to_string(),
                ib.status
                    .as_ref()
                    .and_then(|s| s.last_error.clone())
                    .unwrap_or_default(),
            )),
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
    Decision::Patch(changes)
}

/// The guarded JSON patch for `changes`: a `test` of each current image, its replacement, and
/// the original images recorded in an annotation on the workload (not the pod template, so the
/// images are the only template change and `kubectl rollout undo` restores them).
pub fn json_patch(workload: &Workload, changes: &[Change]) -> Value {
    let mut ops = Vec::new();
    for c in changes {
        ops.push(json!({"op": "test", "path": c.path, "value": c.change.from}));
        ops.push(json!({"op": "replace", "path": c.path, "value": c.change.to}));
    }
    let originals: BTreeMap<&str, &str> = changes
        .iter()
        .map(|c| (c.change.container.as_str(), c.change.from.as_str()))
        .collect();
    let originals = serde_json::to_string(&originals).unwrap_or_default();
    let has_annotations = match workload {
        Workload::Deployment(d) => d.metadata.annotations.is_some(),
        Workload::DaemonSet(d) => d.metadata.annotations.is_some(),
    };
    if has_annotations {
        ops.push(json!({"op": "add", "path": "/metadata/annotations/k8slab.io~1original-images", "value": originals}));
    } else {
        ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": {ORIGINAL_IMAGES_ANNOTATION: originals}}));
    }
    Value::Array(ops)
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
        let patch = json_patch(&workload(true), &changes);
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
            matches!(decide(&w, &naming(), Pin::Digest, nginx_failed), Decision::Blocked(v) if v[0].1 == "NotFound: gone")
        );
        assert_eq!(
            decide(&workload(false), &naming(), Pin::Digest, |_| Some(&done)),
            Decision::NotReady
        );
    }
}
