//! `raftcast ctl`: the admin client. Talks to any origin's admin API (trying the
//! given origins in turn), prints tables for people and JSON (`--json`) for scripts.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde_json::{json, Value};

/// Default origins: the three of `scripts/bootstrap.sh`.
const DEFAULT_ORIGINS: &str = "127.0.0.1:8101,127.0.0.1:8102,127.0.0.1:8103";

#[derive(Debug, Args)]
pub struct CtlArgs {
    /// Origin admin addresses (host:port), comma-separated; tried in order.
    #[arg(long, env = "RAFTCAST_CTL_ORIGIN", default_value = DEFAULT_ORIGINS, value_delimiter = ',')]
    origin: Vec<String>,
    /// File with the admin token [default: $RAFTCAST_DATA_DIR/admin-token when it exists].
    #[arg(long, env = "RAFTCAST_ADMIN_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// The cluster CA (PEM), when the origins speak mutual TLS (`--peer-tls-*` on the
    /// nodes): with --peer-tls-cert and --peer-tls-key, ctl talks HTTPS and presents a
    /// certificate the CA signed.
    #[arg(long, env = "RAFTCAST_PEER_TLS_CA")]
    peer_tls_ca: Option<PathBuf>,
    /// ctl's certificate (PEM, signed by the cluster CA).
    #[arg(long, env = "RAFTCAST_PEER_TLS_CERT")]
    peer_tls_cert: Option<PathBuf>,
    /// The private key of --peer-tls-cert (PEM).
    #[arg(long, env = "RAFTCAST_PEER_TLS_KEY")]
    peer_tls_key: Option<PathBuf>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Debug, Subcommand)]
enum StreamsAction {
    /// Move a live stream to another origin (planned: its publisher and players stay
    /// connected).
    Move {
        /// APP/NAME.
        stream: String,
        /// The origin to move it to [default: the least loaded other live origin].
        #[arg(long)]
        to: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
enum CtlCommand {
    /// Show every node's view of the cluster.
    Status,
    /// Initialize the cluster (idempotent with the same members).
    Init {
        /// ID=HTTP,MEDIA, repeated [default: the three bootstrap origins].
        #[arg(long = "node", value_name = "ID=HTTP,MEDIA")]
        nodes: Vec<String>,
    },
    /// Add a node as a learner (it catches up before this returns).
    AddLearner {
        #[arg(long)]
        id: u64,
        #[arg(long)]
        http: String,
        #[arg(long)]
        media: String,
    },
    /// Make exactly these nodes the voters.
    Voters { ids: Vec<u64> },
    /// Remove a node from the cluster.
    Remove { id: u64 },
    /// Drain an origin: it gets no new streams, and the leader moves the streams it owns
    /// to the other origins by planned moves (publishers and players stay connected).
    Drain {
        id: u64,
        /// Wait until the origin owns no stream, printing progress.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this many seconds.
        #[arg(long, default_value_t = 60, requires = "wait")]
        wait_secs: u64,
    },
    /// Stop draining an origin: it takes new streams again (streams that left it stay
    /// where they are).
    Undrain { id: u64 },
    /// List live streams and their owners (or `streams move`).
    Streams {
        #[arg(long)]
        stale: bool,
        #[command(subcommand)]
        action: Option<StreamsAction>,
    },
    /// Shared objects.
    #[command(subcommand)]
    So(SoCommand),
    /// Publish keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Signed tokens for clients of the edges: play/publish tokens for streams, and
    /// shared-object tokens.
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Apps' access rules: publish keys, play tokens, publish tokens. Without flags,
    /// shows the rules (of APP, or of every app with one).
    Apps {
        app: Option<String>,
        /// Require a play token to play the app's streams (every protocol).
        #[arg(long, value_name = "on|off", requires = "app")]
        play_token: Option<OnOff>,
        /// Require a publish token to publish to the app.
        #[arg(long, value_name = "on|off", requires = "app")]
        publish_token: Option<OnOff>,
        /// Require a publish key (`?key=`) to publish to the app.
        #[arg(long, value_name = "on|off", requires = "app")]
        publish_key: Option<OnOff>,
        /// Set the app's webhooks (replacing all of them): EVENT=URL, EVENT one of
        /// on_connect, on_publish, on_publish_done, on_play, on_play_done; repeat it.
        #[arg(long = "hook", value_name = "EVENT=URL", requires = "app")]
        hooks: Vec<String>,
        /// With --hook: how long one call may take (default 2000).
        #[arg(long, requires = "hooks")]
        hook_timeout_ms: Option<u32>,
        /// With --hook: admit clients when a hook cannot be reached (default: refuse).
        #[arg(long, requires = "hooks")]
        hook_fail_open: bool,
        /// Remove the app's webhooks.
        #[arg(long, requires = "app", conflicts_with = "hooks")]
        no_hooks: bool,
        #[arg(long)]
        stale: bool,
    },
    /// Pin rules: new streams of APP whose name matches PATTERN go to one origin
    /// (while it is a live voter). Lists the rules without a subcommand.
    Pins {
        #[command(subcommand)]
        command: Option<PinsCommand>,
    },
    /// Edges: `edges drain EDGE` (talks to the edge's HTTP port, not to an origin).
    #[command(subcommand)]
    Edges(EdgesCommand),
    /// Record an app's streams or one stream (`APP` or `APP/NAME`): `on`, `off` (for a
    /// stream: not even when its app is recorded) or `clear` (remove the rule).
    /// Without arguments, lists the rules.
    Record { target: Option<String>, rule: Option<RecordRule> },
    /// Recordings: list (default), `show ID`, `get ID FILE` (the whole recording as one
    /// FLV file), `delete ID`.
    Recordings {
        #[command(subcommand)]
        command: Option<RecordingsCommand>,
    },
    /// Wait until the cluster has a leader and this many voters, all answering.
    Wait {
        #[arg(long, default_value_t = 3)]
        voters: usize,
        #[arg(long, default_value_t = 30)]
        timeout_secs: u64,
    },
}

#[derive(Debug, Subcommand)]
enum EdgesCommand {
    /// Drain an edge (as SIGUSR1 does): its /health answers 503 so the load balancer
    /// sends it no new clients, RTMP clients that can reconnect are asked to, and it
    /// exits once no RTMP or HTTP-FLV client is left (or at its --drain-deadline-ms).
    Drain {
        /// The edge's HTTP address (host:port).
        edge: String,
        /// The edge's ops token (its --ops-token-file); not needed on loopback.
        #[arg(long, env = "RAFTCAST_EDGE_OPS_TOKEN_FILE")]
        ops_token_file: Option<PathBuf>,
        /// Follow the clients left until the edge has exited.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this many seconds (the edge's own deadline is
        /// 300 s by default).
        #[arg(long, default_value_t = 330)]
        wait_secs: u64,
    },
}

#[derive(Debug, Subcommand)]
enum SoCommand {
    /// Print an object.
    Get {
        name: String,
        #[arg(long)]
        stale: bool,
    },
    /// Set a slot to a JSON value.
    Set {
        name: String,
        slot: String,
        value: String,
        #[arg(long)]
        if_version: Option<u64>,
    },
    /// Delete a slot.
    Del {
        name: String,
        slot: String,
        #[arg(long)]
        if_version: Option<u64>,
    },
    /// Follow an object's changes (Server-Sent Events) until interrupted.
    Watch { name: String },
    /// Remove a whole object (its subscribers see it removed).
    Delete {
        name: String,
        #[arg(long)]
        if_version: Option<u64>,
    },
}

/// A rule switched on or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OnOff {
    On,
    Off,
}

#[derive(Debug, Subcommand)]
enum TokensCommand {
    /// Print a signed token. A stream token: --app APP with --name NAME (one stream) or
    /// --prefix P (every stream whose name starts with P; "" for all), and --play or
    /// --publish; clients pass it as `?token=…` on the stream URL. A shared-object
    /// token: --object or --object-prefix, with --read or --write.
    Sign {
        /// The app of a stream token.
        #[arg(long, conflicts_with_all = ["object", "object_prefix", "read", "write"])]
        app: Option<String>,
        #[arg(long, requires = "app", conflicts_with = "prefix")]
        name: Option<String>,
        #[arg(long, requires = "app")]
        prefix: Option<String>,
        #[arg(long, requires = "app", conflicts_with = "publish")]
        play: bool,
        #[arg(long, requires = "app")]
        publish: bool,
        #[arg(long, conflicts_with = "object_prefix")]
        object: Option<String>,
        #[arg(long)]
        object_prefix: Option<String>,
        #[arg(long, conflicts_with = "write")]
        read: bool,
        #[arg(long)]
        write: bool,
        /// Lifetime in seconds (default 3600).
        #[arg(long)]
        ttl: Option<u64>,
        /// Who the quota is charged to (default: a fresh id per token).
        #[arg(long)]
        subject: Option<String>,
        /// Objects this token creates outlive their subscribers.
        #[arg(long)]
        persistent: bool,
        /// Quota of the subject: objects it may create (default 16)…
        #[arg(long)]
        quota_objects: Option<u32>,
        /// …slots over those objects (default 1024)…
        #[arg(long)]
        quota_slots: Option<u32>,
        /// …and bytes (default 1 MiB).
        #[arg(long)]
        quota_bytes: Option<u64>,
    },
    /// Sign new tokens with a new key; the previous key still verifies until the next
    /// rotation drops it, or until `retire`.
    Rotate,
    /// Stop accepting tokens signed with any key but the newest.
    Retire,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a publish key for an app, or for one stream of it.
    Add { app: String, name: Option<String> },
    /// Require (or with --off, stop requiring) publish keys for an app.
    Require {
        app: String,
        #[arg(long)]
        off: bool,
    },
}

#[derive(Debug, Subcommand)]
enum PinsCommand {
    /// List the rules.
    List {
        #[arg(long)]
        stale: bool,
    },
    /// Pin APP/PATTERN to ORIGIN (PATTERN: an exact name, or a glob with `*`; quote it).
    Set { app: String, pattern: String, origin: u64 },
    /// Remove the rule for exactly APP/PATTERN.
    Del { app: String, pattern: String },
}

/// What `ctl record` sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RecordRule {
    On,
    Off,
    Clear,
}

#[derive(Debug, Subcommand)]
enum RecordingsCommand {
    /// Every recording.
    List {
        #[arg(long)]
        stale: bool,
    },
    /// One recording and its pieces (owner, holders, time range, bytes).
    Show { id: u64 },
    /// Download the whole recording as one FLV file (`-` for stdout).
    Get { id: u64, file: std::path::PathBuf },
    /// Delete a recording (every origin removes its files).
    Delete { id: u64 },
    /// Show the retention bounds, or with `--set` replace them: finished recordings older
    /// than --max-age-secs, and the oldest beyond --max-bytes in all, are deleted (a
    /// bound left out: none).
    Retention {
        #[arg(long)]
        set: bool,
        #[arg(long, requires = "set")]
        max_age_secs: Option<u64>,
        #[arg(long, requires = "set")]
        max_bytes: Option<u64>,
    },
}

/// A failed call, printed as `error: ...`.
#[derive(Debug, thiserror::Error)]
enum CtlError {
    #[error("{status} {code}: {message}")]
    Api { status: u16, code: String, message: String },
    #[error("no origin reachable ({0})")]
    Unreachable(String),
    #[error("{0}")]
    Usage(String),
}

struct Client {
    http: reqwest::Client,
    /// `http`, or `https` with the cluster's TLS.
    scheme: &'static str,
    origins: Vec<String>,
    token: Option<String>,
}

impl Client {
    fn request(&self, origin: &str, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut req = self.http.request(method, format!("{}://{origin}{path}", self.scheme));
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        req
    }

    /// Sends to the first origin that answers.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, String)],
    ) -> Result<Value, CtlError> {
        let mut last_error = String::new();
        for origin in &self.origins {
            let mut req = self.request(origin, method.clone(), path);
            if let Some(body) = body {
                req = req.json(body);
            }
            for (k, v) in headers {
                req = req.header(*k, v);
            }
            match req.send().await {
                Ok(res) => return decode(res).await,
                Err(e) => last_error = format!("{origin}: {e}"),
            }
        }
        Err(CtlError::Unreachable(last_error))
    }

    async fn get_from(&self, origin: &str, path: &str) -> Result<Value, CtlError> {
        match self.request(origin, reqwest::Method::GET, path).send().await {
            Ok(res) => decode(res).await,
            Err(e) => Err(CtlError::Unreachable(format!("{origin}: {e}"))),
        }
    }
}

async fn decode(res: reqwest::Response) -> Result<Value, CtlError> {
    let status = res.status();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        return Ok(body);
    }
    let err = &body["error"];
    Err(CtlError::Api {
        status: status.as_u16(),
        code: err["code"].as_str().unwrap_or("error").to_owned(),
        message: err["message"].as_str().unwrap_or("(no message)").to_owned(),
    })
}

/// Entry point of `raftcast ctl`.
pub fn main(args: CtlArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print(json_mode: bool, value: &Value, human: impl FnOnce(&Value)) {
    if json_mode {
        println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
    } else {
        human(value);
    }
}

async fn run(args: CtlArgs) -> Result<(), CtlError> {
    let tls = crate::tls::peer::PeerTlsPaths::from_flags(
        args.peer_tls_ca.clone(),
        args.peer_tls_cert.clone(),
        args.peer_tls_key.clone(),
    )
    .map_err(CtlError::Usage)?;
    let tls =
        tls.as_ref().map(crate::tls::peer::PeerTls::load).transpose().map_err(|e| CtlError::Usage(e.to_string()))?;
    let builder =
        reqwest::Client::builder().timeout(Duration::from_secs(args.timeout)).connect_timeout(Duration::from_secs(2));
    let http = crate::peer::with_tls(builder, tls.as_deref()).build().map_err(|e| CtlError::Usage(e.to_string()))?;
    let client = Client {
        http,
        scheme: crate::peer::scheme(tls.is_some()),
        origins: args.origin.clone(),
        token: crate::secrets::admin_token(args.token_file.as_deref()).map_err(CtlError::Usage)?,
    };
    let json_mode = args.json;
    use reqwest::Method;
    match args.command {
        CtlCommand::Status => {
            let first = client.call(Method::GET, "/cluster/status", None, &[]).await?;
            let mut views = BTreeMap::new();
            if let Some(nodes) = first["nodes"].as_object() {
                for (id, node) in nodes {
                    let addr = node["http"].as_str().unwrap_or_default();
                    let view = client.get_from(addr, "/cluster/status").await.unwrap_or(Value::Null);
                    views.insert(id.clone(), json!({ "http": addr, "media": node["media"], "status": view }));
                }
            }
            let all = json!({ "cluster": first, "nodes": views });
            print(json_mode, &all, |_| print_status(&first, &views));
        }
        CtlCommand::Init { nodes } => {
            let nodes = parse_nodes(&nodes)?;
            let body = json!({ "nodes": nodes });
            let out = client.call(Method::POST, "/cluster/init", Some(&body), &[]).await?;
            print(json_mode, &out, |v| {
                if v["initialized"] == json!(true) {
                    println!("cluster initialized with nodes {}", nodes.keys().cloned().collect::<Vec<_>>().join(", "));
                } else {
                    println!("cluster already initialized with these members");
                }
            });
        }
        CtlCommand::AddLearner { id, http, media } => {
            let body = json!({ "id": id, "http": http, "media": media });
            let out = client.call(Method::POST, "/cluster/learners", Some(&body), &[]).await?;
            print(json_mode, &out, |_| println!("node {id} added as a learner"));
        }
        CtlCommand::Voters { ids } => {
            let body = json!({ "ids": ids });
            let out = client.call(Method::PUT, "/cluster/voters", Some(&body), &[]).await?;
            print(json_mode, &out, |v| println!("voters are now {}", v["voters"]));
        }
        CtlCommand::Remove { id } => {
            let out = client.call(Method::DELETE, &format!("/cluster/nodes/{id}"), None, &[]).await?;
            print(json_mode, &out, |_| println!("node {id} removed"));
        }
        CtlCommand::Drain { id, wait, wait_secs } => {
            let out = client.call(Method::PUT, &format!("/cluster/nodes/{id}/drain"), None, &[]).await?;
            if wait {
                let last = wait_drained(&client, json_mode, id, &out, Duration::from_secs(wait_secs)).await?;
                print(json_mode, &last, |_| {});
            } else {
                print(json_mode, &out, |v| {
                    println!("origin {id} is draining; it owns {} streams", v["streams_owned"]);
                });
            }
        }
        CtlCommand::Undrain { id } => {
            let out = client.call(Method::DELETE, &format!("/cluster/nodes/{id}/drain"), None, &[]).await?;
            print(json_mode, &out, |v| {
                println!("origin {id} is not draining; it takes new streams ({} owned now)", v["streams_owned"])
            });
        }
        CtlCommand::Streams { stale, action: None } => {
            let path = if stale { "/streams?stale=true" } else { "/streams" };
            let out = client.call(Method::GET, path, None, &[]).await?;
            print(json_mode, &out, print_streams);
        }
        CtlCommand::Streams { action: Some(StreamsAction::Move { stream, to }), .. } => {
            let Some((app, name)) = stream.split_once('/') else {
                return Err(CtlError::Usage(format!("{stream}: expected APP/NAME")));
            };
            let body = json!({ "to": to });
            let out = client.call(Method::POST, &format!("/streams/{app}/{name}/move"), Some(&body), &[]).await?;
            print(json_mode, &out, |v| {
                let (from, to, epoch) = (&v["from"], &v["to"], &v["epoch"]);
                if from == to {
                    println!("{stream} already on origin {to} (epoch {epoch})");
                } else {
                    println!("{stream} moved from origin {from} to origin {to} (epoch {epoch})");
                }
            });
        }
        CtlCommand::So(cmd) => so(&client, json_mode, cmd).await?,
        CtlCommand::Edges(EdgesCommand::Drain { edge, ops_token_file, wait, wait_secs }) => {
            drain_edge(&client.http, &edge, ops_token_file.as_deref(), wait, Duration::from_secs(wait_secs), json_mode)
                .await?
        }
        CtlCommand::Keys(KeysCommand::Add { app, name }) => {
            let body = json!({ "app": app, "name": name });
            let out = client.call(Method::POST, "/keys", Some(&body), &[]).await?;
            print(json_mode, &out, |v| {
                println!(
                    "publish key for {}: {}",
                    v["scope"].as_str().unwrap_or("?"),
                    v["key"].as_str().unwrap_or("?")
                );
                println!("(shown once: only its hash is stored)");
            });
        }
        CtlCommand::Keys(KeysCommand::Require { app, off }) => {
            let body = json!({ "publish_key_required": !off });
            let out = client.call(Method::PUT, &format!("/apps/{app}"), Some(&body), &[]).await?;
            print(json_mode, &out, |_| {
                println!("publishing to {app} {} a key", if off { "no longer requires" } else { "now requires" })
            });
        }
        CtlCommand::Tokens(TokensCommand::Sign { app: Some(app), name, prefix, play, publish, ttl, .. }) => {
            if name.is_some() == prefix.is_some() {
                return Err(CtlError::Usage("a stream token needs exactly one of --name and --prefix".into()));
            }
            if play == publish {
                return Err(CtlError::Usage("a stream token needs exactly one of --play and --publish".into()));
            }
            let mut body = json!({ "app": app, "right": if play { "play" } else { "publish" } });
            let extra = [
                ("name", name.map(Value::from)),
                ("name_prefix", prefix.map(Value::from)),
                ("ttl_secs", ttl.map(Value::from)),
            ];
            set_given(&mut body, extra);
            let out = client.call(Method::POST, "/tokens/stream", Some(&body), &[]).await?;
            print(json_mode, &out, |v| println!("{}", v["token"].as_str().unwrap_or("?")));
        }
        CtlCommand::Tokens(TokensCommand::Sign {
            app: None,
            object,
            object_prefix,
            read,
            write,
            ttl,
            subject,
            persistent,
            quota_objects,
            quota_slots,
            quota_bytes,
            ..
        }) => {
            if object.is_none() && object_prefix.is_none() {
                return Err(CtlError::Usage(
                    "give --app (a stream token) or --object/--object-prefix (a shared-object token)".into(),
                ));
            }
            if read == write {
                return Err(CtlError::Usage("a shared-object token needs exactly one of --read and --write".into()));
            }
            let mut body = json!({ "rights": if read { "read" } else { "write" }, "persistent": persistent });
            if quota_objects.is_some() || quota_slots.is_some() || quota_bytes.is_some() {
                let d = raftcast_raft::token::DEFAULT_QUOTA;
                body["quota"] = json!({
                    "objects": quota_objects.unwrap_or(d.objects),
                    "slots": quota_slots.unwrap_or(d.slots),
                    "bytes": quota_bytes.unwrap_or(d.bytes),
                });
            }
            let extra = [
                ("object", object.map(Value::from)),
                ("object_prefix", object_prefix.map(Value::from)),
                ("ttl_secs", ttl.map(Value::from)),
                ("subject", subject.map(Value::from)),
            ];
            set_given(&mut body, extra);
            let out = client.call(Method::POST, "/tokens", Some(&body), &[]).await?;
            print(json_mode, &out, |v| println!("{}", v["token"].as_str().unwrap_or("?")));
        }
        CtlCommand::Tokens(TokensCommand::Rotate) => {
            let out = client.call(Method::POST, "/tokens/rotate", None, &[]).await?;
            print(json_mode, &out, |v| {
                println!("new tokens are signed with key {}; keys kept: {}", v["key_id"], v["key_ids"])
            });
        }
        CtlCommand::Tokens(TokensCommand::Retire) => {
            let out = client.call(Method::POST, "/tokens/retire", None, &[]).await?;
            print(json_mode, &out, |v| println!("keys kept: {}", v["key_ids"]));
        }
        CtlCommand::Apps { app: Some(app), hooks, hook_timeout_ms, hook_fail_open, .. } if !hooks.is_empty() => {
            let mut body = json!({ "fail_open": hook_fail_open });
            if let Some(t) = hook_timeout_ms {
                body["timeout_ms"] = t.into();
            }
            for hook in hooks {
                let Some((event, url)) = hook.split_once('=') else {
                    return Err(CtlError::Usage(format!("--hook {hook:?}: expected EVENT=URL")));
                };
                body[event] = url.into();
            }
            let out = client.call(Method::PUT, &format!("/apps/{app}/hooks"), Some(&body), &[]).await?;
            print(json_mode, &out, |v| print_app(&app, v));
        }
        CtlCommand::Apps { app: Some(app), no_hooks: true, .. } => {
            let out = client.call(Method::DELETE, &format!("/apps/{app}/hooks"), None, &[]).await?;
            print(json_mode, &out, |_| println!("{app}: no webhooks"));
        }
        CtlCommand::Apps { app, play_token, publish_token, publish_key, stale, .. } => {
            let on = |v: Option<OnOff>| v.map(|v| Value::from(v == OnOff::On));
            let changes = [
                ("play_token_required", on(play_token)),
                ("publish_token_required", on(publish_token)),
                ("publish_key_required", on(publish_key)),
            ];
            if let (Some(app), true) = (&app, changes.iter().any(|(_, v)| v.is_some())) {
                let mut body = json!({});
                set_given(&mut body, changes);
                let out = client.call(Method::PUT, &format!("/apps/{app}"), Some(&body), &[]).await?;
                print(json_mode, &out, |v| print_app(app, v));
            } else {
                let out = client.call(Method::GET, if stale { "/apps?stale=true" } else { "/apps" }, None, &[]).await?;
                print(json_mode, &out, |v| {
                    let rules = v["apps"].as_object().cloned().unwrap_or_default();
                    match &app {
                        Some(app) => print_app(app, rules.get(app).unwrap_or(&json!({}))),
                        None if rules.is_empty() => println!("no app has a rule: every app is open"),
                        None => rules.iter().for_each(|(name, r)| print_app(name, r)),
                    }
                });
            }
        }
        CtlCommand::Record { target, rule } => record(&client, json_mode, target, rule).await?,
        CtlCommand::Recordings { command } => {
            recordings(&client, json_mode, command.unwrap_or(RecordingsCommand::List { stale: false })).await?
        }
        CtlCommand::Pins { command } => {
            pins(&client, json_mode, command.unwrap_or(PinsCommand::List { stale: false })).await?
        }
        CtlCommand::Wait { voters, timeout_secs } => wait(&client, voters, Duration::from_secs(timeout_secs)).await?,
    }
    Ok(())
}

/// Sets the fields of `body` whose values were given.
fn set_given<const N: usize>(body: &mut Value, fields: [(&str, Option<Value>); N]) {
    for (k, v) in fields {
        if let Some(v) = v {
            body[k] = v;
        }
    }
}

/// One app's rules on one line.
fn print_app(app: &str, rules: &Value) {
    let on = |k: &str| if rules[k].as_bool().unwrap_or(false) { "required" } else { "open" };
    println!(
        "{app}: play token {}, publish token {}, publish key {}",
        on("play_token_required"),
        on("publish_token_required"),
        on("publish_key_required")
    );
    if let Some(hooks) = rules["hooks"].as_object() {
        for (event, url) in hooks.iter().filter(|(k, v)| k.starts_with("on_") && !v.is_null()) {
            println!("  {event} -> {}", url.as_str().unwrap_or("?"));
        }
        println!(
            "  hook timeout {} ms, {} when a hook does not answer",
            hooks.get("timeout_ms").unwrap_or(&Value::Null),
            if hooks.get("fail_open").and_then(Value::as_bool) == Some(true) { "admit" } else { "refuse" }
        );
    }
}

/// The streams table. Live columns show `?` when the owner did not answer.
fn print_streams(v: &Value) {
    println!(
        "{:<32} {:>5} {:>8}  {:<16} {:<4} {:>9} {:>12}  SUBSCRIBERS",
        "STREAM", "OWNER", "EPOCH", "EDGE", "PUB", "KBPS", "BYTES_IN"
    );
    for s in v["streams"].as_array().into_iter().flatten() {
        let key = format!("{}/{}", s["app"].as_str().unwrap_or("?"), s["name"].as_str().unwrap_or("?"));
        let publishing = match s["publishing"].as_bool() {
            Some(true) => "yes",
            Some(false) => "no",
            None => "?",
        };
        let or_unknown = |v: &Value| if v.is_null() { "?".to_owned() } else { v.to_string() };
        let subscribers = match s["subscribers"].as_array() {
            Some(edges) if edges.is_empty() => "-".to_owned(),
            Some(edges) => edges.iter().map(|e| e.as_str().unwrap_or("?")).collect::<Vec<_>>().join(","),
            None => "?".to_owned(),
        };
        println!(
            "{key:<32} {:>5} {:>8}  {:<16} {publishing:<4} {:>9} {:>12}  {subscribers}",
            s["owner"].to_string(),
            s["epoch"].to_string(),
            s["edge"].as_str().unwrap_or("?"),
            or_unknown(&s["bitrate_kbps"]),
            or_unknown(&s["bytes_in"]),
        );
    }
}

fn parse_nodes(specs: &[String]) -> Result<BTreeMap<String, Value>, CtlError> {
    if specs.is_empty() {
        return Ok((1..=3)
            .map(|i| {
                (
                    i.to_string(),
                    json!({ "http": format!("127.0.0.1:{}", 8100 + i), "media": format!("127.0.0.1:{}", 9100 + i) }),
                )
            })
            .collect());
    }
    specs
        .iter()
        .map(|spec| {
            let bad = || CtlError::Usage(format!("--node wants ID=HTTP,MEDIA, got {spec:?}"));
            let (id, addrs) = spec.split_once('=').ok_or_else(bad)?;
            let (http, media) = addrs.split_once(',').ok_or_else(bad)?;
            id.parse::<u64>().map_err(|_| bad())?;
            Ok((id.to_owned(), json!({ "http": http, "media": media })))
        })
        .collect()
}

fn print_status(first: &Value, views: &BTreeMap<String, Value>) {
    print!("{}", status_table(first, views));
}

/// The `ctl status` table: one line per node with its Raft state and its load (streams
/// it owns, their ingest kbit/s and subscribed edges, CPU in cores: what placement
/// weighs), `(learner)` and `(draining)` after the addresses; then the voters, learners
/// and draining origins.
fn status_table(first: &Value, views: &BTreeMap<String, Value>) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<5} {:<10} {:>6} {:>6} {:>9} {:>9} {:>7} {:>8} {:>5} {:>4}  {:<22} {:<22}",
        "NODE", "STATE", "LEADER", "TERM", "LAST_LOG", "APPLIED", "STREAMS", "IN_KBPS", "EDGES", "CPU", "HTTP", "MEDIA"
    );
    let voters: Vec<String> = first["voters"].as_array().into_iter().flatten().map(|v| v.to_string()).collect();
    let draining: Vec<String> = first["draining"].as_array().into_iter().flatten().map(|v| v.to_string()).collect();
    for (id, view) in views {
        let s = &view["status"];
        let mut role = if voters.contains(id) { "" } else { " (learner)" }.to_owned();
        if draining.contains(id) {
            role.push_str(" (draining)");
        }
        if s.is_null() {
            let _ = writeln!(
                out,
                "{id:<5} {:<10} {:>6} {:>6} {:>9} {:>9} {:>7} {:>8} {:>5} {:>4}  {:<22} {:<22}{role}",
                "DOWN",
                "-",
                "-",
                "-",
                "-",
                "-",
                "-",
                "-",
                "-",
                view["http"].as_str().unwrap_or("?"),
                view["media"].as_str().unwrap_or("?")
            );
        } else {
            let leader = s["leader_id"].as_u64().map_or("-".to_owned(), |l| l.to_string());
            // An origin of an older build sends no load.
            let load = &s["load"];
            let (streams, kbps, edges, cpu) = if load.is_object() {
                (
                    load["streams"].to_string(),
                    format!("{:.0}", load["ingest_kbps"].as_f64().unwrap_or(0.0)),
                    load["subscriber_edges"].to_string(),
                    format!("{:.2}", load["cpu"].as_f64().unwrap_or(0.0)),
                )
            } else {
                ("-".into(), "-".into(), "-".into(), "-".into())
            };
            let _ = writeln!(
                out,
                "{id:<5} {:<10} {leader:>6} {:>6} {:>9} {:>9} {streams:>7} {kbps:>8} {edges:>5} {cpu:>4}  {:<22} {:<22}{role}",
                s["state"].as_str().unwrap_or("?"),
                s["term"].to_string(),
                s["last_log_index"].to_string(),
                s["applied_index"].to_string(),
                view["http"].as_str().unwrap_or("?"),
                view["media"].as_str().unwrap_or("?"),
            );
        }
    }
    let _ = write!(out, "voters: [{}]  learners: {}", voters.join(", "), first["learners"]);
    if !draining.is_empty() {
        let _ = write!(out, "  draining: [{}]", draining.join(", "));
    }
    out.push('\n');
    out
}

/// `ctl drain ID --wait`: follows `GET /cluster/nodes/ID/drain` until the origin owns
/// no stream, printing each change of its count (unless `json_mode`); returns the last
/// answer. Fails when the origin stops draining meanwhile, or after `timeout`.
async fn wait_drained(
    client: &Client,
    json_mode: bool,
    id: u64,
    first: &Value,
    timeout: Duration,
) -> Result<Value, CtlError> {
    let started = Instant::now();
    let path = format!("/cluster/nodes/{id}/drain");
    let mut last = first.clone();
    let mut shown: Option<u64> = None;
    loop {
        let owned = last["streams_owned"].as_u64().unwrap_or(0);
        if !json_mode && shown != Some(owned) {
            println!("origin {id} is draining; it owns {owned} streams ({:.1} s)", started.elapsed().as_secs_f64());
            shown = Some(owned);
        }
        if last["draining"] != json!(true) {
            return Err(CtlError::Usage(format!("origin {id} stopped draining (ctl undrain?) before it was empty")));
        }
        if owned == 0 {
            if !json_mode {
                println!("origin {id} is drained after {:.1} s", started.elapsed().as_secs_f64());
            }
            return Ok(last);
        }
        if started.elapsed() >= timeout {
            return Err(CtlError::Usage(format!(
                "origin {id} still owns {owned} streams after {timeout:?}; the leader moves them only while \
                 another live origin is not draining (ctl status, ctl streams)"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        last = match client.call(reqwest::Method::GET, &path, None, &[]).await {
            Ok(answer) => answer,
            // No leader for a moment (an election while the drain moves streams), or
            // no origin answering (one restarting): the drain goes on; so does the
            // wait, until its timeout.
            Err(e @ (CtlError::Api { status: 503, .. } | CtlError::Unreachable(_))) => {
                if started.elapsed() >= timeout {
                    return Err(e);
                }
                if !json_mode {
                    println!("origin {id}: no answer now ({e}); asking again");
                }
                continue;
            }
            Err(e) => return Err(e),
        };
    }
}

async fn so(client: &Client, json_mode: bool, cmd: SoCommand) -> Result<(), CtlError> {
    use reqwest::Method;
    let enc = |s: &str| urlencode(s);
    match cmd {
        SoCommand::Get { name, stale } => {
            let q = if stale { "?stale=true" } else { "" };
            let out = client.call(Method::GET, &format!("/shared-objects/{}{q}", enc(&name)), None, &[]).await?;
            print(json_mode, &out, |v| {
                println!(
                    "{} version {}{}",
                    name,
                    v["version"],
                    if v["persistent"] == json!(true) { " (persistent)" } else { "" }
                );
                for (slot, value) in v["slots"].as_object().into_iter().flatten() {
                    println!("  {slot} = {value}");
                }
            });
        }
        SoCommand::Set { name, slot, value, if_version } => {
            let value: Value = serde_json::from_str(&value)
                .map_err(|e| CtlError::Usage(format!("the value must be JSON (quote strings: '\"text\"'): {e}")))?;
            let headers: Vec<(&str, String)> = if_version.map(|v| ("if-match", v.to_string())).into_iter().collect();
            let path = format!("/shared-objects/{}/slots/{}", enc(&name), enc(&slot));
            let out = client.call(Method::PUT, &path, Some(&value), &headers).await?;
            print(json_mode, &out, |v| println!("{name} is now at version {}", v["version"]));
        }
        SoCommand::Del { name, slot, if_version } => {
            let headers: Vec<(&str, String)> = if_version.map(|v| ("if-match", v.to_string())).into_iter().collect();
            let path = format!("/shared-objects/{}/slots/{}", enc(&name), enc(&slot));
            let out = client.call(Method::DELETE, &path, None, &headers).await?;
            print(json_mode, &out, |v| println!("{name} is now at version {}", v["version"]));
        }
        SoCommand::Delete { name, if_version } => {
            let headers: Vec<(&str, String)> = if_version.map(|v| ("if-match", v.to_string())).into_iter().collect();
            let out = client.call(Method::DELETE, &format!("/shared-objects/{}", enc(&name)), None, &headers).await?;
            print(json_mode, &out, |_| println!("{name} removed"));
        }
        SoCommand::Watch { name } => {
            use futures::StreamExt;
            let path = format!("/shared-objects/{}/events", enc(&name));
            let mut last = String::new();
            for origin in &client.origins {
                let res =
                    client.request(origin, Method::GET, &path).timeout(Duration::from_secs(u64::MAX / 4)).send().await;
                let res = match res {
                    Ok(res) if res.status().is_success() => res,
                    Ok(res) => return decode(res).await.map(drop),
                    Err(e) => {
                        last = e.to_string();
                        continue;
                    }
                };
                let mut body = res.bytes_stream();
                while let Some(chunk) = body.next().await {
                    let chunk = chunk.map_err(|e| CtlError::Unreachable(e.to_string()))?;
                    print!("{}", String::from_utf8_lossy(&chunk));
                }
                return Ok(());
            }
            return Err(CtlError::Unreachable(last));
        }
    }
    Ok(())
}

async fn record(
    client: &Client,
    json_mode: bool,
    target: Option<String>,
    rule: Option<RecordRule>,
) -> Result<(), CtlError> {
    use reqwest::Method;
    let (target, rule) = match (target, rule) {
        (None, _) => {
            let out = client.call(Method::GET, "/recording-rules", None, &[]).await?;
            print(json_mode, &out, |v| {
                println!("{:<16} {:<32} {:>6}", "APP", "NAME", "RECORD");
                for r in v["rules"].as_array().into_iter().flatten() {
                    let name = r["name"].as_str().unwrap_or("*");
                    let record = if r["record"] == true { "on" } else { "off" };
                    println!("{:<16} {:<32} {:>6}", r["app"].as_str().unwrap_or("?"), name, record);
                }
            });
            return Ok(());
        }
        (Some(target), Some(rule)) => (target, rule),
        (Some(_), None) => return Err(CtlError::Usage("say on, off or clear after APP[/NAME]".into())),
    };
    let path = match target.split_once('/') {
        Some((app, name)) => format!("/recording-rules/{}/{}", urlencode(app), urlencode(name)),
        None => format!("/recording-rules/{}", urlencode(&target)),
    };
    let out = match rule {
        RecordRule::On => client.call(Method::PUT, &path, Some(&json!({ "record": true })), &[]).await?,
        RecordRule::Off => client.call(Method::PUT, &path, Some(&json!({ "record": false })), &[]).await?,
        RecordRule::Clear => client.call(Method::DELETE, &path, None, &[]).await?,
    };
    let said = match rule {
        RecordRule::On => "is recorded",
        RecordRule::Off => "is not recorded",
        RecordRule::Clear => "has no recording rule",
    };
    print(json_mode, &out, |_| println!("{target} {said}"));
    Ok(())
}

async fn recordings(client: &Client, json_mode: bool, cmd: RecordingsCommand) -> Result<(), CtlError> {
    use reqwest::Method;
    match cmd {
        RecordingsCommand::List { stale } => {
            let path = if stale { "/recordings?stale=true" } else { "/recordings" };
            let out = client.call(Method::GET, path, None, &[]).await?;
            print(json_mode, &out, |v| {
                println!(
                    "{:>10} {:<28} {:>6} {:>10} {:>12} {:>9} {:>10}",
                    "ID", "STREAM", "PIECES", "SECONDS", "BYTES", "FINISHED", "REPLICATED"
                );
                for r in v["recordings"].as_array().into_iter().flatten() {
                    let stream = format!("{}/{}", r["app"].as_str().unwrap_or("?"), r["name"].as_str().unwrap_or("?"));
                    let secs = r["duration_ms"].as_u64().map_or("-".to_owned(), |ms| format!("{:.1}", ms as f64 / 1e3));
                    println!(
                        "{:>10} {:<28} {:>6} {:>10} {:>12} {:>9} {:>10}",
                        r["id"], stream, r["pieces"], secs, r["bytes"], r["finished"], r["replicated"]
                    );
                }
            });
        }
        RecordingsCommand::Show { id } => {
            let out = client.call(Method::GET, &format!("/recordings/{id}"), None, &[]).await?;
            print(json_mode, &out, |v| {
                println!("recording {id}: {}/{}", v["app"].as_str().unwrap_or("?"), v["name"].as_str().unwrap_or("?"));
                println!(
                    "{:>10} {:>6} {:<10} {:>10} {:>10} {:>12} {:>8}",
                    "EPOCH", "OWNER", "HOLDERS", "FIRST_MS", "LAST_MS", "BYTES", "DROPPED"
                );
                for p in v["pieces"].as_array().into_iter().flatten() {
                    let holders: Vec<String> =
                        p["holders"].as_array().into_iter().flatten().map(|h| h.to_string()).collect();
                    let or_dash = |v: &Value| if v.is_null() { "-".to_owned() } else { v.to_string() };
                    println!(
                        "{:>10} {:>6} {:<10} {:>10} {:>10} {:>12} {:>8}",
                        p["epoch"],
                        p["owner"],
                        holders.join(","),
                        or_dash(&p["first_ts"]),
                        or_dash(&p["last_ts"]),
                        or_dash(&p["bytes"]),
                        or_dash(&p["dropped"])
                    );
                }
            });
        }
        RecordingsCommand::Get { id, file } => {
            let path = format!("/recordings/{id}.flv");
            if file.as_os_str() == "-" {
                download(client, &path, &mut std::io::stdout().lock()).await?;
            } else {
                // Into a temporary name, renamed once complete: a cut-off download never
                // leaves a short file under the name asked for.
                let part = file.with_extension("part");
                let mut out =
                    std::fs::File::create(&part).map_err(|e| CtlError::Usage(format!("{}: {e}", part.display())))?;
                let written = match download(client, &path, &mut out).await {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = std::fs::remove_file(&part);
                        return Err(e);
                    }
                };
                std::fs::rename(&part, &file).map_err(|e| CtlError::Usage(format!("{}: {e}", file.display())))?;
                eprintln!("recording {id}: {written} bytes written to {}", file.display());
            }
        }
        RecordingsCommand::Retention { set, max_age_secs, max_bytes } => {
            let out = if set {
                let body = json!({ "max_age_secs": max_age_secs, "max_bytes": max_bytes });
                client.call(Method::PUT, "/recording-retention", Some(&body), &[]).await?
            } else {
                client.call(Method::GET, "/recording-retention", None, &[]).await?
            };
            print(json_mode, &out, |v| {
                let or_none = |v: &Value| if v.is_null() { "no bound".to_owned() } else { v.to_string() };
                println!("max age (s): {}", or_none(&v["max_age_secs"]));
                println!("max bytes:   {}", or_none(&v["max_bytes"]));
            });
        }
        RecordingsCommand::Delete { id } => {
            let out = client.call(Method::DELETE, &format!("/recordings/{id}"), None, &[]).await?;
            print(json_mode, &out, |_| println!("recording {id} deleted"));
        }
    }
    Ok(())
}

/// How long a download may take in all (`--timeout` bounds each other request, and a
/// recording may take minutes to read).
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// Streams the body of `GET path`, from the first origin that answers, into `out`;
/// returns its length. A body cut off (a piece could not be read) is an error.
async fn download(client: &Client, path: &str, out: &mut impl std::io::Write) -> Result<u64, CtlError> {
    let mut last_error = String::new();
    for origin in &client.origins {
        let req = client.request(origin, reqwest::Method::GET, path).timeout(DOWNLOAD_TIMEOUT);
        let mut res = match req.send().await {
            Ok(res) => res,
            Err(e) => {
                last_error = format!("{origin}: {e}");
                continue;
            }
        };
        if !res.status().is_success() {
            return decode(res).await.map(|_| 0);
        }
        let mut written = 0u64;
        loop {
            match res.chunk().await {
                Ok(Some(chunk)) => {
                    out.write_all(&chunk).map_err(|e| CtlError::Usage(e.to_string()))?;
                    written += chunk.len() as u64;
                }
                Ok(None) => break,
                Err(e) => return Err(CtlError::Unreachable(format!("{origin}: the recording was cut off: {e}"))),
            }
        }
        out.flush().map_err(|e| CtlError::Usage(e.to_string()))?;
        return Ok(written);
    }
    Err(CtlError::Unreachable(last_error))
}

async fn pins(client: &Client, json_mode: bool, cmd: PinsCommand) -> Result<(), CtlError> {
    use reqwest::Method;
    match cmd {
        PinsCommand::List { stale } => {
            let path = if stale { "/pins?stale=true" } else { "/pins" };
            let out = client.call(Method::GET, path, None, &[]).await?;
            print(json_mode, &out, |v| {
                println!("{:<16} {:<32} {:>6}", "APP", "PATTERN", "ORIGIN");
                for p in v["pins"].as_array().into_iter().flatten() {
                    println!(
                        "{:<16} {:<32} {:>6}",
                        p["app"].as_str().unwrap_or("?"),
                        p["pattern"].as_str().unwrap_or("?"),
                        p["origin"].to_string()
                    );
                }
            });
        }
        PinsCommand::Set { app, pattern, origin } => {
            let path = format!("/pins/{}/{}", urlencode(&app), urlencode(&pattern));
            let out = client.call(Method::PUT, &path, Some(&json!({ "origin": origin })), &[]).await?;
            print(json_mode, &out, |_| println!("{app}/{pattern} is pinned to origin {origin}"));
        }
        PinsCommand::Del { app, pattern } => {
            let path = format!("/pins/{}/{}", urlencode(&app), urlencode(&pattern));
            let out = client.call(Method::DELETE, &path, None, &[]).await?;
            print(json_mode, &out, |_| println!("pin {app}/{pattern} removed"));
        }
    }
    Ok(())
}

/// `ctl edges drain`: `POST /drain` to the edge, then with `wait` the same request
/// every half second (it is idempotent and answers the clients left) until the edge no
/// longer answers: it has exited.
async fn drain_edge(
    http: &reqwest::Client,
    edge: &str,
    token_file: Option<&std::path::Path>,
    wait: bool,
    wait_for: Duration,
    json_mode: bool,
) -> Result<(), CtlError> {
    let token = match token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| CtlError::Usage(format!("cannot read {}: {e}", path.display())))?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    let post = || {
        let mut req = http.post(format!("http://{edge}/drain"));
        if let Some(token) = &token {
            req = req.bearer_auth(token);
        }
        req
    };
    let first = match post().send().await {
        Ok(res) => decode(res).await?,
        Err(e) => return Err(CtlError::Unreachable(format!("{edge}: {e}"))),
    };
    let clients = |v: &Value| (v["rtmp_connections"].as_u64().unwrap_or(0), v["flv_players"].as_u64().unwrap_or(0));
    print(json_mode, &first, |v| {
        let (rtmp, flv) = clients(v);
        let how = if v["already"] == Value::Bool(true) { "was already draining" } else { "draining" };
        println!("edge {edge} {how}: {rtmp} RTMP connection(s), {flv} HTTP-FLV player(s) left");
    });
    if !wait {
        return Ok(());
    }
    let deadline = Instant::now() + wait_for;
    let mut last = clients(&first);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        match post().send().await {
            // Refused (or cut): the edge has exited.
            Err(e) if e.is_connect() || e.is_request() => {
                if !json_mode {
                    println!("edge {edge} has exited");
                }
                return Ok(());
            }
            Err(e) => return Err(CtlError::Unreachable(format!("{edge}: {e}"))),
            Ok(res) => {
                let now = clients(&decode(res).await?);
                if now != last && !json_mode {
                    println!("edge {edge}: {} RTMP connection(s), {} HTTP-FLV player(s) left", now.0, now.1);
                }
                last = now;
            }
        }
        if Instant::now() >= deadline {
            return Err(CtlError::Usage(format!(
                "edge {edge} still running after {wait_for:?} ({} RTMP, {} HTTP-FLV left)",
                last.0, last.1
            )));
        }
    }
}

async fn wait(client: &Client, voters: usize, timeout: Duration) -> Result<(), CtlError> {
    let started = Instant::now();
    let mut last = String::from("no answer yet");
    while started.elapsed() < timeout {
        match all_voters_agree(client, voters).await {
            Ok(leader) => {
                println!("leader {leader}, {voters} voters up");
                return Ok(());
            }
            Err(why) => last = why,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(CtlError::Usage(format!("timed out after {timeout:?} waiting for a leader and {voters} voters (last: {last})")))
}

/// The leader's id if there are at least `voters` voters, and every one of them
/// answers and names that same leader.
async fn all_voters_agree(client: &Client, voters: usize) -> Result<u64, String> {
    let s = client.call(reqwest::Method::GET, "/cluster/status", None, &[]).await.map_err(|e| e.to_string())?;
    let leader = s["leader_id"].as_u64().ok_or("no leader yet")?;
    let ids: Vec<String> = s["voters"].as_array().into_iter().flatten().map(|v| v.to_string()).collect();
    if ids.len() < voters {
        return Err(format!("{} of {voters} voters", ids.len()));
    }
    for id in &ids {
        let addr = s["nodes"][id]["http"].as_str().ok_or(format!("no address for node {id}"))?;
        let view = client.get_from(addr, "/cluster/status").await.map_err(|e| format!("node {id}: {e}"))?;
        if view["leader_id"].as_u64() != Some(leader) {
            return Err(format!("node {id} does not follow leader {leader} yet"));
        }
    }
    Ok(leader)
}

/// Percent-encodes a path segment.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An origin that answers the drain's progress with 503 (no leader) twice, then
    /// owns 1 stream, then none.
    async fn flaky_origin() -> String {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let asked = Arc::new(AtomicUsize::new(0));
        let route = axum::routing::get(move || {
            let n = asked.fetch_add(1, Ordering::SeqCst);
            async move {
                let unavailable = json!({ "error": { "code": "no_leader", "message": "no leader" } });
                match n {
                    0 | 1 => (axum::http::StatusCode::SERVICE_UNAVAILABLE, axum::Json(unavailable)),
                    2 => (axum::http::StatusCode::OK, axum::Json(json!({ "draining": true, "streams_owned": 1 }))),
                    _ => (axum::http::StatusCode::OK, axum::Json(json!({ "draining": true, "streams_owned": 0 }))),
                }
            }
        });
        let app = axum::Router::new().route("/cluster/nodes/2/drain", route);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr.to_string()
    }

    #[tokio::test]
    async fn a_drain_wait_rides_out_an_election() {
        let origin = flaky_origin().await;
        let client = Client { http: reqwest::Client::new(), scheme: "http", origins: vec![origin], token: None };
        let first = json!({ "draining": true, "streams_owned": 3 });
        let last = wait_drained(&client, true, 2, &first, Duration::from_secs(5)).await.unwrap();
        assert_eq!(last["streams_owned"], 0);
    }

    #[test]
    fn status_marks_learners_and_draining_origins() {
        let first = json!({ "voters": [1, 2], "learners": [3], "draining": [2, 3] });
        let node = |state: Value| json!({ "http": "127.0.0.1:8101", "media": "127.0.0.1:9101", "status": state });
        let up = json!({ "state": "Follower", "leader_id": 1, "term": 2, "last_log_index": 9, "applied_index": 9 });
        let mut loaded = up.clone();
        loaded["load"] = json!({ "origin": 1, "streams": 3, "ingest_kbps": 2500.4, "subscriber_edges": 2, "traffic_kbps": 1.0, "cpu": 0.25 });
        let views = BTreeMap::from([
            ("1".to_owned(), node(loaded)),
            ("2".to_owned(), node(up)),
            ("3".to_owned(), node(Value::Null)),
        ]);
        let table = status_table(&first, &views);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 5, "{table}");
        assert!(!lines[1].contains('('), "{table}");
        let columns = |line: &str| line.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(columns(lines[0])[6..10], ["STREAMS", "IN_KBPS", "EDGES", "CPU"], "{table}");
        assert_eq!(columns(lines[1])[6..10], ["3", "2500", "2", "0.25"], "the load of origin 1: {table}");
        assert_eq!(columns(lines[2])[6..10], ["-", "-", "-", "-"], "no load from an older origin: {table}");
        assert!(lines[2].starts_with("2 ") && lines[2].ends_with(" (draining)"), "{table}");
        assert!(lines[3].contains("DOWN") && lines[3].ends_with(" (learner) (draining)"), "{table}");
        assert_eq!(lines[4], "voters: [1, 2]  learners: [3]  draining: [2, 3]");
        // Nothing draining: no mark, no list (an older origin does not send the field).
        let first = json!({ "voters": [1, 2], "learners": [3] });
        let table = status_table(&first, &views);
        assert!(!table.contains("draining"), "{table}");
    }
}
