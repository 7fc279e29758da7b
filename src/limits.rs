//! Caps on what a stranger can hold: per-address and global counters whose permits
//! release themselves on drop, and a global byte budget.
//!
//! A [`Limit`] is one class of held resource (connections of a listener, handshakes,
//! sessions that have not started, long-lived requests, publishes). A permit is taken
//! before the resource is granted; refusals are counted per class and scope for
//! `/metrics`. Addresses are counted per IPv4 address and per IPv6 /64 (one host
//! usually owns a whole /64), with IPv4-mapped IPv6 addresses counted as IPv4.
//! [`ByteBudget`] bounds the sum of bytes many connections buffer (partially
//! received RTMP messages).
//!
//! Models: nginx `limit_conn` (per-key counters), tokio's `OwnedSemaphorePermit`.
//! Never knows sockets or protocols: callers pass the peer's address.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};

/// Why a permit was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The address already holds `limit` of this class.
    #[error("{class}: this address already holds {limit}")]
    PerAddress { class: &'static str, limit: usize },
    /// The whole process already holds `limit` of this class.
    #[error("{class}: the server already holds {limit}")]
    Global { class: &'static str, limit: usize },
}

/// The key an address is counted under: the IPv4 address, or the IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddrKey(IpAddr);

impl AddrKey {
    pub fn of(ip: IpAddr) -> AddrKey {
        match ip {
            IpAddr::V4(v4) => AddrKey(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddrKey(IpAddr::V4(v4)),
                None => {
                    let s = v6.segments();
                    AddrKey(IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0)))
                }
            },
        }
    }

    /// The IPv4 address, or the IPv6 /64's first address.
    pub fn ip(&self) -> IpAddr {
        self.0
    }
}

#[derive(Debug, Default)]
struct Held {
    total: usize,
    by_addr: HashMap<AddrKey, usize>,
}

/// One class of held resource, capped per address and in all.
#[derive(Debug)]
pub struct Limit {
    class: &'static str,
    per_address: usize,
    global: usize,
    /// Of `global`, what only trusted addresses may take (see [`Limit::try_acquire_as`]).
    reserve: usize,
    /// Never held across an await; every operation is a few map steps.
    held: Mutex<Held>,
    refused_address: AtomicU64,
    refused_global: AtomicU64,
}

impl Limit {
    /// A class named `class` (a metric label) with at most `per_address` held by one
    /// address and `global` in all.
    pub fn new(class: &'static str, per_address: usize, global: usize) -> Arc<Limit> {
        Self::with_reserve(class, per_address, global, 0)
    }

    /// Like [`Limit::new`], keeping the last `reserve` of `global` for trusted
    /// addresses: strangers are refused once `global - reserve` are held.
    pub fn with_reserve(class: &'static str, per_address: usize, global: usize, reserve: usize) -> Arc<Limit> {
        Arc::new(Limit {
            class,
            per_address,
            global,
            reserve: reserve.min(global),
            held: Mutex::new(Held::default()),
            refused_address: AtomicU64::new(0),
            refused_global: AtomicU64::new(0),
        })
    }

    /// Takes one permit for `ip`, or says which cap refused it (counted).
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Refused> {
        self.try_acquire_as(ip, false)
    }

    /// Takes one permit for `ip`; a `trusted` address (a member of the cluster, not a
    /// stranger) may also take the reserve, and has no per-address cap: an edge
    /// forwarding its clients' RTMPT requests to another holds a connection per request
    /// in flight.
    pub fn try_acquire_as(self: &Arc<Self>, ip: IpAddr, trusted: bool) -> Result<Permit, Refused> {
        let key = AddrKey::of(ip);
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let global = if trusted { self.global } else { self.global - self.reserve };
        if held.total >= global {
            self.refused_global.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::Global { class: self.class, limit: global });
        }
        let mine = held.by_addr.entry(key).or_insert(0);
        if !trusted && *mine >= self.per_address {
            self.refused_address.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::PerAddress { class: self.class, limit: self.per_address });
        }
        *mine += 1;
        held.total += 1;
        Ok(Permit { limit: self.clone(), key })
    }

    /// Permits held now, in all.
    pub fn in_use(&self) -> usize {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).total
    }

    /// Refusals so far: (per address, global).
    pub fn refused(&self) -> (u64, u64) {
        (self.refused_address.load(Ordering::Relaxed), self.refused_global.load(Ordering::Relaxed))
    }

    fn release(&self, key: AddrKey) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.total = held.total.saturating_sub(1);
        if let Some(n) = held.by_addr.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                held.by_addr.remove(&key);
            }
        }
    }
}

/// Addresses trusted with a [`Limit`]'s reserve (e.g. the cluster's own members), as
/// [`AddrKey`]s. Replaced whole when the set changes; read on every accept.
#[derive(Debug, Default)]
pub struct Trusted(RwLock<HashSet<AddrKey>>);

impl Trusted {
    pub fn set(&self, ips: impl IntoIterator<Item = IpAddr>) {
        let keys = ips.into_iter().map(AddrKey::of).collect();
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = keys;
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.read().unwrap_or_else(|e| e.into_inner()).contains(&AddrKey::of(ip))
    }
}

/// One held resource; released when dropped.
#[derive(Debug)]
pub struct Permit {
    limit: Arc<Limit>,
    key: AddrKey,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limit.release(self.key);
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabel {
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabel {
    class: &'static str,
    /// `address` or `global`: which cap refused.
    scope: &'static str,
}

/// The `/metrics` of some limits, read at scrape time: `{prefix}_limit_in_use{class}`
/// and `{prefix}_limit_refused_total{class,scope}`.
#[derive(Debug)]
pub struct LimitMetrics {
    pub prefix: &'static str,
    pub limits: Vec<Arc<Limit>>,
}

impl Collector for LimitMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let prefix = self.prefix;
        let in_use: Vec<_> = self.limits.iter().map(|l| (ClassLabel { class: l.class }, l.in_use() as u64)).collect();
        crate::metrics::gauges(
            &mut encoder,
            &format!("{prefix}_limit_in_use"),
            "Resources held now, by class",
            &in_use,
        )?;
        let refused: Vec<_> = self
            .limits
            .iter()
            .flat_map(|l| {
                let (address, global) = l.refused();
                [
                    (RefusedLabel { class: l.class, scope: "address" }, address),
                    (RefusedLabel { class: l.class, scope: "global" }, global),
                ]
            })
            .collect();
        crate::metrics::counters(
            &mut encoder,
            &format!("{prefix}_limit_refused_total"),
            "Refused because a cap was reached: per address or global",
            &refused,
        )
    }
}

/// A global budget of bytes shared by many holders, each with a [`Reservation`] it
/// grows and shrinks as its buffer does.
#[derive(Debug)]
pub struct ByteBudget {
    limit: usize,
    used: AtomicUsize,
    refused: AtomicU64,
}

impl ByteBudget {
    pub fn new(limit: usize) -> Arc<ByteBudget> {
        Arc::new(ByteBudget { limit, used: AtomicUsize::new(0), refused: AtomicU64::new(0) })
    }

    /// An empty reservation.
    pub fn reservation(self: &Arc<Self>) -> Reservation {
        Reservation { budget: self.clone(), held: 0 }
    }

    /// Bytes reserved now by every holder.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Reservations refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// One holder's share of a [`ByteBudget`]; returned when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<ByteBudget>,
    held: usize,
}

impl Reservation {
    /// Makes this holder's share exactly `bytes`; fails (holding what it held) when
    /// growing would take the budget past its limit.
    pub fn set(&mut self, bytes: usize) -> Result<(), usize> {
        if bytes <= self.held {
            self.budget.used.fetch_sub(self.held - bytes, Ordering::Relaxed);
            self.held = bytes;
            return Ok(());
        }
        let more = bytes - self.held;
        let grown = self.budget.used.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
            (used + more <= self.budget.limit).then_some(used + more)
        });
        match grown {
            Ok(_) => {
                self.held = bytes;
                Ok(())
            }
            Err(_) => {
                self.budget.refused.fetch_add(1, Ordering::Relaxed);
                Err(self.budget.limit)
            }
        }
    }

    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.held
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.held, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_address_cannot_take_what_another_needs() {
        let limit = Limit::new("conn", 2, 3);
        let a1 = limit.try_acquire(ip("127.0.0.2")).unwrap();
        let _a2 = limit.try_acquire(ip("127.0.0.2")).unwrap();
        assert_eq!(limit.try_acquire(ip("127.0.0.2")).unwrap_err(), Refused::PerAddress { class: "conn", limit: 2 });
        let _b = limit.try_acquire(ip("127.0.0.1")).unwrap();
        assert_eq!(limit.try_acquire(ip("127.0.0.3")).unwrap_err(), Refused::Global { class: "conn", limit: 3 });
        assert_eq!((limit.in_use(), limit.refused()), (3, (1, 1)));
        drop(a1);
        assert_eq!(limit.in_use(), 2);
        let _a3 = limit.try_acquire(ip("127.0.0.2")).unwrap();
    }

    #[test]
    fn permits_release_on_drop_and_forget_empty_addresses() {
        let limit = Limit::new("conn", 1, 10);
        for _ in 0..100 {
            let p = limit.try_acquire(ip("10.0.0.1")).unwrap();
            drop(p);
        }
        assert_eq!(limit.in_use(), 0);
        assert!(limit.held.lock().unwrap().by_addr.is_empty());
    }

    #[test]
    fn ipv6_is_counted_per_64_and_mapped_ipv4_as_ipv4() {
        let limit = Limit::new("conn", 1, 10);
        let _a = limit.try_acquire(ip("2001:db8:1:2::1")).unwrap();
        assert!(limit.try_acquire(ip("2001:db8:1:2:ffff::9")).is_err());
        let _b = limit.try_acquire(ip("2001:db8:1:3::1")).unwrap();
        let _c = limit.try_acquire(ip("192.0.2.7")).unwrap();
        assert!(limit.try_acquire(ip("::ffff:192.0.2.7")).is_err());
    }

    #[test]
    fn the_reserve_is_left_to_trusted_addresses() {
        let limit = Limit::with_reserve("http", 10, 4, 1);
        let trusted = Trusted::default();
        trusted.set([ip("10.0.0.1")]);
        let held: Vec<_> = (0..3).map(|_| limit.try_acquire_as(ip("10.9.9.9"), false).unwrap()).collect();
        assert_eq!(limit.try_acquire(ip("10.9.9.9")).unwrap_err(), Refused::Global { class: "http", limit: 3 });
        let peer = ip("10.0.0.1");
        let _member = limit.try_acquire_as(peer, trusted.contains(peer)).unwrap();
        assert!(limit.try_acquire_as(peer, true).is_err(), "the reserve is finite too");
        assert!(!trusted.contains(ip("10.0.0.2")));
        drop(held);
        // No per-address cap for a member: more than 10 from one trusted address.
        let limit = Limit::new("http", 2, 100);
        let members: Vec<_> = (0..20).map(|_| limit.try_acquire_as(peer, true).unwrap()).collect();
        assert!(limit.try_acquire_as(ip("10.9.9.9"), false).is_ok());
        assert_eq!(limit.try_acquire(peer).unwrap_err(), Refused::PerAddress { class: "http", limit: 2 });
        drop(members);
    }

    #[test]
    fn the_byte_budget_is_shared_and_returned() {
        let budget = ByteBudget::new(100);
        let mut a = budget.reservation();
        let mut b = budget.reservation();
        a.set(60).unwrap();
        assert_eq!(b.set(50), Err(100));
        assert_eq!((b.held(), budget.used(), budget.refused()), (0, 60, 1));
        b.set(40).unwrap();
        a.set(10).unwrap();
        assert_eq!(budget.used(), 50);
        drop(b);
        assert_eq!(budget.used(), 10);
        drop(a);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn metrics_name_every_class_and_scope() {
        let limit = Limit::new("handshakes", 0, 1);
        let _ = limit.try_acquire(ip("127.0.0.1"));
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(LimitMetrics { prefix: "edge", limits: vec![limit] }));
        let out = crate::metrics::encode(&registry, |_| {});
        assert!(out.contains("edge_limit_in_use{class=\"handshakes\"} 0"));
        assert!(out.contains("edge_limit_refused_total{class=\"handshakes\",scope=\"address\"} 1"));
        assert!(out.contains("edge_limit_refused_total{class=\"handshakes\",scope=\"global\"} 0"));
    }
}
