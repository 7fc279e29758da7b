//! `raftcast origin`: a Raft voter over sled storage, serving the admin API and Raft
//! RPC on one HTTP listener.
//!
//! This module wires the pieces and owns the process lifecycle (start, signals,
//! graceful shutdown); the pieces live in `config`, `proposer`, `api` and `metrics`.
//! `link_server` serves the edges' media links, with `ingest` counting what publishers
//! send; `live` shares the owner's view of its streams with the other origins;
//! `handover` lets a stream's new owner learn where its HLS numbering stood;
//! `orphans` releases owned claims whose publisher stays away. For failover, `liveness`
//! tells which origins answer the leader, `failover` moves the streams of those that do
//! not, and `watch` lets edges wait for ownership changes. For placement, `load_probe`
//! measures each origin's load and brings it to the leader, `load` scores it, and
//! `rebalance` decides when the leader moves a stream off a hot origin. `recording`
//! writes recorded streams to disk at their owner, copies finished pieces and reads
//! recordings back; `vod` serves finished recordings and the media library to edges.

pub(crate) mod api;
pub(crate) mod commit;
pub(crate) mod compaction;
pub(crate) mod config;
pub(crate) mod failover;
pub(crate) mod handover;
pub(crate) mod ingest;
pub(crate) mod link_server;
pub(crate) mod live;
pub(crate) mod liveness;
pub(crate) mod load;
pub(crate) mod load_probe;
pub(crate) mod membership;
pub(crate) mod metrics;
pub(crate) mod orphans;
pub(crate) mod ownership;
pub(crate) mod proposer;
pub(crate) mod rebalance;
pub(crate) mod recording;
pub(crate) mod shared_objects;
pub(crate) mod vod;
pub(crate) mod watch;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use raftcast_raft::network::HttpNetwork;
use raftcast_raft::rpc;
use raftcast_raft::typ::Raft;
use raftcast_storage::StoreOptions;
use tokio_util::sync::CancellationToken;

pub use config::OriginArgs;
use config::OriginConfig;
pub use link_server::PREVIOUS_OWNER_WAIT;

use crate::http_server::HttpLimits;
use crate::limits::{Limit, Trusted};
use metrics::Metrics;
use proposer::Proposer;

/// A quarter of `--http-max-connections` is kept for the cluster's own members.
const PEER_RESERVE_DIVISOR: usize = 4;

/// How long shutdown waits for in-flight HTTP requests before it stops anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How long an origin's allocator keeps freed pages (see [`crate::heap::set_dirty_decay_ms`]).
const DIRTY_DECAY_MS: isize = 1000;

/// Entry point of `raftcast origin`.
pub fn main(args: OriginArgs) -> ExitCode {
    // Everything an origin creates (sled's files, snapshots) holds shared-object values
    // and publish keys: owner-only, 0600 files in 0700 directories.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    crate::heap::set_dirty_decay_ms(DIRTY_DECAY_MS);
    crate::heap::use_first_arena();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.on_thread_start(crate::heap::use_first_arena);
    // sled's replaced pages wait in each thread's own epoch bag until it is handed on,
    // and freed memory in the thread's allocator cache until it allocates again.
    runtime.on_thread_park(|| {
        raftcast_storage::release_deferred();
        crate::heap::flush_thread_cache();
    });
    crate::process::main(
        "origin",
        || OriginConfig::from_args(args, |k| std::env::var(k).ok()),
        runtime,
        |config| tracing::info_span!("origin", node.id = config.id),
        run,
    )
}

/// Runs an origin until SIGINT or SIGTERM.
pub(crate) async fn run(config: OriginConfig) -> anyhow::Result<()> {
    let store_dir = config.data_dir.clone();
    let options = StoreOptions { max_append_bytes: config.max_append_bytes, cache_bytes: config.store_cache_bytes };
    let (log, sm) = raftcast_storage::open(&store_dir, &options)?;
    let appended = log.appended_bytes();
    let log_reader = log.reader();
    let state = sm.handle();
    let metrics = Arc::new(Metrics::new());
    {
        let metrics = metrics.clone();
        state.set_apply_observer(Arc::new(move |took, n| metrics.observe_apply(took, n)));
    }
    // The cluster's mutual TLS, when configured, wraps Raft RPC, every request between
    // members and the media links alike.
    let peer_tls = crate::tls::peer::PeerTls::load_configured(config.peer_tls.as_ref())?;
    let network =
        HttpNetwork::with_connector(config.id, config.secret.clone(), crate::peer::raft_connector(peer_tls.as_deref()));
    let liveness = liveness::Liveness::new(config.id, network.reachability(), config.owner_dead_after);
    let raft = Raft::new(config.id, Arc::new(config.raft.clone()), network, log, sm).await.context("starting Raft")?;
    let listener = tokio::net::TcpListener::bind(config.http)
        .await
        .with_context(|| format!("cannot listen on {}", config.http))?;
    let media_listener = tokio::net::TcpListener::bind(config.media)
        .await
        .with_context(|| format!("cannot listen on {}", config.media))?;
    let shutdown = CancellationToken::new();
    // One client for every request to another origin.
    let peers = crate::peer::PeerClient::new(config.secret.clone(), peer_tls.clone());
    if let Some(tls) = &peer_tls {
        tokio::spawn(crate::tls::watch(tls.identity().clone(), shutdown.clone()));
    }
    // When a leader's AppendEntries was last accepted here (the Raft RPC route records
    // it): whether this origin's state is current enough to feed edges claims.
    let contact = raftcast_raft::network::LeaderContact::default();
    let links = link_server::LinkContext::new(
        config.id,
        config.secret.clone(),
        raft.clone(),
        state.clone(),
        metrics.links.clone(),
    )
    .with_hls_window(config.hls_window)
    .with_touch(liveness.clone(), contact.clone())
    .with_previous_owner(handover::asker(peers.clone(), raft.clone()));
    let live = live::LiveFacts::new(config.id, peers.clone(), links.clone());
    let committer = commit::Committer::new(raft.clone(), state.clone(), metrics.clone(), config.limits);
    // Each origin's load: measured here, polled by the leader, read by placement.
    let cpu = load_probe::CpuMeter::default();
    tokio::spawn(tracing::Instrument::in_current_span(load_probe::sample_cpu(cpu.clone(), shutdown.clone())));
    let probe = load_probe::LoadProbe::new(config.id, links.clone(), state.clone(), cpu, peers.clone());
    let board = load::LoadBoard::default();
    tokio::spawn(tracing::Instrument::in_current_span(load_probe::poll(
        probe.clone(),
        raft.clone(),
        board.clone(),
        metrics.clone(),
        shutdown.clone(),
    )));
    let ownership = ownership::Ownership::new(
        config.id,
        raft.clone(),
        state.clone(),
        committer.clone(),
        live.clone(),
        liveness.clone(),
        watch::StreamWatch::new(state.clone(), shutdown.clone()),
        board,
        metrics.clone(),
    );
    let proposer = Proposer::new(
        raft.clone(),
        config.id,
        peers.clone(),
        config.request_deadline,
        metrics.clone(),
        committer,
        ownership.clone(),
        membership::Membership::new(raft.clone(), config.request_deadline),
    );
    // Recordings: the link server tells the recorder of every accepted publisher.
    let recorder = recording::Recorder::new(
        config.id,
        store_dir.join("recordings"),
        state.clone(),
        proposer.clone(),
        peers.clone(),
        raft.clone(),
        metrics.recording.clone(),
        shutdown.clone(),
    );
    {
        let hooked = recorder.clone();
        links.set_attach_hook(Arc::new(move |stream, epoch, hub| hooked.attached(stream, epoch, hub)));
        let links = links.clone();
        let live_hubs: recording::LiveHubs = Arc::new(move || links.attached_hubs());
        tokio::spawn(tracing::Instrument::in_current_span(recording::maintain(recorder.clone(), live_hubs)));
    }
    tokio::spawn(tracing::Instrument::in_current_span(confirm_current(
        proposer.clone(),
        links.clone(),
        shutdown.clone(),
    )));
    let link_task = tokio::spawn(tracing::Instrument::in_current_span(link_server::serve(
        media_listener,
        links.clone(),
        link_server::LinkCaps::new(
            config.caps.link_unauthenticated_per_address,
            config.caps.link_unauthenticated,
            config.caps.link_hello_timeout,
        ),
        peer_tls.clone().map(|tls| (tls, metrics.peer_tls_media.clone())),
        shutdown.clone(),
    )));
    let members = Arc::new(Trusted::default());
    tokio::spawn(tracing::Instrument::in_current_span(watch_raft(
        raft.clone(),
        metrics.clone(),
        liveness.clone(),
        members.clone(),
        shutdown.clone(),
    )));
    tokio::spawn(tracing::Instrument::in_current_span(compaction::snapshot_by_bytes(
        raft.clone(),
        appended,
        log_reader,
        config.snapshot_every_bytes,
        shutdown.clone(),
    )));
    let failover = failover::Supervisor {
        id: config.id,
        raft: raft.clone(),
        state: state.clone(),
        ownership,
        liveness,
        rebalance: config.rebalance,
    };
    tokio::spawn(tracing::Instrument::in_current_span(failover::supervise(failover, shutdown.clone())));
    let supervisor = orphans::Supervisor {
        id: config.id,
        grace: config.orphan_grace,
        state: state.clone(),
        links: links.clone(),
        proposer: proposer.clone(),
        metrics: metrics.clone(),
    };
    tokio::spawn(tracing::Instrument::in_current_span(orphans::supervise(supervisor, shutdown.clone())));

    let objects =
        shared_objects::ObjectHub::new(config.id, peers.clone(), raft.clone(), state.clone(), proposer.clone());
    tokio::spawn(tracing::Instrument::in_current_span(shared_objects::sweep_temporary(
        objects.clone(),
        config.temporary_grace,
        shutdown.clone(),
    )));
    let peer_tls_http = metrics.peer_tls_http.clone();
    let app = api::AppState {
        id: config.id,
        http: config.http,
        raft: raft.clone(),
        proposer: proposer.clone(),
        state,
        metrics,
        live: live.clone(),
        objects: objects.clone(),
        admin_token: config.admin_token.as_deref().map(Arc::from),
        shutdown: shutdown.clone(),
        recorder: recorder.clone(),
        load: probe.clone(),
    };
    let vod = vod::VodServer::new(app.state.clone(), recorder.clone(), config.media_dir.clone());
    let dvr = recording::dvr::DvrServer::new(recorder.clone());
    let long_polls = Limit::new("http_long_polls", config.caps.long_polls_per_address, config.caps.http_connections);
    let internal = Router::new()
        .route("/raft/forward", post(api::forward::route))
        .route_layer(axum::middleware::from_fn_with_state(config.secret.clone(), rpc::require_secret))
        .layer(DefaultBodyLimit::max(proposer::forward::MAX_FORWARD_BODY))
        .with_state(proposer)
        .merge(Router::new().route(live::LIVE_ROUTE, get(live::route)).with_state(live))
        .merge(Router::new().route(handover::MARK_ROUTE, get(handover::route)).with_state(handover::MarkServer::new(
            config.id,
            config.secret.clone(),
            links.clone(),
        )))
        .merge(Router::new().route(load_probe::LOAD_ROUTE, get(load_probe::route)).with_state(probe))
        .merge(
            Router::new()
                .route(recording::replica::PIECE_ROUTE, get(recording::read::piece_route))
                .with_state(recorder),
        )
        .merge(
            // Live rewind: piece-level (origin to origin) and stream-level (edge to any
            // origin) routes, each checking the cluster secret itself.
            Router::new()
                .route(recording::dvr::PIECE_INDEX_ROUTE, get(recording::dvr::piece_index_route))
                .route(recording::dvr::PIECE_SEGMENT_ROUTE, get(recording::dvr::piece_segment_route))
                .route(recording::dvr::MARKS_ROUTE, get(recording::dvr::marks_route))
                .route(crate::hls::dvr::INDEX_ROUTE, get(recording::dvr::index_route))
                .route(crate::hls::dvr::SEGMENT_ROUTE, get(recording::dvr::segment_route))
                .with_state(dvr),
        )
        .merge(
            Router::new()
                .route(vod::VOD_ROUTE, get(vod::route))
                .route_layer(axum::middleware::from_fn_with_state(config.secret.clone(), rpc::require_secret))
                .with_state(vod),
        )
        .merge(
            Router::new()
                .route("/internal/objects/{name}/events", get(shared_objects::feed_route))
                .route_layer(axum::middleware::from_fn_with_state(long_polls, crate::http_server::long_lived))
                .route("/internal/objects/{name}/messages", post(shared_objects::message_route))
                .route(shared_objects::WATCHED_ROUTE, get(shared_objects::watched_route))
                .route(shared_objects::TOKEN_KEYS_ROUTE, get(shared_objects::token_keys_route))
                .with_state((objects, shutdown.clone())),
        );
    let router = api::router(app)
        .merge(rpc::routes(raft.clone(), config.secret.clone(), contact.clone()))
        .merge(internal)
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(tower_http::catch_panic::CatchPanicLayer::new());

    tracing::info!(
        http = %config.http, media = %config.media, data_dir = %store_dir.display(), peer_tls = peer_tls.is_some(),
        media_dir = ?config.media_dir,
        orphan_grace = ?config.orphan_grace, owner_dead_after = ?config.owner_dead_after, "origin serving"
    );
    // The listener's caps (`--http-max-connections[-per-address]`, header and body
    // timeouts); feeds are capped per address above (`--max-long-polls-per-address`).
    // Raft RPC shares this listener. A flood of idle connections from elsewhere once
    // filled the cap and Raft's new connections were reset: elections followed. So the
    // last [`PEER_RESERVE_DIVISOR`]th of the cap is kept for the addresses of the
    // cluster's members (`watch_raft` keeps the set current).
    let http_limits = HttpLimits {
        header_timeout: config.caps.http_header_timeout,
        body_timeout: config.caps.http_body_timeout,
        connections: Limit::with_reserve(
            "http_connections",
            config.caps.http_connections_per_address,
            config.caps.http_connections,
            config.caps.http_connections / PEER_RESERVE_DIVISOR,
        ),
        trusted: Some(members.clone()),
        proxy: None,
        // No bans: an origin's clients are edges and operators, not the public, and an
        // edge must not be banned for the floods it relays.
        bans: crate::bans::BanPolicy { refusals_per_second: 0, ..Default::default() },
        ban_stats: Default::default(),
    };
    let server = match &peer_tls {
        // Members only: the acceptor requires a certificate the cluster CA signed (edges,
        // origins, and `ctl` with one).
        Some(tls) => tokio::spawn(crate::http_server::serve_tls(
            listener,
            router,
            http_limits,
            (tls.acceptor(), peer_tls_http),
            shutdown.clone(),
        )),
        None => tokio::spawn(crate::http_server::serve(listener, router, http_limits, shutdown.clone())),
    };
    crate::logging::terminated().await;
    tracing::info!("shutting down");
    shutdown.cancel();
    match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "HTTP server task failed"),
        Err(_) => tracing::warn!("HTTP requests still open after {SHUTDOWN_GRACE:?}; stopping anyway"),
    }
    let _ = link_task.await;
    raft.shutdown().await.map_err(|e| anyhow::anyhow!("raft shutdown: {e}"))?;
    tracing::info!("stopped");
    Ok(())
}

/// Confirms once, with a read barrier, that this origin's applied state is current,
/// and then lets the link server accept publishers. Until then an origin back from a
/// crash may still believe it owns streams that moved while it was away.
async fn confirm_current(proposer: Proposer, links: link_server::LinkContext, shutdown: CancellationToken) {
    loop {
        let confirmed = tokio::select! {
            confirmed = proposer.read_barrier() => confirmed,
            _ = shutdown.cancelled() => return,
        };
        match confirmed {
            Ok(()) => {
                links.mark_current();
                tracing::info!("applied state confirmed current; accepting publishers");
                return;
            }
            Err(e) => tracing::debug!(error = %e, "cannot confirm the applied state yet"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Follows openraft's metrics for leader changes, logs role transitions and notes
/// when this node starts leading (the failover bound counts from then); keeps the
/// set of member addresses trusted with the HTTP cap's reserve.
async fn watch_raft(
    raft: Raft,
    metrics: Arc<Metrics>,
    liveness: liveness::Liveness,
    members: Arc<Trusted>,
    shutdown: CancellationToken,
) {
    let mut rx = raft.metrics();
    let mut last = (None, None);
    let mut last_members = None;
    loop {
        {
            let m = rx.borrow_and_update();
            metrics.observe_raft(&m);
            // The members' addresses may use the HTTP connection cap's reserve.
            let membership = m.membership_config.membership();
            if last_members.as_ref() != Some(membership) {
                // Addresses given as host names are not trusted (no lookups here).
                let ip = |a: &str| a.parse::<std::net::SocketAddr>().ok().map(|a| a.ip());
                members.set(membership.nodes().flat_map(|(_, node)| [ip(&node.http), ip(&node.media)]).flatten());
                last_members = Some(membership.clone());
            }
            liveness.observe(&m, std::time::Instant::now());
            let now = (m.current_leader, Some(m.state));
            if now != last {
                tracing::info!(node.id = m.id, leader = ?m.current_leader, state = ?m.state, term = m.current_term, "raft role");
                last = now;
            }
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = shutdown.cancelled() => return,
        }
    }
}
