//! `meta.k8s.io/v1` Tables: Name, the CRD's additionalPrinterColumns (simple JSONPath, `date`
//! columns as ages), or Name and Age for built-ins.

use super::*;

pub(super) fn human_age(timestamp: &str) -> String {
    let Ok(t) = chrono::DateTime::parse_from_rfc3339(timestamp) else {
        return "<invalid>".into();
    };
    let secs = (chrono::Utc::now() - t.with_timezone(&chrono::Utc))
        .num_seconds()
        .max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 3600 * 2 => format!("{}m", s / 60),
        s if s < 86400 * 2 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

pub(super) fn to_table(
    resource: &Resource,
    items: &[Value],
    query: &BTreeMap<String, String>,
    rv: Option<u64>,
) -> Value {
    let mut columns = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace.", "priority": 0}),
    ];
    let custom = !resource.printer_columns.is_empty();
    for c in &resource.printer_columns {
        columns.push(json!({"name": c.name, "type": if c.type_ == "date" { "string" } else { c.type_.as_str() }, "format": "", "description": c.description, "priority": c.priority}));
    }
    if !custom {
        columns.push(json!({"name": "Age", "type": "string", "format": "", "description": "CreationTimestamp", "priority": 0}));
    }
    let include_object = query
        .get("includeObject")
        .map(String::as_str)
        .unwrap_or("PartialObjectMetadata");
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let mut cells = vec![o["metadata"]["name"].clone()];
            for c in &resource.printer_columns {
                let v = json_path(o, &c.json_path).cloned();
                cells.push(match (v, c.type_.as_str()) {
                    (Some(Value::String(s)), "date") => human_age(&s).into(),
                    (Some(v), _) => v,
                    (None, _) => Value::Null,
                });
            }
            if !custom {
                cells.push(human_age(o["metadata"]["creationTimestamp"].as_str().unwrap_or("")).into());
            }
            let object = match include_object {
                "None" => Value::Null,
                "Object" => o.clone(),
                _ => json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"].clone()}),
            };
            json!({"cells": cells, "object": object})
        })
        .collect();
    let mut table = json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {}, "columnDefinitions": columns, "rows": rows});
    if let Some(rv) = rv {
        table["metadata"]["resourceVersion"] = rv.to_string().into();
    }
    table
}
