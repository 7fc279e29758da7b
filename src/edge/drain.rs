//! Draining an edge before it stops (an upgrade, a machine retired): SIGUSR1 or
//! `POST /drain` starts it, and from then on
//!
//! - `/health` answers 503 `draining`, so a load balancer's health check sends no new
//!   clients (HLS and HTTP clients move with their next request);
//! - the RTMP and RTMPS listeners close: a new RTMP connection is refused, which a
//!   balancer redispatches to another edge;
//! - every RTMP client whose `connect` advertised Enhanced RTMP's reconnect capability
//!   gets `NetConnection.Connect.ReconnectRequest` once (`rtmp_conn`), and reconnects
//!   through the balancer to another edge;
//! - the edge stops as SIGTERM would stop it once no RTMP connection and no HTTP-FLV
//!   player is left and no client HTTP request came for [`QUIET`] (the load balancer
//!   has taken the edge out: HLS players' next requests go elsewhere, and none is cut
//!   by the exit), or at `--drain-deadline-ms`.
//!
//! Draining is one-way: a drained edge is stopped and started again.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::EdgeContext;

/// How often a draining edge checks whether its clients are gone.
const POLL: Duration = Duration::from_millis(100);

/// How long a draining edge must have had no client HTTP request before it exits. A
/// load balancer takes a failing server out within a few health checks (HAProxy in
/// `scripts/bootstrap.sh`: two failed checks 250-500 ms apart); until then it still
/// sends HLS requests, several a second for a low-latency player. Exiting on the
/// first moment with no RTMP client cut an hls.js player's part request (a
/// `fragLoadError` and a 300 ms stall during `scripts/rolling-restart.sh`).
pub const QUIET: Duration = Duration::from_secs(2);

/// Milliseconds since this process first asked; what `last_client_request_ms` holds.
pub fn now_ms() -> u64 {
    static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    // Starts at 1, so that 0 (no request yet) is always long ago.
    BASE.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64 + 1
}

/// Starts draining on SIGUSR1, until `stop`.
pub async fn on_signal(draining: CancellationToken, stop: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut usr1 = match signal(SignalKind::user_defined1()) {
        Ok(usr1) => usr1,
        Err(e) => return tracing::warn!(error = %e, "no SIGUSR1 handler: drain with POST /drain"),
    };
    tokio::select! {
        Some(()) = usr1.recv() => draining.cancel(),
        _ = stop.cancelled() => {}
    }
}

/// Returns once the edge drains and its clients are gone, or `deadline` after the drain
/// started; never while it does not drain.
pub async fn until_empty(ctx: Arc<EdgeContext>, deadline: Duration) {
    ctx.draining.cancelled().await;
    let clients = || {
        let stats = &ctx.stats;
        (stats.connections.load(Ordering::Relaxed), stats.players_flv.load(Ordering::Relaxed))
    };
    let (rtmp, flv) = clients();
    tracing::info!(rtmp, flv, ?deadline, "draining: /health answers 503; RTMP clients that can reconnect are asked to");
    let quiet = || {
        let last = ctx.stats.last_client_request_ms.load(Ordering::Relaxed);
        now_ms().saturating_sub(last) >= QUIET.as_millis() as u64
    };
    let empty = async {
        while clients() != (0, 0) || !quiet() {
            tokio::time::sleep(POLL).await;
        }
    };
    match tokio::time::timeout(deadline, empty).await {
        Ok(()) => tracing::info!("drained: no client left, no request for {QUIET:?}"),
        Err(_) => {
            let (rtmp, flv) = clients();
            tracing::warn!(rtmp, flv, "drain deadline passed with clients left; stopping anyway");
        }
    }
}
