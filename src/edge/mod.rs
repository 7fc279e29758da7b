//! `raftcast edge`: the RTMP and HTTP-FLV front door. Stateless: it holds client
//! connections and nothing that must survive them.
//!
//! - `rtmp_conn`: the RTMP accept loop and one task per connection;
//! - `streams`: publications (claim, forward to the owner, release) and relays (one
//!   upstream subscription per stream, fanned out to local players);
//! - `upstream`: one link per origin, channels multiplexed over it;
//! - `control`: claims, releases and lookups through the origins' `/raft/forward`;
//! - `shared_objects`: the edge's copy of each shared object its clients use, kept by
//!   one change feed from an origin; writes and broadcasts through the cluster;
//! - `so_session`: one RTMP connection's shared-object messages;
//! - `http`: HTTP-FLV, shared objects over HTTP and SSE, the example page, `/status`,
//!   `/metrics`, `/health`.

pub mod config;
pub mod control;
pub mod http;
pub mod http_objects;
pub mod rtmp_conn;
pub mod shared_objects;
pub mod so_session;
pub mod streams;
pub mod tokens;
pub mod upstream;

use std::process::ExitCode;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

pub use config::{EdgeArgs, EdgeConfig};

/// Counters of an edge, for `/status` and `/metrics`.
#[derive(Debug, Default)]
pub struct EdgeStats {
    pub connections: AtomicU64,
    pub connections_total: AtomicU64,
    pub connections_refused: AtomicU64,
    pub publishers: AtomicU64,
    pub players_rtmp: AtomicU64,
    pub players_flv: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub frames_published: AtomicU64,
    /// Shared by every relay hub: drops are counted the moment a queue drops.
    pub player_drops: Arc<AtomicU64>,
    pub publisher_drops: AtomicU64,
    /// Publications moved to a new owner after losing theirs.
    pub publisher_failovers: AtomicU64,
    /// Relays that re-subscribed at a new owner.
    pub relay_failovers: AtomicU64,
    /// Frames a relay dropped because its players already had them (replays after a move).
    pub relay_duplicates: AtomicU64,
    /// Publishers' frames: from the edge getting them to their link to the owner.
    pub hop_ingest: crate::media::hop::HopLatency,
    /// Players' live frames: from the link to the player's socket (merge window
    /// included).
    pub hop_delivery: crate::media::hop::HopLatency,
}

/// What every task of the edge shares.
pub struct EdgeContext {
    pub config: EdgeConfig,
    pub control: control::Control,
    pub upstreams: upstream::Upstreams,
    pub relays: streams::Relays,
    pub objects: shared_objects::SharedObjects,
    pub stats: EdgeStats,
    /// Cancelled when the edge stops serving clients (relays and players end with it).
    pub shutdown: CancellationToken,
    pub started: Instant,
    /// Start time in Unix ms: makes session names unique across restarts of this edge.
    pub started_ms: u128,
}

/// Entry point of `raftcast edge`.
pub fn main(args: EdgeArgs) -> ExitCode {
    crate::logging::init();
    let config = match EdgeConfig::from_args(args, |k| std::env::var(k).ok()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("raftcast edge: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("raftcast edge: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let span = tracing::info_span!("edge", edge.id = %config.id);
    match runtime.block_on(tracing::Instrument::instrument(run(config), span)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("raftcast edge: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs an edge until SIGINT or SIGTERM, then shuts down gracefully: stops accepting,
/// tells players their stream ended, unpublishes and releases publishers' streams, and
/// drains what is queued for at most the configured drain time.
pub async fn run(config: EdgeConfig) -> anyhow::Result<()> {
    let rtmp = tokio::net::TcpListener::bind(config.rtmp)
        .await
        .with_context(|| format!("cannot listen on {} (RTMP)", config.rtmp))?;
    let http = tokio::net::TcpListener::bind(config.http)
        .await
        .with_context(|| format!("cannot listen on {} (HTTP)", config.http))?;
    // Clients are stopped first; links to the origins last, after the drain.
    let clients = CancellationToken::new();
    let links = CancellationToken::new();
    let control = control::Control::new(config.origins.clone(), config.secret.clone(), config.request_deadline)
        .context("building the control client")?;
    let upstreams = upstream::Upstreams::new(config.id.clone(), config.secret.clone(), config.link, links.clone());
    let started_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let objects = shared_objects::SharedObjects::new(
        config.origins.clone(),
        config.secret.clone(),
        control.clone(),
        clients.clone(),
    );
    let ctx = Arc::new(EdgeContext {
        config: config.clone(),
        control,
        objects,
        upstreams,
        relays: streams::Relays::default(),
        stats: EdgeStats::default(),
        shutdown: clients.clone(),
        started: Instant::now(),
        started_ms,
    });
    let rtmp_task =
        tokio::spawn(tracing::Instrument::in_current_span(rtmp_conn::serve(rtmp, ctx.clone(), clients.clone())));
    let http_server = axum::serve(http, http::router(ctx.clone())).with_graceful_shutdown({
        let clients = clients.clone();
        async move { clients.cancelled().await }
    });
    let http_task = tokio::spawn(async move { http_server.await });
    tracing::info!(rtmp = %config.rtmp, http = %config.http, origins = ?config.origins, "edge serving");

    crate::logging::terminated().await;
    tracing::info!("shutting down: no new connections, draining players");
    clients.cancel();
    let _ = rtmp_task.await;
    // Connection tasks end themselves after their drain; give them that long.
    let drained = async {
        while ctx.stats.connections.load(std::sync::atomic::Ordering::Relaxed) > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    let _ = tokio::time::timeout(config.drain + std::time::Duration::from_millis(500), drained).await;
    let _ = tokio::time::timeout(config.drain, http_task).await;
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
