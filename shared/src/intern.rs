//! Text that many cached workloads hold the same — images, container names, label and
//! annotation keys — kept once and shared ([`intern`]). After a rollout each workload holds two
//! backup references of about 150 bytes each; at 20,000 workloads running a hundred images,
//! those copies alone were some 6 MB of the rollout's heap.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock, Mutex};

/// How many distinct texts are kept for sharing. When full, those no cached object holds any
/// more are forgotten, and if most are still held, all are: a forgotten text is only no longer
/// shared with what comes next, so the table stays bounded whatever the cluster holds.
const KEPT: usize = 8192;

static TABLE: LazyLock<Mutex<HashSet<Arc<str>>>> = LazyLock::new(Default::default);

/// `text`, as one shared allocation with every other holder of the same text.
pub fn intern(text: &str) -> Arc<str> {
    let Ok(mut table) = TABLE.lock() else {
        // A panic elsewhere while holding the lock: still correct, only not shared.
        return Arc::from(text);
    };
    if let Some(found) = table.get(text) {
        return Arc::clone(found);
    }
    if table.len() >= KEPT {
        table.retain(|t| Arc::strong_count(t) > 1);
        if table.len() >= KEPT / 2 {
            table.clear();
        }
    }
    let new: Arc<str> = Arc::from(text);
    table.insert(Arc::clone(&new));
    new
}

/// Reads a string into its [`intern`]ed form: from the text serde hands over (borrowed from the
/// input, or its unescaped copy), without a `String` of its own.
struct Text;

impl serde::de::Visitor<'_> for Text {
    type Value = Arc<str>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Arc<str>, E> {
        Ok(intern(text))
    }
}

/// Deserializes a string straight into its [`intern`]ed form.
pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Arc<str>, D::Error> {
    d.deserialize_str(Text)
}

/// As [`deserialize`], for an optional string.
pub fn deserialize_option<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Arc<str>>, D::Error> {
    struct Interned(Arc<str>);
    impl<'de> serde::Deserialize<'de> for Interned {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            deserialize(d).map(Interned)
        }
    }
    Ok(<Option<Interned> as serde::Deserialize>::deserialize(d)?.map(|i| i.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_text_is_one_allocation_and_the_table_stays_bounded() {
        let a = intern("registry.example/acme/app:1");
        let b = intern(&String::from("registry.example/acme/app:1"));
        assert!(Arc::ptr_eq(&a, &b), "shared");
        assert_eq!(&*a, "registry.example/acme/app:1");
        // Far more distinct texts than are kept, none held: the table forgets them.
        for i in 0..3 * KEPT {
            intern(&format!("unique-{i}"));
        }
        let len = TABLE.lock().map(|t| t.len()).unwrap_or(usize::MAX);
        assert!(len <= KEPT, "bounded: {len}");
        // A text still held and interned again after a purge is equal, if not the same
        // allocation: correctness never depends on sharing.
        assert_eq!(intern("registry.example/acme/app:1"), a);
    }

    #[test]
    fn it_deserializes_strings_and_optional_strings() {
        #[derive(serde::Deserialize)]
        struct C {
            #[serde(deserialize_with = "deserialize")]
            name: Arc<str>,
            #[serde(default, deserialize_with = "deserialize_option")]
            image: Option<Arc<str>>,
        }
        let c: C = serde_json::from_str(r#"{"name": "ma\"in", "image": "nginx:1"}"#).expect("c");
        assert_eq!((&*c.name, c.image.as_deref()), ("ma\"in", Some("nginx:1")));
        let c: C = serde_json::from_str(r#"{"name": "main"}"#).expect("c");
        assert_eq!(c.image, None);
        let c: C = serde_json::from_str(r#"{"name": "main", "image": null}"#).expect("c");
        assert_eq!(c.image, None);
        assert!(serde_json::from_str::<C>(r#"{"name": 3}"#).is_err());
    }
}
