//! A bounded map of recent answers, each reused for a fixed time: what the functions keep of
//! a read they repeat often (ServiceAccounts) and of the Events they record (the series a
//! repeat extends). At most `capacity` entries: a full map first forgets what has expired,
//! then everything — so its memory is bounded whatever the cluster sends, and a pass over the
//! entries happens at most once per `capacity` insertions.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Entries of `V` by `K`, each fresh for `ttl` after it was last inserted.
#[derive(Debug)]
pub struct Recent<K, V> {
    ttl: Duration,
    capacity: usize,
    entries: HashMap<K, (Instant, V)>,
}

impl<K: Eq + Hash, V> Recent<K, V> {
    /// An empty map whose entries stay fresh for `ttl`, holding at most `capacity` (≥ 1).
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity: capacity.max(1),
            entries: HashMap::new(),
        }
    }

    /// The entry for `key`, if inserted less than the TTL before `now`.
    pub fn get<Q>(&self, key: &Q, now: Instant) -> Option<&V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.entries
            .get(key)
            .filter(|(at, _)| now.saturating_duration_since(*at) < self.ttl)
            .map(|(_, v)| v)
    }

    /// Keeps `value` for `key` from `now` on (replacing what was there).
    pub fn insert(&mut self, key: K, value: V, now: Instant) {
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            let ttl = self.ttl;
            self.entries
                .retain(|_, (at, _)| now.saturating_duration_since(*at) < ttl);
            if self.entries.len() >= self.capacity {
                self.entries.clear();
            }
        }
        self.entries.insert(key, (now, value));
    }

    /// Forgets `key`.
    pub fn remove(&mut self, key: &K) {
        self.entries.remove(key);
    }

    /// How many entries are held (fresh or not).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// What references resolved to at a registry moments ago (reference → digest), shared between
/// tasks: the rollout checks the same backup for every workload that runs it, and a registry
/// answers the same within seconds. Only a found digest is kept, never a miss or an error, and
/// only for [`Resolved::TTL`].
#[derive(Debug, Clone)]
pub struct Resolved(std::sync::Arc<std::sync::Mutex<Recent<String, String>>>);

impl Resolved {
    /// How long an answer is reused: short next to the health gate that reverts a workload
    /// whose Pods cannot pull, and to the seconds between a check and the kubelet's pull.
    pub const TTL: Duration = Duration::from_secs(5);
    /// The most references remembered.
    pub const CAPACITY: usize = 4096;

    /// An empty map.
    pub fn new() -> Self {
        Self(std::sync::Arc::new(std::sync::Mutex::new(Recent::new(
            Self::TTL,
            Self::CAPACITY,
        ))))
    }

    /// The digest `reference` resolved to less than [`Resolved::TTL`] ago.
    pub fn get(&self, reference: &str) -> Option<String> {
        let now = Instant::now();
        self.0
            .lock()
            .ok()
            .and_then(|m| m.get(reference, now).cloned())
    }

    /// Remembers that `reference` resolved to `digest` just now.
    pub fn insert(&self, reference: &str, digest: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(reference.to_string(), digest.to_string(), Instant::now());
        }
    }

    /// The digest `reference` resolved to moments ago, else what `ask` (not started unless
    /// needed: a future does nothing until awaited) answers, remembered when it found one.
    pub async fn resolve<E>(
        &self,
        reference: &str,
        ask: impl Future<Output = Result<Option<String>, E>>,
    ) -> Result<Option<String>, E> {
        if let Some(digest) = self.get(reference) {
            return Ok(Some(digest));
        }
        let digest = ask.await?;
        if let Some(d) = &digest {
            self.insert(reference, d);
        }
        Ok(digest)
    }
}

impl Default for Resolved {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn a_found_digest_is_reused_and_a_miss_or_an_error_asked_again() {
        let resolved = Resolved::new();
        let asked = std::sync::atomic::AtomicUsize::new(0);
        let ask = |answer: Result<Option<&'static str>, &'static str>| {
            asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move { answer.map(|d| d.map(str::to_string)) }
        };
        // A miss and an error are not remembered.
        assert_eq!(resolved.resolve("r:1", ask(Ok(None))).await, Ok(None));
        assert_eq!(resolved.resolve("r:1", ask(Err("503"))).await, Err("503"));
        // A found digest is, and the next caller does not ask (its future never runs).
        let found = resolved.resolve("r:1", ask(Ok(Some("sha256:a")))).await;
        assert_eq!(found, Ok(Some("sha256:a".to_string())));
        let unasked = async { Err::<Option<String>, &str>("must not be awaited") };
        assert_eq!(
            resolved.resolve("r:1", unasked).await,
            Ok(Some("sha256:a".to_string()))
        );
        assert_eq!(resolved.get("r:2"), None, "by reference");
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[test]
    fn an_entry_is_fresh_until_the_ttl_after_its_last_insertion() {
        let mut r = Recent::new(TTL, 8);
        let t0 = Instant::now();
        r.insert("a", 1, t0);
        assert_eq!(r.get(&"a", t0 + TTL / 2), Some(&1));
        assert_eq!(r.get(&"a", t0 + TTL), None, "expired");
        r.insert("a", 2, t0 + TTL);
        assert_eq!(r.get(&"a", t0 + TTL + TTL / 2), Some(&2), "renewed");
        r.remove(&"a");
        assert!(r.is_empty());
    }

    #[test]
    fn a_full_map_forgets_what_expired_then_everything() {
        let mut r = Recent::new(TTL, 4);
        let t0 = Instant::now();
        for i in 0..3 {
            r.insert(i, (), t0);
        }
        r.insert(10, (), t0 + TTL);
        assert_eq!(r.len(), 4);
        // Full: the three old ones have expired and go, the fresh one stays.
        r.insert(11, (), t0 + TTL + TTL / 2);
        assert_eq!(r.len(), 2);
        assert!(r.get(&10, t0 + TTL + TTL / 2).is_some());
        // Full of fresh entries: everything goes, the new one is kept.
        r.insert(12, (), t0 + TTL + TTL / 2);
        r.insert(13, (), t0 + TTL + TTL / 2);
        r.insert(14, (), t0 + TTL + TTL / 2);
        assert_eq!(r.len(), 1);
        assert!(r.get(&14, t0 + TTL + TTL / 2).is_some());
        // Replacing an entry of a full map forgets nothing.
        for i in 20..23 {
            r.insert(i, (), t0 + TTL + TTL / 2);
        }
        r.insert(14, (), t0 + TTL + TTL / 2);
        assert_eq!(r.len(), 4);
    }
}
