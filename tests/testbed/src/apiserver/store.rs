//! The API server's state: objects by resource, namespace and name; one global, monotonically
//! increasing resourceVersion; a bounded history of changes per resource for watches, as
//! kube-apiserver's watch cache keeps one window per resource (older resourceVersions answer 410
//! Gone, and Pod churn does not push Deployments out); and a broadcast of new changes to open
//! watches.
//!
//! Object rules applied here, as kube-apiserver does: uid and creationTimestamp on create,
//! resourceVersion on every write, `metadata.generation` bumped only when something other than
//! metadata and status changes, `status` kept apart when the resource has a status subresource,
//! finalizers holding a deleted object with a deletionTimestamp until they are removed; the
//! garbage collector (an object that is gone takes the objects it owns with it, unless they are
//! orphaned) and namespace deletion (Terminating, its objects deleted, then the namespace).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::broadcast;

use super::error::ApiError;
use super::resources::Resource;

/// How many changes of one resource the history keeps before older resourceVersions are
/// "compacted".
pub const HISTORY: usize = 10_000;

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeType {
    /// Created.
    Added,
    /// Updated.
    Modified,
    /// Deleted.
    Deleted,
}

impl ChangeType {
    /// The watch event type.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeType::Added => "ADDED",
            ChangeType::Modified => "MODIFIED",
            ChangeType::Deleted => "DELETED",
        }
    }
}

/// One change, as watches see it.
#[derive(Debug, Clone)]
pub struct Change {
    /// The resourceVersion of the change.
    pub rv: u64,
    /// What happened.
    pub kind: ChangeType,
    /// `group/plural` of the object.
    pub storage_key: String,
    /// Namespace ("" for cluster-scoped).
    pub namespace: String,
    /// The object after (or, for deletes, at) the change.
    pub object: Value,
    /// The change as a JSON watch event line, rendered once by the first watch that sends it
    /// as stored and shared by every other (each watch used to copy and serialize it anew).
    pub json_line: std::sync::OnceLock<axum::body::Bytes>,
}

/// Where an object lives.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    /// `group/plural`.
    pub storage_key: String,
    /// Namespace ("" for cluster-scoped).
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl Key {
    /// The key of `name` in `namespace` (ignored for cluster-scoped resources).
    pub fn new(resource: &Resource, namespace: &str, name: &str) -> Self {
        Self {
            storage_key: resource.storage_key(),
            namespace: if resource.namespaced {
                namespace.to_string()
            } else {
                String::new()
            },
            name: name.to_string(),
        }
    }

    /// The key an object of `resource` is stored under, from its metadata.
    pub fn of(resource: &Resource, object: &Value) -> Self {
        let meta = &object["metadata"];
        Self::new(
            resource,
            meta["namespace"].as_str().unwrap_or_default(),
            meta["name"].as_str().unwrap_or_default(),
        )
    }
}

/// Storage key of namespaces (core group, plural `namespaces`).
const NAMESPACES: &str = "/namespaces";

/// The objects and their history.
pub struct Store {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    /// Owner uid → the objects that name it in their ownerReferences (the garbage collector's
    /// graph).
    owned: HashMap<String, BTreeSet<Key>>,
    /// Changes by storage key.
    history: HashMap<String, VecDeque<Arc<Change>>>,
    /// Per storage key: changes at or below this rv are no longer in `history`.
    trimmed_to: HashMap<String, u64>,
    /// Changes at or below this rv are gone for every resource (a compaction).
    compacted_to: u64,
    changes: broadcast::Sender<Arc<Change>>,
    /// Bumped by compaction: open watches end, as they do when an API server restarts.
    epoch: tokio::sync::watch::Sender<u64>,
}

impl Default for Store {
    fn default() -> Self {
        let (changes, _) = broadcast::channel(4096);
        let (epoch, _) = tokio::sync::watch::channel(0);
        Self {
            rv: 1,
            objects: BTreeMap::new(),
            owned: HashMap::new(),
            history: HashMap::new(),
            trimmed_to: HashMap::new(),
            compacted_to: 1,
            changes,
            epoch,
        }
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Whether two objects have the same spec for `metadata.generation`: every top-level field
/// but metadata, status, apiVersion and kind equal (compared in place, not copied).
fn same_spec(a: &Value, b: &Value) -> bool {
    const NOT_SPEC: [&str; 4] = ["metadata", "status", "apiVersion", "kind"];
    let empty = serde_json::Map::new();
    let (a, b) = (
        a.as_object().unwrap_or(&empty),
        b.as_object().unwrap_or(&empty),
    );
    let spec_len = |m: &serde_json::Map<String, Value>| {
        m.keys().filter(|k| !NOT_SPEC.contains(&k.as_str())).count()
    };
    spec_len(a) == spec_len(b)
        && a.iter()
            .filter(|(k, _)| !NOT_SPEC.contains(&k.as_str()))
            .all(|(k, v)| b.get(k) == Some(v))
}

impl Store {
    /// The current resourceVersion (what a list returns).
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// Changes at or below this resourceVersion are no longer kept (watches and continue
    /// tokens from before answer 410).
    pub fn compacted_to(&self) -> u64 {
        self.compacted_to
    }

    /// One object.
    pub fn get(&self, key: &Key) -> Option<&Value> {
        self.objects.get(key)
    }

    /// `Ok` when `namespace` exists and is not being deleted, else the 404 (or 403 for a
    /// Terminating namespace) kube-apiserver gives for creating into it.
    pub fn require_namespace(&self, namespace: &str) -> Result<(), ApiError> {
        match self.objects.get(&namespace_key(namespace)) {
            None => Err(ApiError::namespace_not_found(namespace)),
            Some(ns) if ns["metadata"].get("deletionTimestamp").is_some() => {
                Err(ApiError::forbidden(
                    format!(
                        "unable to create new content in namespace {namespace} because it is being terminated"
                    ),
                    "",
                    "namespaces",
                    namespace,
                ))
            }
            Some(_) => Ok(()),
        }
    }

    /// Every object of a resource, in a namespace or (`None`) in all (a range of the ordered
    /// map, not a scan of every object).
    pub fn list(&self, storage_key: &str, namespace: Option<&str>) -> Vec<Value> {
        self.iter(storage_key, namespace).cloned().collect()
    }

    /// [`Store::list`] read in place: for a look that keeps little of what it reads (the
    /// authorizer's bindings on every request), as kube-apiserver's informer listers hand out
    /// their cached objects without copying them.
    pub fn iter<'a>(
        &'a self,
        storage_key: &'a str,
        namespace: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Value> + 'a {
        let start = Key {
            storage_key: storage_key.to_string(),
            namespace: namespace.unwrap_or_default().to_string(),
            name: String::new(),
        };
        self.objects
            .range(start..)
            .take_while(move |(k, _)| {
                k.storage_key == storage_key && namespace.is_none_or(|ns| k.namespace == ns)
            })
            .map(|(_, v)| v)
    }

    /// One page of a resource's objects (in `namespace`, or all), in store order: those after
    /// `after` (a namespace/name position) that `keep` accepts, at most `limit` of them cloned,
    /// and how many more it accepts after them (counted in place). Costs the page, not the
    /// resource, in copies: as kube-apiserver reads a page from etcd or its cache.
    pub fn page(
        &self,
        storage_key: &str,
        namespace: Option<&str>,
        after: Option<&(String, String)>,
        limit: usize,
        keep: impl Fn(&Value) -> bool,
    ) -> (Vec<Value>, usize) {
        use std::ops::Bound;
        let start = match after {
            Some((ns, name)) => Bound::Excluded(Key {
                storage_key: storage_key.to_string(),
                namespace: ns.clone(),
                name: name.clone(),
            }),
            None => Bound::Included(Key {
                storage_key: storage_key.to_string(),
                namespace: namespace.unwrap_or_default().to_string(),
                name: String::new(),
            }),
        };
        let mut matching = self
            .objects
            .range((start, Bound::Unbounded))
            .take_while(|(k, _)| {
                k.storage_key == storage_key && namespace.is_none_or(|ns| k.namespace == ns)
            })
            .map(|(_, v)| v)
            .filter(|v| keep(v));
        let items = matching.by_ref().take(limit).cloned().collect();
        (items, matching.count())
    }

    /// Calls `f` with every object of a resource in all namespaces, in place (no copies).
    pub fn each(&self, storage_key: &str, f: impl FnMut(&Value)) {
        self.iter(storage_key, None).for_each(f);
    }

    /// Subscribes to changes after the current resourceVersion.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.changes.subscribe()
    }

    /// Changes of a resource after `rv`, or `Err(Gone)` when some were compacted away.
    pub fn since(&self, storage_key: &str, rv: u64) -> Result<Vec<Arc<Change>>, ApiError> {
        let trimmed = self.trimmed_to.get(storage_key).copied().unwrap_or(0);
        if rv < self.compacted_to.max(trimmed) {
            return Err(ApiError::gone(rv));
        }
        Ok(self
            .history
            .get(storage_key)
            .into_iter()
            .flatten()
            .filter(|c| c.rv > rv)
            .cloned()
            .collect())
    }

    /// Ends when a compaction happens (watches select on it).
    pub fn epoch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.epoch.subscribe()
    }

    /// Forgets the whole history and ends every open watch, so a client resuming from any
    /// earlier resourceVersion gets 410 Gone and must re-list (a fault for tests). The compaction
    /// takes a resourceVersion of its own, as an etcd compaction does.
    pub fn compact(&mut self) {
        self.rv += 1;
        self.history.clear();
        self.trimmed_to.clear();
        self.compacted_to = self.rv;
        self.epoch.send_modify(|e| *e += 1);
    }

    fn record(&mut self, kind: ChangeType, key: &Key, object: Value) {
        let change = Arc::new(Change {
            rv: self.rv,
            kind,
            storage_key: key.storage_key.clone(),
            namespace: key.namespace.clone(),
            object,
            json_line: std::sync::OnceLock::new(),
        });
        let history = self.history.entry(key.storage_key.clone()).or_default();
        history.push_back(change.clone());
        while history.len() > HISTORY {
            if let Some(old) = history.pop_front() {
                self.trimmed_to.insert(key.storage_key.clone(), old.rv);
            }
        }
        let _ = self.changes.send(change);
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    /// Creates an object (name already resolved); 409 AlreadyExists if present.
    pub fn create(
        &mut self,
        resource: &Resource,
        key: Key,
        mut object: Value,
    ) -> Result<Value, ApiError> {
        if self.objects.contains_key(&key) {
            return Err(ApiError::already_exists(resource, &key.name));
        }
        let rv = self.next_rv();
        if resource.status_subresource
            && let Some(map) = object.as_object_mut()
        {
            map.remove("status");
        }
        object["apiVersion"] = resource.api_version().into();
        object["kind"] = resource.kind.clone().into();
        let meta = &mut object["metadata"];
        meta["name"] = key.name.clone().into();
        if resource.namespaced {
            meta["namespace"] = key.namespace.clone().into();
        }
        meta["uid"] = uuid_v4().into();
        meta["creationTimestamp"] = now().into();
        meta["resourceVersion"] = rv.to_string().into();
        if resource.tracks_generation {
            meta["generation"] = 1.into();
        }
        if let Some(m) = meta.as_object_mut() {
            m.remove("deletionTimestamp");
        }
        self.put(key.clone(), object.clone());
        self.record(ChangeType::Added, &key, object.clone());
        Ok(object)
    }

    /// Replaces an object. `status_only` is a write to `/status`. A resourceVersion in the new
    /// object must match the stored one (409 Conflict otherwise).
    pub fn update(
        &mut self,
        resource: &Resource,
        key: &Key,
        mut object: Value,
        status_only: bool,
    ) -> Result<Value, ApiError> {
        // The stored object is read in place (this runs under the store's lock for every
        // write), and copied only where it is the answer.
        let Some(current) = self.objects.get(key) else {
            return Err(ApiError::not_found(resource, &key.name));
        };
        if let Some(given) = object["metadata"]["resourceVersion"]
            .as_str()
            .filter(|s| !s.is_empty())
            && Some(given) != current["metadata"]["resourceVersion"].as_str()
        {
            return Err(ApiError::conflict(resource, &key.name));
        }
        if status_only {
            // Only status changes on /status (and who manages it).
            let status = object.get("status").cloned();
            let managed = object["metadata"].get("managedFields").cloned();
            object = current.clone();
            match status {
                Some(s) => object["status"] = s,
                None => {
                    if let Some(m) = object.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            if let Some(m) = managed {
                object["metadata"]["managedFields"] = m;
            }
        } else {
            // Immutable and server-owned metadata comes from the stored object.
            for field in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "generation",
                "namespace",
                "name",
            ] {
                match current["metadata"].get(field) {
                    Some(v) => object["metadata"][field] = v.clone(),
                    None => {
                        if let Some(m) = object["metadata"].as_object_mut() {
                            m.remove(field);
                        }
                    }
                }
            }
            if resource.status_subresource {
                match current.get("status") {
                    Some(s) => object["status"] = s.clone(),
                    None => {
                        if let Some(m) = object.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
        }
        object["apiVersion"] = resource.api_version().into();
        object["kind"] = resource.kind.clone().into();
        if resource.tracks_generation && !same_spec(&object, current) {
            let generation = current["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            object["metadata"]["generation"] = generation.into();
        }
        // A deleted object whose last finalizer went away is gone.
        let deleting = current["metadata"].get("deletionTimestamp").is_some();
        let finalizers_left = object["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        let goes = deleting && !finalizers_left;
        // kube-apiserver skips a write that changes nothing: no new resourceVersion, no event.
        object["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
        if !goes && object == *current {
            return Ok(object);
        }
        let rv = self.next_rv();
        object["metadata"]["resourceVersion"] = rv.to_string().into();
        if goes {
            self.take(key);
            self.record(ChangeType::Deleted, key, object.clone());
            if let Some(uid) = object["metadata"]["uid"].as_str() {
                self.collect_dependents(uid);
            }
            return Ok(object);
        }
        self.put(key.clone(), object.clone());
        self.record(ChangeType::Modified, key, object.clone());
        Ok(object)
    }

    /// Deletes an object, or marks it with a deletionTimestamp while finalizers remain. What it
    /// owns is deleted with it (background propagation) or, with `orphan`, loses the owner
    /// reference. A namespace turns Terminating, its objects are deleted, and it goes once they
    /// are gone (see [`Store::finish_namespace`]).
    pub fn delete(
        &mut self,
        resource: &Resource,
        key: &Key,
        orphan: bool,
    ) -> Result<Value, ApiError> {
        if !self.objects.contains_key(key) {
            return Err(ApiError::not_found(resource, &key.name));
        }
        if key.storage_key == NAMESPACES {
            return Ok(self.delete_namespace(&key.name));
        }
        let uid = self.objects[key]["metadata"]["uid"].clone();
        if orphan && let Some(uid) = uid.as_str() {
            self.orphan_dependents(uid);
        }
        Ok(self.remove(key))
    }

    /// Marks a namespace Terminating and deletes everything in it; it is removed at once when
    /// nothing is held by a finalizer.
    fn delete_namespace(&mut self, name: &str) -> Value {
        let key = namespace_key(name);
        let Some(mut ns) = self.objects.get(&key).cloned() else {
            return Value::Null;
        };
        if ns["metadata"].get("deletionTimestamp").is_none() {
            let rv = self.next_rv();
            ns["metadata"]["deletionTimestamp"] = now().into();
            ns["metadata"]["resourceVersion"] = rv.to_string().into();
            ns["status"]["phase"] = "Terminating".into();
            self.put(key.clone(), ns.clone());
            self.record(ChangeType::Modified, &key, ns.clone());
        }
        let contents: Vec<Key> = self
            .objects
            .keys()
            .filter(|k| k.namespace == name)
            .cloned()
            .collect();
        for k in contents {
            if self.objects.contains_key(&k) {
                self.remove(&k);
            }
        }
        self.finish_namespace(name).unwrap_or(ns)
    }

    /// Removes a Terminating namespace once nothing is left in it; returns it when removed.
    pub fn finish_namespace(&mut self, name: &str) -> Option<Value> {
        let key = namespace_key(name);
        let ns = self.objects.get(&key)?;
        if ns["metadata"].get("deletionTimestamp").is_none()
            || self.objects.keys().any(|k| k.namespace == name)
        {
            return None;
        }
        let mut ns = self.take(&key)?;
        let rv = self.next_rv();
        ns["metadata"]["resourceVersion"] = rv.to_string().into();
        self.record(ChangeType::Deleted, &key, ns.clone());
        Some(ns)
    }

    /// Namespaces that are Terminating (waiting for finalizers of their objects).
    pub fn terminating_namespaces(&self) -> Vec<String> {
        self.objects
            .iter()
            .filter(|(k, v)| {
                k.storage_key == NAMESPACES && v["metadata"].get("deletionTimestamp").is_some()
            })
            .map(|(k, _)| k.name.clone())
            .collect()
    }

    /// Drops the owner reference to `uid` from every object (`propagationPolicy=Orphan`).
    fn orphan_dependents(&mut self, uid: &str) {
        for k in self.dependents(uid) {
            let Some(mut o) = self.objects.get(&k).cloned() else {
                continue;
            };
            if let Some(refs) = o["metadata"]["ownerReferences"].as_array_mut() {
                refs.retain(|r| r["uid"] != uid);
            }
            let rv = self.next_rv();
            o["metadata"]["resourceVersion"] = rv.to_string().into();
            self.put(k.clone(), o.clone());
            self.record(ChangeType::Modified, &k, o);
        }
    }

    /// Deletes one object (or marks it while finalizers remain); when it is gone, so is what
    /// it owns, transitively (the garbage collector's background propagation).
    fn remove(&mut self, key: &Key) -> Value {
        let Some(mut current) = self.objects.get(key).cloned() else {
            return Value::Null;
        };
        let has_finalizers = current["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        let rv = self.next_rv();
        current["metadata"]["resourceVersion"] = rv.to_string().into();
        if has_finalizers {
            if current["metadata"].get("deletionTimestamp").is_none() {
                current["metadata"]["deletionTimestamp"] = now().into();
                current["metadata"]["deletionGracePeriodSeconds"] = 0.into();
                self.put(key.clone(), current.clone());
                self.record(ChangeType::Modified, key, current.clone());
            } else {
                self.rv -= 1;
            }
            return current;
        }
        self.take(key);
        self.record(ChangeType::Deleted, key, current.clone());
        if let Some(uid) = current["metadata"]["uid"].as_str() {
            self.collect_dependents(uid);
        }
        current
    }

    /// Deletes every object owned by `uid` (the owner is gone).
    fn collect_dependents(&mut self, uid: &str) {
        for k in self.dependents(uid) {
            self.remove(&k);
        }
    }

    /// The keys of the objects with an owner reference to `uid`.
    fn dependents(&self, uid: &str) -> Vec<Key> {
        self.owned
            .get(uid)
            .map(|keys| keys.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Stores an object, keeping the owner index current.
    fn put(&mut self, key: Key, object: Value) {
        self.unindex(&key);
        for uid in owner_uids(&object) {
            self.owned.entry(uid).or_default().insert(key.clone());
        }
        self.objects.insert(key, object);
    }

    /// Removes an object, keeping the owner index current.
    fn take(&mut self, key: &Key) -> Option<Value> {
        self.unindex(key);
        self.objects.remove(key)
    }

    fn unindex(&mut self, key: &Key) {
        let Some(old) = self.objects.get(key) else {
            return;
        };
        for uid in owner_uids(old) {
            if let Some(keys) = self.owned.get_mut(&uid) {
                keys.remove(key);
                if keys.is_empty() {
                    self.owned.remove(&uid);
                }
            }
        }
    }
}

fn namespace_key(name: &str) -> Key {
    Key {
        storage_key: NAMESPACES.into(),
        namespace: String::new(),
        name: name.into(),
    }
}

/// The uids of an object's owners.
fn owner_uids(object: &Value) -> Vec<String> {
    object["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["uid"].as_str().map(str::to_string))
        .collect()
}

/// A random RFC 4122 version-4 UUID.
pub fn uuid_v4() -> String {
    let b: [u8; 16] = rand::random();
    let mut b = b;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}
