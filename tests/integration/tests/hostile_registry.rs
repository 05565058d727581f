//! The copy engine against a registry that misbehaves on purpose: every mode ends with the
//! class a user would expect, without a panic, having read no more than its caps allow, within a
//! bound (the timeout below is a safety net for a hang, not a timing goal).

use std::time::Duration;

use backup::copy::{ClientOptions, Copier, CopyError, RegistryClient, RetryPolicy, StallPolicy};
use shared::{ErrorClass, Reference};
use testbed::hostile_registry::Mode;
use testbed::{HostileRegistry, Registry};

/// What a hang would look like: far past every cap and stall window used here.
const HANG: Duration = Duration::from_secs(60);
/// Socket buffers between a server and a client that stopped reading (loopback holds a few MiB).
const SLACK: u64 = 16 * 1024 * 1024;

struct Outcome {
    result: Result<backup::copy::CopySummary, CopyError>,
    served: u64,
    registry: HostileRegistry,
    _target: Registry,
}

async fn copy_from(mode: Mode) -> Outcome {
    let registry = HostileRegistry::start(mode).await.expect("hostile");
    let target = Registry::start().await.expect("target");
    let client = RegistryClient::new(ClientOptions {
        insecure: [registry.host(), target.host()].into_iter().collect(),
        retry: RetryPolicy {
            max_attempts: 2,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
            max_retry_after: Duration::from_secs(1),
        },
        stall: StallPolicy {
            window: Duration::from_secs(1),
            min_bytes: 1024,
        },
        ..Default::default()
    })
    .expect("client");
    let copier = Copier::new(client, 4);
    let source = Reference::parse_normalized(&format!("{}/evil/app:1", registry.host())).unwrap();
    let dest = Reference::parse_normalized(&format!("{}/bk/app:1", target.host())).unwrap();
    let result = tokio::time::timeout(HANG, copier.copy(&source, &dest, None))
        .await
        .unwrap_or_else(|_| panic!("{mode:?}: the copy hung"));
    Outcome {
        result,
        served: registry.bytes_served(),
        registry,
        _target: target,
    }
}

fn failure(o: &Outcome) -> &CopyError {
    match &o.result {
        Err(e) => e,
        Ok(s) => panic!("expected a failure, the copy succeeded: {s:?}"),
    }
}

#[tokio::test]
async fn an_endless_manifest_is_cut_at_4_mib() {
    let o = copy_from(Mode::EndlessManifest).await;
    let e = failure(&o);
    assert_eq!(
        (e.class(), e.label()),
        (ErrorClass::Protocol, "malformed"),
        "{e}"
    );
    assert!(o.served <= 4 * 1024 * 1024 + SLACK, "served {}", o.served);
}

#[tokio::test]
async fn an_endless_token_answer_is_cut_at_64_kib() {
    let o = copy_from(Mode::EndlessToken).await;
    let e = failure(&o);
    assert_eq!(
        (e.class(), e.label()),
        (ErrorClass::Protocol, "malformed"),
        "{e}"
    );
    assert!(o.served <= 64 * 1024 + SLACK, "served {}", o.served);
}

#[tokio::test]
async fn a_token_lifetime_of_2_pow_64_is_clamped_and_the_copy_completes() {
    let o = copy_from(Mode::HugeTokenLifetime).await;
    let summary = o.result.as_ref().expect("copy");
    assert_eq!(summary.blobs_copied, 2);
    assert!(!format!("{summary:?}").contains("t0ken"));
}

#[tokio::test]
async fn an_endless_error_body_is_read_in_part_and_quoted_in_part() {
    let o = copy_from(Mode::EndlessErrorBody).await;
    let e = failure(&o);
    assert_eq!(
        (e.class(), e.label()),
        (ErrorClass::Protocol, "protocol"),
        "{e}"
    );
    assert!(
        e.to_string().len() < 600,
        "{} characters",
        e.to_string().len()
    );
    // Two blobs, each read at most 4 KiB of its error body.
    assert!(o.served <= 2 * 4096 + SLACK, "served {}", o.served);
}

#[tokio::test]
async fn a_traversal_digest_never_reaches_a_url() {
    let o = copy_from(Mode::TraversalDigest).await;
    let e = failure(&o);
    assert_eq!(
        (e.class(), e.label()),
        (ErrorClass::Protocol, "malformed"),
        "{e}"
    );
    let requests = o.registry.requests();
    assert!(
        requests.iter().all(|r| !r.contains("/blobs/")),
        "{requests:?}"
    );
}

#[tokio::test]
async fn a_drip_fed_blob_is_abandoned_and_the_source_is_blamed() {
    let o = copy_from(Mode::DripBlob).await;
    let e = failure(&o);
    assert_eq!(
        (e.class(), e.label()),
        (ErrorClass::Unavailable, "stalled"),
        "{e}"
    );
    let CopyError::Stalled {
        side,
        registry,
        attempts,
        ..
    } = e
    else {
        panic!("{e:?}")
    };
    assert_eq!(
        (*side, registry.as_str()),
        ("source", o.registry.host().as_str())
    );
    assert_eq!(*attempts, 2, "{e}");
    assert!(e.to_string().contains("after 2 attempts"), "{e}");
}

#[tokio::test]
async fn declared_sizes_that_overflow_are_refused() {
    let o = copy_from(Mode::OversizeDeclared).await;
    let e = failure(&o);
    assert_eq!(
        (e.class(), e.label()),
        (ErrorClass::Protocol, "malformed"),
        "{e}"
    );
    assert!(e.to_string().contains("2^64"), "{e}");
}

#[tokio::test]
async fn a_child_listed_8000_times_is_fetched_and_pushed_once() {
    let o = copy_from(Mode::RepeatedChild).await;
    let summary = o.result.as_ref().expect("copy");
    assert_eq!(o.registry.child_gets(), 1);
    assert_eq!(summary.manifests, 2, "{summary:?}");
    assert_eq!(summary.platforms, ["linux/amd64"]);
}
