//! The Kubernetes protobuf schema: every message with its fields' numbers, types and
//! cardinality (generated from k8s-pb's sources by the build script), the message of each
//! apiVersion/kind, and each field's JSON name.
//!
//! Protobuf names fields as Go's JSON tags do (`podIP`, `nonResourceURLs`), but k8s-pb keeps
//! only prost's snake_case (`pod_ip`, `non_resource_ur_ls`). The JSON name is recovered from
//! k8s-openapi's definition of the same type: the one property whose letters and digits equal
//! the field's, ignoring case (`$ref`, `x-kubernetes-*` included). Types without a definition
//! (lists, `Status`) fall back to lowerCamelCase.

use std::collections::HashMap;
use std::sync::OnceLock;

/// A protobuf message.
#[derive(Debug)]
pub(super) struct Message {
    /// Fully qualified, as OpenAPI names the type (`io.k8s.api.apps.v1.Deployment`).
    pub name: &'static str,
    /// Its fields, in the order k8s-pb declares them.
    pub fields: &'static [Field],
}

/// A field of a message.
#[derive(Debug)]
pub(super) struct Field {
    /// Field number.
    pub tag: u32,
    /// k8s-pb's (snake_case) name.
    pub name: &'static str,
    /// The value's type (a map's value type for maps).
    pub kind: Kind,
    /// One value, many, or a map with this key type.
    pub cardinality: Cardinality,
    /// How a list merges and is owned.
    pub list: ListRules,
}

/// How a list field merges (strategic merge patch) and is owned (server-side apply), from the
/// markers Kubernetes writes on its types.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ListRules {
    /// `+patchStrategy=merge`: a strategic merge patch merges the list instead of replacing it.
    pub merge: bool,
    /// `+patchMergeKey`: the field that identifies an item when merging.
    pub merge_key: Option<&'static str>,
    /// `+listType` (and `+listMapKey`s).
    pub list_type: ListType,
}

/// `+listType`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ListType {
    /// No marker.
    Unspecified,
    /// Replaced and owned as a whole.
    Atomic,
    /// Scalars, each owned on its own.
    Set,
    /// Items identified by these keys.
    Map(&'static [&'static str]),
}

/// A field's value type.
#[derive(Debug, Clone, Copy, PartialEq)]
#[allow(dead_code)] // k8s-pb uses some of protobuf's scalar types; all are understood.
pub(super) enum Kind {
    String,
    Bytes,
    Bool,
    Int32,
    Int64,
    Uint32,
    Uint64,
    Sint32,
    Sint64,
    Fixed32,
    Fixed64,
    Sfixed32,
    Sfixed64,
    Float,
    Double,
    /// A message, by qualified name.
    Message(&'static str),
}

/// How many values a field holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Cardinality {
    Optional,
    Repeated,
    /// A map (entries of key 1, value 2) with this key type.
    Map(Kind),
}

include!(concat!(env!("OUT_DIR"), "/k8s_pb_schema.rs"));

/// A message by qualified name.
pub(super) fn message(name: &str) -> Option<&'static Message> {
    MESSAGES
        .binary_search_by(|m| m.name.cmp(name))
        .ok()
        .map(|i| &MESSAGES[i])
}

/// A message by package and type name, however the type name is cased: prost writes
/// `JSONSchemaProps` as `JsonSchemaProps` and `CSIDriver` as `CsiDriver`, Kubernetes (and
/// OpenAPI) the other way.
pub(super) fn message_named(package: &str, type_name: &str) -> Option<&'static Message> {
    static BY_KEY: OnceLock<HashMap<String, &'static Message>> = OnceLock::new();
    BY_KEY
        .get_or_init(|| MESSAGES.iter().map(|m| (key(m.name), m)).collect())
        .get(&format!("{package}.{}", letters(type_name)))
        .copied()
}

/// `package.typename`, the type name in lower-case letters and digits.
fn key(qualified: &str) -> String {
    let (package, type_name) = qualified.rsplit_once('.').unwrap_or(("", qualified));
    format!("{package}.{}", letters(type_name))
}

/// The message of objects of `api_version` and `kind`: a resource, its list, a kind of the same
/// package, or one of meta/v1 (`Status`, `APIGroupList`, `DeleteOptions`, ...).
pub(super) fn message_for(api_version: &str, kind: &str) -> Option<&'static Message> {
    if let Some((_, _, _, name)) = RESOURCES
        .iter()
        .find(|(v, k, _, _)| *v == api_version && *k == kind)
    {
        return message(name);
    }
    let same_package = RESOURCES
        .iter()
        .filter(|(v, _, _, _)| *v == api_version)
        .filter_map(|(_, _, _, name)| name.rsplit_once('.'))
        .find_map(|(package, _)| message_named(package, kind));
    same_package.or_else(|| {
        matches!(api_version, "v1" | "meta.k8s.io/v1")
            .then(|| message_named("io.k8s.apimachinery.pkg.apis.meta.v1", kind))
            .flatten()
    })
}

/// JSON names of one message's fields.
#[derive(Debug, Default, Clone)]
pub(super) struct Names {
    by_tag: HashMap<u32, String>,
    by_json: HashMap<String, usize>,
    inline: Vec<u32>,
}

impl Names {
    /// Whether the field numbered `tag` is a Go struct embedded with `json:",inline"`
    /// (`Probe`'s `ProbeHandler`, `Volume`'s `VolumeSource`): its own field in protobuf, its
    /// properties among the parent's in JSON.
    pub fn is_inline(&self, tag: u32) -> bool {
        self.inline.contains(&tag)
    }

    /// The fields embedded inline, by number.
    pub fn inline(&self) -> &[u32] {
        &self.inline
    }

    /// The JSON name of the field numbered `tag`.
    pub fn json(&self, tag: u32) -> Option<&str> {
        self.by_tag.get(&tag).map(String::as_str)
    }

    /// The index (in [`Message::fields`]) of the field a JSON property names.
    pub fn field(&self, json: &str) -> Option<usize> {
        self.by_json.get(json).copied()
    }
}

/// The JSON names of a message's fields (learned once for all messages).
pub(super) fn names(message: &Message) -> &'static Names {
    static ALL: OnceLock<HashMap<&'static str, Names>> = OnceLock::new();
    static EMPTY: OnceLock<Names> = OnceLock::new();
    ALL.get_or_init(learn_names)
        .get(message.name)
        .unwrap_or_else(|| EMPTY.get_or_init(Names::default))
}

fn letters(s: &str) -> String {
    s.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

fn lower_camel(snake: &str) -> String {
    let mut out = String::with_capacity(snake.len());
    let mut upper = false;
    for c in snake.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// The property names of every k8s-openapi definition, by [`key`].
fn definition_properties() -> HashMap<String, Vec<String>> {
    super::super::resources::definitions()
        .iter()
        .map(|(name, definition)| {
            let properties = definition["properties"]
                .as_object()
                .map(|p| p.keys().cloned().collect())
                .unwrap_or_default();
            (key(name), properties)
        })
        .collect()
}

fn learn_names() -> HashMap<&'static str, Names> {
    let definitions = definition_properties();
    let mut learned = HashMap::new();
    for m in MESSAGES {
        learn(m, &definitions, &mut learned);
    }
    learned
}

/// Learns the names of `m` (and of the messages it embeds inline, first).
fn learn(
    m: &'static Message,
    definitions: &HashMap<String, Vec<String>>,
    learned: &mut HashMap<&'static str, Names>,
) -> Names {
    if let Some(names) = learned.get(m.name) {
        return names.clone();
    }
    let properties = definitions.get(&key(m.name));
    let property_letters: Vec<String> = properties
        .into_iter()
        .flatten()
        .map(|p| letters(p))
        .collect();
    let mut names = Names::default();
    for (i, f) in m.fields.iter().enumerate() {
        let wanted = letters(f.name);
        let mut matching = properties
            .into_iter()
            .flatten()
            .filter(|p| letters(p) == wanted);
        let json = match (matching.next(), matching.next()) {
            (Some(p), None) => p.clone(),
            _ => {
                // No property of that name: an embedded struct, if what it contributes to
                // JSON are properties of this type (all but what a newer Kubernetes added:
                // k8s-pb may be a release ahead of k8s-openapi).
                if let (Kind::Message(child), Cardinality::Optional, Some(_)) =
                    (f.kind, f.cardinality, properties)
                    && let Some(child) = message(child)
                {
                    let contributed = contributed(child, definitions, learned);
                    let known = contributed
                        .iter()
                        .filter(|c| property_letters.contains(c))
                        .count();
                    if known > 0 && known * 4 >= contributed.len() * 3 {
                        names.inline.push(f.tag);
                    }
                }
                lower_camel(f.name)
            }
        };
        names.by_json.insert(json.clone(), i);
        names.by_tag.insert(f.tag, json);
    }
    learned.insert(m.name, names.clone());
    names
}

/// The properties (in lower-case letters) a message's JSON form has, its inline members'
/// included.
fn contributed(
    m: &'static Message,
    definitions: &HashMap<String, Vec<String>>,
    learned: &mut HashMap<&'static str, Names>,
) -> Vec<String> {
    let names = learn(m, definitions, learned);
    let mut out = Vec::new();
    for f in m.fields {
        match f.kind {
            Kind::Message(child) if names.is_inline(f.tag) => {
                if let Some(child) = message(child) {
                    out.extend(contributed(child, definitions, learned));
                }
            }
            _ => out.push(letters(names.json(f.tag).unwrap_or(f.name))),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_names(message_name: &str) -> Vec<String> {
        let m = message(message_name).expect("the message exists");
        let n = names(m);
        m.fields
            .iter()
            .map(|f| n.json(f.tag).unwrap_or_default().to_string())
            .collect()
    }

    #[test]
    fn json_names_come_from_the_openapi_definitions() {
        let pod_status = json_names("io.k8s.api.core.v1.PodStatus");
        assert!(pod_status.contains(&"podIP".to_string()), "{pod_status:?}");
        assert!(pod_status.contains(&"podIPs".to_string()));
        let rule = json_names("io.k8s.api.rbac.v1.PolicyRule");
        assert!(rule.contains(&"nonResourceURLs".to_string()), "{rule:?}");
        let props =
            json_names("io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JsonSchemaProps");
        assert!(props.contains(&"$ref".to_string()), "{props:?}");
        assert!(props.contains(&"x-kubernetes-preserve-unknown-fields".to_string()));
        // Embedded structs.
        let probe = message("io.k8s.api.core.v1.Probe").expect("Probe");
        let handler = probe
            .fields
            .iter()
            .find(|f| f.name == "handler")
            .expect("handler");
        assert!(names(probe).is_inline(handler.tag));
        let rule = message("io.k8s.api.admissionregistration.v1.RuleWithOperations")
            .expect("RuleWithOperations");
        assert_eq!(names(rule).inline().len(), 1);
        // Without a definition: lowerCamelCase.
        assert!(
            json_names("io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta")
                .contains(&"remainingItemCount".to_string())
        );
    }

    /// The other direction may differ: k8s-pb can be a Kubernetes release ahead of the
    /// k8s-openapi feature (fields such as `restartPolicyRules` then keep lowerCamelCase). What
    /// must hold is that nothing OpenAPI defines is lost: every property of a stable API's
    /// type has a field (alpha and beta APIs change between releases).
    #[test]
    fn every_property_of_a_definition_has_a_field() {
        let definitions = definition_properties();
        let mut learned = HashMap::new();
        let mut checked = 0;
        for m in MESSAGES {
            let Some(properties) = definitions.get(&key(m.name)) else {
                continue;
            };
            let version = m.name.rsplit('.').nth(1).unwrap_or_default();
            if version.contains("alpha") || version.contains("beta") {
                continue;
            }
            let has = contributed(m, &definitions, &mut learned);
            for p in properties {
                if matches!(p.as_str(), "apiVersion" | "kind") {
                    continue;
                }
                assert!(
                    has.contains(&letters(p)),
                    "{}: property {p} has no field",
                    m.name
                );
                checked += 1;
            }
        }
        assert!(checked > 1500, "only {checked} properties checked");
    }

    #[test]
    fn kinds_find_their_messages() {
        let name = |v, k| message_for(v, k).map(|m| m.name);
        assert_eq!(
            name("apps/v1", "Deployment"),
            Some("io.k8s.api.apps.v1.Deployment")
        );
        assert_eq!(
            name("apps/v1", "DeploymentList"),
            Some("io.k8s.api.apps.v1.DeploymentList")
        );
        assert_eq!(name("v1", "PodList"), Some("io.k8s.api.core.v1.PodList"));
        assert_eq!(
            name("v1", "Status"),
            Some("io.k8s.apimachinery.pkg.apis.meta.v1.Status")
        );
        assert_eq!(
            name("storage.k8s.io/v1", "CSIDriverList").map(str::to_ascii_lowercase),
            Some("io.k8s.api.storage.v1.csidriverlist".to_string())
        );
        assert_eq!(
            name("apiregistration.k8s.io/v1", "APIServiceList").map(str::to_ascii_lowercase),
            Some("io.k8s.kube-aggregator.pkg.apis.apiregistration.v1.apiservicelist".to_string())
        );
        assert_eq!(name("example.com/v1", "Thing"), None);
    }
}
