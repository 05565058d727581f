//! `docs/design.md` is the contract users read: its events table must say what the code sends,
//! and nothing a user reads may point outside the repository.

use shared::events::{
    ContainerChange, ImageCompleted, ImageFailed, Payload, WorkloadChanged, WorkloadKind,
    WorkloadRef, WorkloadReverted, WorkloadRolledOut,
};

fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// One event of each type with placeholder names, so its subject reads as the table writes it.
fn samples() -> Vec<Payload> {
    let workload = WorkloadRef {
        kind: WorkloadKind::Deployment,
        namespace: "NAMESPACE".into(),
        name: "NAME".into(),
    };
    vec![
        Payload::WorkloadChanged(WorkloadChanged {
            workload: workload.clone(),
            uid: "u".into(),
            generation: 1,
            images: Vec::new(),
            pull_secrets: Vec::new(),
        }),
        Payload::ImageCompleted(ImageCompleted {
            name: "IBNAME".into(),
            source: "s".into(),
            target: "t".into(),
            digest: "d".into(),
            platforms: Vec::new(),
            bytes: 0,
            duration_seconds: 0.0,
        }),
        Payload::ImageFailed(ImageFailed {
            name: "IBNAME".into(),
            source: "s".into(),
            target: "t".into(),
            error_class: shared::error::ErrorClass::NotFound,
            message: "m".into(),
            attempts: 1,
        }),
        Payload::WorkloadReverted(WorkloadReverted {
            workload: workload.clone(),
            uid: "u".into(),
            generation: 2,
            reason: "ErrImagePull".into(),
            message: "m".into(),
            changes: Vec::new(),
        }),
        Payload::WorkloadRolledOut(WorkloadRolledOut {
            workload,
            uid: "u".into(),
            generation: 1,
            changes: vec![ContainerChange {
                container: "c".into(),
                init: false,
                from: "f".into(),
                to: "t".into(),
            }],
            dry_run: false,
        }),
    ]
}

/// The data fields an event of this payload carries (the JSON object's keys, plus the
/// optional ones a default value leaves out).
fn data_fields(p: &Payload) -> Vec<String> {
    let value = match p {
        Payload::WorkloadChanged(x) => serde_json::to_value(x),
        Payload::ImageCompleted(x) => serde_json::to_value(x),
        Payload::ImageFailed(x) => serde_json::to_value(x),
        Payload::WorkloadRolledOut(x) => serde_json::to_value(x),
        Payload::WorkloadReverted(x) => serde_json::to_value(x),
    }
    .unwrap();
    let mut fields: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
    match p {
        Payload::WorkloadChanged(_) => fields.push("pullSecrets".into()),
        Payload::WorkloadRolledOut(_) => fields.push("dryRun".into()),
        _ => {}
    }
    fields
}

#[test]
fn the_event_table_matches_the_code() {
    let design = std::fs::read_to_string(root().join("docs/design.md")).unwrap();
    let table = design
        .split("## Events")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("an Events section");
    // Rows of the table: | `type` | `subject` | from | data |
    let rows: Vec<Vec<String>> = table
        .lines()
        .filter(|l| l.starts_with("| `io."))
        .map(|l| {
            l.trim_matches('|')
                .split(" | ")
                .enumerate()
                // The type and subject cells are one code span each; data keeps its spans.
                .map(|(i, c)| match i {
                    0 | 1 => c.trim().trim_matches('`').to_string(),
                    _ => c.trim().to_string(),
                })
                .collect()
        })
        .collect();
    let samples = samples();
    assert_eq!(
        rows.len(),
        samples.len(),
        "one row per event type the code knows: {rows:?}"
    );
    for p in &samples {
        let row = rows
            .iter()
            .find(|r| r[0] == p.event_type())
            .unwrap_or_else(|| panic!("{} is not in docs/design.md", p.event_type()));
        let subject = p
            .subject()
            .replace("NAMESPACE", "<namespace>")
            .replace("deployment", "<kind>")
            .replace("NAME", "<name>")
            .replace("IB<name>", "<ib-name>");
        assert_eq!(row[1], subject, "{}", p.event_type());
        for field in data_fields(p) {
            assert!(
                row[3].contains(&format!("`{field}`")),
                "{}: data field {field} is not in the table: {}",
                p.event_type(),
                row[3]
            );
        }
    }
    assert!(
        table.contains(&format!(
            "`{}<original subject>`",
            shared::events::DEADLETTER_PREFIX
        )),
        "the dead-letter subject"
    );
    assert!(table.contains(&format!("Stream** `{}`", shared::nats::STREAM_NAME)));
}

#[test]
fn nothing_a_user_reads_points_outside_the_repository() {
    let mut files = vec![root().join("README.md")];
    for dir in ["docs", "deploy"] {
        let mut stack = vec![root().join(dir)];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    files.push(path);
                }
            }
        }
    }
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        assert!(
            !text.contains("../shared"),
            "{} points at ../shared, which a clone does not have",
            file.display()
        );
    }
}

/// `docs/architecture.md` is a newcomer's map: every file it names (a backticked path under
/// `shared/`, `functions/`, `tests/`, `deploy/` or `crds/`, or a file of a function named by its
/// bare name next to one) must exist, so the map cannot drift from the tree.
#[test]
fn every_file_the_architecture_map_names_exists() {
    let map = std::fs::read_to_string(root().join("docs/architecture.md")).unwrap();
    let mut named = 0;
    for span in map.split('`').skip(1).step_by(2) {
        let path = span.trim_end_matches('/');
        let rooted = [
            "shared/",
            "functions/",
            "tests/",
            "deploy/",
            "crds/",
            "nats/",
        ]
        .iter()
        .any(|p| path.starts_with(p));
        if !rooted || path.contains(' ') || path.contains('*') || path.contains('<') {
            continue;
        }
        named += 1;
        assert!(
            root().join(path).exists(),
            "docs/architecture.md names {path}, which does not exist"
        );
    }
    assert!(
        named >= 30,
        "the map names only {named} files: was it parsed?"
    );
}
