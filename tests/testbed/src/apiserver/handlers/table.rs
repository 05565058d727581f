//! `meta.k8s.io/v1` Tables: Name, the CRD's additionalPrinterColumns (simple JSONPath, `date`
//! columns as ages), kube-apiserver's columns for the common built-in kinds (its printers:
//! Deployment READY/UP-TO-DATE/AVAILABLE with wide CONTAINERS/IMAGES/SELECTOR, DaemonSet,
//! StatefulSet, ReplicaSet, Pod, Node, Event, Namespace STATUS, Service, ConfigMap and Secret
//! DATA, ServiceAccount, Job, CronJob, Ingress, PodDisruptionBudget, Roles and bindings,
//! PriorityClass, Lease, APIService), or Name and Age.

use super::*;

pub(super) fn human_age(timestamp: &str) -> String {
    let Ok(t) = chrono::DateTime::parse_from_rfc3339(timestamp) else {
        return "<invalid>".into();
    };
    human_duration((chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds())
}

/// A duration as kubectl prints one (`45s`, `12m`, `5h`, `3d`).
fn human_duration(secs: i64) -> String {
    match secs.max(0) {
        s if s < 120 => format!("{s}s"),
        s if s < 3600 * 2 => format!("{}m", s / 60),
        s if s < 86400 * 2 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// A built-in column: header, priority (1 = `-o wide` only) and how a cell is computed.
type Column = (&'static str, i64, fn(&Value) -> Value);

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

fn containers(o: &Value) -> Value {
    join(o, "name")
}

fn images(o: &Value) -> Value {
    join(o, "image")
}

fn join(o: &Value, field: &str) -> Value {
    join_in(&o["spec"]["template"], field)
}

/// The containers' `field`s of a pod template, comma-separated.
fn join_in(template: &Value, field: &str) -> Value {
    template["spec"]["containers"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|c| c[field].as_str())
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
        .into()
}

/// A workload's selector as `k=v,k=v` (its matchLabels, or a Service's plain selector map).
pub(super) fn selector_string(o: &Value) -> String {
    o["spec"]["selector"]["matchLabels"]
        .as_object()
        .or_else(|| o["spec"]["selector"].as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| format!("{k}={v}")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn selector(o: &Value) -> Value {
    let labels = selector_string(o);
    if labels.is_empty() {
        "<none>".into()
    } else {
        labels.into()
    }
}

/// `ready/desired` of a workload with `spec.replicas` (Deployment, StatefulSet).
fn ready_of_replicas(o: &Value) -> Value {
    format!(
        "{}/{}",
        int(&o["status"]["readyReplicas"]),
        o["spec"]["replicas"].as_i64().unwrap_or(1)
    )
    .into()
}

fn age(o: &Value) -> Value {
    human_age(o["metadata"]["creationTimestamp"].as_str().unwrap_or("")).into()
}

fn count(v: &Value) -> Value {
    v.as_object().map_or(0, |m| m.len()).into()
}

fn text_or(v: &Value, none: &str) -> Value {
    v.as_str().unwrap_or(none).into()
}

/// A Job's state as kube-apiserver's printer names it.
fn job_status(o: &Value) -> Value {
    let condition = |kind: &str| {
        o["status"]["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["type"] == kind && c["status"] == "True"))
    };
    if condition("Complete") {
        "Complete"
    } else if condition("Failed") {
        "Failed"
    } else if o["spec"]["suspend"] == true {
        "Suspended"
    } else {
        "Running"
    }
    .into()
}

/// How long a Job ran (or has run so far).
fn job_duration(o: &Value) -> Value {
    let time = |v: &Value| {
        v.as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&chrono::Utc))
    };
    match time(&o["status"]["startTime"]) {
        None => "".into(),
        Some(start) => {
            let end = time(&o["status"]["completionTime"]).unwrap_or_else(chrono::Utc::now);
            human_duration((end - start).num_seconds()).into()
        }
    }
}

/// A PodDisruptionBudget's limit, or N/A.
fn budget(v: &Value) -> Value {
    match v {
        Value::Null => "N/A".into(),
        Value::String(s) => s.clone().into(),
        other => other.to_string().into(),
    }
}

/// A binding's subjects of one kind, comma-separated.
fn subjects(o: &Value, kind: &str) -> Value {
    o["subjects"]
        .as_array()
        .map(|s| {
            s.iter()
                .filter(|s| s["kind"] == kind)
                .map(|s| match (kind, s["namespace"].as_str()) {
                    ("ServiceAccount", Some(ns)) => {
                        format!("{ns}/{}", s["name"].as_str().unwrap_or(""))
                    }
                    _ => s["name"].as_str().unwrap_or("").to_string(),
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
        .into()
}

fn binding_columns() -> Vec<Column> {
    vec![
        ("Role", 0, |o| {
            format!(
                "{}/{}",
                o["roleRef"]["kind"].as_str().unwrap_or(""),
                o["roleRef"]["name"].as_str().unwrap_or("")
            )
            .into()
        }),
        ("Age", 0, age),
        ("Users", 1, |o| subjects(o, "User")),
        ("Groups", 1, |o| subjects(o, "Group")),
        ("ServiceAccounts", 1, |o| subjects(o, "ServiceAccount")),
    ]
}

/// kube-apiserver's printer columns for the built-in kinds people look at most.
fn builtin_columns(resource: &Resource) -> Option<Vec<Column>> {
    let columns: Vec<Column> = match (resource.group.as_str(), resource.kind.as_str()) {
        ("apps", "Deployment") => vec![
            ("Ready", 0, ready_of_replicas),
            ("Up-to-date", 0, |o| {
                int(&o["status"]["updatedReplicas"]).into()
            }),
            ("Available", 0, |o| {
                int(&o["status"]["availableReplicas"]).into()
            }),
            ("Age", 0, age),
            ("Containers", 1, containers),
            ("Images", 1, images),
            ("Selector", 1, selector),
        ],
        ("apps", "DaemonSet") => vec![
            ("Desired", 0, |o| {
                int(&o["status"]["desiredNumberScheduled"]).into()
            }),
            ("Current", 0, |o| {
                int(&o["status"]["currentNumberScheduled"]).into()
            }),
            ("Ready", 0, |o| int(&o["status"]["numberReady"]).into()),
            ("Up-to-date", 0, |o| {
                int(&o["status"]["updatedNumberScheduled"]).into()
            }),
            ("Available", 0, |o| {
                int(&o["status"]["numberAvailable"]).into()
            }),
            ("Node Selector", 0, |o| {
                let s = o["spec"]["template"]["spec"]["nodeSelector"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .filter_map(|(k, v)| v.as_str().map(|v| format!("{k}={v}")))
                            .collect::<Vec<_>>()
                            .join(",")
                    });
                s.filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "<none>".into())
                    .into()
            }),
            ("Age", 0, age),
            ("Containers", 1, containers),
            ("Images", 1, images),
            ("Selector", 1, selector),
        ],
        ("apps", "StatefulSet") => vec![
            ("Ready", 0, ready_of_replicas),
            ("Age", 0, age),
            ("Containers", 1, containers),
            ("Images", 1, images),
        ],
        ("apps", "ReplicaSet") => vec![
            ("Desired", 0, |o| {
                o["spec"]["replicas"].as_i64().unwrap_or(1).into()
            }),
            ("Current", 0, |o| int(&o["status"]["replicas"]).into()),
            ("Ready", 0, |o| int(&o["status"]["readyReplicas"]).into()),
            ("Age", 0, age),
            ("Containers", 1, containers),
            ("Images", 1, images),
            ("Selector", 1, selector),
        ],
        ("", "Pod") => vec![
            ("Ready", 0, |o| {
                let statuses = o["status"]["containerStatuses"].as_array();
                let total = o["spec"]["containers"].as_array().map_or(0, Vec::len);
                let ready = statuses.map_or(0, |s| {
                    s.iter()
                        .filter(|c| c["ready"].as_bool() == Some(true))
                        .count()
                });
                format!("{ready}/{total}").into()
            }),
            ("Status", 0, |o| {
                if o["metadata"].get("deletionTimestamp").is_some() {
                    return "Terminating".into();
                }
                o["status"]["phase"].as_str().unwrap_or("Pending").into()
            }),
            ("Restarts", 0, |o| {
                o["status"]["containerStatuses"]
                    .as_array()
                    .map_or(0, |s| {
                        s.iter().map(|c| int(&c["restartCount"])).sum::<i64>()
                    })
                    .into()
            }),
            ("Age", 0, age),
            ("IP", 1, |o| {
                o["status"]["podIP"].as_str().unwrap_or("<none>").into()
            }),
            ("Node", 1, |o| {
                o["spec"]["nodeName"].as_str().unwrap_or("<none>").into()
            }),
            ("Nominated Node", 1, |_| "<none>".into()),
            ("Readiness Gates", 1, |_| "<none>".into()),
        ],
        ("", "Node") => vec![
            ("Status", 0, |o| {
                let ready = o["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                });
                if ready { "Ready" } else { "NotReady" }.into()
            }),
            ("Roles", 0, |_| "<none>".into()),
            ("Age", 0, age),
            ("Version", 0, |o| {
                o["status"]["nodeInfo"]["kubeletVersion"]
                    .as_str()
                    .unwrap_or("")
                    .into()
            }),
            ("Internal-IP", 1, |o| {
                o["status"]["addresses"]
                    .as_array()
                    .and_then(|a| a.iter().find(|a| a["type"] == "InternalIP"))
                    .and_then(|a| a["address"].as_str())
                    .unwrap_or("<none>")
                    .into()
            }),
        ],
        ("", "Event") => vec![
            ("Last Seen", 0, |o| {
                let t = o["lastTimestamp"]
                    .as_str()
                    .or_else(|| o["eventTime"].as_str())
                    .or_else(|| o["metadata"]["creationTimestamp"].as_str())
                    .unwrap_or("");
                human_age(t).into()
            }),
            ("Type", 0, |o| o["type"].as_str().unwrap_or("").into()),
            ("Reason", 0, |o| o["reason"].as_str().unwrap_or("").into()),
            ("Object", 0, |o| {
                let r = &o["involvedObject"];
                format!(
                    "{}/{}",
                    r["kind"].as_str().unwrap_or("").to_lowercase(),
                    r["name"].as_str().unwrap_or("")
                )
                .into()
            }),
            ("Message", 0, |o| o["message"].as_str().unwrap_or("").into()),
        ],
        ("", "Namespace") => vec![
            ("Status", 0, |o| {
                o["status"]["phase"].as_str().unwrap_or("Active").into()
            }),
            ("Age", 0, age),
        ],
        ("", "Service") => vec![
            ("Type", 0, |o| {
                o["spec"]["type"].as_str().unwrap_or("ClusterIP").into()
            }),
            ("Cluster-IP", 0, |o| {
                o["spec"]["clusterIP"].as_str().unwrap_or("<none>").into()
            }),
            ("External-IP", 0, |_| "<none>".into()),
            ("Port(s)", 0, |o| {
                o["spec"]["ports"]
                    .as_array()
                    .map(|p| {
                        p.iter()
                            .map(|p| {
                                let protocol = p["protocol"].as_str().unwrap_or("TCP");
                                match p["nodePort"].as_i64() {
                                    Some(n) => format!("{}:{n}/{protocol}", p["port"]),
                                    None => format!("{}/{protocol}", p["port"]),
                                }
                            })
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_else(|| "<none>".into())
                    .into()
            }),
            ("Age", 0, age),
        ],
        ("", "ConfigMap") => vec![("Data", 0, |o| count(&o["data"])), ("Age", 0, age)],
        ("", "ServiceAccount") => vec![
            ("Secrets", 0, |o| {
                o["secrets"].as_array().map_or(0, Vec::len).into()
            }),
            ("Age", 0, age),
        ],
        ("batch", "Job") => vec![
            ("Status", 0, job_status),
            ("Completions", 0, |o| {
                format!(
                    "{}/{}",
                    int(&o["status"]["succeeded"]),
                    o["spec"]["completions"].as_i64().unwrap_or(1)
                )
                .into()
            }),
            ("Duration", 0, job_duration),
            ("Age", 0, age),
            ("Containers", 1, containers),
            ("Images", 1, images),
            ("Selector", 1, selector),
        ],
        ("batch", "CronJob") => vec![
            ("Schedule", 0, |o| text_or(&o["spec"]["schedule"], "")),
            ("Timezone", 0, |o| text_or(&o["spec"]["timeZone"], "<none>")),
            ("Suspend", 0, |o| {
                if o["spec"]["suspend"] == true {
                    "True"
                } else {
                    "False"
                }
                .into()
            }),
            ("Active", 0, |o| {
                o["status"]["active"].as_array().map_or(0, Vec::len).into()
            }),
            (
                "Last Schedule",
                0,
                |o| match o["status"]["lastScheduleTime"].as_str() {
                    Some(t) => human_age(t).into(),
                    None => "<none>".into(),
                },
            ),
            ("Age", 0, age),
            ("Containers", 1, |o| {
                join_in(&o["spec"]["jobTemplate"]["spec"]["template"], "name")
            }),
            ("Images", 1, |o| {
                join_in(&o["spec"]["jobTemplate"]["spec"]["template"], "image")
            }),
            ("Selector", 1, |_| "<none>".into()),
        ],
        ("networking.k8s.io", "Ingress") => vec![
            ("Class", 0, |o| {
                text_or(&o["spec"]["ingressClassName"], "<none>")
            }),
            ("Hosts", 0, |o| {
                o["spec"]["rules"]
                    .as_array()
                    .map(|r| {
                        r.iter()
                            .map(|r| r["host"].as_str().unwrap_or("*").to_string())
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .filter(|h| !h.is_empty())
                    .unwrap_or_else(|| "*".into())
                    .into()
            }),
            ("Address", 0, |o| {
                o["status"]["loadBalancer"]["ingress"]
                    .as_array()
                    .map(|i| {
                        i.iter()
                            .filter_map(|i| i["ip"].as_str().or_else(|| i["hostname"].as_str()))
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default()
                    .into()
            }),
            ("Ports", 0, |o| {
                let tls = o["spec"]["tls"].as_array().is_some_and(|t| !t.is_empty());
                if tls { "80, 443" } else { "80" }.into()
            }),
            ("Age", 0, age),
        ],
        ("policy", "PodDisruptionBudget") => vec![
            ("Min Available", 0, |o| budget(&o["spec"]["minAvailable"])),
            ("Max Unavailable", 0, |o| {
                budget(&o["spec"]["maxUnavailable"])
            }),
            ("Allowed Disruptions", 0, |o| {
                int(&o["status"]["disruptionsAllowed"]).into()
            }),
            ("Age", 0, age),
        ],
        ("rbac.authorization.k8s.io", "Role" | "ClusterRole") => vec![("Created At", 0, |o| {
            text_or(&o["metadata"]["creationTimestamp"], "")
        })],
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => binding_columns(),
        ("scheduling.k8s.io", "PriorityClass") => vec![
            ("Value", 0, |o| int(&o["value"]).into()),
            ("Global-Default", 0, |o| (o["globalDefault"] == true).into()),
            ("Age", 0, age),
            ("PreemptionPolicy", 0, |o| {
                text_or(&o["preemptionPolicy"], "PreemptLowerPriority")
            }),
        ],
        ("apiregistration.k8s.io", "APIService") => vec![
            ("Service", 0, |o| {
                match o["spec"]["service"]["name"].as_str() {
                    Some(name) => format!(
                        "{}/{name}",
                        o["spec"]["service"]["namespace"].as_str().unwrap_or("")
                    )
                    .into(),
                    None => "Local".into(),
                }
            }),
            ("Available", 0, |o| {
                let available = o["status"]["conditions"]
                    .as_array()
                    .and_then(|c| c.iter().find(|c| c["type"] == "Available"));
                match available {
                    Some(c) if c["status"] == "True" => "True".into(),
                    Some(c) => format!("False ({})", c["reason"].as_str().unwrap_or("")).into(),
                    None => "Unknown".into(),
                }
            }),
            ("Age", 0, age),
        ],
        ("coordination.k8s.io", "Lease") => vec![
            ("Holder", 0, |o| text_or(&o["spec"]["holderIdentity"], "")),
            ("Age", 0, age),
        ],
        ("", "Secret") => vec![
            ("Type", 0, |o| o["type"].as_str().unwrap_or("Opaque").into()),
            ("Data", 0, |o| count(&o["data"])),
            ("Age", 0, age),
        ],
        _ => return None,
    };
    Some(columns)
}

pub(super) fn to_table(
    resource: &Resource,
    items: &[Value],
    query: &BTreeMap<String, String>,
    rv: Option<u64>,
) -> Value {
    // kube-apiserver shows an Event's name only with `-o wide`.
    let name_priority = i64::from(resource.group.is_empty() && resource.kind == "Event");
    let mut columns = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace.", "priority": name_priority}),
    ];
    let custom = !resource.printer_columns.is_empty();
    let builtin = if custom {
        None
    } else {
        builtin_columns(resource)
    };
    for (name, priority, _) in builtin.iter().flatten() {
        columns.push(json!({"name": name, "type": "string", "format": "", "description": "", "priority": priority}));
    }
    for c in &resource.printer_columns {
        columns.push(json!({"name": c.name, "type": if c.type_ == "date" { "string" } else { c.type_.as_str() }, "format": "", "description": c.description, "priority": c.priority}));
    }
    if !custom && builtin.is_none() {
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
            for (_, _, cell) in builtin.iter().flatten() {
                cells.push(cell(o));
            }
            if !custom && builtin.is_none() {
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
