//! Origin settings: raw command-line/env/file input ([`OriginArgs`]) validated once into
//! an immutable [`OriginConfig`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use raftcast_raft::rpc::ClusterSecret;
use raftcast_raft::NodeId;
use serde::Deserialize;

use super::rebalance::RebalanceConfig;

/// Command-line flags of `raftcast origin`. Every flag has an environment twin, and
/// a TOML file (`--config`) may carry the same settings (kebab-case keys); flags and
/// environment win over the file.
#[derive(Debug, Default, Clone, clap::Args, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct OriginArgs {
    /// TOML file with any of these settings.
    #[arg(long, env = "RAFTCAST_ORIGIN_CONFIG")]
    #[serde(skip)]
    pub(crate) config: Option<PathBuf>,
    /// Node id, unique in the cluster and never reused after a data dir is wiped.
    #[arg(long, env = "RAFTCAST_ORIGIN_ID")]
    pub(crate) id: Option<NodeId>,
    /// Admin API and Raft RPC listener [default: 127.0.0.1:8100+id].
    #[arg(long, env = "RAFTCAST_ORIGIN_HTTP")]
    pub(crate) http: Option<SocketAddr>,
    /// Media link listener, for edges [default: 127.0.0.1:9100+id].
    #[arg(long, env = "RAFTCAST_ORIGIN_MEDIA")]
    pub(crate) media: Option<SocketAddr>,
    /// Where the Raft log, vote and snapshots live [default: ./data/origin-<id>].
    #[arg(long, env = "RAFTCAST_ORIGIN_DATA_DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// The media library: `NAME.flv` here plays as VOD `lib-NAME` from every edge
    /// (docs/vod.md). Files are not replicated: copy them to every origin (or some; edges
    /// try the others) [default: none, no library].
    #[arg(long, env = "RAFTCAST_MEDIA_DIR")]
    pub(crate) media_dir: Option<PathBuf>,
    /// File holding the cluster secret (or set RAFTCAST_CLUSTER_SECRET).
    #[arg(long, env = "RAFTCAST_CLUSTER_SECRET_FILE")]
    pub(crate) cluster_secret_file: Option<PathBuf>,
    /// File holding the admin bearer token (or set RAFTCAST_ADMIN_TOKEN).
    #[arg(long, env = "RAFTCAST_ADMIN_TOKEN_FILE")]
    pub(crate) admin_token_file: Option<PathBuf>,
    /// The cluster CA (PEM) for mutual TLS between members: with it (and --peer-tls-cert,
    /// --peer-tls-key) every connection to and from other members is TLS and accepts
    /// only certificates this CA signed; every member must have it [default: none].
    #[arg(long, env = "RAFTCAST_PEER_TLS_CA")]
    pub(crate) peer_tls_ca: Option<PathBuf>,
    /// This node's certificate (PEM chain, signed by --peer-tls-ca, naming the addresses
    /// peers dial as IP subject alternative names; reloaded on SIGHUP or change).
    #[arg(long, env = "RAFTCAST_PEER_TLS_CERT")]
    pub(crate) peer_tls_cert: Option<PathBuf>,
    /// The private key of --peer-tls-cert (PEM).
    #[arg(long, env = "RAFTCAST_PEER_TLS_KEY")]
    pub(crate) peer_tls_key: Option<PathBuf>,
    /// Leader heartbeat period in ms [default: 50].
    #[arg(long, env = "RAFTCAST_HEARTBEAT_MS")]
    pub(crate) heartbeat_ms: Option<u64>,
    /// Shortest election timeout in ms [default: 200].
    #[arg(long, env = "RAFTCAST_ELECTION_MIN_MS")]
    pub(crate) election_min_ms: Option<u64>,
    /// Longest election timeout in ms [default: 350].
    #[arg(long, env = "RAFTCAST_ELECTION_MAX_MS")]
    pub(crate) election_max_ms: Option<u64>,
    /// Take a snapshot after this many log entries [default: 10000].
    #[arg(long, env = "RAFTCAST_SNAPSHOT_EVERY")]
    pub(crate) snapshot_every: Option<u64>,
    /// Log entries kept behind a snapshot for lagging followers [default: 64]; a follower
    /// further behind receives the snapshot instead.
    #[arg(long, env = "RAFTCAST_SNAPSHOT_KEEP")]
    pub(crate) snapshot_keep: Option<u64>,
    /// How long a write or linearizable read may wait for a leader, in ms [default: 5000].
    #[arg(long, env = "RAFTCAST_REQUEST_DEADLINE_MS")]
    pub(crate) request_deadline_ms: Option<u64>,
    /// How long a stream this origin owns may have no publisher before its claim is
    /// released (an edge died, or its release failed): a number with a unit, `ms`,
    /// `s`, `m` or `h` (a bare number means seconds), from 100ms to 24h [default: 10s].
    #[arg(long, env = "RAFTCAST_ORPHAN_GRACE")]
    pub(crate) orphan_grace: Option<String>,
    /// While this origin leads: how long another origin may leave its Raft RPCs
    /// unanswered before it counts as dead, its streams are moved to live origins and
    /// it gets no new ones, in ms (at least three heartbeats, at most 600000)
    /// [default: 1000].
    #[arg(long, env = "RAFTCAST_OWNER_DEAD_AFTER_MS")]
    pub(crate) owner_dead_after_ms: Option<u64>,
    /// While this origin leads: how long a temporary shared object may go unwatched by
    /// every edge and SSE client before it is removed, with a unit (`ms`, `s`, `m`,
    /// `h`), from 1s to 24h [default: 5s].
    #[arg(long, env = "RAFTCAST_TEMPORARY_GRACE")]
    pub(crate) temporary_grace: Option<String>,
    /// HTTP connections (admin API, Raft RPC, edges' requests) at once; more are closed at accept [default: 8192]
    #[arg(long, env = "RAFTCAST_ORIGIN_HTTP_MAX_CONNECTIONS")]
    pub(crate) http_max_connections: Option<usize>,
    /// HTTP connections from one address (an IPv4 address or an IPv6 /64); edges and peers keep pools of connections, so this is generous [default: 2048]
    #[arg(long, env = "RAFTCAST_ORIGIN_HTTP_MAX_CONNECTIONS_PER_ADDRESS")]
    pub(crate) http_max_connections_per_address: Option<usize>,
    /// An HTTP connection waiting for a request, or for the rest of its head, longer than this is closed (also the keep-alive idle timeout) [default: 10000]
    #[arg(long, env = "RAFTCAST_ORIGIN_HTTP_HEADER_TIMEOUT_MS")]
    pub(crate) http_header_timeout_ms: Option<u64>,
    /// A request body must arrive whole within this many ms [default: 30000]
    #[arg(long, env = "RAFTCAST_ORIGIN_HTTP_BODY_TIMEOUT_MS")]
    pub(crate) http_body_timeout_ms: Option<u64>,
    /// Long-lived HTTP requests from one address: shared-object feeds and SSE, stream watches [default: 1024]
    #[arg(long, env = "RAFTCAST_ORIGIN_MAX_LONG_POLLS_PER_ADDRESS")]
    pub(crate) max_long_polls_per_address: Option<usize>,
    /// Media-link connections that have not said Hello yet, in all; they never take one of the 256 link slots [default: 64]
    #[arg(long, env = "RAFTCAST_ORIGIN_LINK_MAX_UNAUTHENTICATED")]
    pub(crate) link_max_unauthenticated: Option<usize>,
    /// Such connections from one address [default: 8]
    #[arg(long, env = "RAFTCAST_ORIGIN_LINK_MAX_UNAUTHENTICATED_PER_ADDRESS")]
    pub(crate) link_max_unauthenticated_per_address: Option<usize>,
    /// A media-link connection must have sent its whole Hello within this many ms of connecting [default: 5000]
    #[arg(long, env = "RAFTCAST_ORIGIN_LINK_HELLO_TIMEOUT_MS")]
    pub(crate) link_hello_timeout_ms: Option<u64>,
    /// Most bytes of requests (bincode-encoded) the leader puts into one log entry, and
    /// a follower into one batch of writes it forwards; a single larger request still
    /// goes, alone [default: 262144].
    #[arg(long, env = "RAFTCAST_MAX_ENTRY_BYTES")]
    pub(crate) max_entry_bytes: Option<usize>,
    /// Most bytes of log entries the leader sends a follower in one AppendEntries (at
    /// least one entry goes), and the size of one snapshot chunk. One AppendEntries must
    /// be sent, appended and synced by the follower within a heartbeat (openraft 0.9
    /// times it out then): see docs/origin-cluster.md [default: 524288].
    #[arg(long, env = "RAFTCAST_MAX_APPEND_BYTES")]
    pub(crate) max_append_bytes: Option<usize>,
    /// Most bytes of writes that may wait on this origin at once (queued for a log entry,
    /// proposed and not yet answered, or on their way to the leader); a write beyond it is
    /// refused at once with 429 `overloaded` [default: 16777216].
    #[arg(long, env = "RAFTCAST_MAX_PENDING_WRITE_BYTES")]
    pub(crate) max_pending_write_bytes: Option<usize>,
    /// While this origin leads: most log entries it may hold appended but not yet applied
    /// (not committed by a majority, or committed and not applied); new writes are
    /// refused with 429 `overloaded` beyond it [default: 256].
    #[arg(long, env = "RAFTCAST_MAX_APPLY_LAG")]
    pub(crate) max_apply_lag: Option<u64>,
    /// How long sending one snapshot chunk (and installing the snapshot, for the last)
    /// may take, in ms [default: 10000].
    #[arg(long, env = "RAFTCAST_SNAPSHOT_TIMEOUT_MS")]
    pub(crate) snapshot_timeout_ms: Option<u64>,
    /// Also take a snapshot (and purge the log behind it) once this many bytes of log
    /// entries were appended since the last one, at least --max-append-bytes
    /// [default: 16777216]. sled keeps the log's values in memory until a purge, so
    /// this bounds an origin's memory under a write flood.
    #[arg(long, env = "RAFTCAST_SNAPSHOT_EVERY_BYTES")]
    pub(crate) snapshot_every_bytes: Option<u64>,
    /// sled's page cache for the Raft log, in bytes. The log is read back only to
    /// replicate recent entries, so a small cache costs little, and whatever it holds
    /// stays resident after a burst of writes [default: 8388608].
    #[arg(long, env = "RAFTCAST_STORE_CACHE_BYTES")]
    pub(crate) store_cache_bytes: Option<u64>,
    /// Complete HLS segments each owned stream's window keeps, for edges that start
    /// the stream late or restart [default: 6].
    #[arg(long, env = "RAFTCAST_ORIGIN_HLS_WINDOW_SEGMENTS")]
    pub(crate) hls_window_segments: Option<usize>,
    /// Bytes of frames each owned stream's HLS window keeps at most [default: 48 MiB].
    #[arg(long, env = "RAFTCAST_ORIGIN_HLS_WINDOW_BYTES")]
    pub(crate) hls_window_bytes: Option<usize>,
    /// While this origin leads: move streams, one at a time by planned moves, off an
    /// origin whose load score stays above the mean of the open origins (see
    /// --rebalance-ratio, --rebalance-slack-kbps, --rebalance-after; docs/failover.md)
    /// [default: off]. `--rebalance` alone means on. Give every origin the same setting:
    /// only the leader's counts.
    #[arg(long, env = "RAFTCAST_REBALANCE", num_args = 0..=1, default_missing_value = "true")]
    pub(crate) rebalance: Option<bool>,
    /// An origin is hot when its load score exceeds the mean of the open origins this
    /// many times, from 1.1 to 10 [default: 1.5] ...
    #[arg(long, env = "RAFTCAST_REBALANCE_RATIO")]
    pub(crate) rebalance_ratio: Option<f64>,
    /// ... and by more than this many kbit/s [default: 1000].
    #[arg(long, env = "RAFTCAST_REBALANCE_SLACK_KBPS")]
    pub(crate) rebalance_slack_kbps: Option<u64>,
    /// How long an origin must stay hot before one of its streams moves, and the least
    /// time between two moves, with a unit (`ms`, `s`, `m`, `h`), from 1s to 1h
    /// [default: 10s].
    #[arg(long, env = "RAFTCAST_REBALANCE_AFTER")]
    pub(crate) rebalance_after: Option<String>,
}

/// Validated origin configuration.
#[derive(Debug, Clone)]
pub(crate) struct OriginConfig {
    pub(crate) id: NodeId,
    /// The cluster's mutual TLS between members (`--peer-tls-*`), if configured.
    pub(crate) peer_tls: Option<crate::tls::peer::PeerTlsPaths>,
    pub(crate) http: SocketAddr,
    pub(crate) media: SocketAddr,
    pub(crate) data_dir: PathBuf,
    /// The media library (`--media-dir`), if any.
    pub(crate) media_dir: Option<PathBuf>,
    pub(crate) secret: ClusterSecret,
    pub(crate) admin_token: Option<String>,
    pub(crate) raft: openraft::Config,
    pub(crate) request_deadline: Duration,
    /// How long an owned stream may have no publisher before its claim is released.
    pub(crate) orphan_grace: Duration,
    /// How long a temporary shared object may go unwatched before the leader removes it.
    pub(crate) temporary_grace: Duration,
    /// How long an origin may leave the leader's Raft RPCs unanswered before the leader
    /// moves its streams and stops placing new ones there.
    pub(crate) owner_dead_after: Duration,
    /// Caps on the HTTP listener and the media-link port.
    pub(crate) caps: OriginCaps,
    /// Byte budgets of the write path (see [`WriteLimits`]).
    pub(crate) limits: WriteLimits,
    /// Most bytes of log entries in one AppendEntries (also one snapshot chunk).
    pub(crate) max_append_bytes: usize,
    /// A snapshot is also taken after this many bytes of appended entries.
    pub(crate) snapshot_every_bytes: u64,
    /// sled's page cache, in bytes.
    pub(crate) store_cache_bytes: u64,
    /// What each owned stream's hub keeps for edges that start it late.
    pub(crate) hls_window: crate::media::segments::WindowLimits,
    /// Rebalancing by the leader (`--rebalance`), when on.
    pub(crate) rebalance: Option<RebalanceConfig>,
}

/// Caps on what one peer may hold of an origin's listeners (see [`crate::limits`]).
#[derive(Debug, Clone)]
pub(crate) struct OriginCaps {
    pub(crate) http_connections: usize,
    pub(crate) http_connections_per_address: usize,
    pub(crate) http_header_timeout: Duration,
    pub(crate) http_body_timeout: Duration,
    pub(crate) long_polls_per_address: usize,
    pub(crate) link_unauthenticated: usize,
    pub(crate) link_unauthenticated_per_address: usize,
    pub(crate) link_hello_timeout: Duration,
}

/// How much the write path may hold, in bytes and entries; beyond it writes are refused
/// (admission control) rather than queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WriteLimits {
    /// Most encoded request bytes in one log entry (or one forwarded batch).
    pub(crate) max_entry_bytes: usize,
    /// Most bytes of writes waiting on this origin.
    pub(crate) max_pending_bytes: usize,
    /// Most entries the leader holds appended but not applied.
    pub(crate) max_apply_lag: u64,
}

/// Default of `--temporary-grace`: how long a temporary object may go unwatched
/// everywhere before the leader removes it.
pub(crate) const DEFAULT_TEMPORARY_GRACE: Duration = Duration::from_secs(5);
/// Default of `--link-hello-timeout-ms`: an edge must have sent its whole `Hello`
/// within this long after connecting (one deadline, not one per read).
pub(crate) const DEFAULT_LINK_HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Default of `--max-entry-bytes`: four 64 KiB slot values.
pub(crate) const DEFAULT_MAX_ENTRY_BYTES: usize = 256 * 1024;
/// Default of `--max-append-bytes`.
pub(crate) const DEFAULT_MAX_APPEND_BYTES: usize = raftcast_storage::DEFAULT_MAX_APPEND_BYTES;
/// Default of `--max-pending-write-bytes`.
pub(crate) const DEFAULT_MAX_PENDING_WRITE_BYTES: usize = 16 * 1024 * 1024;
/// Default of `--max-apply-lag`.
pub(crate) const DEFAULT_MAX_APPLY_LAG: u64 = 256;
/// Default of `--snapshot-keep`. The log behind a snapshot is kept in sled and costs
/// memory: 1,000 entries of 256 KiB held an origin at ~260 MiB after a write flood (the
/// `overload` chaos schedule), 64 at ~60 MiB. A follower further behind gets the
/// snapshot, which is how Raft catches it up anyway.
pub(crate) const DEFAULT_SNAPSHOT_KEEP: u64 = 64;
/// Default of `--snapshot-every-bytes`.
pub(crate) const DEFAULT_SNAPSHOT_EVERY_BYTES: u64 = 16 * 1024 * 1024;
/// Default of `--store-cache-bytes`.
pub(crate) const DEFAULT_STORE_CACHE_BYTES: u64 = 8 * 1024 * 1024;
/// Default of `--snapshot-timeout-ms`.
pub(crate) const DEFAULT_SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(10);

impl Default for WriteLimits {
    fn default() -> Self {
        WriteLimits {
            max_entry_bytes: DEFAULT_MAX_ENTRY_BYTES,
            max_pending_bytes: DEFAULT_MAX_PENDING_WRITE_BYTES,
            max_apply_lag: DEFAULT_MAX_APPLY_LAG,
        }
    }
}

/// Default of `--orphan-grace`.
pub(crate) const DEFAULT_ORPHAN_GRACE: Duration = Duration::from_secs(10);

/// Default of `--owner-dead-after-ms`: twenty heartbeats. Well above a GC-like pause or
/// a busy machine's scheduling hiccup (no flapping), and short enough that players
/// stall for about a second when an origin dies.
pub(crate) const DEFAULT_OWNER_DEAD_AFTER: Duration = Duration::from_millis(1_000);

/// Parses a duration such as `500ms`, `10s`, `2m`, `1h` or `10` (seconds).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let bad = || format!("{text:?} is not a duration (examples: 500ms, 10s, 2m, 1h)");
    let n: u64 = number.parse().map_err(|_| bad())?;
    let ms = match unit.trim() {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => return Err(bad()),
    };
    ms.map(Duration::from_millis).ok_or_else(bad)
}

/// The byte budgets must fit each other: an AppendEntries holds at least one full log
/// entry, a node may hold at least one full entry of writes, and one AppendEntries or
/// snapshot chunk fits a Raft RPC body with room to spare.
fn validate_budgets(limits: &WriteLimits, max_append_bytes: usize) -> Result<(), String> {
    const KIB: usize = 1024;
    if limits.max_entry_bytes < 64 * KIB {
        return Err(format!("--max-entry-bytes ({}) must be at least 65536 (one slot value)", limits.max_entry_bytes));
    }
    if max_append_bytes < limits.max_entry_bytes {
        return Err(format!(
            "--max-append-bytes ({max_append_bytes}) must be at least --max-entry-bytes ({}): one AppendEntries \
             carries at least one full log entry",
            limits.max_entry_bytes
        ));
    }
    let rpc_limit = raftcast_raft::rpc::MAX_RPC_BODY / 4;
    if max_append_bytes > rpc_limit {
        return Err(format!("--max-append-bytes ({max_append_bytes}) must be at most {rpc_limit}"));
    }
    if limits.max_pending_bytes < limits.max_entry_bytes {
        return Err(format!(
            "--max-pending-write-bytes ({}) must be at least --max-entry-bytes ({})",
            limits.max_pending_bytes, limits.max_entry_bytes
        ));
    }
    if limits.max_apply_lag < 2 {
        return Err("--max-apply-lag must be at least 2 (two batches are proposed at once)".into());
    }
    Ok(())
}

/// `--rebalance*` validated: `None` when rebalancing is off. The other flags are
/// checked even then, so a typo shows before it is switched on.
fn rebalance_config(
    on: Option<bool>,
    ratio: Option<f64>,
    slack_kbps: Option<u64>,
    after: Option<String>,
) -> Result<Option<RebalanceConfig>, String> {
    let defaults = RebalanceConfig::default();
    let ratio = ratio.unwrap_or(defaults.ratio);
    if !(1.1..=10.0).contains(&ratio) {
        return Err(format!("--rebalance-ratio must be between 1.1 and 10, not {ratio}"));
    }
    let after = match after.as_deref() {
        Some(text) => parse_duration(text).map_err(|e| format!("--rebalance-after: {e}"))?,
        None => defaults.after,
    };
    if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&after) {
        return Err(format!("--rebalance-after must be between 1s and 1h, not {after:?}"));
    }
    let config = RebalanceConfig { ratio, slack_kbps: slack_kbps.unwrap_or(defaults.slack_kbps), after };
    Ok(on.unwrap_or(false).then_some(config))
}

fn merge(cli: OriginArgs, file: OriginArgs) -> OriginArgs {
    OriginArgs {
        config: cli.config,
        id: cli.id.or(file.id),
        http: cli.http.or(file.http),
        media: cli.media.or(file.media),
        data_dir: cli.data_dir.or(file.data_dir),
        media_dir: cli.media_dir.or(file.media_dir),
        cluster_secret_file: cli.cluster_secret_file.or(file.cluster_secret_file),
        admin_token_file: cli.admin_token_file.or(file.admin_token_file),
        peer_tls_ca: cli.peer_tls_ca.or(file.peer_tls_ca),
        peer_tls_cert: cli.peer_tls_cert.or(file.peer_tls_cert),
        peer_tls_key: cli.peer_tls_key.or(file.peer_tls_key),
        heartbeat_ms: cli.heartbeat_ms.or(file.heartbeat_ms),
        election_min_ms: cli.election_min_ms.or(file.election_min_ms),
        election_max_ms: cli.election_max_ms.or(file.election_max_ms),
        snapshot_every: cli.snapshot_every.or(file.snapshot_every),
        snapshot_keep: cli.snapshot_keep.or(file.snapshot_keep),
        request_deadline_ms: cli.request_deadline_ms.or(file.request_deadline_ms),
        orphan_grace: cli.orphan_grace.or(file.orphan_grace),
        owner_dead_after_ms: cli.owner_dead_after_ms.or(file.owner_dead_after_ms),
        temporary_grace: cli.temporary_grace.or(file.temporary_grace),
        http_max_connections: cli.http_max_connections.or(file.http_max_connections),
        http_max_connections_per_address: cli
            .http_max_connections_per_address
            .or(file.http_max_connections_per_address),
        http_header_timeout_ms: cli.http_header_timeout_ms.or(file.http_header_timeout_ms),
        http_body_timeout_ms: cli.http_body_timeout_ms.or(file.http_body_timeout_ms),
        max_long_polls_per_address: cli.max_long_polls_per_address.or(file.max_long_polls_per_address),
        link_max_unauthenticated: cli.link_max_unauthenticated.or(file.link_max_unauthenticated),
        link_max_unauthenticated_per_address: cli
            .link_max_unauthenticated_per_address
            .or(file.link_max_unauthenticated_per_address),
        link_hello_timeout_ms: cli.link_hello_timeout_ms.or(file.link_hello_timeout_ms),
        max_entry_bytes: cli.max_entry_bytes.or(file.max_entry_bytes),
        max_append_bytes: cli.max_append_bytes.or(file.max_append_bytes),
        max_pending_write_bytes: cli.max_pending_write_bytes.or(file.max_pending_write_bytes),
        hls_window_segments: cli.hls_window_segments.or(file.hls_window_segments),
        hls_window_bytes: cli.hls_window_bytes.or(file.hls_window_bytes),
        rebalance: cli.rebalance.or(file.rebalance),
        rebalance_ratio: cli.rebalance_ratio.or(file.rebalance_ratio),
        rebalance_slack_kbps: cli.rebalance_slack_kbps.or(file.rebalance_slack_kbps),
        rebalance_after: cli.rebalance_after.or(file.rebalance_after),
        max_apply_lag: cli.max_apply_lag.or(file.max_apply_lag),
        snapshot_timeout_ms: cli.snapshot_timeout_ms.or(file.snapshot_timeout_ms),
        snapshot_every_bytes: cli.snapshot_every_bytes.or(file.snapshot_every_bytes),
        store_cache_bytes: cli.store_cache_bytes.or(file.store_cache_bytes),
    }
}

fn read_file(path: &Path) -> Result<OriginArgs, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

impl OriginConfig {
    /// Validates the raw settings. `env` looks up environment variables (injectable
    /// for tests).
    pub(crate) fn from_args(args: OriginArgs, env: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => OriginArgs::default(),
        };
        let a = merge(args, file);
        let id = a.id.ok_or("--id is required")?;
        if id == 0 {
            return Err("--id must be at least 1".into());
        }
        let port = |base: u16| {
            u16::try_from(id).ok().and_then(|i| base.checked_add(i)).ok_or(format!("no default port for id {id}"))
        };
        let http = match a.http {
            Some(addr) => addr,
            None => SocketAddr::from(([127, 0, 0, 1], port(8100)?)),
        };
        let media = match a.media {
            Some(addr) => addr,
            None => SocketAddr::from(([127, 0, 0, 1], port(9100)?)),
        };
        let data_dir = a.data_dir.unwrap_or_else(|| PathBuf::from(format!("data/origin-{id}")));
        let secret = crate::secrets::load(env("RAFTCAST_CLUSTER_SECRET").as_deref(), a.cluster_secret_file.as_deref())?
            .ok_or("a cluster secret is required: set RAFTCAST_CLUSTER_SECRET or --cluster-secret-file")?;
        let secret = ClusterSecret::new(&secret)?;
        let admin_token = crate::secrets::load(env("RAFTCAST_ADMIN_TOKEN").as_deref(), a.admin_token_file.as_deref())?;
        if admin_token.is_none() && !http.ip().is_loopback() {
            return Err(format!(
                "refusing to serve the admin API on non-loopback {http} without an admin token \
                 (set RAFTCAST_ADMIN_TOKEN or --admin-token-file)"
            ));
        }
        if let Some(token) = &admin_token {
            if token.len() < 16 {
                return Err("the admin token must be at least 16 characters".into());
            }
        }
        let heartbeat = a.heartbeat_ms.unwrap_or(50);
        let limits = WriteLimits {
            max_entry_bytes: a.max_entry_bytes.unwrap_or(DEFAULT_MAX_ENTRY_BYTES),
            max_pending_bytes: a.max_pending_write_bytes.unwrap_or(DEFAULT_MAX_PENDING_WRITE_BYTES),
            max_apply_lag: a.max_apply_lag.unwrap_or(DEFAULT_MAX_APPLY_LAG),
        };
        let max_append_bytes = a.max_append_bytes.unwrap_or(DEFAULT_MAX_APPEND_BYTES);
        validate_budgets(&limits, max_append_bytes)?;
        let snapshot_every_bytes = a.snapshot_every_bytes.unwrap_or(DEFAULT_SNAPSHOT_EVERY_BYTES);
        if snapshot_every_bytes < max_append_bytes as u64 {
            return Err(format!(
                "--snapshot-every-bytes ({snapshot_every_bytes}) must be at least --max-append-bytes ({max_append_bytes})"
            ));
        }
        let snapshot_timeout = a.snapshot_timeout_ms.map_or(DEFAULT_SNAPSHOT_TIMEOUT, Duration::from_millis);
        if snapshot_timeout < Duration::from_millis(4 * heartbeat) {
            return Err(format!(
                "--snapshot-timeout-ms ({}) must be at least four heartbeats ({} ms)",
                snapshot_timeout.as_millis(),
                4 * heartbeat
            ));
        }
        let raft = openraft::Config {
            snapshot_max_chunk_size: max_append_bytes as u64,
            install_snapshot_timeout: snapshot_timeout.as_millis() as u64,
            cluster_name: "raftcast".into(),
            heartbeat_interval: heartbeat,
            election_timeout_min: a.election_min_ms.unwrap_or(200),
            election_timeout_max: a.election_max_ms.unwrap_or(350),
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(a.snapshot_every.unwrap_or(10_000)),
            max_in_snapshot_log_to_keep: a.snapshot_keep.unwrap_or(DEFAULT_SNAPSHOT_KEEP),
            ..Default::default()
        };
        if raft.election_timeout_min <= 2 * heartbeat {
            return Err(format!(
                "the election timeout ({} ms) must exceed two heartbeats ({heartbeat} ms each)",
                raft.election_timeout_min
            ));
        }
        let raft = raft.validate().map_err(|e| format!("invalid Raft timing: {e}"))?;
        let request_deadline = Duration::from_millis(a.request_deadline_ms.unwrap_or(5_000));
        let orphan_grace = match a.orphan_grace.as_deref() {
            Some(text) => parse_duration(text).map_err(|e| format!("--orphan-grace: {e}"))?,
            None => DEFAULT_ORPHAN_GRACE,
        };
        if !(Duration::from_millis(100)..=Duration::from_secs(24 * 3600)).contains(&orphan_grace) {
            return Err(format!("--orphan-grace must be between 100ms and 24h, not {orphan_grace:?}"));
        }
        let owner_dead_after = a.owner_dead_after_ms.map_or(DEFAULT_OWNER_DEAD_AFTER, Duration::from_millis);
        let shortest = Duration::from_millis(3 * heartbeat);
        if owner_dead_after < shortest || owner_dead_after > Duration::from_secs(600) {
            return Err(format!(
                "--owner-dead-after-ms must be between three heartbeats ({} ms) and 600000, not {}",
                shortest.as_millis(),
                owner_dead_after.as_millis()
            ));
        }
        let temporary_grace = match a.temporary_grace.as_deref() {
            Some(text) => parse_duration(text).map_err(|e| format!("--temporary-grace: {e}"))?,
            None => DEFAULT_TEMPORARY_GRACE,
        };
        if !(Duration::from_secs(1)..=Duration::from_secs(24 * 3600)).contains(&temporary_grace) {
            return Err(format!("--temporary-grace must be between 1s and 24h, not {temporary_grace:?}"));
        }
        let ms = |v: Option<u64>, default: u64| Duration::from_millis(v.unwrap_or(default));
        let caps = OriginCaps {
            http_connections: a.http_max_connections.unwrap_or(8192),
            http_connections_per_address: a.http_max_connections_per_address.unwrap_or(2048),
            http_header_timeout: ms(a.http_header_timeout_ms, 10_000),
            http_body_timeout: ms(a.http_body_timeout_ms, 30_000),
            long_polls_per_address: a.max_long_polls_per_address.unwrap_or(1024),
            link_unauthenticated: a.link_max_unauthenticated.unwrap_or(64),
            link_unauthenticated_per_address: a.link_max_unauthenticated_per_address.unwrap_or(8),
            link_hello_timeout: a.link_hello_timeout_ms.map_or(DEFAULT_LINK_HELLO_TIMEOUT, Duration::from_millis),
        };
        for (flag, n) in [
            ("--http-max-connections", caps.http_connections),
            ("--http-max-connections-per-address", caps.http_connections_per_address),
            ("--max-long-polls-per-address", caps.long_polls_per_address),
            ("--link-max-unauthenticated", caps.link_unauthenticated),
            ("--link-max-unauthenticated-per-address", caps.link_unauthenticated_per_address),
        ] {
            if n == 0 {
                return Err(format!("{flag} must be at least 1"));
            }
        }
        for (flag, t) in [
            ("--http-header-timeout-ms", caps.http_header_timeout),
            ("--http-body-timeout-ms", caps.http_body_timeout),
            ("--link-hello-timeout-ms", caps.link_hello_timeout),
        ] {
            if t < Duration::from_millis(100) {
                return Err(format!("{flag} must be at least 100"));
            }
        }
        let hls_window = crate::edge::config::hls_window(a.hls_window_segments, a.hls_window_bytes)?;
        let rebalance = rebalance_config(a.rebalance, a.rebalance_ratio, a.rebalance_slack_kbps, a.rebalance_after)?;
        let peer_tls = crate::tls::peer::PeerTlsPaths::from_flags(a.peer_tls_ca, a.peer_tls_cert, a.peer_tls_key)?;
        Ok(OriginConfig {
            peer_tls,
            hls_window,
            id,
            caps,
            limits,
            max_append_bytes,
            snapshot_every_bytes,
            store_cache_bytes: a.store_cache_bytes.unwrap_or(DEFAULT_STORE_CACHE_BYTES),
            temporary_grace,
            http,
            media,
            data_dir,
            media_dir: a.media_dir,
            secret,
            admin_token,
            raft,
            request_deadline,
            orphan_grace,
            owner_dead_after,
            rebalance,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(secret: &'static str) -> impl Fn(&str) -> Option<String> {
        move |k| (k == "RAFTCAST_CLUSTER_SECRET").then(|| secret.to_owned())
    }

    #[test]
    fn defaults_follow_the_node_id() {
        let args = OriginArgs { id: Some(2), ..Default::default() };
        let c = OriginConfig::from_args(args, env("0123456789abcdef0123")).unwrap();
        assert_eq!(c.http.to_string(), "127.0.0.1:8102");
        assert_eq!(c.media.to_string(), "127.0.0.1:9102");
        assert_eq!(c.data_dir, PathBuf::from("data/origin-2"));
        assert_eq!(c.media_dir, None, "no media library unless asked");
    }

    #[test]
    fn listener_caps_have_defaults_and_refuse_zero() {
        let args = OriginArgs { id: Some(1), ..Default::default() };
        let c = OriginConfig::from_args(args.clone(), env("0123456789abcdef0123")).unwrap();
        assert_eq!((c.caps.http_connections, c.caps.link_unauthenticated_per_address), (8192, 8));
        assert_eq!(c.caps.link_hello_timeout, Duration::from_secs(5));
        let zero = OriginArgs { link_max_unauthenticated: Some(0), ..args.clone() };
        let err = OriginConfig::from_args(zero, env("0123456789abcdef0123")).unwrap_err();
        assert!(err.contains("--link-max-unauthenticated"), "{err}");
        let hasty = OriginArgs { http_header_timeout_ms: Some(5), ..args };
        let err = OriginConfig::from_args(hasty, env("0123456789abcdef0123")).unwrap_err();
        assert!(err.contains("--http-header-timeout-ms"), "{err}");
    }

    #[test]
    fn a_public_admin_api_needs_a_token() {
        let args = OriginArgs { id: Some(1), http: Some("0.0.0.0:8101".parse().unwrap()), ..Default::default() };
        let err = OriginConfig::from_args(args, env("0123456789abcdef0123")).unwrap_err();
        assert!(err.contains("without an admin token"), "{err}");
    }

    #[test]
    fn a_secret_is_required_and_must_be_long() {
        let args = OriginArgs { id: Some(1), ..Default::default() };
        assert!(OriginConfig::from_args(args.clone(), |_| None).unwrap_err().contains("cluster secret"));
        assert!(OriginConfig::from_args(args, env("short")).unwrap_err().contains("at least"));
    }

    #[test]
    fn the_orphan_grace_takes_units_and_is_bounded() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration(" 2m "), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "s", "1.5s", "-1s", "10d", "ten", "99999999999999999999m", "18446744073709551615m"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} parsed");
        }
        let config = |grace: Option<&str>| {
            let args = OriginArgs { id: Some(1), orphan_grace: grace.map(String::from), ..Default::default() };
            OriginConfig::from_args(args, env("0123456789abcdef0123"))
        };
        assert_eq!(config(None).unwrap().orphan_grace, DEFAULT_ORPHAN_GRACE);
        assert_eq!(config(Some("1s")).unwrap().orphan_grace, Duration::from_secs(1));
        assert!(config(Some("10ms")).unwrap_err().contains("between 100ms and 24h"));
        assert!(config(Some("25h")).unwrap_err().contains("between 100ms and 24h"));
        assert!(config(Some("2 days")).unwrap_err().contains("--orphan-grace"));
    }

    #[test]
    fn the_owner_dead_bound_defaults_to_a_second_and_exceeds_heartbeats() {
        let config = |ms: Option<u64>| {
            let args = OriginArgs { id: Some(1), owner_dead_after_ms: ms, ..Default::default() };
            OriginConfig::from_args(args, env("0123456789abcdef0123"))
        };
        assert_eq!(config(None).unwrap().owner_dead_after, Duration::from_millis(1000));
        assert_eq!(config(Some(150)).unwrap().owner_dead_after, Duration::from_millis(150));
        assert!(config(Some(149)).unwrap_err().contains("three heartbeats (150 ms)"));
        assert!(config(Some(600_001)).unwrap_err().contains("--owner-dead-after-ms"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("origin.toml");
        std::fs::write(&path, "id = 1\nowner-dead-after-ms = 2500\n").unwrap();
        let args = OriginArgs { config: Some(path), ..Default::default() };
        let c = OriginConfig::from_args(args, env("0123456789abcdef0123")).unwrap();
        assert_eq!(c.owner_dead_after, Duration::from_millis(2500));
    }

    #[test]
    fn write_budgets_have_defaults_and_must_fit_each_other() {
        let config = |f: fn(&mut OriginArgs)| {
            let mut args = OriginArgs { id: Some(1), ..Default::default() };
            f(&mut args);
            OriginConfig::from_args(args, env("0123456789abcdef0123"))
        };
        let c = config(|_| {}).unwrap();
        assert_eq!(c.limits, WriteLimits::default());
        assert_eq!(c.max_append_bytes, DEFAULT_MAX_APPEND_BYTES);
        assert_eq!(c.raft.snapshot_max_chunk_size, DEFAULT_MAX_APPEND_BYTES as u64);
        assert_eq!(c.raft.install_snapshot_timeout, 10_000);
        let err = config(|a| a.max_append_bytes = Some(100_000)).unwrap_err();
        assert!(err.contains("at least --max-entry-bytes"), "{err}");
        let err = config(|a| a.max_entry_bytes = Some(1000)).unwrap_err();
        assert!(err.contains("one slot value"), "{err}");
        let err = config(|a| a.max_append_bytes = Some(64 * 1024 * 1024)).unwrap_err();
        assert!(err.contains("at most"), "{err}");
        let err = config(|a| a.max_pending_write_bytes = Some(100_000)).unwrap_err();
        assert!(err.contains("--max-pending-write-bytes"), "{err}");
        let err = config(|a| a.snapshot_timeout_ms = Some(100)).unwrap_err();
        assert!(err.contains("four heartbeats"), "{err}");
        assert!(config(|a| a.max_apply_lag = Some(1)).is_err());
        assert_eq!(c.snapshot_every_bytes, DEFAULT_SNAPSHOT_EVERY_BYTES);
        let err = config(|a| a.snapshot_every_bytes = Some(1000)).unwrap_err();
        assert!(err.contains("--snapshot-every-bytes"), "{err}");
    }

    #[test]
    fn flags_override_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("origin.toml");
        std::fs::write(&path, "id = 3\nheartbeat-ms = 50\nelection-min-ms = 300\norphan-grace = \"30s\"\n").unwrap();
        let args = OriginArgs { config: Some(path.clone()), heartbeat_ms: Some(60), ..Default::default() };
        let c = OriginConfig::from_args(args, env("0123456789abcdef0123")).unwrap();
        assert_eq!((c.id, c.raft.heartbeat_interval, c.raft.election_timeout_min), (3, 60, 300));
        assert_eq!(c.orphan_grace, Duration::from_secs(30));
        std::fs::write(&path, "id = 3\nmedia-dir = \"/srv/media\"\n").unwrap();
        let args = OriginArgs { config: Some(path.clone()), ..Default::default() };
        let c = OriginConfig::from_args(args, env("0123456789abcdef0123")).unwrap();
        assert_eq!(c.media_dir, Some(PathBuf::from("/srv/media")), "the media library from the file");
        std::fs::write(&path, "id = 3\nbogus = 1\n").unwrap();
        let args = OriginArgs { config: Some(path), ..Default::default() };
        assert!(OriginConfig::from_args(args, env("0123456789abcdef0123")).is_err());
    }

    #[test]
    fn rebalancing_is_off_by_default_and_its_flags_are_checked() {
        let config =
            |args: OriginArgs| OriginConfig::from_args(OriginArgs { id: Some(1), ..args }, env("0123456789abcdef0123"));
        assert_eq!(config(OriginArgs::default()).unwrap().rebalance, None);
        let on = config(OriginArgs { rebalance: Some(true), ..Default::default() }).unwrap();
        assert_eq!(on.rebalance, Some(RebalanceConfig::default()));
        let tuned = OriginArgs {
            rebalance: Some(true),
            rebalance_ratio: Some(2.0),
            rebalance_slack_kbps: Some(500),
            rebalance_after: Some("30s".into()),
            ..Default::default()
        };
        let expected = RebalanceConfig { ratio: 2.0, slack_kbps: 500, after: Duration::from_secs(30) };
        assert_eq!(config(tuned).unwrap().rebalance, Some(expected));
        assert!(config(OriginArgs { rebalance_ratio: Some(1.0), ..Default::default() }).is_err());
        assert!(config(OriginArgs { rebalance_after: Some("100ms".into()), ..Default::default() }).is_err());
    }
}
