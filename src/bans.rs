//! Addresses that keep being refused are banned below `accept`: a classic BPF program
//! attached to the listening socket drops their SYNs in the kernel.
//!
//! Per-address caps refuse a connection after accepting it. One address can still
//! make an edge accept and close 25,000 connections a second (every refused client
//! simply reconnects), and on a small machine that churn (the handshake, `accept`,
//! the epoll registration, the close) took enough CPU to stall live players for
//! over a second. An address refused more than `refusals_per_second` in one second
//! is therefore banned for `first` (doubling for each new ban within
//! [`STRIKE_MEMORY`], up to `longest`): its SYNs are dropped by the listener's
//! socket filter, so its `connect`s hang in SYN retransmission instead of costing
//! the server a connection each. Everyone else is unaffected.
//!
//! Addresses are keyed as the caps key them ([`AddrKey`]: IPv4 address, IPv6 /64).
//! At most [`MAX_BANNED`] are banned at once: this defends against one address, or
//! a few, not a distributed flood (that is for the network in front). Trusted
//! addresses (fellow members, load balancers whose PROXY headers name the client)
//! are never banned: behind a balancer the balancer must rate-limit.
//!
//! Where the filter cannot be attached (another OS, a kernel without it), banned
//! addresses are still refused at accept, and reset rather than closed, which is
//! what the caps do anyway. Models: fail2ban's ban with growing times, done in
//! process; `SO_ATTACH_FILTER` as tcpdump uses it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};

use crate::limits::AddrKey;

/// At most this many addresses are banned at once; past it nobody new is banned.
pub const MAX_BANNED: usize = 256;
/// Addresses whose refusals are counted in one second; past it new ones are not.
const MAX_COUNTED: usize = 4096;
/// A ban within this long of the last one lasts twice as long.
pub const STRIKE_MEMORY: Duration = Duration::from_secs(600);

/// When an address is banned, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BanPolicy {
    /// Refusals in one second that ban the address (0: never ban).
    pub refusals_per_second: u32,
    /// The first ban's length.
    pub first: Duration,
    /// The longest ban.
    pub longest: Duration,
}

impl Default for BanPolicy {
    fn default() -> Self {
        BanPolicy { refusals_per_second: 200, first: Duration::from_secs(10), longest: Duration::from_secs(300) }
    }
}

#[derive(Debug, Clone, Copy)]
struct Strikes {
    until: Instant,
    length: Duration,
}

/// The refusal counts and bans of one listener. Owned by its accept loop, which
/// attaches [`Bans::filter`] whenever [`Bans::refused`] or [`Bans::expire`] says the
/// set changed.
#[derive(Debug)]
pub struct Bans {
    policy: BanPolicy,
    second: Instant,
    counts: HashMap<AddrKey, u32>,
    /// Banned now or recently (`until` in the past): the length of the last ban.
    strikes: HashMap<AddrKey, Strikes>,
    banned: usize,
}

impl Bans {
    pub fn new(policy: BanPolicy) -> Bans {
        Bans { policy, second: Instant::now(), counts: HashMap::new(), strikes: HashMap::new(), banned: 0 }
    }

    /// Counts a refused connection from `ip` at `now`; true when that banned it.
    pub fn refused(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.policy.refusals_per_second == 0 {
            return false;
        }
        if now.duration_since(self.second) >= Duration::from_secs(1) {
            self.second = now;
            self.counts.clear();
        }
        let key = AddrKey::of(ip);
        if self.is_banned(key, now) {
            return false;
        }
        if self.counts.len() >= MAX_COUNTED && !self.counts.contains_key(&key) {
            return false;
        }
        let n = self.counts.entry(key).or_insert(0);
        *n += 1;
        if *n <= self.policy.refusals_per_second || self.banned >= MAX_BANNED {
            return false;
        }
        self.counts.remove(&key);
        let length = match self.strikes.get(&key) {
            Some(s) if now.duration_since(s.until) < STRIKE_MEMORY => (s.length * 2).min(self.policy.longest),
            _ => self.policy.first,
        };
        self.strikes.insert(key, Strikes { until: now + length, length });
        self.banned += 1;
        true
    }

    /// Lifts the bans that ran out by `now` and forgets old strikes; true when a ban
    /// was lifted.
    pub fn expire(&mut self, now: Instant) -> bool {
        let before = self.banned;
        self.strikes.retain(|_, s| now.duration_since(s.until) < STRIKE_MEMORY);
        self.banned = self.strikes.values().filter(|s| s.until > now).count();
        self.banned != before
    }

    /// When the first ban in force at `now` ends.
    pub fn next_end(&self, now: Instant) -> Option<Instant> {
        self.strikes.values().map(|s| s.until).filter(|until| *until > now).min()
    }

    /// Whether `ip` is banned at `now`.
    pub fn banned(&self, ip: IpAddr, now: Instant) -> bool {
        self.is_banned(AddrKey::of(ip), now)
    }

    fn is_banned(&self, key: AddrKey, now: Instant) -> bool {
        self.strikes.get(&key).is_some_and(|s| s.until > now)
    }

    /// Addresses banned now.
    pub fn banned_now(&self) -> usize {
        self.banned
    }

    /// The socket filter dropping the banned addresses' packets at `now`.
    pub fn filter(&self, now: Instant) -> Vec<Insn> {
        let keys: Vec<AddrKey> = self.strikes.iter().filter(|(_, s)| s.until > now).map(|(k, _)| *k).collect();
        program(&keys)
    }
}

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

const LD_W_ABS: u16 = 0x20;
const LD_B_ABS: u16 = 0x30;
const RSH_K: u16 = 0x74;
const JA: u16 = 0x05;
const JEQ_K: u16 = 0x15;
const RET_K: u16 = 0x06;
/// `SKF_NET_OFF`: loads relative to the network (IP) header.
const NET: u32 = (-0x100000i32) as u32;
const ACCEPT: u32 = u32::MAX;
const DROP: u32 = 0;

const fn insn(code: u16, jt: u8, jf: u8, k: u32) -> Insn {
    Insn { code, jt, jf, k }
}

/// A program passing every packet except those from `banned`: IPv4 sources compared
/// whole, IPv6 sources by their /64. Each comparison jumps only over the next
/// instruction, so no jump outgrows its 8-bit offset however many addresses there
/// are; the two blocks are reached with 32-bit `ja`.
pub fn program(banned: &[AddrKey]) -> Vec<Insn> {
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for key in banned {
        match key.ip() {
            IpAddr::V4(a) => v4.push(u32::from(a)),
            IpAddr::V6(a) => {
                let o = a.octets();
                v6.push((u32::from_be_bytes([o[0], o[1], o[2], o[3]]), u32::from_be_bytes([o[4], o[5], o[6], o[7]])));
            }
        }
    }
    if v4.is_empty() && v6.is_empty() {
        return vec![insn(RET_K, 0, 0, ACCEPT)];
    }
    let v4_len = 2 + 2 * v4.len() as u32;
    let mut p = vec![
        insn(LD_B_ABS, 0, 0, NET),
        insn(RSH_K, 0, 0, 4),
        insn(JEQ_K, 0, 1, 4),
        insn(JA, 0, 0, 3), // to the IPv4 block, 3 after the next instruction
        insn(JEQ_K, 0, 1, 6),
        insn(JA, 0, 0, 1 + v4_len), // over `ret` and the IPv4 block
        insn(RET_K, 0, 0, ACCEPT),
    ];
    p.push(insn(LD_W_ABS, 0, 0, NET.wrapping_add(12)));
    for a in v4 {
        p.extend([insn(JEQ_K, 0, 1, a), insn(RET_K, 0, 0, DROP)]);
    }
    p.push(insn(RET_K, 0, 0, ACCEPT));
    for (hi, lo) in v6 {
        p.extend([
            insn(LD_W_ABS, 0, 0, NET.wrapping_add(8)),
            insn(JEQ_K, 0, 3, hi),
            insn(LD_W_ABS, 0, 0, NET.wrapping_add(12)),
            insn(JEQ_K, 0, 1, lo),
            insn(RET_K, 0, 0, DROP),
        ]);
    }
    p.push(insn(RET_K, 0, 0, ACCEPT));
    p
}

/// Attaches `program` to the socket, replacing any filter it had.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub fn attach(socket: &impl AsFd, program: &[Insn]) -> std::io::Result<()> {
    let filters: Vec<socket2::SockFilter> =
        program.iter().map(|i| socket2::SockFilter::new(i.code, i.jt, i.jf, i.k)).collect();
    socket2::SockRef::from(socket).attach_filter(&filters)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub fn attach(_socket: &impl AsFd, _program: &[Insn]) -> std::io::Result<()> {
    Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "socket filters need Linux"))
}

/// Removes the filter a connection inherited from its listener, so its packets do
/// not run the ban list (the listener's filter is only for SYNs).
#[cfg(any(target_os = "linux", target_os = "android"))]
pub fn detach(socket: &impl AsFd) {
    let _ = socket2::SockRef::from(socket).detach_filter();
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub fn detach(_socket: &impl AsFd) {}

/// Closes with a reset when dropped: no FIN exchange, no TIME_WAIT left on the server.
pub fn reset(socket: &impl AsFd) {
    let _ = socket2::SockRef::from(socket).set_linger(Some(Duration::ZERO));
}

/// Waits until `at`, or forever when it is `None`.
async fn until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// One listener's bans, kept by its accept loop: counts refusals, refuses banned
/// addresses, keeps the kernel filter in step, and counts for `/metrics`.
#[derive(Debug)]
pub struct Gate {
    bans: Bans,
    what: &'static str,
    /// The filter could not be attached: banned addresses are refused at accept.
    kernel: bool,
    attached: bool,
    stats: Arc<GateStats>,
}

/// What a [`Gate`] reports to `/metrics`.
#[derive(Debug, Default)]
pub struct GateStats {
    pub banned: AtomicU64,
    pub bans_total: AtomicU64,
    pub refused_banned: AtomicU64,
}

impl Gate {
    pub fn new(what: &'static str, policy: BanPolicy, stats: Arc<GateStats>) -> Gate {
        Gate { bans: Bans::new(policy), what, kernel: true, attached: false, stats }
    }

    /// Called for every accepted connection before any cap: false when `peer` is
    /// banned (the caller drops the socket, already set to reset). Also detaches the
    /// inherited filter from accepted sockets. Bans are lifted by [`Gate::accept`].
    pub fn admit(&mut self, socket: &impl AsFd, peer: IpAddr) -> bool {
        if self.attached {
            detach(socket);
        }
        if self.bans.banned(peer, Instant::now()) {
            reset(socket);
            self.stats.refused_banned.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// The listener's next connection. Meanwhile lifts bans as they run out: a banned
    /// address cannot bring an accept itself (its SYNs never arrive), so with nobody
    /// else connecting only this timer lifts its ban.
    pub async fn accept(&mut self, listener: &TcpListener) -> std::io::Result<(TcpStream, SocketAddr)> {
        loop {
            let lift = self.bans.next_end(Instant::now()).map(tokio::time::Instant::from_std);
            tokio::select! {
                accepted = listener.accept() => return accepted,
                _ = until(lift) => {
                    let now = Instant::now();
                    if self.bans.expire(now) {
                        self.sync(listener, now);
                    }
                }
            }
        }
    }

    /// Counts a connection from `peer` refused by a cap (the caller drops it);
    /// resets it, and bans the address when it crossed the policy's rate.
    pub fn refused(&mut self, listener: &impl AsFd, socket: &impl AsFd, peer: IpAddr) {
        reset(socket);
        let now = Instant::now();
        if self.bans.refused(peer, now) {
            tracing::warn!(
                listener = self.what,
                address = %peer,
                banned = self.bans.banned_now(),
                "address banned: too many refused connections"
            );
            self.stats.bans_total.fetch_add(1, Ordering::Relaxed);
            self.sync(listener, now);
        }
    }

    fn sync(&mut self, listener: &impl AsFd, now: Instant) {
        self.stats.banned.store(self.bans.banned_now() as u64, Ordering::Relaxed);
        if !self.kernel {
            return;
        }
        match attach(listener, &self.bans.filter(now)) {
            Ok(()) => self.attached = true,
            Err(e) => {
                self.kernel = false;
                tracing::warn!(listener = self.what, error = %e, "cannot attach a socket filter: banned addresses are refused at accept instead");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));

    fn policy() -> BanPolicy {
        BanPolicy { refusals_per_second: 5, first: Duration::from_secs(10), longest: Duration::from_secs(40) }
    }

    #[test]
    fn an_address_over_the_rate_is_banned_and_others_are_not() {
        let mut bans = Bans::new(policy());
        let t = Instant::now();
        for _ in 0..5 {
            assert!(!bans.refused(A, t));
        }
        assert!(!bans.refused(B, t));
        assert!(bans.refused(A, t), "the sixth refusal in a second bans");
        assert!(bans.banned(A, t) && !bans.banned(B, t));
        assert_eq!(bans.banned_now(), 1);
        assert!(!bans.refused(A, t), "a banned address is not banned again");
    }

    #[test]
    fn refusals_spread_over_seconds_do_not_ban() {
        let mut bans = Bans::new(policy());
        let t = Instant::now();
        for s in 0..20u64 {
            for _ in 0..5 {
                assert!(!bans.refused(A, t + Duration::from_secs(s)));
            }
        }
        assert!(!bans.banned(A, t + Duration::from_secs(20)));
    }

    #[test]
    fn bans_run_out_and_repeat_offenders_wait_longer() {
        let mut bans = Bans::new(policy());
        let mut t = Instant::now();
        let mut lengths = Vec::new();
        for _ in 0..4 {
            while !bans.refused(A, t) {}
            let start = t;
            while bans.banned(A, t) {
                t += Duration::from_secs(1);
            }
            assert!(bans.expire(t));
            assert_eq!(bans.banned_now(), 0);
            lengths.push((t - start).as_secs());
        }
        assert_eq!(lengths, [10, 20, 40, 40]);
        // Forgotten after a quiet STRIKE_MEMORY: back to the first length.
        t += STRIKE_MEMORY;
        bans.expire(t);
        while !bans.refused(A, t) {}
        assert!(bans.banned(A, t + Duration::from_secs(9)) && !bans.banned(A, t + Duration::from_secs(10)));
    }

    #[test]
    fn ipv6_is_banned_by_its_slash_64() {
        let mut bans = Bans::new(policy());
        let t = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        while !bans.refused(a, t) {}
        assert!(bans.banned("2001:db8:1:2:ffff::9".parse().unwrap(), t));
        assert!(!bans.banned("2001:db8:1:3::1".parse().unwrap(), t));
        // An IPv4-mapped address is its IPv4 address.
        while !bans.refused(B, t) {}
        assert!(bans.banned(IpAddr::V6(Ipv4Addr::new(10, 0, 0, 2).to_ipv6_mapped()), t));
        let _ = Ipv6Addr::LOCALHOST;
    }

    #[test]
    fn at_most_max_banned_at_once() {
        let mut bans = Bans::new(BanPolicy { refusals_per_second: 1, ..policy() });
        let t = Instant::now();
        for i in 0..(MAX_BANNED as u32 + 10) {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            bans.refused(ip, t);
            bans.refused(ip, t);
        }
        assert_eq!(bans.banned_now(), MAX_BANNED);
        assert_eq!(bans.filter(t).len(), 7 + 1 + 2 * MAX_BANNED + 1 + 1);
    }

    #[test]
    fn the_program_with_nobody_banned_passes_everything() {
        assert_eq!(program(&[]), vec![insn(RET_K, 0, 0, ACCEPT)]);
    }

    /// The kernel drops a banned address's SYNs at the listener, lets other
    /// addresses in, and lets the banned address in again once the filter is
    /// replaced. 127.0.0.2 is a loopback address too, so no namespace is needed.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_kernel_drops_a_banned_addresss_syns() {
        use std::net::{SocketAddr, TcpListener};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let to = listener.local_addr().unwrap();
        let connect_from = |src: &str| {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            s.bind(&src.parse::<SocketAddr>().unwrap().into()).unwrap();
            s.connect_timeout(&to.into(), Duration::from_millis(400)).is_ok()
        };
        assert!(connect_from("127.0.0.1:0") && connect_from("127.0.0.2:0"));
        attach(&listener, &program(&[AddrKey::of("127.0.0.1".parse().unwrap())])).unwrap();
        assert!(!connect_from("127.0.0.1:0"), "a banned address's connect must not complete");
        assert!(connect_from("127.0.0.2:0"), "another address must still connect");
        attach(&listener, &program(&[])).unwrap();
        assert!(connect_from("127.0.0.1:0"), "connects again once unbanned");
    }
}
