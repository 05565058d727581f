//! What a `workload.changed` may ask the backup to do, decided against the cluster. A message
//! is a hint, never authority: anyone who can reach NATS can publish one. So each image is
//! admitted only if
//! - its target is the one this backup's own naming derives from its source (a forged target
//!   could overwrite another image's backup, or write anywhere the backup's credentials reach);
//! - the workload the event names exists and its current pod template runs that source
//!   (containers or initContainers), or already its backup (an event redelivered after the
//!   rollout), so nothing is copied that no workload runs;
//!
//! and the pull secrets come from that workload alone (its template's `imagePullSecrets` and its
//! ServiceAccount's, [`Workload::pull_secret_names`]), never from the event, so an event cannot
//! borrow another namespace's credentials. Pure: the caller reads the workload and its
//! ServiceAccount (one GET each) and does what this says.

use k8s_openapi::api::core::v1::ServiceAccount;
use prometheus_client::encoding::EncodeLabelValue;
use shared::NamingPolicy;
use shared::crd::{ImageBackup, SecretRef};
use shared::events::{WorkloadChanged, WorkloadImage};
use shared::naming::image_backup_name;
use shared::reference::Reference;
use shared::workload::Workload;

/// Why an image of an event was refused (a metric label, fixed strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
pub enum RejectReason {
    /// The event's target is not what the naming derives from its source.
    TargetMismatch,
    /// The workload the event names does not exist.
    WorkloadNotFound,
    /// The workload exists but its current spec does not run the image.
    ImageNotInWorkload,
    /// The source or target is not a valid reference.
    InvalidReference,
    /// An ImageBackup whose name is not the one its source gives (one object per image: two
    /// names for one image could copy it twice at once).
    NameMismatch,
}

impl RejectReason {
    /// What a log line says.
    pub fn describe(self) -> &'static str {
        match self {
            RejectReason::TargetMismatch => {
                "the event's target is not the backup naming's target for its source"
            }
            RejectReason::WorkloadNotFound => "the workload the event names does not exist",
            RejectReason::ImageNotInWorkload => "the workload does not run this image",
            RejectReason::InvalidReference => "the image reference is invalid",
            RejectReason::NameMismatch => "the ImageBackup is not named after its source",
        }
    }
}

/// One image of the event that was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The source as the event wrote it (cut to 300 characters).
    pub source: String,
    /// Why.
    pub reason: RejectReason,
}

/// What the backup does for one event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Admission {
    /// (source, target) pairs to back up, one per source, target derived by the naming.
    pub images: Vec<(Reference, Reference)>,
    /// The pull secrets the workload's pods use, in its namespace.
    pub pull_secrets: Vec<SecretRef>,
    /// Images refused, with the reason.
    pub rejected: Vec<Rejected>,
}

/// True when the workload already runs `target`, the backup of the event's source (the rollout
/// moved it there: `target:tag@digest`, `target:tag`, or `target@digest`). An event that arrives
/// after the rollout (a redelivery) is still about an image the workload runs; backing it up
/// again finds it Completed and does nothing.
fn runs_backup(workload: Option<&Workload>, target: &Reference) -> bool {
    let repository = target.repository();
    workload.into_iter().flat_map(Workload::images).any(|c| {
        Reference::parse_normalized(&c.image).is_ok_and(|r| {
            r.repository() == repository
                && (r.tag() == target.tag() || (r.tag().is_none() && r.digest().is_some()))
        })
    })
}

/// An image of an event as the backup reads it: its source and target, normalized (default
/// tag), and the target the one this backup's naming derives from the source. The one reading
/// of an event's image, for [`admit`] and for the handler's answer without a read.
pub fn event_image(
    image: &WorkloadImage,
    naming: &NamingPolicy,
) -> Result<(Reference, Reference), RejectReason> {
    let parse = |value: &str| {
        Reference::parse_normalized(value)
            .ok()
            .map(Reference::with_default_tag)
    };
    let (Some(source), Some(target)) = (parse(&image.source), parse(&image.target)) else {
        return Err(RejectReason::InvalidReference);
    };
    if naming.target(&source).ok().as_ref() != Some(&target) {
        return Err(RejectReason::TargetMismatch);
    }
    Ok((source, target))
}

/// Decides which images of `event` to back up, given the workload as the cluster has it now
/// (`None`: it does not exist) and its ServiceAccount.
pub fn admit(
    event: &WorkloadChanged,
    workload: Option<&Workload>,
    service_account: Option<&ServiceAccount>,
    naming: &NamingPolicy,
) -> Admission {
    let mut admission = Admission::default();
    let running: Vec<Reference> = workload
        .map(|w| w.plan(naming).event.images)
        .into_iter()
        .flatten()
        .filter_map(|i| {
            Reference::parse_normalized(&i.source)
                .ok()
                .map(Reference::with_default_tag)
        })
        .collect();
    for image in &event.images {
        let reject = |reason| Rejected {
            source: image.source.chars().take(300).collect(),
            reason,
        };
        let (source, target) = match event_image(image, naming) {
            Ok(pair) => pair,
            Err(reason) => {
                admission.rejected.push(reject(reason));
                continue;
            }
        };
        if workload.is_none() {
            admission
                .rejected
                .push(reject(RejectReason::WorkloadNotFound));
        } else if !running.contains(&source) && !runs_backup(workload, &target) {
            admission
                .rejected
                .push(reject(RejectReason::ImageNotInWorkload));
        } else if !admission.images.iter().any(|(s, _)| *s == source) {
            admission.images.push((source, target));
        }
    }
    if let Some(w) = workload {
        let namespace = w.reference().namespace;
        admission.pull_secrets = w
            .pull_secret_names(service_account)
            .into_iter()
            .map(|name| SecretRef {
                namespace: namespace.clone(),
                name,
            })
            .collect();
    }
    admission
}

/// What an ImageBackup in the cluster asks for — one a worker created, or one applied by hand
/// (RBAC decides who may): its normalized source and the target this backup's naming derives.
/// Refused, with the message a user reads in its status, when its source is not a reference,
/// its name is not the one its source gives, or its optional `spec.target` differs from the
/// naming's.
pub fn request(
    ib: &ImageBackup,
    naming: &NamingPolicy,
) -> Result<(Reference, Reference), (RejectReason, String)> {
    let source = Reference::parse_normalized(&ib.spec.source)
        .map(Reference::with_default_tag)
        .map_err(|e| {
            (
                RejectReason::InvalidReference,
                format!(
                    "spec.source {:?} is not an image reference: {e}",
                    ib.spec.source.chars().take(300).collect::<String>()
                ),
            )
        })?;
    let target = naming.target(&source).map_err(|e| {
        (
            RejectReason::InvalidReference,
            format!("no backup name for {source}: {e}"),
        )
    })?;
    let name = image_backup_name(&source);
    if ib.metadata.name.as_deref() != Some(name.as_str()) {
        return Err((
            RejectReason::NameMismatch,
            format!(
                "an ImageBackup of {source} must be named {name} (one per image); apply it under that name"
            ),
        ));
    }
    if !ib.spec.target.is_empty() {
        let asked = Reference::parse_normalized(&ib.spec.target)
            .ok()
            .map(Reference::with_default_tag);
        if asked.as_ref() != Some(&target) {
            return Err((
                RejectReason::TargetMismatch,
                format!(
                    "spec.target {:?} is not where this backup registry's naming puts {source} ({target}); leave spec.target out or set it to that",
                    ib.spec.target.chars().take(300).collect::<String>()
                ),
            ));
        }
    }
    Ok((source, target))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::{deployment, event};

    fn naming() -> NamingPolicy {
        NamingPolicy::flat("registry.local/backup".parse().unwrap())
    }

    const NGINX: (&str, &str) = (
        "docker.io/library/nginx:1.14.0",
        "registry.local/backup/library_nginx:1.14.0",
    );

    #[test]
    fn an_event_the_watcher_would_send_is_admitted_with_the_workloads_own_secrets() {
        let w = deployment(&["nginx:1.14.0"], &["hub"], Some("builder"));
        let sa: ServiceAccount = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "builder", "namespace": "shop"},
            "imagePullSecrets": [{"name": "quay"}, {"name": "hub"}],
        }))
        .unwrap();
        // The event names a secret of its own choosing: it is not used.
        let a = admit(
            &event(
                &[
                    NGINX,
                    ("busybox:1.36", "registry.local/backup/library_busybox:1.36"),
                ],
                &["stolen"],
            ),
            Some(&w),
            Some(&sa),
            &naming(),
        );
        assert!(a.rejected.is_empty(), "{:?}", a.rejected);
        let sources: Vec<String> = a.images.iter().map(|(s, _)| s.to_string()).collect();
        assert_eq!(
            sources,
            [
                "docker.io/library/nginx:1.14.0",
                "docker.io/library/busybox:1.36"
            ],
            "containers and initContainers"
        );
        assert_eq!(
            a.images[0].1.to_string(),
            "registry.local/backup/library_nginx:1.14.0"
        );
        let secrets: Vec<(&str, &str)> = a
            .pull_secrets
            .iter()
            .map(|s| (s.namespace.as_str(), s.name.as_str()))
            .collect();
        assert_eq!(secrets, [("shop", "hub"), ("shop", "quay")]);
    }

    #[test]
    fn a_forged_target_is_refused_even_for_an_image_the_workload_runs() {
        let w = deployment(&["nginx:1.14.0"], &[], None);
        for target in [
            // Another image's backup, to overwrite it.
            "registry.local/backup/library_redis:7",
            // Outside the naming, anywhere the credentials reach.
            "registry.local/elsewhere/x:1",
            "evil.example/x:1",
        ] {
            let a = admit(
                &event(&[("nginx:1.14.0", target)], &[]),
                Some(&w),
                None,
                &naming(),
            );
            assert!(a.images.is_empty(), "{target}");
            assert_eq!(
                a.rejected[0].reason,
                RejectReason::TargetMismatch,
                "{target}"
            );
        }
    }

    #[test]
    fn an_image_no_workload_runs_or_a_missing_workload_is_refused() {
        let evil = ("evil/app:1", "registry.local/backup/evil_app:1");
        let w = deployment(&["nginx:1.14.0"], &["hub"], None);
        let a = admit(&event(&[evil, NGINX], &[]), Some(&w), None, &naming());
        assert_eq!(a.images.len(), 1, "the image it runs still proceeds");
        assert_eq!(a.rejected.len(), 1);
        assert_eq!(a.rejected[0].reason, RejectReason::ImageNotInWorkload);
        assert_eq!(a.rejected[0].source, "evil/app:1");

        let a = admit(&event(&[NGINX], &["hub"]), None, None, &naming());
        assert!(a.images.is_empty());
        assert!(a.pull_secrets.is_empty(), "no workload, no secrets");
        assert_eq!(a.rejected[0].reason, RejectReason::WorkloadNotFound);
    }

    fn hand_made(name: Option<&str>, source: &str, target: &str) -> ImageBackup {
        let source_ref = Reference::parse_normalized(source).unwrap();
        let name = name
            .map(str::to_string)
            .unwrap_or_else(|| image_backup_name(&source_ref.with_default_tag()));
        serde_json::from_value(serde_json::json!({
            "apiVersion": "k8slab.io/v1alpha1",
            "kind": "ImageBackup",
            "metadata": {"name": name},
            "spec": {"source": source, "target": target},
        }))
        .unwrap()
    }

    #[test]
    fn a_hand_made_request_gets_the_naming_target_or_a_clear_refusal() {
        let (source, target) = request(&hand_made(None, "nginx:1.14.0", ""), &naming()).unwrap();
        assert_eq!(source.to_string(), "docker.io/library/nginx:1.14.0");
        assert_eq!(
            target.to_string(),
            "registry.local/backup/library_nginx:1.14.0"
        );
        let same = hand_made(
            None,
            "nginx:1.14.0",
            "registry.local/backup/library_nginx:1.14.0",
        );
        assert!(
            request(&same, &naming()).is_ok(),
            "spec.target equal to the naming's"
        );

        let elsewhere = hand_made(None, "nginx:1.14.0", "registry.local/elsewhere/x:1");
        let (reason, message) = request(&elsewhere, &naming()).unwrap_err();
        assert_eq!(reason, RejectReason::TargetMismatch);
        assert!(
            message.contains("registry.local/backup/library_nginx:1.14.0"),
            "{message}"
        );

        let renamed = hand_made(Some("my-nginx"), "nginx:1.14.0", "");
        let (reason, message) = request(&renamed, &naming()).unwrap_err();
        assert_eq!(reason, RejectReason::NameMismatch);
        assert!(message.contains("must be named ib-"), "{message}");

        let bad = hand_made(Some("x"), "nginx:1.14.0", "");
        let mut bad = bad;
        bad.spec.source = "Not A Ref".into();
        assert_eq!(
            request(&bad, &naming()).unwrap_err().0,
            RejectReason::InvalidReference
        );
    }

    #[test]
    fn a_redelivered_event_for_a_workload_already_on_its_backup_is_admitted() {
        for image in [
            "registry.local/backup/library_nginx:1.14.0@sha256:0000000000000000000000000000000000000000000000000000000000000000",
            "registry.local/backup/library_nginx:1.14.0",
        ] {
            let w = deployment(&[image], &[], None);
            let a = admit(&event(&[NGINX], &[]), Some(&w), None, &naming());
            assert!(a.rejected.is_empty(), "{image}: {:?}", a.rejected);
            assert_eq!(a.images.len(), 1);
        }
        // Another image's backup is not this one's.
        let w = deployment(&["registry.local/backup/library_redis:1.14.0"], &[], None);
        let a = admit(&event(&[NGINX], &[]), Some(&w), None, &naming());
        assert_eq!(a.rejected[0].reason, RejectReason::ImageNotInWorkload);
    }

    #[test]
    fn invalid_references_and_repeats() {
        let w = deployment(&["nginx:1.14.0", "nginx:1.14.0"], &[], None);
        let a = admit(
            &event(&[NGINX, NGINX, ("Not A Ref", "x")], &[]),
            Some(&w),
            None,
            &naming(),
        );
        assert_eq!(a.images.len(), 1, "one backup per source");
        assert_eq!(a.rejected[0].reason, RejectReason::InvalidReference);
    }
}
