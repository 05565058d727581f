//! `list`: the objects of a resource filtered by selectors, in pages with `limit` and
//! `continue` tokens that carry the resourceVersion the list started at, as kube-apiserver's.

use super::*;

pub(super) fn list(
    state: &ApiState,
    target: &Target,
    query: &BTreeMap<String, String>,
    table: bool,
) -> Result<Response> {
    let filter = Filter::from_query(query, &target.resource)?;
    let page = Page::from_query(query)?;
    let (items, rv, next) = {
        let store = state.store()?;
        let rv = match &page.after {
            Some((rv, _)) if *rv < store.compacted_to() => return Err(ApiError::continue_expired()),
            Some((rv, _)) => *rv,
            None => store.resource_version(),
        };
        // Selectors see the object as served: an events.k8s.io Event converted from the core one
        // it is stored as; other kinds as stored.
        let converted = events::is_events_v1(&target.resource);
        let (items, remaining) = store.page(
            &target.resource.storage_key(),
            target.namespace.as_deref(),
            page.after.as_ref().map(|(_, after)| after),
            page.limit.unwrap_or(usize::MAX),
            |o| {
                if converted {
                    filter.matches(&with_version(o.clone(), &target.resource))
                } else {
                    filter.matches(o)
                }
            },
        );
        let items: Vec<Value> = items
            .into_iter()
            .map(|o| with_version(o, &target.resource))
            .collect();
        let next = (remaining > 0)
            .then(|| {
                items
                    .last()
                    .map(|last| (continue_token(rv, &position(last)), remaining))
            })
            .flatten();
        (items, rv, next)
    };
    if table {
        let mut t = to_table(&target.resource, &items, query, Some(rv));
        if let Some((token, _)) = &next {
            t["metadata"]["continue"] = token.clone().into();
        }
        return Ok(json_response(StatusCode::OK, t));
    }
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if let Some((token, remaining)) = next {
        metadata["continue"] = token.into();
        metadata["remainingItemCount"] = remaining.into();
    }
    Ok(json_response(
        StatusCode::OK,
        json!({"kind": format!("{}List", target.resource.kind), "apiVersion": target.resource.api_version(),
               "metadata": metadata, "items": items}),
    ))
}

/// `limit` and `continue` of a list.
pub(super) struct Page {
    pub(super) limit: Option<usize>,
    /// From a continue token: the list's resourceVersion and the last position served.
    pub(super) after: Option<(u64, (String, String))>,
}

impl Page {
    pub(super) fn from_query(query: &BTreeMap<String, String>) -> Result<Self> {
        let limit = match query.get("limit").filter(|l| !l.is_empty()) {
            Some(l) => Some(
                l.parse::<usize>()
                    .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
            )
            .filter(|l| *l > 0),
            None => None,
        };
        let after = match query.get("continue").filter(|c| !c.is_empty()) {
            Some(token) => Some(parse_continue(token).ok_or_else(|| {
                ApiError::bad_request("continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)")
            })?),
            None => None,
        };
        Ok(Self { limit, after })
    }
}

/// Where an object sits in a list (namespace, then name, as the store orders them).
pub(super) fn position(object: &Value) -> (String, String) {
    let meta = &object["metadata"];
    (
        meta["namespace"].as_str().unwrap_or_default().to_string(),
        meta["name"].as_str().unwrap_or_default().to_string(),
    )
}

/// An opaque continue token: the list's resourceVersion and the last position served.
pub(super) fn continue_token(rv: u64, last: &(String, String)) -> String {
    let token = json!({"v": "meta.k8s.io/v1", "rv": rv, "ns": last.0, "name": last.1});
    hex::encode(serde_json::to_vec(&token).unwrap_or_default())
}

pub(super) fn parse_continue(token: &str) -> Option<(u64, (String, String))> {
    let bytes = hex::decode(token).ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    let ns = v["ns"].as_str()?.to_string();
    let name = v["name"].as_str()?.to_string();
    Some((v["rv"].as_u64()?, (ns, name)))
}
