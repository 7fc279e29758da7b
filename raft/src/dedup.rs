//! The de-duplication window: the answers of the last [`DEDUP_WINDOW`] requests, so a
//! retried request gets its first answer back instead of being applied twice.
//!
//! The window is full after any long burst of writes and stays full (nothing expires
//! it but newer requests), so its size is memory every origin keeps for good. It is
//! laid out for that: the answers in one ring, oldest first, and a hash table of
//! 8-byte positions into the ring, instead of a map holding whole entries plus a
//! queue of ids. At the full window that is about 2.6 MB instead of 5.3 (a heap
//! profile after the 5-minute `flood-catchup` chaos schedule put 5.6 MB under the old
//! map and queue, half of what the origin kept above its start; docs/origin-cluster.md,
//! "Memory after a burst").
//!
//! Snapshots encode it exactly as the old layout did, a map of id to answer followed by
//! the ids oldest first, so snapshots written before and after read the same.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;
use serde::de::Deserializer;
use serde::ser::{SerializeTuple, Serializer};
use serde::{Deserialize, Serialize};

use crate::command::RequestId;

/// How many recent request ids the state machine remembers for de-duplication. A retry
/// older than this many requests is applied again (writers retry within seconds; the
/// chaos harness's registers for up to 30 s). 7/8 of 65,536, the most 65,536 buckets
/// hold; but the window drops its oldest answer for every new one, each removal leaves
/// a tombstone, and hashbrown rehashes in place only below half its capacity, so a
/// full window's table settles at 131,072 buckets (measured: capacity 107,251 after
/// four windows' worth of inserts; about 1.1 MB of the window's 2.6 MB in a heap
/// profile).
pub const DEDUP_WINDOW: usize = 57_344;

/// The answers of the last [`DEDUP_WINDOW`] requests.
#[derive(Debug, Clone)]
pub struct Window<T> {
    /// Oldest first; `ring[i]` has sequence number `first + i`.
    ring: VecDeque<(RequestId, T)>,
    /// Sequence number of `ring[0]`.
    first: u64,
    /// Sequence numbers of the entries in `ring`, found by their id's hash.
    index: HashTable<u64>,
    hasher: RandomState,
}

impl<T> Default for Window<T> {
    fn default() -> Self {
        Window { ring: VecDeque::new(), first: 0, index: HashTable::new(), hasher: RandomState::new() }
    }
}

impl<T: PartialEq> PartialEq for Window<T> {
    fn eq(&self, other: &Self) -> bool {
        self.ring == other.ring
    }
}

impl<T> Window<T> {
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// The answer remembered for `id`.
    pub fn get(&self, id: &RequestId) -> Option<&T> {
        let hash = self.hasher.hash_one(id);
        let seq = self.index.find(hash, |seq| self.ring[(seq - self.first) as usize].0 == *id)?;
        Some(&self.ring[(seq - self.first) as usize].1)
    }

    /// Remembers `answer` for `id` (not already remembered), forgetting the oldest
    /// answer once the window is full.
    pub fn insert(&mut self, id: RequestId, answer: T) {
        if self.ring.len() >= DEDUP_WINDOW {
            self.pop_oldest();
        }
        let seq = self.first + self.ring.len() as u64;
        self.ring.push_back((id, answer));
        let (ring, first, hasher) = (&self.ring, self.first, &self.hasher);
        self.index.insert_unique(self.hasher.hash_one(id), seq, |seq| hasher.hash_one(ring[(seq - first) as usize].0));
    }

    fn pop_oldest(&mut self) {
        let Some((id, _)) = self.ring.front() else { return };
        let (hash, first) = (self.hasher.hash_one(id), self.first);
        if let Ok(entry) = self.index.find_entry(hash, |seq| *seq == first) {
            entry.remove();
        }
        self.ring.pop_front();
        self.first += 1;
    }

    /// Entries oldest first.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &(RequestId, T)> {
        self.ring.iter()
    }
}

/// Encodes as the old layout's two fields: `HashMap<RequestId, T>`, then the ids oldest
/// first (bincode writes a tuple's elements one after the other, as it does a struct's
/// fields).
impl<T: Serialize> Serialize for Window<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct Answers<'a, T>(&'a VecDeque<(RequestId, T)>);
        impl<T: Serialize> Serialize for Answers<'_, T> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_map(self.0.iter().map(|(id, answer)| (id, answer)))
            }
        }
        struct Ids<'a, T>(&'a VecDeque<(RequestId, T)>);
        impl<T> Serialize for Ids<'_, T> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_seq(self.0.iter().map(|(id, _)| id))
            }
        }
        let mut tuple = serializer.serialize_tuple(2)?;
        tuple.serialize_element(&Answers(&self.ring))?;
        tuple.serialize_element(&Ids(&self.ring))?;
        tuple.end()
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Window<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (mut answers, order) = <(HashMap<RequestId, T>, VecDeque<RequestId>)>::deserialize(deserializer)?;
        let mut window = Window { ring: VecDeque::with_capacity(order.len()), ..Window::default() };
        // The newest DEDUP_WINDOW ids that have an answer, oldest first.
        let skip = order.len().saturating_sub(DEDUP_WINDOW);
        for id in order.into_iter().skip(skip) {
            if let Some(answer) = answers.remove(&id) {
                window.insert(id, answer);
            }
        }
        Ok(window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_the_newest_and_forgets_the_oldest() {
        let mut w = Window::default();
        for i in 0..(DEDUP_WINDOW as u128 + 10) {
            w.insert(RequestId(i), i as u64 * 2);
        }
        assert_eq!(w.len(), DEDUP_WINDOW);
        assert_eq!(w.index.len(), DEDUP_WINDOW);
        for i in 0..10 {
            assert_eq!(w.get(&RequestId(i)), None, "{i} left the window");
        }
        for i in [10, 11, 5_000, DEDUP_WINDOW as u128 + 9] {
            assert_eq!(w.get(&RequestId(i)), Some(&(i as u64 * 2)));
        }
        // The table never grew past one doubling: at most 7/8 of its buckets are used.
        assert!(w.index.capacity() < 2 * 65_536, "{}", w.index.capacity());
    }

    #[test]
    fn encodes_as_the_old_map_and_queue() {
        let mut w = Window::default();
        let mut old_map = HashMap::new();
        let mut old_order = VecDeque::new();
        for i in [7u128, 3, 9] {
            w.insert(RequestId(i), format!("answer {i}"));
            old_map.insert(RequestId(i), format!("answer {i}"));
            old_order.push_back(RequestId(i));
        }
        let old = crate::rpc::encode(&(&old_map, &old_order));
        let decoded: Window<String> = crate::rpc::decode(&old).unwrap();
        assert_eq!(decoded, w);
        assert_eq!(decoded.get(&RequestId(3)).map(String::as_str), Some("answer 3"));
        // The map's order differs from a HashMap's, so compare by decoding both ways.
        let new = crate::rpc::encode(&w);
        assert_eq!(new.len(), old.len());
        let (map, order): (HashMap<RequestId, String>, VecDeque<RequestId>) = crate::rpc::decode(&new).unwrap();
        assert_eq!((map, order), (old_map, old_order));
    }
}
