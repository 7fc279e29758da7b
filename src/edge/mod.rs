//! `raftcast edge`: the RTMP and HTTP-FLV front door. Stateless: it holds client
//! connections and nothing that must survive them.
//!
//! - `rtmp_conn`: the RTMP (and RTMPS) accept loop and one task per connection;
//! - `streams`: publications (claim, forward to the owner, release) and relays (one
//!   upstream subscription per stream, fanned out to local players);
//! - `upstream`: one link per origin, channels multiplexed over it;
//! - `control`: claims, releases and lookups through the origins' `/raft/forward`;
//! - `shared_objects`: the edge's copy of each shared object its clients use, kept by
//!   one change feed from an origin; writes and broadcasts through the cluster;
//! - `so_session`: one RTMP connection's shared-object messages;
//! - `hls`: HLS and LL-HLS routes and one packaging task per stream asked for;
//! - `dvr`: live rewind: each packaged stream's DVR index and the old segments it
//!   lists, fetched from the origins, packaged and cached in memory;
//! - `vod`: recordings and media-library files from the edge's cache, as HLS VOD;
//! - `rtmpt`: RTMP tunnelled in HTTP POSTs, into the same connection task;
//! - `http`: HTTP-FLV, shared objects over HTTP and SSE, the example page, `/status`,
//!   `/metrics`, `/health`;
//! - `vod`: recordings and library files fetched from the origins into a bounded disk
//!   cache, served at `/vod/{id}.flv`;
//! - `metrics`: the `/metrics` registry, read from the counters where they are kept.

pub(crate) mod agent;
pub(crate) mod claims;
pub mod config;
pub(crate) mod control;
pub(crate) mod direct;
pub(crate) mod drain;
pub(crate) mod dvr;
pub(crate) mod hls;
pub(crate) mod hooks;
pub(crate) mod http;
pub(crate) mod http_objects;
pub(crate) mod metrics;
pub(crate) mod publication;
pub(crate) mod relaying;
pub(crate) mod rtmp_conn;
pub mod rtmpt;
pub(crate) mod shared_objects;
pub(crate) mod so_session;
pub(crate) mod streams;
pub(crate) mod tokens;
pub(crate) mod upstream;
pub(crate) mod vod;

use std::process::ExitCode;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use config::TlsListeners;
pub use config::{EdgeArgs, EdgeConfig};

use crate::http_server::HttpLimits;
use crate::limits::{ByteBudget, Limit};

/// Counters of an edge, for `/status` and `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct EdgeStats {
    pub(crate) connections: AtomicU64,
    pub(crate) connections_total: AtomicU64,
    /// The last connection id given (RTMP, RTMPS and RTMPT share them: webhook
    /// session names are built from them).
    pub(crate) connection_ids: AtomicU64,
    pub(crate) connections_refused: AtomicU64,
    pub(crate) publishers: AtomicU64,
    pub(crate) players_rtmp: AtomicU64,
    pub(crate) players_flv: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) frames_published: AtomicU64,
    /// Shared by every relay hub: drops are counted the moment a queue drops.
    pub(crate) player_drops: Arc<AtomicU64>,
    pub(crate) publisher_drops: AtomicU64,
    /// Publications moved to a new owner after losing theirs.
    pub(crate) publisher_failovers: AtomicU64,
    /// RTMP clients asked to reconnect elsewhere while the edge drains.
    pub(crate) reconnect_requests: AtomicU64,
    /// When the last client HTTP request arrived (`drain::now_ms`; health checks,
    /// `/drain`, `/status` and `/metrics` do not count): a draining edge waits until
    /// the load balancer has stopped sending it requests.
    pub(crate) last_client_request_ms: AtomicU64,
    /// The load the HAProxy agent reports ([`agent`]), sampled every second.
    pub(crate) load: agent::LoadGauge,
    /// Plays, publishes and HLS requests refused by a stream token check.
    pub(crate) auth_refused: Arc<tokens::Refusals>,
    /// TLS handshakes on the RTMPS and HTTPS listeners.
    pub(crate) tls_rtmps: Arc<crate::tls::HandshakeStats>,
    pub(crate) tls_https: Arc<crate::tls::HandshakeStats>,
    /// HTTP-FLV plays so far (names their webhook sessions).
    pub(crate) flv_sessions: AtomicU64,
    /// Webhook calls by event and outcome.
    pub(crate) hook_calls: Arc<hooks::HookStats>,
    /// Relays that re-subscribed at a new owner.
    pub(crate) relay_failovers: AtomicU64,
    /// Frames a relay dropped because its players already had them (replays after a move).
    pub(crate) relay_duplicates: AtomicU64,
    /// Publishers' frames: from the edge getting them to their link to the owner.
    pub(crate) hop_ingest: crate::media::hop::HopLatency,
    /// Players' live frames: from the link to the player's socket (merge window
    /// included).
    pub(crate) hop_delivery: crate::media::hop::HopLatency,
    /// Writes of the direct fan-out ([`direct`]) the socket took whole, and those it
    /// did not (the rest went back to the player's connection).
    pub(crate) direct_writes: AtomicU64,
    pub(crate) direct_spills: AtomicU64,
    /// RTMPT sessions, requests and bytes.
    pub(crate) rtmpt: rtmpt::TunnelStats,
}

/// The caps the edge's listeners enforce (see [`crate::limits`] and [`config::EdgeCaps`]).
pub(crate) struct EdgeLimits {
    /// RTMP connections: `--max-connections-per-address`, `--max-connections`.
    pub(crate) rtmp_connections: Arc<Limit>,
    /// RTMP handshakes in progress.
    pub(crate) handshakes: Arc<Limit>,
    /// RTMP sessions that have not yet published, played or used a shared object.
    pub(crate) unstarted: Arc<Limit>,
    /// Publishes, from the request until the stream ends.
    pub(crate) publishes: Arc<Limit>,
    /// RTMPT sessions (each also holds an `rtmp_connections` permit).
    pub(crate) rtmpt_sessions: Arc<Limit>,
    /// Long-lived HTTP requests: HTTP-FLV plays (waiting ones too) and shared-object SSE.
    pub(crate) long_requests: Arc<Limit>,
    /// The HTTP listener's connection cap and timeouts.
    pub(crate) http: HttpLimits,
    /// Partially received RTMP messages, over every connection.
    pub(crate) partial: Arc<ByteBudget>,
    /// Load balancers trusted to send PROXY protocol headers (`--proxy-protocol-from`),
    /// on both listeners.
    pub(crate) proxy: Option<Arc<crate::proxy_protocol::ProxyTrust>>,
    /// Addresses refused too often at the RTMP listener are banned below accept.
    pub(crate) bans: crate::bans::BanPolicy,
    pub(crate) rtmp_bans: Arc<crate::bans::GateStats>,
}

impl EdgeLimits {
    pub(crate) fn new(config: &EdgeConfig) -> EdgeLimits {
        let c = &config.caps;
        let proxy = (!config.proxy_protocol_from.is_empty())
            .then(|| crate::proxy_protocol::ProxyTrust::new(config.proxy_protocol_from.iter().copied()));
        EdgeLimits {
            rtmp_connections: Limit::new("rtmp_connections", c.connections_per_address, config.max_connections),
            handshakes: Limit::new("rtmp_handshakes", c.handshakes_per_address, c.handshakes),
            unstarted: Limit::new("rtmp_unstarted", c.unstarted_per_address, c.unstarted),
            publishes: Limit::new("publishes", c.publishes_per_address, config.max_connections),
            rtmpt_sessions: Limit::new("rtmpt_sessions", c.rtmpt_sessions_per_address, c.rtmpt_sessions),
            long_requests: Limit::new("http_long_requests", c.long_requests_per_address, c.http_connections),
            http: HttpLimits {
                header_timeout: c.http_header_timeout,
                body_timeout: c.http_body_timeout,
                connections: Limit::new("http_connections", c.http_connections_per_address, c.http_connections),
                // The tier's other edges forward RTMPT requests and steps here: members,
                // not strangers (no per-address cap, no ban).
                trusted: (!config.rtmpt_peers.is_empty()).then(|| {
                    let trusted = crate::limits::Trusted::default();
                    trusted.set(config.rtmpt_peers.iter().map(|p| p.ip()));
                    Arc::new(trusted)
                }),
                proxy: proxy.clone(),
                bans: c.bans,
                ban_stats: Default::default(),
            },
            partial: ByteBudget::new(c.partial_bytes),
            proxy,
            bans: c.bans,
            rtmp_bans: Default::default(),
        }
    }

    /// Every counted class, for `/metrics` (PROXY headers being read only when a
    /// balancer is trusted).
    pub(crate) fn all(&self) -> Vec<Arc<Limit>> {
        let mut all = vec![
            self.rtmp_connections.clone(),
            self.handshakes.clone(),
            self.unstarted.clone(),
            self.publishes.clone(),
            self.rtmpt_sessions.clone(),
            self.long_requests.clone(),
            self.http.connections.clone(),
        ];
        all.extend(self.proxy.as_deref().map(|p| p.limit().clone()));
        all
    }
}

/// What every task of the edge shares.
pub struct EdgeContext {
    pub(crate) config: EdgeConfig,
    pub(crate) control: control::Control,
    pub(crate) upstreams: Arc<upstream::Upstreams>,
    pub relays: streams::Relays,
    /// Who owns each stream this edge publishes or relays.
    pub(crate) claims: claims::ClaimFeed,
    pub(crate) objects: shared_objects::SharedObjects,
    /// The cluster's mutual TLS toward the origins, if configured.
    pub(crate) peer_tls: Option<Arc<crate::tls::peer::PeerTls>>,
    /// Calls the apps' webhooks.
    pub(crate) hooks: hooks::Hooks,
    /// Checks play, publish and shared-object tokens (one key cache for all of them).
    pub(crate) tokens: tokens::Verifier,
    /// Streams packaged for HLS, their windows and counters.
    pub(crate) hls: Arc<hls::Hls>,
    /// Open RTMPT sessions.
    pub(crate) tunnels: rtmpt::Tunnels,
    /// The VOD cache (`--vod-cache-dir`); `None`: VOD is off.
    pub(crate) vod: Option<vod::VodCache>,
    /// The HLS VOD indexes of recently played VOD files.
    pub(crate) vod_indexes: vod::hls_http::Indexes,
    pub(crate) stats: Arc<EdgeStats>,
    pub(crate) limits: EdgeLimits,
    /// `/metrics`, reading `stats`, `limits`, `hls`, `relays`, `claims` and `upstreams`.
    pub(crate) metrics: metrics::EdgeMetrics,
    /// Cancelled when the edge stops serving clients (relays and players end with it).
    pub(crate) shutdown: CancellationToken,
    /// Cancelled when the edge starts draining (SIGUSR1 or `POST /drain`): `/health`
    /// answers 503 and RTMP clients that can reconnect are asked to ([`drain`]).
    pub(crate) draining: CancellationToken,
    pub(crate) started: Instant,
    /// Start time in Unix ms: makes session names unique across restarts of this edge.
    pub(crate) started_ms: u128,
}

impl EdgeContext {
    /// The context of an edge, its links and relays not started yet (they start on
    /// demand). `clients` stops relays and players; `links` the links to origins.
    /// Without listeners this is also an edge's relay side in-process (tests of what
    /// relays receive, e.g. `tests/hls_marks.rs`).
    pub fn new(
        config: &EdgeConfig,
        clients: CancellationToken,
        links: CancellationToken,
    ) -> anyhow::Result<Arc<EdgeContext>> {
        // The cluster's mutual TLS, when configured, wraps the links and every request
        // to the origins.
        let peer_tls = crate::tls::peer::PeerTls::load_configured(config.peer_tls.as_ref())?;
        // One client for every request to the origins.
        let peers = crate::peer::PeerClient::new(config.secret.clone(), peer_tls.clone());
        let control = control::Control::new(config.origins.clone(), peers.clone(), config.request_deadline);
        let upstreams = Arc::new(upstream::Upstreams::new(
            config.id.clone(),
            config.secret.clone(),
            peer_tls.clone(),
            config.link,
            links,
        ));
        let started_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let tokens = tokens::Verifier::new(peers.clone(), config.origins.clone().into());
        let vod = config.vod.as_ref().map(|c| {
            let origins = vod::origins::Origins::new(peers.clone(), config.origins.clone().into());
            vod::VodCache::new(c.dir.clone(), c.max_bytes, Arc::new(origins))
        });
        let dvr = (config.hls_serve.dvr.span_ms > 0)
            .then(|| dvr::Dvr::new(config.hls_serve.dvr, peers.clone(), config.origins.clone().into()));
        let objects = shared_objects::SharedObjects::new(
            config.origins.clone(),
            peers,
            control.clone(),
            tokens.clone(),
            clients.clone(),
        );
        let (relays, claims) = (streams::Relays::default(), claims::ClaimFeed::default());
        let (hls, stats, limits) =
            (hls::Hls::with_dvr(config.hls_serve.clone(), dvr), Arc::default(), EdgeLimits::new(config));
        let metrics = metrics::EdgeMetrics::new(&stats, &limits, &hls, &relays, &claims, &upstreams, vod.as_ref());
        let hooks = hooks::Hooks::start(stats.hook_calls.clone());
        Ok(Arc::new(EdgeContext {
            config: config.clone(),
            peer_tls,
            control,
            objects,
            tokens,
            hooks,
            upstreams,
            relays,
            claims,
            hls,
            tunnels: rtmpt::Tunnels::new(config, stats.clone()),
            vod,
            vod_indexes: Default::default(),
            stats,
            limits,
            metrics,
            shutdown: clients,
            draining: CancellationToken::new(),
            started: Instant::now(),
            started_ms,
        }))
    }
}

/// How long an edge's allocator keeps freed pages (see [`crate::heap::set_dirty_decay_ms`]):
/// jemalloc's 10 s default kept a publishing edge's freed frames resident,
/// 71.5 → 59.1 KiB of RSS per player at 100 players and 2.5 Mbit/s (`edge-memory.sh`,
/// two runs each), and the edge's CPU per GB did not move (`bench-ab.sh`, 2,000
/// players at 600 kbit/s and 500 at 2.5 Mbit/s, two rounds each).
const DIRTY_DECAY_MS: isize = 1000;

/// Entry point of `raftcast edge`.
pub fn main(args: EdgeArgs) -> ExitCode {
    crate::heap::set_dirty_decay_ms(DIRTY_DECAY_MS);
    crate::process::main(
        "edge",
        || EdgeConfig::from_args(args, |k| std::env::var(k).ok()),
        tokio::runtime::Builder::new_multi_thread(),
        |config| tracing::info_span!("edge", edge.id = %config.id),
        run,
    )
}

/// Runs an edge until SIGINT or SIGTERM, then shuts down gracefully: stops accepting,
/// tells players their stream ended, unpublishes and releases publishers' streams, and
/// drains what is queued for at most the configured drain time.
pub(crate) async fn run(config: EdgeConfig) -> anyhow::Result<()> {
    let rtmp = tokio::net::TcpListener::bind(config.rtmp)
        .await
        .with_context(|| format!("cannot listen on {} (RTMP)", config.rtmp))?;
    let http = tokio::net::TcpListener::bind(config.http)
        .await
        .with_context(|| format!("cannot listen on {} (HTTP)", config.http))?;
    let agent_listener = match config.agent {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} (agent)"))?,
        ),
        None => None,
    };
    let tls = match &config.tls {
        Some(tls) => Some(TlsServing::bind(tls).await?),
        None => None,
    };
    // Clients are stopped first; links to the origins last, after the drain.
    let clients = CancellationToken::new();
    let links = CancellationToken::new();
    let ctx = EdgeContext::new(&config, clients.clone(), links.clone())?;
    // The VOD cache's index, from its directory, before the first request: a
    // directory that cannot be used stops the edge here with the reason.
    if let Some(vod) = &ctx.vod {
        vod.load().await.context("the VOD cache (--vod-cache-dir)")?;
    }
    if let Some(tls) = &ctx.peer_tls {
        tokio::spawn(crate::tls::watch(tls.identity().clone(), links.clone()));
    }
    let rtmp_task =
        tokio::spawn(tracing::Instrument::in_current_span(rtmp_conn::serve(rtmp, ctx.clone(), None, clients.clone())));
    // HTTP caps: `--http-max-connections[-per-address]`, `--http-header-timeout-ms`,
    // `--http-body-timeout-ms`; long-lived requests are capped in their handlers
    // (`--max-long-requests-per-address`).
    let http_task = tokio::spawn(crate::http_server::serve(
        http,
        http::router(ctx.clone()),
        ctx.limits.http.clone(),
        clients.clone(),
    ));
    let tls_tasks = tls.map(|tls| tls.spawn(&ctx, &clients));
    use tracing::Instrument;
    tokio::spawn(agent::sample(ctx.clone(), config.agent_egress_bytes_per_s, clients.clone()).in_current_span());
    if let (Some(listener), Some(addr)) = (agent_listener, config.agent) {
        tracing::info!(agent = %addr, "HAProxy agent serving");
        tokio::spawn(agent::serve(listener, ctx.clone(), clients.clone()).in_current_span());
    }
    tracing::info!(rtmp = %config.rtmp, http = %config.http, origins = ?config.origins, "edge serving");

    tokio::spawn(drain::on_signal(ctx.draining.clone(), clients.clone()));
    tokio::select! {
        _ = crate::logging::terminated() => {}
        _ = drain::until_empty(ctx.clone(), config.drain_deadline) => {}
    }
    tracing::info!("shutting down: no new connections, draining players");
    clients.cancel();
    let _ = rtmp_task.await;
    let mut https_task = None;
    if let Some((rtmps, https)) = tls_tasks {
        if let Some(rtmps) = rtmps {
            let _ = rtmps.await;
        }
        https_task = https;
    }
    // Connection tasks end themselves after their drain; give them that long.
    let drained = async {
        while ctx.stats.connections.load(std::sync::atomic::Ordering::Relaxed) > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    let _ = tokio::time::timeout(config.drain + std::time::Duration::from_millis(500), drained).await;
    let _ = tokio::time::timeout(config.drain, http_task).await;
    if let Some(https) = https_task {
        let _ = tokio::time::timeout(config.drain, https).await;
    }
    // Publications released their claims as their connections closed; let the last
    // releases reach the cluster before the links go.
    let _ = tokio::time::timeout(config.drain, async {
        while ctx.stats.publishers.load(std::sync::atomic::Ordering::Relaxed) > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    links.cancel();
    tracing::info!("stopped");
    Ok(())
}

/// The RTMPS and HTTPS listeners, bound, and the certificate they share.
struct TlsServing {
    certs: Arc<crate::tls::Certificates>,
    rtmps: Option<tokio::net::TcpListener>,
    https: Option<tokio::net::TcpListener>,
}

impl TlsServing {
    async fn bind(config: &TlsListeners) -> anyhow::Result<TlsServing> {
        let paths = config.certs.clone();
        let certs = tokio::task::spawn_blocking(move || crate::tls::Certificates::load(paths)).await??;
        let bind = |addr: Option<std::net::SocketAddr>, what: &'static str| async move {
            match addr {
                Some(addr) => tokio::net::TcpListener::bind(addr)
                    .await
                    .map(Some)
                    .with_context(|| format!("cannot listen on {addr} ({what})")),
                None => Ok(None),
            }
        };
        Ok(TlsServing { certs, rtmps: bind(config.rtmps, "RTMPS").await?, https: bind(config.https, "HTTPS").await? })
    }

    /// Starts the accept loops and the certificate reloads, all until `clients` is
    /// cancelled; returns the RTMPS and HTTPS tasks.
    fn spawn(
        self,
        ctx: &Arc<EdgeContext>,
        clients: &CancellationToken,
    ) -> (Option<tokio::task::JoinHandle<()>>, Option<tokio::task::JoinHandle<()>>) {
        use tracing::Instrument as _;
        tokio::spawn(crate::tls::watch(self.certs.clone(), clients.clone()).in_current_span());
        let rtmps = self.rtmps.map(|listener| {
            let tls = self.certs.acceptor(crate::tls::ALPN_NONE);
            tracing::info!(rtmps = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "RTMPS serving");
            tokio::spawn(rtmp_conn::serve(listener, ctx.clone(), Some(tls), clients.clone()).in_current_span())
        });
        let https = self.https.map(|listener| {
            let tls = self.certs.acceptor(crate::tls::ALPN_HTTP);
            tracing::info!(https = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "HTTPS serving");
            let router = http::router(ctx.clone());
            tokio::spawn(
                crate::http_server::serve_tls(
                    listener,
                    router,
                    ctx.limits.http.clone(),
                    (tls, ctx.stats.tls_https.clone()),
                    clients.clone(),
                )
                .in_current_span(),
            )
        });
        (rtmps, https)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An edge's shared context with nothing started (no listener, no link, no task).
    pub(crate) fn context(config: EdgeConfig) -> Arc<EdgeContext> {
        let stop = CancellationToken::new();
        EdgeContext::new(&config, stop.clone(), stop).expect("an edge context")
    }
}
