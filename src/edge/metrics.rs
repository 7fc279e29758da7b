//! The edge's `/metrics`: one prometheus-client [`Registry`], as on the origins.
//!
//! The counters stay where the edge keeps them (atomics in [`EdgeStats`], the gates'
//! [`GateStats`], the limits, the HLS stats, the upstream links); [`Collector`]s read
//! them at scrape time, so no hot path learns about prometheus-client. The registry is
//! built once, with the context: its collectors hold the handles they read rather than
//! the whole `EdgeContext`, which would then own a registry that points back at it.
//!
//! Names, types and labels are what scrapers, tests, `chaos/` and `scripts/` have read
//! since the text was written by hand; counters are named here as sampled, `_total`
//! included (see [`crate::metrics::counter`]).
//!
//! Never knows how a value is counted, only where to read it.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::registry::Registry;

use super::claims::ClaimFeed;
use super::hls::{Hls, HlsMetrics};
use super::hooks::{HookEvent, Outcome};
use super::rtmpt::exchange::Kind;
use super::streams::Relays;
use super::tokens::{Protocol, Reason};
use super::upstream::Upstreams;
use super::vod::cache::VodStats;
use super::vod::VodCache;
use super::{EdgeLimits, EdgeStats};
use crate::bans::GateStats;
use crate::limits::{ByteBudget, LimitMetrics};
use crate::metrics::{counter, counters, gauge, gauges};

/// Which listener a ban counter belongs to: `rtmp` or `http`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: &'static str,
}

/// A player's protocol: `rtmp` or `flv`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabel {
    protocol: &'static str,
}

/// A stream token refusal: the protocol (`rtmp`, `flv`, `hls`) and why (`missing`,
/// `invalid`, `forbidden`, `unavailable`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabel {
    protocol: &'static str,
    reason: &'static str,
}

/// A TLS listener (`rtmps`, `https`) and how a handshake ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabel {
    listener: &'static str,
    outcome: &'static str,
}

/// A webhook event (`on_publish`, …) and how the call ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HookLabel {
    event: &'static str,
    outcome: &'static str,
}

/// `player` or `publisher` (drops), `publisher` or `relay` (failovers).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SideLabel {
    side: &'static str,
}

/// An RTMPT request kind (`open`, `send`, `idle`, `close`, `ident`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

/// `in` (to the server) or `out` (to the client).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

/// Why an RTMPT request was refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// The address of the origin at the other end of an upstream link.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OriginAddrLabel {
    origin_addr: String,
}

/// Every metric an edge exports.
pub struct EdgeMetrics {
    registry: Registry,
    /// The hop histograms, rendered by hand (see [`crate::metrics::encode`]).
    stats: Arc<EdgeStats>,
}

impl EdgeMetrics {
    pub fn new(
        stats: &Arc<EdgeStats>,
        limits: &EdgeLimits,
        hls: &Arc<Hls>,
        relays: &Relays,
        claims: &ClaimFeed,
        upstreams: &Arc<Upstreams>,
        vod: Option<&VodCache>,
    ) -> EdgeMetrics {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(EdgeCollector {
            stats: stats.clone(),
            gates: [("rtmp", limits.rtmp_bans.clone()), ("http", limits.http.ban_stats.clone())],
            claims: claims.clone(),
            relays: relays.clone(),
            upstreams: upstreams.clone(),
            partial: limits.partial.clone(),
        }));
        let mut all = limits.all();
        all.push(hls.waiting.clone());
        registry.register_collector(Box::new(LimitMetrics { prefix: "edge", limits: all }));
        registry.register_collector(Box::new(HlsMetrics(hls.clone())));
        if let Some(vod) = vod {
            registry.register_collector(Box::new(VodMetrics(vod.stats().clone())));
        }
        EdgeMetrics { registry, stats: stats.clone() }
    }

    /// The page for `/metrics`.
    pub fn render(&self) -> String {
        crate::metrics::encode(&self.registry, |out| {
            let help = "How long frames wait in the edge: ingest, from a publisher to the owner's link; \
                        delivery, from the link to a player's socket (RTMP players, merge window included)";
            self.stats.hop_ingest.render(out, "edge_hop_seconds", help, "hop=\"ingest\"");
            self.stats.hop_delivery.render(out, "edge_hop_seconds", help, "hop=\"delivery\"");
        })
    }
}

/// Connections, sessions, bytes, frames, failovers, claims, relays, upstream links and
/// the partial-message budget.
struct EdgeCollector {
    stats: Arc<EdgeStats>,
    gates: [(&'static str, Arc<GateStats>); 2],
    claims: ClaimFeed,
    relays: Relays,
    upstreams: Arc<Upstreams>,
    partial: Arc<ByteBudget>,
}

impl fmt::Debug for EdgeCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EdgeCollector").finish_non_exhaustive()
    }
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

impl Collector for EdgeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let s = &self.stats;
        let e = &mut encoder;
        gauge(e, "edge_connections_open", "Open RTMP connections", load(&s.connections))?;
        counter(e, "edge_connections_total", "RTMP connections accepted", load(&s.connections_total))?;
        counter(
            e,
            "edge_connections_refused_total",
            "RTMP connections closed at accept because of the connection limit",
            load(&s.connections_refused),
        )?;
        let per_listener = |f: fn(&GateStats) -> &AtomicU64| -> Vec<(ListenerLabel, u64)> {
            self.gates.iter().map(|(listener, g)| (ListenerLabel { listener }, load(f(g)))).collect()
        };
        gauges(e, "edge_banned_addresses", "Addresses banned below accept now", &per_listener(|g| &g.banned))?;
        counters(e, "edge_bans_total", "Bans of addresses refused too often", &per_listener(|g| &g.bans_total))?;
        counters(
            e,
            "edge_refused_banned_total",
            "Connections from banned addresses reset at accept (the kernel filter drops the rest)",
            &per_listener(|g| &g.refused_banned),
        )?;
        gauge(e, "edge_publishers", "Publishing sessions", load(&s.publishers))?;
        let players = [
            (ProtocolLabel { protocol: "rtmp" }, load(&s.players_rtmp)),
            (ProtocolLabel { protocol: "flv" }, load(&s.players_flv)),
        ];
        gauges(e, "edge_players", "Playing sessions by protocol", &players)?;
        counter(
            e,
            "edge_reconnect_requests_total",
            "RTMP clients sent NetConnection.Connect.ReconnectRequest while the edge drains",
            load(&s.reconnect_requests),
        )?;
        counter(e, "edge_client_bytes_in_total", "Bytes read from clients", load(&s.bytes_in))?;
        counter(e, "edge_client_bytes_out_total", "Bytes written to RTMP and HTTP-FLV clients", load(&s.bytes_out))?;
        let help = "Writes to RTMP players by the direct fan-out that the socket took whole";
        counter(e, "edge_direct_writes_total", help, load(&s.direct_writes))?;
        let help =
            "Direct fan-out writes the socket did not take whole (the rest went back to the player's connection)";
        counter(e, "edge_direct_spills_total", help, load(&s.direct_spills))?;
        let cpu = u64::from(s.load.cpu_permille.load(Ordering::Relaxed));
        gauge(e, "edge_load_cpu_permille", "CPU used in the last second, in thousandths of the usable cores", cpu)?;
        let merge = u64::from(s.load.merge_window_us.load(Ordering::Relaxed));
        let help = "The adaptive write merge's window under the current load, in µs (0: only audio waits for video)";
        gauge(e, "edge_write_merge_window_microseconds", help, merge)?;
        let held = u64::from(s.load.audio_held.load(Ordering::Relaxed));
        let help = "1 while the adaptive merge holds players' audio for the next video frame (the edge is busy enough)";
        gauge(e, "edge_audio_held", help, held)?;
        if let Some(heap) = crate::heap::stats() {
            gauge(
                e,
                "edge_heap_allocated_bytes",
                "Bytes allocated and not freed (jemalloc stats.allocated)",
                heap.allocated,
            )?;
            gauge(
                e,
                "edge_heap_resident_bytes",
                "Bytes of pages the allocator keeps resident (jemalloc stats.resident)",
                heap.resident,
            )?;
        }
        if let Some(tasks) = crate::metrics::tokio_alive_tasks() {
            let help = "Tasks alive in the process's tokio runtime (spawned, not yet finished)";
            gauge(e, "edge_tokio_alive_tasks", help, tasks)?;
        }
        let egress = s.load.egress_bytes_per_s.load(Ordering::Relaxed);
        gauge(e, "edge_load_egress_bytes_per_second", "Bytes written to clients in the last second", egress)?;
        let weight = u64::from(s.load.weight());
        gauge(e, "edge_agent_weight_percent", "The weight the HAProxy agent answers (100: idle, 1: full)", weight)?;
        let published = load(&s.frames_published);
        counter(e, "edge_frames_published_total", "Media frames received from publishers", published)?;
        counters(
            e,
            "edge_frames_dropped_total",
            "Frames dropped: players that fell behind skip to the next keyframe; publishers' frames the link could \
             not take",
            &[
                (SideLabel { side: "player" }, load(&s.player_drops)),
                (SideLabel { side: "publisher" }, load(&s.publisher_drops)),
            ],
        )?;
        counters(
            e,
            "edge_failovers_total",
            "Moves to a new owner: publications re-attached, relays re-subscribed",
            &[
                (SideLabel { side: "publisher" }, load(&s.publisher_failovers)),
                (SideLabel { side: "relay" }, load(&s.relay_failovers)),
            ],
        )?;
        let refusals: Vec<_> = Protocol::ALL
            .iter()
            .flat_map(|p| Reason::ALL.map(|r| (*p, r)))
            .map(|(p, r)| (RefusalLabel { protocol: p.label(), reason: r.label() }, s.auth_refused.get(p, r)))
            .collect();
        counters(
            e,
            "edge_auth_refused_total",
            "Plays, publishes and HLS requests refused by a stream token check, by protocol and reason",
            &refusals,
        )?;
        let hook_calls: Vec<_> = HookEvent::ALL
            .iter()
            .flat_map(|ev| Outcome::ALL.map(|o| (*ev, o)))
            .map(|(ev, o)| (HookLabel { event: ev.name(), outcome: o.name() }, s.hook_calls.get(ev, o)))
            .collect();
        counters(
            e,
            "edge_hook_calls_total",
            "Webhook calls by event and outcome (ok: 2xx; denied: another status; failed: not reached \
             or late, per try; dropped: a notice the full queue dropped)",
            &hook_calls,
        )?;
        let handshakes: Vec<_> = [("rtmps", &s.tls_rtmps), ("https", &s.tls_https)]
            .into_iter()
            .flat_map(|(listener, h)| {
                [("ok", &h.ok), ("failed", &h.failed), ("timed_out", &h.timed_out)]
                    .map(|(outcome, n)| (HandshakeLabel { listener, outcome }, load(n)))
            })
            .collect();
        counters(
            e,
            "edge_tls_handshakes_total",
            "TLS handshakes on the RTMPS and HTTPS listeners: ok, failed (a bad or abandoned handshake), \
             timed_out",
            &handshakes,
        )?;
        let t = &s.rtmpt;
        gauge(e, "edge_rtmpt_sessions", "RTMPT sessions open", load(&t.open))?;
        let kinds: Vec<_> = Kind::ALL.iter().map(|k| (KindLabel { kind: k.label() }, t.requests(*k))).collect();
        counters(e, "edge_rtmpt_requests_total", "RTMPT requests by kind", &kinds)?;
        counters(
            e,
            "edge_rtmpt_bytes_total",
            "RTMPT bytes: request bodies written into sessions (in), replies (out)",
            &[
                (DirectionLabel { direction: "in" }, load(&t.bytes_in)),
                (DirectionLabel { direction: "out" }, load(&t.bytes_out)),
            ],
        )?;
        counters(
            e,
            "edge_rtmpt_rejected_total",
            "RTMPT requests refused: unknown_session (404), out_of_order (400)",
            &[
                (ReasonLabel { reason: "unknown_session" }, load(&t.unknown)),
                (ReasonLabel { reason: "out_of_order" }, load(&t.out_of_order)),
            ],
        )?;
        counter(e, "edge_rtmpt_expired_total", "RTMPT sessions closed for getting no request", load(&t.expired))?;
        let p = &t.peers;
        counter(e, "edge_rtmpt_forwarded_total", "RTMPT requests forwarded to a peer edge", load(&p.forwarded))?;
        counters(
            e,
            "edge_rtmpt_replica_updates_total",
            "Updates of session replicas sent to buddy edges: full copies and steps",
            &[(KindLabel { kind: "full" }, load(&p.fulls)), (KindLabel { kind: "step" }, load(&p.steps))],
        )?;
        counter(
            e,
            "edge_rtmpt_replica_bytes_total",
            "Bytes of replica updates sent to buddy edges",
            load(&p.step_bytes),
        )?;
        counter(
            e,
            "edge_rtmpt_unprotected_replies_total",
            "RTMPT replies sent while no buddy edge held a copy of the session",
            load(&p.unprotected),
        )?;
        counter(e, "edge_rtmpt_takeovers_total", "RTMPT sessions taken over from a dead edge", load(&p.takeovers))?;
        counter(
            e,
            "edge_rtmpt_takeovers_failed_total",
            "RTMPT takeovers refused (caps, sequence, an unresumable journal)",
            load(&p.takeovers_failed),
        )?;
        gauge(e, "edge_rtmpt_replicas", "Copies of peer edges' RTMPT sessions held here", load(&p.replicas))?;
        gauge(e, "edge_rtmpt_replica_journal_bytes", "Bytes of the journals of those copies", load(&p.replica_bytes))?;
        counter(
            e,
            "edge_rtmpt_fenced_total",
            "RTMPT sessions ended here because a buddy edge had taken them over",
            load(&p.fenced),
        )?;
        let (followed, restarts) = self.claims.stats();
        gauge(
            e,
            "edge_claims_followed",
            "Streams whose claims this edge follows on its claims feed (publications and relays)",
            followed as u64,
        )?;
        counter(
            e,
            "edge_claims_feed_restarts_total",
            "Fresh starts of the claims feed: another origin, a lost message, an origin that did not answer",
            restarts,
        )?;
        counter(
            e,
            "edge_relay_duplicates_total",
            "Frames a relay dropped because its players already had them (replays after a move)",
            load(&s.relay_duplicates),
        )?;
        let (windows, window_bytes) = self.relays.windows();
        gauge(
            e,
            "edge_relay_hls_windows",
            "Relayed streams whose hub keeps the HLS window of frames (only while HLS is packaged here)",
            windows as u64,
        )?;
        gauge(
            e,
            "edge_relay_window_bytes",
            "Bytes of frames those relay hubs keep for HLS (besides edge_hls_window_bytes)",
            window_bytes as u64,
        )?;
        let ups = self.upstreams.all();
        let label = |u: &super::upstream::Upstream| OriginAddrLabel { origin_addr: u.addr.to_string() };
        let states: Vec<_> = ups.iter().map(|u| (label(u), u64::from(super::http::link_state(&u.state()).1))).collect();
        gauges(e, "edge_upstream_link_state", "Link to an origin: 0 connecting, 1 live, 2 backoff", &states)?;
        let bytes_in: Vec<_> = ups.iter().map(|u| (label(u), load(&u.bytes_in))).collect();
        counters(e, "edge_upstream_bytes_in_total", "Media payload bytes received from an origin", &bytes_in)?;
        let bytes_out: Vec<_> = ups.iter().map(|u| (label(u), load(&u.bytes_out))).collect();
        counters(e, "edge_upstream_bytes_out_total", "Media payload bytes sent to an origin", &bytes_out)?;
        gauge(
            e,
            "edge_rtmp_partial_bytes",
            "Bytes of partially received RTMP messages held, all connections",
            self.partial.used() as u64,
        )?;
        counter(
            e,
            "edge_rtmp_partial_refused_total",
            "Connections closed for going over the partial-message budget",
            self.partial.refused(),
        )
    }
}

/// The VOD cache's counters and size (only on an edge with `--vod-cache-dir`).
#[derive(Debug)]
struct VodMetrics(Arc<VodStats>);

impl Collector for VodMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let (s, e) = (&self.0, &mut encoder);
        counter(e, "raftcast_edge_vod_cache_hits_total", "VOD opens served from files already cached", load(&s.hits))?;
        counter(
            e,
            "raftcast_edge_vod_cache_misses_total",
            "VOD opens that waited for a fetch from the origins (their own or one under way)",
            load(&s.misses),
        )?;
        counter(
            e,
            "raftcast_edge_vod_cache_evictions_total",
            "Cached VOD files removed to stay within --vod-cache-bytes",
            load(&s.evictions),
        )?;
        counter(
            e,
            "raftcast_edge_vod_cache_fetched_bytes_total",
            "Bytes of VOD files received from the origins (cut-off attempts included)",
            load(&s.fetched_bytes),
        )?;
        counter(
            e,
            "raftcast_edge_vod_cache_fetch_failures_total",
            "VOD fetches that ended without the file: not found, unfinished or unavailable everywhere",
            load(&s.fetch_failures),
        )?;
        gauge(e, "raftcast_edge_vod_cache_bytes", "Bytes of the VOD files cached now", load(&s.bytes))?;
        counter(e, "raftcast_edge_vod_rtmp_plays_total", "RTMP VOD plays started", load(&s.rtmp_plays))?;
        counter(e, "raftcast_edge_vod_rtmp_seeks_total", "Seeks made by RTMP VOD players", load(&s.rtmp_seeks))?;
        counter(e, "raftcast_edge_vod_rtmp_pauses_total", "Pauses made by RTMP VOD players", load(&s.rtmp_pauses))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    #[tokio::test]
    async fn every_family_is_typed_once_and_the_page_ends_with_eof() {
        let args = crate::edge::EdgeArgs {
            id: Some("edge-1".into()),
            origins: Some(vec!["127.0.0.1:8101".parse().unwrap()]),
            ..Default::default()
        };
        let config =
            crate::edge::EdgeConfig::from_args(args, |k| (k == "RAFTCAST_CLUSTER_SECRET").then(|| "x".repeat(20)))
                .unwrap();
        let page = crate::edge::tests::context(config).metrics.render();
        let mut typed = BTreeMap::<&str, usize>::new();
        for line in page.lines().filter(|l| l.starts_with("# TYPE ")) {
            *typed.entry(line.split(' ').nth(2).unwrap()).or_default() += 1;
        }
        let twice: Vec<_> = typed.iter().filter(|(_, n)| **n > 1).collect();
        // A gauge and a counter's family under one name confuse Prometheus's parser
        // (the last `# TYPE` wins) and fail `promtool check metrics`.
        assert!(twice.is_empty(), "families typed more than once: {twice:?}");
        for family in [
            "edge_connections_open",
            "edge_connections",
            "edge_hop_seconds",
            "edge_hls_requests",
            "edge_auth_refused",
            "edge_rtmpt_requests",
            "edge_rtmpt_sessions",
            "edge_tokio_alive_tasks",
        ] {
            assert!(typed.contains_key(family), "{family} missing from\n{page}");
        }
        assert_eq!(page.lines().last(), Some("# EOF"));
        assert!(page.contains("edge_auth_refused_total{protocol=\"hls\",reason=\"forbidden\"} 0\n"), "{page}");
    }
}
