//! `watcher plan -o table`: one row per container image — workload, container, source, backup
//! target, and whether it needs a backup — aligned for a terminal and readable in CI logs.
//! The rows come from the same rules as the JSON plan (shared needs-backup and naming).

use shared::NamingPolicy;
use shared::workload::{Workload, needs_backup};

/// One row of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// `deployment/ns/name`.
    pub workload: String,
    /// The container (`init:` prefix for initContainers).
    pub container: String,
    /// The normalized source (or the image as written, when invalid).
    pub source: String,
    /// The backup target, or `-`.
    pub target: String,
    /// `yes`, `no (already a backup)`, or `invalid: <why>`.
    pub needs_backup: String,
}

/// The rows of one workload, in container order (initContainers first).
pub fn rows(w: &Workload, naming: &NamingPolicy) -> Vec<Row> {
    let r = w.reference();
    let workload = format!("{}/{}/{}", r.kind.token(), r.namespace, r.name);
    w.images()
        .into_iter()
        .map(|c| {
            let container = if c.init {
                format!("init:{}", c.container)
            } else {
                c.container.clone()
            };
            let (source, target, needs) = match needs_backup(&c.image, naming) {
                Ok(Some(source)) => match naming.target(&source) {
                    Ok(t) => (source.to_string(), t.to_string(), "yes".to_string()),
                    Err(e) => (source.to_string(), "-".into(), format!("invalid: {e}")),
                },
                Ok(None) => (c.image.clone(), "-".into(), "no (already a backup)".into()),
                Err(e) => (c.image.clone(), "-".into(), format!("invalid: {e}")),
            };
            Row {
                workload: workload.clone(),
                container,
                source,
                target,
                needs_backup: needs,
            }
        })
        .collect()
}

/// Renders rows under a header, columns padded to their widest cell.
pub fn render(rows: &[Row]) -> String {
    let header = ["WORKLOAD", "CONTAINER", "SOURCE", "TARGET", "NEEDS BACKUP"];
    let cells: Vec<[&str; 5]> = rows
        .iter()
        .map(|r| {
            [
                r.workload.as_str(),
                &r.container,
                &r.source,
                &r.target,
                &r.needs_backup,
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |row: [&str; 5]| {
        let mut s = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<width$}   ", width = widths[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header);
    for row in cells {
        out.push_str(&line(row));
    }
    out
}
