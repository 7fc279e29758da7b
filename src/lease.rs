//! Entries shared by key and counted by their holders: the first [`Leases::acquire`]
//! of a key makes the entry, every holder gets a [`Lease`], and dropping the last one
//! removes the entry and tells it ([`Released::released`]), under the registry's lock,
//! so a lease taken right after makes a fresh entry and never meets a half-released
//! one.
//!
//! Used wherever a resource lives exactly as long as someone on this node uses it: an
//! edge's relays (one upstream subscription per stream with players), its shared
//! objects (one feed per object in use) and its claims feed (one followed name per
//! stream published or relayed); an origin's stream watches and shared-object feeds.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

/// What an entry does when its last lease goes. Called under the registry's lock:
/// keep it short and never block (cancel a token, queue a message).
pub trait Released {
    fn released(&self) {}
}

impl Released for () {}

struct Held<V> {
    value: V,
    holders: usize,
}

type Map<K, V> = Arc<Mutex<HashMap<K, Held<V>>>>;

fn lock<K, V>(map: &Map<K, V>) -> MutexGuard<'_, HashMap<K, Held<V>>> {
    // Every change under this lock is a single insert, count or remove: a panic
    // elsewhere cannot leave it half done.
    map.lock().unwrap_or_else(|p| p.into_inner())
}

/// The entries, by key. Cheap to clone (clones share the entries).
pub struct Leases<K, V> {
    map: Map<K, V>,
}

impl<K, V> Default for Leases<K, V> {
    fn default() -> Self {
        Leases { map: Arc::default() }
    }
}

impl<K, V> Clone for Leases<K, V> {
    fn clone(&self) -> Self {
        Leases { map: self.map.clone() }
    }
}

impl<K: Eq + Hash + Clone, V: Clone + Released> Leases<K, V> {
    /// A lease on `key`'s entry, made with `make` if there is none.
    pub fn acquire(&self, key: &K, make: impl FnOnce() -> V) -> Lease<K, V> {
        match self.try_acquire(key, |_| Ok::<V, std::convert::Infallible>(make())) {
            Ok(lease) => lease,
            Err(never) => match never {},
        }
    }

    /// Like [`acquire`](Self::acquire), but a new entry is made by `make`, given how
    /// many entries exist, which may refuse (a bound on entries).
    pub fn try_acquire<E>(&self, key: &K, make: impl FnOnce(usize) -> Result<V, E>) -> Result<Lease<K, V>, E> {
        let mut map = lock(&self.map);
        let value = match map.get_mut(key) {
            Some(held) => {
                held.holders += 1;
                held.value.clone()
            }
            None => {
                let value = make(map.len())?;
                map.insert(key.clone(), Held { value: value.clone(), holders: 1 });
                value
            }
        };
        Ok(Lease { map: self.map.clone(), key: key.clone(), value })
    }

    /// `key`'s entry, if held.
    pub fn get(&self, key: &K) -> Option<V> {
        lock(&self.map).get(key).map(|h| h.value.clone())
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        lock(&self.map).len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every entry with its number of holders.
    pub fn entries(&self) -> Vec<(K, V, usize)> {
        lock(&self.map).iter().map(|(k, h)| (k.clone(), h.value.clone(), h.holders)).collect()
    }

    /// Every key held.
    pub fn keys(&self) -> Vec<K> {
        lock(&self.map).keys().cloned().collect()
    }
}

/// One holder's share of an entry.
pub struct Lease<K: Eq + Hash, V: Released> {
    map: Map<K, V>,
    key: K,
    value: V,
}

impl<K: Eq + Hash, V: Released> Lease<K, V> {
    pub fn value(&self) -> &V {
        &self.value
    }
}

impl<K: Eq + Hash + Clone, V: Clone + Released> Clone for Lease<K, V> {
    fn clone(&self) -> Self {
        // Our entry is there while we hold it.
        if let Some(held) = lock(&self.map).get_mut(&self.key) {
            held.holders += 1;
        }
        Lease { map: self.map.clone(), key: self.key.clone(), value: self.value.clone() }
    }
}

impl<K: Eq + Hash, V: Released> Drop for Lease<K, V> {
    fn drop(&mut self) {
        let mut map = lock(&self.map);
        let Some(held) = map.get_mut(&self.key) else { return };
        held.holders -= 1;
        if held.holders == 0 {
            if let Some(held) = map.remove(&self.key) {
                held.value.released();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Clone, Default)]
    struct Counted(Arc<AtomicUsize>);

    impl Released for Counted {
        fn released(&self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn the_entry_lives_while_any_lease_does_and_is_told_when_the_last_goes() {
        let leases: Leases<&str, Counted> = Leases::default();
        let made = AtomicUsize::new(0);
        let make = || {
            made.fetch_add(1, Ordering::Relaxed);
            Counted::default()
        };
        let a = leases.acquire(&"x", make);
        let b = leases.acquire(&"x", || unreachable!("the entry exists"));
        let c = b.clone();
        assert_eq!(made.load(Ordering::Relaxed), 1);
        assert_eq!(leases.entries().iter().map(|e| e.2).collect::<Vec<_>>(), vec![3]);
        let released = a.value().0.clone();
        drop(a);
        drop(b);
        assert_eq!(released.load(Ordering::Relaxed), 0, "c still holds it");
        assert_eq!(leases.len(), 1);
        drop(c);
        assert_eq!(released.load(Ordering::Relaxed), 1);
        assert!(leases.is_empty());
        // A new lease makes a new entry.
        let d = leases.acquire(&"x", Counted::default);
        assert_eq!(d.value().0.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_refused_entry_is_not_made_and_existing_ones_still_take_holders() {
        let leases: Leases<u32, ()> = Leases::default();
        let bounded = |n: usize| if n < 2 { Ok(()) } else { Err("full") };
        let _a = leases.try_acquire(&1, bounded).unwrap();
        let _b = leases.try_acquire(&2, bounded).unwrap();
        assert_eq!(leases.try_acquire(&3, bounded).err(), Some("full"));
        let _a2 = leases.try_acquire(&1, bounded).unwrap();
        assert_eq!(leases.len(), 2);
        assert_eq!(leases.get(&3), None);
    }
}
