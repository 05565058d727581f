//! Label selectors (`=`, `==`, `!=`, `in`, `notin`, exists, `!`) and field selectors
//! (`metadata.name`, `metadata.namespace` and the fields kube-apiserver indexes per kind, such as
//! an Event's `involvedObject.*` that `kubectl describe` uses or a Pod's `spec.nodeName`), as
//! lists, watches and deletecollection apply them to the object in the version served.

use super::*;

/// A parsed label selector term.
pub(super) enum Term {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

pub(super) fn split_terms(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => {
                depth += 1;
                cur.push(c);
            }
            ')' => {
                depth -= 1;
                cur.push(c);
            }
            ',' if depth == 0 => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur);
    }
    out.into_iter()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect()
}

pub(super) fn parse_label_selector(s: &str) -> Result<Vec<Term>> {
    let set = |v: &str| -> Vec<String> {
        v.trim()
            .trim_start_matches('(')
            .trim_end_matches(')')
            .split(',')
            .map(|x| x.trim().to_string())
            .collect()
    };
    split_terms(s)
        .into_iter()
        .map(|t| {
            if let Some((k, v)) = t.split_once(" notin ") {
                Ok(Term::NotIn(k.trim().into(), set(v)))
            } else if let Some((k, v)) = t.split_once(" in ") {
                Ok(Term::In(k.trim().into(), set(v)))
            } else if let Some((k, v)) = t.split_once("!=") {
                Ok(Term::Ne(k.trim().into(), v.trim().into()))
            } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
                Ok(Term::Eq(k.trim().into(), v.trim().into()))
            } else if let Some(k) = t.strip_prefix('!') {
                Ok(Term::NotExists(k.trim().into()))
            } else if t
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
            {
                Ok(Term::Exists(t))
            } else {
                Err(ApiError::bad_request(format!(
                    "unable to parse requirement: {t:?}"
                )))
            }
        })
        .collect()
}

pub(super) fn labels_match(object: &Value, terms: &[Term]) -> bool {
    let labels = &object["metadata"]["labels"];
    let get = |k: &str| labels.get(k).and_then(Value::as_str);
    terms.iter().all(|t| match t {
        Term::Eq(k, v) => get(k) == Some(v.as_str()),
        Term::Ne(k, v) => get(k) != Some(v.as_str()),
        Term::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
        Term::NotIn(k, vs) => get(k).is_none_or(|x| !vs.iter().any(|v| v == x)),
        Term::Exists(k) => get(k).is_some(),
        Term::NotExists(k) => get(k).is_none(),
    })
}

/// The field labels kube-apiserver supports for a kind besides `metadata.name/namespace`.
fn field_labels(resource: &Resource) -> &'static [&'static str] {
    match (resource.group.as_str(), resource.kind.as_str()) {
        ("", "Event") => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        ("events.k8s.io", "Event") => &[
            "regarding.kind",
            "regarding.namespace",
            "regarding.name",
            "regarding.uid",
            "regarding.apiVersion",
            "regarding.resourceVersion",
            "regarding.fieldPath",
            "reason",
            "reportingController",
            "type",
        ],
        ("", "Pod") => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        ("", "Namespace") => &["status.phase"],
        ("", "Secret") => &["type"],
        ("", "Node") => &["spec.unschedulable"],
        ("apps", "ReplicaSet") => &["status.replicas"],
        ("batch", "Job") => &["status.successful"],
        _ => &[],
    }
}

pub(super) fn parse_field_selector(
    s: &str,
    resource: &Resource,
) -> Result<Vec<(String, bool, String)>> {
    split_terms(s)
        .into_iter()
        .map(|t| {
            let (field, eq, value) = if let Some((f, v)) = t.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
                (f, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid field selector: {t:?}"
                )));
            };
            match field.trim() {
                f @ ("metadata.name" | "metadata.namespace") => {
                    Ok((f.to_string(), eq, value.trim().to_string()))
                }
                f if field_labels(resource).contains(&f) => {
                    // A core Event's `source` selects on its component.
                    let path = if f == "source" { "source.component" } else { f };
                    Ok((path.to_string(), eq, value.trim().to_string()))
                }
                other => Err(ApiError::bad_request(format!(
                    "field label not supported: {other}"
                ))),
            }
        })
        .collect()
}

pub(super) fn fields_match(object: &Value, terms: &[(String, bool, String)]) -> bool {
    terms.iter().all(|(field, eq, value)| {
        let actual = match json_path(object, field) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        };
        (actual == *value) == *eq
    })
}

/// Label and field selectors of a list or watch.
pub(super) struct Filter {
    labels: Vec<Term>,
    fields: Vec<(String, bool, String)>,
}

impl Filter {
    pub(super) fn from_query(
        query: &BTreeMap<String, String>,
        resource: &Resource,
    ) -> Result<Self> {
        Ok(Self {
            labels: query
                .get("labelSelector")
                .map(|s| parse_label_selector(s))
                .transpose()?
                .unwrap_or_default(),
            fields: query
                .get("fieldSelector")
                .map(|s| parse_field_selector(s, resource))
                .transpose()?
                .unwrap_or_default(),
        })
    }

    pub(super) fn matches(&self, object: &Value) -> bool {
        labels_match(object, &self.labels) && fields_match(object, &self.fields)
    }
}
