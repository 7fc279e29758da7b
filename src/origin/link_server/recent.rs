//! A map that keeps only its most recently written entries: what an origin remembers
//! of streams it no longer serves (their last HLS marks, their last claims).
//!
//! Knows nothing of streams, claims or marks.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

/// At most `cap` entries; writing one more forgets the one written longest ago.
/// Writes and lookups cost O(log n), so filling it from scratch (after a resync) stays
/// cheap whatever its size.
#[derive(Debug)]
pub struct Recent<K, V> {
    entries: HashMap<K, (V, u64)>,
    /// Write sequence number → key, oldest first.
    order: BTreeMap<u64, K>,
    next: u64,
    cap: usize,
}

impl<K: Clone + Eq + Hash, V> Recent<K, V> {
    /// An empty map of at most `cap` entries (at least one).
    pub fn new(cap: usize) -> Self {
        Recent { entries: HashMap::new(), order: BTreeMap::new(), next: 0, cap: cap.max(1) }
    }

    /// Writes `value` under `key`: the newest entry now.
    pub fn insert(&mut self, key: K, value: V) {
        if let Some((_, n)) = self.entries.get(&key) {
            self.order.remove(n);
        } else if self.entries.len() >= self.cap {
            if let Some((_, oldest)) = self.order.pop_first() {
                self.entries.remove(&oldest);
            }
        }
        self.next += 1;
        self.order.insert(self.next, key.clone());
        self.entries.insert(key, (value, self.next));
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.entries.get(key).map(|(v, _)| v)
    }

    /// Forgets every entry.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_write_is_forgotten_first() {
        let mut r = Recent::new(3);
        for k in ["a", "b", "c"] {
            r.insert(k, k.len());
        }
        r.insert("a", 10); // rewritten: now the newest
        r.insert("d", 1);
        assert_eq!(r.len(), 3);
        assert_eq!(r.get(&"b"), None, "b was written longest ago");
        assert_eq!((r.get(&"a"), r.get(&"c"), r.get(&"d")), (Some(&10), Some(&1), Some(&1)));
        r.insert("e", 1);
        assert_eq!(r.get(&"c"), None);
        r.clear();
        assert_eq!(r.len(), 0);
        r.insert("f", 2);
        assert_eq!(r.get(&"f"), Some(&2));
    }
}
