//! Edge settings: raw command-line/env/file input ([`EdgeArgs`]) validated once into an
//! immutable [`EdgeConfig`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use raftcast_raft::rpc::ClusterSecret;
use serde::Deserialize;

use super::dvr::{DvrSettings, DEFAULT_DVR_CACHE_BYTES, MAX_DVR_SECS};
use super::hls::HlsConfig;
use crate::hls::stamper::{StamperConfig, DEFAULT_PART_MS, DEFAULT_SEGMENT_MS};
use crate::hls::window::{WindowLimits as ServeWindow, WINDOW_MAX_BYTES, WINDOW_SEGMENTS};
use crate::link::client::LinkTiming;
use crate::media::queue::QueueLimits;
use crate::media::segments::WindowLimits;
use crate::tls::CertPaths;

/// Command-line flags of `raftcast edge`. Every flag has an environment twin, and a TOML
/// file (`--config`) may carry the same settings (kebab-case keys); flags and
/// environment win over the file.
#[derive(Debug, Default, Clone, clap::Args, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct EdgeArgs {
    /// TOML file with any of these settings.
    #[arg(long, env = "RAFTCAST_EDGE_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Edge name, unique in the cluster (claims record which edge a publisher is on).
    #[arg(long, env = "RAFTCAST_EDGE_ID")]
    pub id: Option<String>,
    /// RTMP listener [default: 127.0.0.1:1935].
    #[arg(long, env = "RAFTCAST_EDGE_RTMP")]
    pub rtmp: Option<SocketAddr>,
    /// HTTP listener: HTTP-FLV, /status, /metrics, /health [default: 127.0.0.1:8081].
    #[arg(long, env = "RAFTCAST_EDGE_HTTP")]
    pub http: Option<SocketAddr>,
    /// HAProxy agent-check listener: answers each connection with this edge's weight
    /// (`ready 63%`, from its CPU, egress and connections) or `drain` [default: none].
    #[arg(long, env = "RAFTCAST_EDGE_AGENT")]
    pub agent: Option<SocketAddr>,
    /// Egress the agent counts as a full edge, in Mbit/s [default: 1000].
    #[arg(long, env = "RAFTCAST_EDGE_AGENT_EGRESS_MBPS")]
    pub agent_egress_mbps: Option<u64>,
    /// RTMPS listener (RTMP over TLS; needs --tls-cert and --tls-key) [default: none].
    #[arg(long, env = "RAFTCAST_EDGE_RTMPS")]
    pub rtmps: Option<SocketAddr>,
    /// HTTPS listener, HTTP/2 and HTTP/1.1 by ALPN, serving what the HTTP listener
    /// serves (needs --tls-cert and --tls-key) [default: none].
    #[arg(long, env = "RAFTCAST_EDGE_HTTPS")]
    pub https: Option<SocketAddr>,
    /// PEM certificate chain (leaf first) for RTMPS and HTTPS; reloaded on SIGHUP and
    /// when it changes on disk [default: none].
    #[arg(long, env = "RAFTCAST_EDGE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of --tls-cert [default: none].
    #[arg(long, env = "RAFTCAST_EDGE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Admin/RPC HTTP addresses of the origins, comma-separated (any subset works; the
    /// edge finds the leader and the owners' media links through them).
    #[arg(long, env = "RAFTCAST_EDGE_ORIGINS", value_delimiter = ',')]
    pub origins: Option<Vec<SocketAddr>>,
    /// File holding the cluster secret (or set RAFTCAST_CLUSTER_SECRET).
    #[arg(long, env = "RAFTCAST_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// The cluster CA (PEM) for mutual TLS between members: with it (and --peer-tls-cert,
    /// --peer-tls-key) every connection to and from other members is TLS and accepts
    /// only certificates this CA signed; every member must have it [default: none].
    #[arg(long, env = "RAFTCAST_PEER_TLS_CA")]
    pub peer_tls_ca: Option<PathBuf>,
    /// This node's certificate (PEM chain, signed by --peer-tls-ca, naming the addresses
    /// peers dial as IP subject alternative names; reloaded on SIGHUP or change).
    #[arg(long, env = "RAFTCAST_PEER_TLS_CERT")]
    pub peer_tls_cert: Option<PathBuf>,
    /// The private key of --peer-tls-cert (PEM).
    #[arg(long, env = "RAFTCAST_PEER_TLS_KEY")]
    pub peer_tls_key: Option<PathBuf>,
    /// File holding a token for `/status` and `/metrics` (or set RAFTCAST_EDGE_OPS_TOKEN):
    /// clients other than loopback ones need `Authorization: Bearer <token>` for them.
    /// Without one, only loopback clients (the real client behind a trusted balancer)
    /// get them [default: none].
    #[arg(long, env = "RAFTCAST_EDGE_OPS_TOKEN_FILE")]
    pub ops_token_file: Option<PathBuf>,
    /// Most RTMP connections at once; more are closed at accept [default: 10000].
    #[arg(long, env = "RAFTCAST_EDGE_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// The RTMP handshake must finish within this many ms [default: 5000].
    #[arg(long, env = "RAFTCAST_EDGE_HANDSHAKE_TIMEOUT_MS")]
    pub handshake_timeout_ms: Option<u64>,
    /// A connection that sends nothing for this many ms, and plays nothing, is closed
    /// [default: 30000].
    #[arg(long, env = "RAFTCAST_EDGE_IDLE_TIMEOUT_MS")]
    pub idle_timeout_ms: Option<u64>,
    /// A player whose socket accepts no bytes for this many ms is closed [default: 30000].
    #[arg(long, env = "RAFTCAST_EDGE_WRITE_TIMEOUT_MS")]
    pub write_timeout_ms: Option<u64>,
    /// How long a play waits for a stream that is not (yet) published before it answers
    /// `NetStream.Play.StreamNotFound` (HTTP-FLV: 404), in ms [default: 5000].
    #[arg(long, env = "RAFTCAST_EDGE_PLAY_WAIT_MS")]
    pub play_wait_ms: Option<u64>,
    /// Frames a player may fall behind before it skips to the next keyframe [default: 512].
    #[arg(long, env = "RAFTCAST_EDGE_PLAYER_QUEUE_FRAMES")]
    pub player_queue_frames: Option<usize>,
    /// Bytes a player may fall behind before it skips to the next keyframe [default: 4 MiB].
    #[arg(long, env = "RAFTCAST_EDGE_PLAYER_QUEUE_BYTES")]
    pub player_queue_bytes: Option<usize>,
    /// A fixed merge window for RTMP players instead of the adaptive default: media
    /// reaching an idle socket is gathered for this many ms and written in one go; 0
    /// writes every frame as soon as it arrives. By default (unset) a player's video,
    /// data and control messages go out at once; so does its audio while the edge is
    /// lightly loaded, and from `--audio-hold-above-cpu` (30 % of its cores) audio
    /// waits for the next video frame (at most 50 ms), so one write carries a video
    /// frame and the audio since the last one; once the edge uses over half its cores,
    /// all media is held for a window that grows with the load (up to 100 ms at 80 %).
    /// A play's first frames never wait.
    #[arg(long, env = "RAFTCAST_EDGE_WRITE_MERGE_MS")]
    pub write_merge_ms: Option<u64>,
    /// The adaptive merge's longest wait of a player's audio for the next video frame,
    /// in ms [default: 50]; 0 holds no audio (every frame at once while the edge is
    /// lightly loaded).
    #[arg(long, env = "RAFTCAST_EDGE_AUDIO_HOLD_MS")]
    pub audio_hold_ms: Option<u64>,
    /// The adaptive merge holds audio only while the edge's CPU (smoothed, in percent of
    /// its usable cores) has reached this share, and lets it go again below half of it
    /// [default: 30]: a lightly loaded edge writes audio as it comes, at nginx-rtmp's
    /// latency, and a busy one saves a write per audio frame. 0 always holds.
    #[arg(long, env = "RAFTCAST_EDGE_AUDIO_HOLD_ABOVE_CPU")]
    pub audio_hold_above_cpu: Option<u32>,
    /// `TCP_NODELAY` on RTMP client sockets [default: true]. Off, the kernel's Nagle
    /// algorithm holds a small write while earlier bytes are unacknowledged (what
    /// nginx-rtmp does); kept as a switch for A/B runs (`scripts/bench-ab.sh`).
    #[arg(long, env = "RAFTCAST_EDGE_TCP_NODELAY")]
    pub tcp_nodelay: Option<bool>,
    /// Live media for RTMP players over plain TCP is written by each stream's few
    /// fan-out tasks while a player's connection has nothing of its own to send,
    /// instead of waking every player's task for every frame [default: true]. Off:
    /// every play is written by its connection's task (a switch for A/B runs).
    #[arg(long, env = "RAFTCAST_EDGE_DIRECT_WRITES")]
    pub direct_writes: Option<bool>,
    /// Outgoing RTMP chunk size [default: 4096].
    #[arg(long, env = "RAFTCAST_EDGE_CHUNK_SIZE")]
    pub chunk_size: Option<u32>,
    /// Link heartbeat period in ms [default: 100].
    #[arg(long, env = "RAFTCAST_EDGE_LINK_PING_MS")]
    pub link_ping_ms: Option<u64>,
    /// A link silent for this many ms is dead [default: 500].
    #[arg(long, env = "RAFTCAST_EDGE_LINK_DEAD_MS")]
    pub link_dead_ms: Option<u64>,
    /// How long control requests (claims, lookups) may take in all, in ms [default: 5000].
    #[arg(long, env = "RAFTCAST_EDGE_REQUEST_DEADLINE_MS")]
    pub request_deadline_ms: Option<u64>,
    /// How long shutdown drains players before closing them, in ms [default: 2000].
    #[arg(long, env = "RAFTCAST_EDGE_DRAIN_MS")]
    pub drain_ms: Option<u64>,
    /// Once draining (SIGUSR1 or `POST /drain`), stop at the latest after this long even
    /// if clients remain, in ms [default: 300000].
    #[arg(long, env = "RAFTCAST_EDGE_DRAIN_DEADLINE_MS")]
    pub drain_deadline_ms: Option<u64>,
    /// RTMP connections one address (an IPv4 address or an IPv6 /64) may hold [default: 128]
    #[arg(long, env = "RAFTCAST_EDGE_MAX_CONNECTIONS_PER_ADDRESS")]
    pub max_connections_per_address: Option<usize>,
    /// RTMP handshakes in progress at once; more connections are closed at accept [default: 1000]
    #[arg(long, env = "RAFTCAST_EDGE_MAX_HANDSHAKES")]
    pub max_handshakes: Option<usize>,
    /// RTMP handshakes in progress from one address [default: 128]
    #[arg(long, env = "RAFTCAST_EDGE_MAX_HANDSHAKES_PER_ADDRESS")]
    pub max_handshakes_per_address: Option<usize>,
    /// RTMP sessions past the handshake that have not yet published, played or used a shared object [default: 2000]
    #[arg(long, env = "RAFTCAST_EDGE_MAX_UNSTARTED")]
    pub max_unstarted: Option<usize>,
    /// Such not-yet-started sessions from one address [default: 128]
    #[arg(long, env = "RAFTCAST_EDGE_MAX_UNSTARTED_PER_ADDRESS")]
    pub max_unstarted_per_address: Option<usize>,
    /// An RTMP session that has not published, played or used a shared object this many ms after its handshake is closed [default: 10000]
    #[arg(long, env = "RAFTCAST_EDGE_START_TIMEOUT_MS")]
    pub start_timeout_ms: Option<u64>,
    /// Publishes (RTMP streams being published, and publishes waiting for their claim) from one address [default: 16]
    #[arg(long, env = "RAFTCAST_EDGE_MAX_PUBLISHES_PER_ADDRESS")]
    pub max_publishes_per_address: Option<usize>,
    /// Bytes of partially received RTMP messages all connections together may hold; a connection that would take more is closed [default: 268435456 (256 MiB)]
    #[arg(long, env = "RAFTCAST_EDGE_MAX_PARTIAL_BYTES")]
    pub max_partial_bytes: Option<usize>,
    /// Bytes of partial RTMP messages one connection may hold before its `connect` [default: 65536]
    #[arg(long, env = "RAFTCAST_EDGE_MAX_PARTIAL_BYTES_BEFORE_CONNECT")]
    pub max_partial_bytes_before_connect: Option<usize>,
    /// Bytes of partial RTMP messages one connection may hold after `connect` [default: 33554432 (32 MiB)]
    #[arg(long, env = "RAFTCAST_EDGE_MAX_PARTIAL_BYTES_PER_CONNECTION")]
    pub max_partial_bytes_per_connection: Option<usize>,
    /// HTTP connections at once; more are closed at accept [default: 10000]
    #[arg(long, env = "RAFTCAST_EDGE_HTTP_MAX_CONNECTIONS")]
    pub http_max_connections: Option<usize>,
    /// HTTP connections from one address [default: 128]
    #[arg(long, env = "RAFTCAST_EDGE_HTTP_MAX_CONNECTIONS_PER_ADDRESS")]
    pub http_max_connections_per_address: Option<usize>,
    /// An HTTP connection waiting for a request, or for the rest of its head, longer than this is closed (this is also the keep-alive idle timeout) [default: 10000]
    #[arg(long, env = "RAFTCAST_EDGE_HTTP_HEADER_TIMEOUT_MS")]
    pub http_header_timeout_ms: Option<u64>,
    /// A request body must arrive whole within this many ms [default: 30000]
    #[arg(long, env = "RAFTCAST_EDGE_HTTP_BODY_TIMEOUT_MS")]
    pub http_body_timeout_ms: Option<u64>,
    /// Long-lived HTTP requests (HTTP-FLV plays, including those waiting for a missing stream, and shared-object SSE) from one address [default: 64]
    #[arg(long, env = "RAFTCAST_EDGE_MAX_LONG_REQUESTS_PER_ADDRESS")]
    pub max_long_requests_per_address: Option<usize>,
    /// RTMPT sessions open at once in all; more `POST /open` get 503. Each also counts
    /// as an RTMP connection [default: 1000]
    #[arg(long, env = "RAFTCAST_EDGE_MAX_RTMPT_SESSIONS")]
    pub max_rtmpt_sessions: Option<usize>,
    /// RTMPT sessions open at once from one address; more get 429 [default: 32]
    #[arg(long, env = "RAFTCAST_EDGE_MAX_RTMPT_SESSIONS_PER_ADDRESS")]
    pub max_rtmpt_sessions_per_address: Option<usize>,
    /// An RTMPT session that gets no request for this many ms is closed (and its RTMP
    /// connection with it) [default: 30000]
    #[arg(long, env = "RAFTCAST_EDGE_RTMPT_IDLE_TIMEOUT_MS")]
    pub rtmpt_idle_timeout_ms: Option<u64>,
    /// The HTTP addresses of every edge of the tier, comma-separated, this edge's own
    /// --http included, in the same order on every edge. With it an RTMPT session's
    /// requests may reach any of them (they are forwarded to the edge holding the
    /// session) and a session outlives the edge holding it (docs/rtmpt.md, "Sessions
    /// that survive their edge") [default: none: sessions live and die with their edge]
    #[arg(long, env = "RAFTCAST_EDGE_RTMPT_PEERS", value_delimiter = ',')]
    pub rtmpt_peers: Option<Vec<SocketAddr>>,
    /// An address refused more than this many connections in one second (RTMP or
    /// HTTP, by the caps above) is banned: the listener's socket filter drops its SYNs
    /// for --ban-seconds, doubling for each repeat within 10 minutes up to 300 s. 0
    /// never bans. Addresses of trusted load balancers are never banned [default: 200].
    #[arg(long, env = "RAFTCAST_EDGE_BAN_REFUSALS_PER_SECOND")]
    pub ban_refusals_per_second: Option<u32>,
    /// The first ban's length, in seconds [default: 10].
    #[arg(long, env = "RAFTCAST_EDGE_BAN_SECONDS")]
    pub ban_seconds: Option<u64>,
    /// A folder of static files served at `/webcast/` (e.g. examples/webcast, the
    /// interactive-webcast page) [default: none].
    #[arg(long, env = "RAFTCAST_EDGE_WWW")]
    pub www: Option<std::path::PathBuf>,
    /// HLS segment target of streams published through this edge, in ms: a segment
    /// opens on a keyframe once the open one lasted this long [default: 2000].
    #[arg(long, env = "RAFTCAST_EDGE_HLS_SEGMENT_MS")]
    pub hls_segment_ms: Option<u32>,
    /// LL-HLS part target of streams published through this edge, in ms [default: 250].
    #[arg(long, env = "RAFTCAST_EDGE_HLS_PART_MS")]
    pub hls_part_ms: Option<u32>,
    /// Complete HLS segments each stream's window keeps (the open one comes on top)
    /// [default: 6].
    #[arg(long, env = "RAFTCAST_EDGE_HLS_WINDOW_SEGMENTS")]
    pub hls_window_segments: Option<usize>,
    /// Bytes one stream's HLS window may hold; the oldest segments go first
    /// [default: 50331648 (48 MiB)].
    #[arg(long, env = "RAFTCAST_EDGE_HLS_WINDOW_BYTES")]
    pub hls_window_bytes: Option<usize>,
    /// A stream no HLS request asked for in this many ms stops being packaged (its
    /// window and relay are let go) [default: 30000].
    #[arg(long, env = "RAFTCAST_EDGE_HLS_IDLE_MS")]
    pub hls_idle_ms: Option<u64>,
    /// HLS requests waiting at once in all: blocking playlist reloads, hinted parts,
    /// requests for a stream that has no segment yet; more get 429 [default: 8192].
    #[arg(long, env = "RAFTCAST_EDGE_HLS_MAX_WAITING")]
    pub hls_max_waiting: Option<usize>,
    /// Streams packaged for HLS at once; requests for more get 503 [default: 1000].
    #[arg(long, env = "RAFTCAST_EDGE_HLS_MAX_STREAMS")]
    pub hls_max_streams: Option<usize>,
    /// Live rewind (DVR, docs/hls.md): how far back, in seconds, each live playlist
    /// lists the stream's recorded segments before its in-memory window (fetched from
    /// the origins' recording and packaged here); 0 is off, at most 21600 (6 hours)
    /// [default: 0].
    #[arg(long, env = "RAFTCAST_EDGE_HLS_DVR_SECS")]
    pub hls_dvr_secs: Option<u64>,
    /// Bytes of packaged DVR segments and init segments this edge keeps in memory;
    /// the least recently used go first (needs --hls-dvr-secs) [default: 134217728
    /// (128 MiB)].
    #[arg(long, env = "RAFTCAST_EDGE_HLS_DVR_CACHE_BYTES")]
    pub hls_dvr_cache_bytes: Option<usize>,
    /// VOD (`GET /vod/{id}.flv`, docs/vod.md): the folder where this edge keeps the
    /// recordings and library files it fetched from the origins. Without it VOD is off
    /// [default: none].
    #[arg(long, env = "RAFTCAST_EDGE_VOD_CACHE_DIR")]
    pub vod_cache_dir: Option<PathBuf>,
    /// Bytes of files the VOD cache keeps at most; the least recently opened go first
    /// [default: 1073741824 (1 GiB)].
    #[arg(long, env = "RAFTCAST_EDGE_VOD_CACHE_BYTES")]
    pub vod_cache_bytes: Option<u64>,
    /// Load balancers (IP addresses, comma-separated) whose connections to the RTMP and
    /// HTTP listeners must open with a PROXY protocol header (v1 or v2); the client
    /// address it carries is what per-address caps and logs see. A connection from one
    /// of them without a valid header within 5 s is closed; other addresses connect
    /// directly as before [default: none].
    #[arg(long, env = "RAFTCAST_EDGE_PROXY_PROTOCOL_FROM", value_delimiter = ',')]
    pub proxy_protocol_from: Option<Vec<std::net::IpAddr>>,
}

/// Caps on what clients may hold at once, per address (an IPv4 address or an IPv6 /64)
/// and in all; see [`crate::limits`].
#[derive(Debug, Clone)]
pub(crate) struct EdgeCaps {
    pub(crate) connections_per_address: usize,
    pub(crate) handshakes: usize,
    pub(crate) handshakes_per_address: usize,
    pub(crate) unstarted: usize,
    pub(crate) unstarted_per_address: usize,
    /// A session must publish, play or use a shared object within this after its handshake.
    pub(crate) start_timeout: Duration,
    pub(crate) publishes_per_address: usize,
    pub(crate) partial_bytes: usize,
    pub(crate) partial_bytes_before_connect: usize,
    pub(crate) partial_bytes_per_connection: usize,
    pub(crate) http_connections: usize,
    pub(crate) http_connections_per_address: usize,
    pub(crate) http_header_timeout: Duration,
    pub(crate) http_body_timeout: Duration,
    pub(crate) long_requests_per_address: usize,
    pub(crate) rtmpt_sessions: usize,
    pub(crate) rtmpt_sessions_per_address: usize,
    /// An RTMPT session with no request for this long is closed.
    pub(crate) rtmpt_idle_timeout: Duration,
    /// When an address is banned below accept.
    pub(crate) bans: crate::bans::BanPolicy,
}

/// The TLS listeners (at least one) and their certificate files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsListeners {
    pub(crate) rtmps: Option<SocketAddr>,
    pub(crate) https: Option<SocketAddr>,
    pub(crate) certs: CertPaths,
}

impl TlsListeners {
    /// `None` without listeners; an error for listeners without both files, or files
    /// without listeners (most likely a forgotten flag).
    fn from_args(a: &EdgeArgs) -> Result<Option<TlsListeners>, String> {
        match (a.rtmps.is_some() || a.https.is_some(), &a.tls_cert, &a.tls_key) {
            (false, None, None) => Ok(None),
            (false, _, _) => Err("--tls-cert/--tls-key given without --rtmps or --https".into()),
            (true, Some(cert), Some(key)) => Ok(Some(TlsListeners {
                rtmps: a.rtmps,
                https: a.https,
                certs: CertPaths { cert: cert.clone(), key: key.clone() },
            })),
            (true, _, _) => Err("--rtmps and --https need both --tls-cert and --tls-key (PEM files)".into()),
        }
    }
}

/// How an RTMP player's media is gathered into socket writes (`--write-merge-ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteMerge {
    /// The default: video, data, control messages and a play's first frames are
    /// written at once; audio reaching an idle socket waits for the next video frame,
    /// at most `audio_hold` (an audio-only stream goes out in windows of that length).
    /// A player's connection then wakes and writes once per video frame instead of
    /// once per frame. Under load (`agent::next_merge_window`: above 60 % of the usable
    /// cores) every hold is a window of the load's length instead, as with `Window`.
    /// Audio is held only while the edge's CPU has reached `hold_above_percent` of its
    /// usable cores (`agent::next_audio_hold`; 0: always): a lightly loaded edge writes
    /// audio as it comes.
    Adaptive { audio_hold: Duration, hold_above_percent: u32 },
    /// Media reaching an idle socket opens a window of this length, after which
    /// everything gathered is written; zero writes each frame as it comes.
    Window(Duration),
}

/// The adaptive merge's longest wait for a video frame: one frame interval at 20 fps.
pub(crate) const AUDIO_HOLD: Duration = Duration::from_millis(50);
/// From this share of the usable cores (percent, smoothed) the adaptive merge holds
/// audio (`agent::next_audio_hold`). Holding audio saves about 40 % of a player's
/// writes and of the edge's CPU per GB, for up to a video frame interval of audio
/// latency: 100 players of a 600 kbit/s stream, 6.5 s/GB with audio held against
/// 10.1-10.3 at once, audio p99 34 ms against 2 (BENCHMARKS.md, session 29). Below
/// this share the CPU is there to spend on latency; above it, on capacity.
pub(crate) const AUDIO_HOLD_ABOVE_CPU: u32 = 30;

/// Validated edge configuration.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    pub(crate) id: String,
    /// The cluster's mutual TLS between members (`--peer-tls-*`), if configured.
    pub(crate) peer_tls: Option<crate::tls::peer::PeerTlsPaths>,
    pub(crate) rtmp: SocketAddr,
    pub(crate) http: SocketAddr,
    /// The HAProxy agent-check listener, if any ([`super::agent`]).
    pub(crate) agent: Option<SocketAddr>,
    /// The tier's edges for RTMPT sessions (`--rtmpt-peers`) and this edge's place in
    /// the list; empty: sessions are not shared.
    pub(crate) rtmpt_peers: Vec<SocketAddr>,
    pub(crate) rtmpt_self: usize,
    /// Egress the agent counts as a full edge, in bytes per second.
    pub(crate) agent_egress_bytes_per_s: u64,
    /// RTMPS and HTTPS listeners, and the certificate they serve (set when either is).
    pub(crate) tls: Option<TlsListeners>,
    pub(crate) origins: Vec<SocketAddr>,
    pub(crate) secret: ClusterSecret,
    pub(crate) max_connections: usize,
    pub(crate) handshake_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) write_timeout: Duration,
    /// How a player's media is gathered into writes.
    pub(crate) write_merge: WriteMerge,
    pub(crate) play_wait: Duration,
    pub(crate) chunk_size: u32,
    /// `TCP_NODELAY` on RTMP client sockets.
    pub(crate) tcp_nodelay: bool,
    /// The direct fan-out (`media::fanout`) for players over plain TCP.
    pub(crate) direct_writes: bool,
    pub(crate) player_queue: QueueLimits,
    pub(crate) link: LinkTiming,
    pub(crate) request_deadline: Duration,
    pub(crate) drain: Duration,
    /// How long a draining edge waits for its clients to leave before it stops.
    pub(crate) drain_deadline: Duration,
    pub(crate) www: Option<std::path::PathBuf>,
    /// Bearer token for `/status` and `/metrics` from non-loopback clients.
    pub(crate) ops_token: Option<String>,
    /// Trusted load balancers that send PROXY protocol headers (empty: none).
    pub(crate) proxy_protocol_from: Vec<std::net::IpAddr>,
    /// Caps on what clients may hold (see [`EdgeCaps`]).
    pub(crate) caps: EdgeCaps,
    /// How streams published here are cut into HLS segments and parts.
    pub(crate) hls: StamperConfig,
    /// What each relayed stream's hub keeps for HLS readers that start late.
    pub(crate) hls_window: WindowLimits,
    /// Serving HLS: windows, idle time and caps (named apart from the stamper's
    /// settings, which the marks work calls `hls`).
    pub(crate) hls_serve: HlsConfig,
    /// The VOD cache (`--vod-cache-dir`, `--vod-cache-bytes`); `None`: VOD is off.
    pub(crate) vod: Option<VodCacheConfig>,
}

/// Where the VOD cache lives and how much it keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VodCacheConfig {
    pub(crate) dir: PathBuf,
    /// The bound on the bytes of files kept.
    pub(crate) max_bytes: u64,
}

/// Default of `--vod-cache-bytes`.
pub(crate) const DEFAULT_VOD_CACHE_BYTES: u64 = 1 << 30;

impl VodCacheConfig {
    /// `None` without a directory; an error for a bound without a directory (most
    /// likely a forgotten flag) or a zero bound.
    fn from_args(dir: Option<PathBuf>, max_bytes: Option<u64>) -> Result<Option<VodCacheConfig>, String> {
        let Some(dir) = dir else {
            return match max_bytes {
                Some(_) => Err("--vod-cache-bytes given without --vod-cache-dir".into()),
                None => Ok(None),
            };
        };
        let max_bytes = max_bytes.unwrap_or(DEFAULT_VOD_CACHE_BYTES);
        if max_bytes == 0 {
            return Err("--vod-cache-bytes must be at least 1".into());
        }
        Ok(Some(VodCacheConfig { dir, max_bytes }))
    }
}

/// The HLS window bounds from `--hls-window-segments` and `--hls-window-bytes` (shared
/// by edges and origins).
pub(crate) fn hls_window(segments: Option<usize>, bytes: Option<usize>) -> Result<WindowLimits, String> {
    let defaults = WindowLimits::default();
    let window = WindowLimits {
        segments: segments.unwrap_or(defaults.segments),
        max_bytes: bytes.unwrap_or(defaults.max_bytes),
        ..defaults
    };
    if !(1..=64).contains(&window.segments) {
        return Err(format!("--hls-window-segments {} is outside 1..=64", window.segments));
    }
    if window.max_bytes < 1024 * 1024 {
        return Err("--hls-window-bytes must be at least 1 MiB".into());
    }
    Ok(window)
}

/// Live rewind from `--hls-dvr-secs` and `--hls-dvr-cache-bytes`: off by default; a
/// span over six hours, a cache under 1 MiB (one segment must fit) or a cache bound
/// without a span (most likely a forgotten flag) is an error.
fn dvr_settings(secs: Option<u64>, cache_bytes: Option<usize>) -> Result<DvrSettings, String> {
    let secs = secs.unwrap_or(0);
    if secs > MAX_DVR_SECS {
        return Err(format!("--hls-dvr-secs {secs} is over {MAX_DVR_SECS} (6 hours)"));
    }
    if secs == 0 && cache_bytes.is_some() {
        return Err("--hls-dvr-cache-bytes given without --hls-dvr-secs".into());
    }
    let cache_bytes = cache_bytes.unwrap_or(DEFAULT_DVR_CACHE_BYTES);
    if cache_bytes < 1 << 20 {
        return Err("--hls-dvr-cache-bytes must be at least 1 MiB".into());
    }
    Ok(DvrSettings { span_ms: secs * 1000, cache_bytes })
}

/// `--rtmpt-peers`: at most 255 edges (a session id names its holder in two hex
/// digits), no repeats, this edge's own `--http` among them. Returns its index.
fn rtmpt_peers_check(peers: &[SocketAddr], http: SocketAddr) -> Result<usize, String> {
    if peers.is_empty() {
        return Ok(0);
    }
    if peers.len() > 255 {
        return Err("--rtmpt-peers lists at most 255 edges".into());
    }
    let unique: std::collections::HashSet<_> = peers.iter().collect();
    if unique.len() != peers.len() {
        return Err("--rtmpt-peers lists an address twice".into());
    }
    peers
        .iter()
        .position(|p| *p == http)
        .ok_or_else(|| format!("--rtmpt-peers must list this edge's own --http address ({http})"))
}

fn merge(cli: EdgeArgs, file: EdgeArgs) -> EdgeArgs {
    EdgeArgs {
        config: cli.config,
        id: cli.id.or(file.id),
        rtmp: cli.rtmp.or(file.rtmp),
        http: cli.http.or(file.http),
        agent: cli.agent.or(file.agent),
        agent_egress_mbps: cli.agent_egress_mbps.or(file.agent_egress_mbps),
        rtmps: cli.rtmps.or(file.rtmps),
        https: cli.https.or(file.https),
        tls_cert: cli.tls_cert.or(file.tls_cert),
        tls_key: cli.tls_key.or(file.tls_key),
        origins: cli.origins.or(file.origins),
        cluster_secret_file: cli.cluster_secret_file.or(file.cluster_secret_file),
        peer_tls_ca: cli.peer_tls_ca.or(file.peer_tls_ca),
        peer_tls_cert: cli.peer_tls_cert.or(file.peer_tls_cert),
        peer_tls_key: cli.peer_tls_key.or(file.peer_tls_key),
        ops_token_file: cli.ops_token_file.or(file.ops_token_file),
        max_connections: cli.max_connections.or(file.max_connections),
        handshake_timeout_ms: cli.handshake_timeout_ms.or(file.handshake_timeout_ms),
        idle_timeout_ms: cli.idle_timeout_ms.or(file.idle_timeout_ms),
        write_timeout_ms: cli.write_timeout_ms.or(file.write_timeout_ms),
        write_merge_ms: cli.write_merge_ms.or(file.write_merge_ms),
        audio_hold_ms: cli.audio_hold_ms.or(file.audio_hold_ms),
        audio_hold_above_cpu: cli.audio_hold_above_cpu.or(file.audio_hold_above_cpu),
        play_wait_ms: cli.play_wait_ms.or(file.play_wait_ms),
        chunk_size: cli.chunk_size.or(file.chunk_size),
        tcp_nodelay: cli.tcp_nodelay.or(file.tcp_nodelay),
        direct_writes: cli.direct_writes.or(file.direct_writes),
        player_queue_frames: cli.player_queue_frames.or(file.player_queue_frames),
        player_queue_bytes: cli.player_queue_bytes.or(file.player_queue_bytes),
        link_ping_ms: cli.link_ping_ms.or(file.link_ping_ms),
        link_dead_ms: cli.link_dead_ms.or(file.link_dead_ms),
        request_deadline_ms: cli.request_deadline_ms.or(file.request_deadline_ms),
        drain_ms: cli.drain_ms.or(file.drain_ms),
        drain_deadline_ms: cli.drain_deadline_ms.or(file.drain_deadline_ms),
        www: cli.www.or(file.www),
        hls_segment_ms: cli.hls_segment_ms.or(file.hls_segment_ms),
        hls_part_ms: cli.hls_part_ms.or(file.hls_part_ms),
        hls_window_segments: cli.hls_window_segments.or(file.hls_window_segments),
        hls_window_bytes: cli.hls_window_bytes.or(file.hls_window_bytes),
        hls_idle_ms: cli.hls_idle_ms.or(file.hls_idle_ms),
        hls_max_waiting: cli.hls_max_waiting.or(file.hls_max_waiting),
        hls_max_streams: cli.hls_max_streams.or(file.hls_max_streams),
        hls_dvr_secs: cli.hls_dvr_secs.or(file.hls_dvr_secs),
        hls_dvr_cache_bytes: cli.hls_dvr_cache_bytes.or(file.hls_dvr_cache_bytes),
        proxy_protocol_from: cli.proxy_protocol_from.or(file.proxy_protocol_from),
        vod_cache_dir: cli.vod_cache_dir.or(file.vod_cache_dir),
        vod_cache_bytes: cli.vod_cache_bytes.or(file.vod_cache_bytes),
        max_connections_per_address: cli.max_connections_per_address.or(file.max_connections_per_address),
        max_handshakes: cli.max_handshakes.or(file.max_handshakes),
        max_handshakes_per_address: cli.max_handshakes_per_address.or(file.max_handshakes_per_address),
        max_unstarted: cli.max_unstarted.or(file.max_unstarted),
        max_unstarted_per_address: cli.max_unstarted_per_address.or(file.max_unstarted_per_address),
        start_timeout_ms: cli.start_timeout_ms.or(file.start_timeout_ms),
        max_publishes_per_address: cli.max_publishes_per_address.or(file.max_publishes_per_address),
        max_partial_bytes: cli.max_partial_bytes.or(file.max_partial_bytes),
        max_partial_bytes_before_connect: cli
            .max_partial_bytes_before_connect
            .or(file.max_partial_bytes_before_connect),
        max_partial_bytes_per_connection: cli
            .max_partial_bytes_per_connection
            .or(file.max_partial_bytes_per_connection),
        http_max_connections: cli.http_max_connections.or(file.http_max_connections),
        http_max_connections_per_address: cli
            .http_max_connections_per_address
            .or(file.http_max_connections_per_address),
        http_header_timeout_ms: cli.http_header_timeout_ms.or(file.http_header_timeout_ms),
        http_body_timeout_ms: cli.http_body_timeout_ms.or(file.http_body_timeout_ms),
        max_long_requests_per_address: cli.max_long_requests_per_address.or(file.max_long_requests_per_address),
        max_rtmpt_sessions: cli.max_rtmpt_sessions.or(file.max_rtmpt_sessions),
        max_rtmpt_sessions_per_address: cli.max_rtmpt_sessions_per_address.or(file.max_rtmpt_sessions_per_address),
        rtmpt_idle_timeout_ms: cli.rtmpt_idle_timeout_ms.or(file.rtmpt_idle_timeout_ms),
        rtmpt_peers: cli.rtmpt_peers.or(file.rtmpt_peers),
        ban_refusals_per_second: cli.ban_refusals_per_second.or(file.ban_refusals_per_second),
        ban_seconds: cli.ban_seconds.or(file.ban_seconds),
    }
}

fn read_file(path: &Path) -> Result<EdgeArgs, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

impl EdgeConfig {
    /// Validates the raw settings. `env` looks up environment variables (injectable for
    /// tests).
    pub fn from_args(args: EdgeArgs, env: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => EdgeArgs::default(),
        };
        let a = merge(args, file);
        let tls = TlsListeners::from_args(&a)?;
        let peer_tls = crate::tls::peer::PeerTlsPaths::from_flags(
            a.peer_tls_ca.clone(),
            a.peer_tls_cert.clone(),
            a.peer_tls_key.clone(),
        )?;
        let id = a.id.ok_or("--id is required")?;
        raftcast_raft::command::validate_name("edge id", &id).map_err(|e| e.to_string())?;
        let origins = a.origins.unwrap_or_default();
        if origins.is_empty() {
            return Err("--origins is required: the HTTP addresses of one or more origins".into());
        }
        let secret = crate::secrets::load(env("RAFTCAST_CLUSTER_SECRET").as_deref(), a.cluster_secret_file.as_deref())?
            .ok_or("a cluster secret is required: set RAFTCAST_CLUSTER_SECRET or --cluster-secret-file")?;
        let secret = ClusterSecret::new(&secret)?;
        let ops_token = crate::secrets::load(env("RAFTCAST_EDGE_OPS_TOKEN").as_deref(), a.ops_token_file.as_deref())?;
        if ops_token.as_ref().is_some_and(|t| t.len() < 16) {
            return Err("the ops token must be at least 16 characters".into());
        }
        let ms = |v: Option<u64>, default: u64| Duration::from_millis(v.unwrap_or(default));
        let chunk_size = a.chunk_size.unwrap_or(4096);
        if !(128..=65536).contains(&chunk_size) {
            return Err(format!("--chunk-size {chunk_size} is outside 128..=65536"));
        }
        let link = LinkTiming {
            ping_every: ms(a.link_ping_ms, 100),
            dead_after: ms(a.link_dead_ms, 500),
            ..LinkTiming::default()
        };
        if link.dead_after <= link.ping_every * 2 {
            return Err(format!(
                "--link-dead-ms ({:?}) must exceed two heartbeats ({:?} each)",
                link.dead_after, link.ping_every
            ));
        }
        let defaults = QueueLimits::default();
        let player_queue = QueueLimits {
            max_frames: a.player_queue_frames.unwrap_or(defaults.max_frames),
            max_bytes: a.player_queue_bytes.unwrap_or(defaults.max_bytes),
        };
        if player_queue.max_frames < 16 || player_queue.max_bytes < 64 * 1024 {
            return Err("a player queue needs at least 16 frames and 64 KiB".into());
        }
        let held = |flag: &str, ms: u64| match ms {
            0..=1000 => Ok(Duration::from_millis(ms)),
            _ => Err(format!("--{flag} {ms} is above 1000: players would stutter")),
        };
        let hold_above_percent = match a.audio_hold_above_cpu {
            Some(p @ 0..=100) => p,
            Some(p) => return Err(format!("--audio-hold-above-cpu {p} is a percentage of the usable cores (0-100)")),
            None => AUDIO_HOLD_ABOVE_CPU,
        };
        let write_merge = match (a.write_merge_ms, a.audio_hold_ms, a.audio_hold_above_cpu) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                return Err("--audio-hold-ms and --audio-hold-above-cpu are the adaptive merge's; \
                     --write-merge-ms replaces it with a fixed window"
                    .into())
            }
            (Some(ms), None, None) => WriteMerge::Window(held("write-merge-ms", ms)?),
            (None, ms, _) => WriteMerge::Adaptive {
                audio_hold: ms.map_or(Ok(AUDIO_HOLD), |ms| held("audio-hold-ms", ms))?,
                hold_above_percent,
            },
        };
        let max_connections = a.max_connections.unwrap_or(10_000);
        if max_connections == 0 {
            return Err("--max-connections must be at least 1".into());
        }
        let caps = EdgeCaps {
            connections_per_address: a.max_connections_per_address.unwrap_or(128),
            handshakes: a.max_handshakes.unwrap_or(1000),
            handshakes_per_address: a.max_handshakes_per_address.unwrap_or(128),
            unstarted: a.max_unstarted.unwrap_or(2000),
            unstarted_per_address: a.max_unstarted_per_address.unwrap_or(128),
            start_timeout: ms(a.start_timeout_ms, 10_000),
            publishes_per_address: a.max_publishes_per_address.unwrap_or(16),
            partial_bytes: a.max_partial_bytes.unwrap_or(256 << 20),
            partial_bytes_before_connect: a.max_partial_bytes_before_connect.unwrap_or(64 << 10),
            partial_bytes_per_connection: a.max_partial_bytes_per_connection.unwrap_or(32 << 20),
            http_connections: a.http_max_connections.unwrap_or(10_000),
            http_connections_per_address: a.http_max_connections_per_address.unwrap_or(128),
            http_header_timeout: ms(a.http_header_timeout_ms, 10_000),
            http_body_timeout: ms(a.http_body_timeout_ms, 30_000),
            long_requests_per_address: a.max_long_requests_per_address.unwrap_or(64),
            rtmpt_sessions: a.max_rtmpt_sessions.unwrap_or(1000),
            rtmpt_sessions_per_address: a.max_rtmpt_sessions_per_address.unwrap_or(32),
            rtmpt_idle_timeout: ms(a.rtmpt_idle_timeout_ms, 30_000),
            bans: {
                let d = crate::bans::BanPolicy::default();
                let first = a.ban_seconds.map_or(d.first, Duration::from_secs);
                if first.is_zero() {
                    return Err("--ban-seconds must be at least 1".into());
                }
                crate::bans::BanPolicy {
                    refusals_per_second: a.ban_refusals_per_second.unwrap_or(d.refusals_per_second),
                    first,
                    longest: d.longest.max(first),
                }
            },
        };
        caps.validate()?;
        let hls = StamperConfig {
            target_ms: a.hls_segment_ms.unwrap_or(DEFAULT_SEGMENT_MS),
            part_target_ms: a.hls_part_ms.unwrap_or(DEFAULT_PART_MS),
        };
        hls.validate()?;
        let hls_window = hls_window(a.hls_window_segments, a.hls_window_bytes)?;
        let hls_serve = HlsConfig {
            window: ServeWindow {
                segments: a.hls_window_segments.unwrap_or(WINDOW_SEGMENTS),
                max_bytes: a.hls_window_bytes.unwrap_or(WINDOW_MAX_BYTES),
            },
            idle: ms(a.hls_idle_ms, 30_000),
            stream_wait: ms(a.play_wait_ms, 5_000),
            max_waiting: a.hls_max_waiting.unwrap_or(8192),
            max_streams: a.hls_max_streams.unwrap_or(1000),
            dvr: dvr_settings(a.hls_dvr_secs, a.hls_dvr_cache_bytes)?,
        };
        if hls_serve.window.segments < 3 {
            return Err("--hls-window-segments must be at least 3 (players start three segments from the end)".into());
        }
        if hls_serve.window.max_bytes < 1 << 20 {
            return Err("--hls-window-bytes must be at least 1 MiB".into());
        }
        if hls_serve.idle < Duration::from_secs(1) || hls_serve.max_waiting == 0 || hls_serve.max_streams == 0 {
            return Err(
                "--hls-idle-ms must be at least 1000, --hls-max-waiting and --hls-max-streams at least 1".into()
            );
        }
        let vod = VodCacheConfig::from_args(a.vod_cache_dir, a.vod_cache_bytes)?;
        let http = a.http.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8081)));
        let rtmpt_peers = a.rtmpt_peers.unwrap_or_default();
        let rtmpt_self = rtmpt_peers_check(&rtmpt_peers, http)?;
        Ok(EdgeConfig {
            rtmpt_peers,
            rtmpt_self,
            vod,
            peer_tls,
            id,
            rtmp: a.rtmp.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 1935))),
            http,
            agent: a.agent,
            agent_egress_bytes_per_s: a.agent_egress_mbps.unwrap_or(1_000).max(1).saturating_mul(1_000_000 / 8),
            tls,
            origins,
            secret,
            max_connections,
            handshake_timeout: ms(a.handshake_timeout_ms, 5_000),
            idle_timeout: ms(a.idle_timeout_ms, 30_000),
            write_timeout: ms(a.write_timeout_ms, 30_000),
            write_merge,
            play_wait: ms(a.play_wait_ms, 5_000),
            chunk_size,
            tcp_nodelay: a.tcp_nodelay.unwrap_or(true),
            direct_writes: a.direct_writes.unwrap_or(true),
            player_queue,
            link,
            request_deadline: ms(a.request_deadline_ms, 5_000),
            drain: ms(a.drain_ms, 2_000),
            drain_deadline: ms(a.drain_deadline_ms, 300_000),
            www: a.www,
            ops_token,
            proxy_protocol_from: a.proxy_protocol_from.unwrap_or_default(),
            caps,
            hls,
            hls_window,
            hls_serve,
        })
    }
}

impl EdgeCaps {
    fn validate(&self) -> Result<(), String> {
        let counts = [
            ("--max-connections-per-address", self.connections_per_address),
            ("--max-handshakes", self.handshakes),
            ("--max-handshakes-per-address", self.handshakes_per_address),
            ("--max-unstarted", self.unstarted),
            ("--max-unstarted-per-address", self.unstarted_per_address),
            ("--max-publishes-per-address", self.publishes_per_address),
            ("--http-max-connections", self.http_connections),
            ("--http-max-connections-per-address", self.http_connections_per_address),
            ("--max-long-requests-per-address", self.long_requests_per_address),
            ("--max-rtmpt-sessions", self.rtmpt_sessions),
            ("--max-rtmpt-sessions-per-address", self.rtmpt_sessions_per_address),
        ];
        if let Some((flag, _)) = counts.iter().find(|(_, n)| *n == 0) {
            return Err(format!("{flag} must be at least 1"));
        }
        // A client polls at most every 0x21 (33) tens of ms; a second is plenty more.
        if self.rtmpt_idle_timeout < Duration::from_secs(1) {
            return Err("--rtmpt-idle-timeout-ms must be at least 1000".into());
        }
        // A legal chunk (up to 64 KiB + headers) must fit before connect.
        if self.partial_bytes_before_connect < 4096 {
            return Err("--max-partial-bytes-before-connect must be at least 4096".into());
        }
        if self.partial_bytes_per_connection < self.partial_bytes_before_connect
            || self.partial_bytes < self.partial_bytes_per_connection
        {
            return Err(
                "partial-message caps must grow: before connect <= per connection <= --max-partial-bytes".into()
            );
        }
        let times = [
            ("--start-timeout-ms", self.start_timeout),
            ("--http-header-timeout-ms", self.http_header_timeout),
            ("--http-body-timeout-ms", self.http_body_timeout),
        ];
        if let Some((flag, _)) = times.iter().find(|(_, t)| t.as_millis() < 100) {
            return Err(format!("{flag} must be at least 100"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(k: &str) -> Option<String> {
        (k == "RAFTCAST_CLUSTER_SECRET").then(|| "0123456789abcdef0123".to_owned())
    }

    fn args() -> EdgeArgs {
        EdgeArgs {
            id: Some("edge-1".into()),
            origins: Some(vec!["127.0.0.1:8101".parse().unwrap()]),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_are_the_design_ports() {
        let c = EdgeConfig::from_args(args(), env).unwrap();
        assert_eq!((c.rtmp.to_string(), c.http.to_string()), ("127.0.0.1:1935".into(), "127.0.0.1:8081".into()));
        assert_eq!((c.play_wait, c.chunk_size), (Duration::from_secs(5), 4096));
        assert!(c.proxy_protocol_from.is_empty(), "PROXY protocol is off by default");
    }

    #[test]
    fn missing_or_bad_settings_are_explained() {
        let no_origins = EdgeArgs { origins: None, ..args() };
        assert!(EdgeConfig::from_args(no_origins, env).unwrap_err().contains("--origins"));
        assert!(EdgeConfig::from_args(args(), |_| None).unwrap_err().contains("cluster secret"));
        let bad_id = EdgeArgs { id: Some("a b/c".into()), ..args() };
        assert!(EdgeConfig::from_args(bad_id, env).is_err());
        let tiny = EdgeArgs { chunk_size: Some(1), ..args() };
        assert!(EdgeConfig::from_args(tiny, env).unwrap_err().contains("chunk-size"));
        let racy = EdgeArgs { link_ping_ms: Some(300), link_dead_ms: Some(500), ..args() };
        assert!(EdgeConfig::from_args(racy, env).unwrap_err().contains("heartbeats"));
        assert_eq!(
            EdgeConfig::from_args(args(), env).unwrap().write_merge,
            WriteMerge::Adaptive { audio_hold: AUDIO_HOLD, hold_above_percent: AUDIO_HOLD_ABOVE_CPU }
        );
        let fixed = EdgeArgs { write_merge_ms: Some(0), ..args() };
        assert_eq!(EdgeConfig::from_args(fixed, env).unwrap().write_merge, WriteMerge::Window(Duration::ZERO));
        let both = EdgeArgs { write_merge_ms: Some(0), audio_hold_ms: Some(0), ..args() };
        assert!(EdgeConfig::from_args(both, env).unwrap_err().contains("--audio-hold-ms"));
        let fixed_and_load = EdgeArgs { write_merge_ms: Some(0), audio_hold_above_cpu: Some(10), ..args() };
        assert!(EdgeConfig::from_args(fixed_and_load, env).unwrap_err().contains("--audio-hold-above-cpu"));
        let always = EdgeArgs { audio_hold_above_cpu: Some(0), audio_hold_ms: Some(40), ..args() };
        assert_eq!(
            EdgeConfig::from_args(always, env).unwrap().write_merge,
            WriteMerge::Adaptive { audio_hold: Duration::from_millis(40), hold_above_percent: 0 }
        );
        let over = EdgeArgs { audio_hold_above_cpu: Some(101), ..args() };
        assert!(EdgeConfig::from_args(over, env).unwrap_err().contains("percentage"));
        let sluggish = EdgeArgs { write_merge_ms: Some(5000), ..args() };
        assert!(EdgeConfig::from_args(sluggish, env).unwrap_err().contains("write-merge-ms"));
        let capless = EdgeArgs { max_handshakes_per_address: Some(0), ..args() };
        assert!(EdgeConfig::from_args(capless, env).unwrap_err().contains("--max-handshakes-per-address"));
        let inverted = EdgeArgs { max_partial_bytes: Some(1 << 20), ..args() };
        assert!(EdgeConfig::from_args(inverted, env).unwrap_err().contains("partial-message caps"));
        let hasty = EdgeArgs { http_header_timeout_ms: Some(1), ..args() };
        assert!(EdgeConfig::from_args(hasty, env).unwrap_err().contains("--http-header-timeout-ms"));
        let keyless = EdgeArgs { rtmps: Some("127.0.0.1:1945".parse().unwrap()), ..args() };
        assert!(EdgeConfig::from_args(keyless, env).unwrap_err().contains("--tls-cert and --tls-key"));
        let half =
            EdgeArgs { https: Some("127.0.0.1:8443".parse().unwrap()), tls_cert: Some("edge.pem".into()), ..args() };
        assert!(EdgeConfig::from_args(half, env).unwrap_err().contains("--tls-cert and --tls-key"));
        let idle = EdgeArgs { tls_cert: Some("edge.pem".into()), tls_key: Some("k.pem".into()), ..args() };
        assert!(EdgeConfig::from_args(idle, env).unwrap_err().contains("without --rtmps or --https"));
    }

    #[test]
    fn flags_override_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("edge.toml");
        std::fs::write(&path, "id = \"edge-9\"\nplay-wait-ms = 100\norigins = [\"127.0.0.1:8101\"]\n").unwrap();
        let cli = EdgeArgs { config: Some(path.clone()), play_wait_ms: Some(250), ..Default::default() };
        let c = EdgeConfig::from_args(cli, env).unwrap();
        assert_eq!((c.id.as_str(), c.play_wait), ("edge-9", Duration::from_millis(250)));
        assert!(c.tls.is_none(), "no TLS listener by default");
        let tls = "rtmps = \"127.0.0.1:1945\"\ntls-cert = \"e.pem\"\ntls-key = \"k.pem\"\n";
        std::fs::write(&path, format!("id = \"edge-9\"\norigins = [\"127.0.0.1:8101\"]\n{tls}")).unwrap();
        let cli = EdgeArgs { config: Some(path), https: Some("127.0.0.1:8443".parse().unwrap()), ..Default::default() };
        let tls = EdgeConfig::from_args(cli, env).unwrap().tls.unwrap();
        assert_eq!((tls.rtmps.unwrap().port(), tls.https.unwrap().port()), (1945, 8443));
        assert_eq!(tls.certs.key, PathBuf::from("k.pem"));
    }

    #[test]
    fn dvr_is_off_by_default_and_its_flags_are_checked() {
        let c = EdgeConfig::from_args(args(), env).unwrap();
        assert_eq!(c.hls_serve.dvr, DvrSettings { span_ms: 0, cache_bytes: 128 << 20 });
        let on = EdgeArgs { hls_dvr_secs: Some(3600), ..args() };
        assert_eq!(EdgeConfig::from_args(on.clone(), env).unwrap().hls_serve.dvr.span_ms, 3_600_000);
        let long = EdgeArgs { hls_dvr_secs: Some(21_601), ..args() };
        assert!(EdgeConfig::from_args(long, env).unwrap_err().contains("--hls-dvr-secs"));
        let tiny = EdgeArgs { hls_dvr_cache_bytes: Some(1000), ..on };
        assert!(EdgeConfig::from_args(tiny, env).unwrap_err().contains("at least 1 MiB"));
        let orphan = EdgeArgs { hls_dvr_cache_bytes: Some(1 << 30), ..args() };
        assert!(EdgeConfig::from_args(orphan, env).unwrap_err().contains("without --hls-dvr-secs"));
    }

    #[test]
    fn vod_is_off_without_a_cache_dir_and_its_bound_has_a_default() {
        assert_eq!(EdgeConfig::from_args(args(), env).unwrap().vod, None);
        let on = EdgeArgs { vod_cache_dir: Some("/var/cache/vod".into()), ..args() };
        let vod = EdgeConfig::from_args(on.clone(), env).unwrap().vod.unwrap();
        assert_eq!((vod.dir, vod.max_bytes), (PathBuf::from("/var/cache/vod"), 1 << 30));
        let zero = EdgeArgs { vod_cache_bytes: Some(0), ..on };
        assert!(EdgeConfig::from_args(zero, env).unwrap_err().contains("--vod-cache-bytes"));
        let orphan = EdgeArgs { vod_cache_bytes: Some(5), ..args() };
        assert!(EdgeConfig::from_args(orphan, env).unwrap_err().contains("without --vod-cache-dir"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("edge.toml");
        let toml = "id = \"e\"\norigins = [\"127.0.0.1:8101\"]\nvod-cache-dir = \"c\"\nvod-cache-bytes = 1000\n";
        std::fs::write(&path, toml).unwrap();
        let vod = EdgeConfig::from_args(EdgeArgs { config: Some(path), ..Default::default() }, env).unwrap().vod;
        assert_eq!(vod, Some(VodCacheConfig { dir: "c".into(), max_bytes: 1000 }));
    }
}
