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
    pub fn get(&self, key: &K, now: Instant) -> Option<&V> {
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

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(10);

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
