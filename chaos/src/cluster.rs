//! The five real processes (three origins, two edges) of one run: start, initialize,
//! kill, pause, restart, skew a clock, and ask the origins what they see. Every process
//! is registered with [`crate::cleanup`] while it runs.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use raftcast::bench::free_loopback_port;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use tokio::process::{Child, Command};

use crate::cleanup;
use crate::net::{Backend, Node};

/// The libfaketime preload library (Debian's `libfaketime`).
pub const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

pub const ORIGINS: [u32; 3] = [1, 2, 3];

/// Addresses of one node.
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    /// Origin: admin API + Raft RPC; edge: HTTP-FLV and /health.
    pub http: SocketAddr,
    /// Origin: media link; edge: RTMP.
    pub media: SocketAddr,
}

struct Proc {
    child: Child,
    pid: u32,
}

/// How to start the cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub bin: PathBuf,
    pub dir: PathBuf,
    /// Start origins under libfaketime (each with its own offset file).
    pub faketime: bool,
}

pub struct Cluster {
    pub backend: Arc<Backend>,
    opts: ClusterOptions,
    addrs: BTreeMap<Node, Addrs>,
    procs: BTreeMap<Node, Proc>,
    pub token: String,
    client: reqwest::Client,
    /// Delaying proxies of healed latency faults: their connections run on at zero
    /// delay until the cluster stops.
    pub retired: Vec<crate::proxy::DelayProxy>,
    /// Abuse windows started so far; each takes the next attacker address.
    pub abuse_windows: u32,
}

impl Cluster {
    /// Starts three origins, initializes the cluster, waits for a leader and three
    /// voters, then starts two edges and waits for their `/health`.
    pub async fn start(backend: Arc<Backend>, opts: ClusterOptions) -> anyhow::Result<Cluster> {
        std::fs::create_dir_all(opts.dir.join("logs"))?;
        let secret = format!("chaos-cluster-secret-{:016x}", rand::random::<u64>());
        let token = format!("chaos-admin-token-{:016x}", rand::random::<u64>());
        std::fs::write(opts.dir.join("cluster-secret"), &secret)?;
        std::fs::write(opts.dir.join("admin-token"), &token)?;
        plant_www(&opts.dir)?;
        let mut addrs = BTreeMap::new();
        for node in crate::net::NODES {
            let ip = backend.ip(node);
            let a = match &*backend {
                Backend::Netns(_) => match node {
                    Node::Origin(_) => Addrs { http: SocketAddr::new(ip, 8100), media: SocketAddr::new(ip, 9100) },
                    Node::Edge(_) => Addrs { http: SocketAddr::new(ip, 8080), media: SocketAddr::new(ip, 1935) },
                },
                Backend::Loopback => Addrs {
                    http: SocketAddr::new(ip, free_loopback_port()?),
                    media: SocketAddr::new(ip, free_loopback_port()?),
                },
            };
            addrs.insert(node, a);
        }
        let client = reqwest::Client::builder().timeout(Duration::from_secs(3)).build()?;
        let mut c = Cluster {
            backend,
            opts,
            addrs,
            procs: BTreeMap::new(),
            token,
            client,
            retired: Vec::new(),
            abuse_windows: 0,
        };
        for id in ORIGINS {
            if c.opts.faketime {
                c.set_skew(id, 0)?;
            }
            c.spawn(Node::Origin(id)).await?;
        }
        c.init().await?;
        for e in [1, 2] {
            c.spawn(Node::Edge(e)).await?;
        }
        for e in [1, 2] {
            let url = format!("http://{}/health", c.addrs[&Node::Edge(e)].http);
            c.wait_for(Duration::from_secs(20), &format!("edge-{e} /health"), || {
                let req = c.client.get(&url).send();
                async move { req.await.ok().filter(|r| r.status().is_success()).map(|_| ()) }
            })
            .await?;
        }
        Ok(c)
    }

    pub fn addrs(&self, node: Node) -> Addrs {
        self.addrs[&node]
    }

    pub fn data_dir(&self, origin: u32) -> PathBuf {
        self.opts.dir.join(format!("origin-{origin}"))
    }

    fn log_path(&self, node: Node) -> PathBuf {
        self.opts.dir.join("logs").join(format!("{node}.log"))
    }

    fn skew_file(&self, origin: u32) -> PathBuf {
        self.opts.dir.join(format!("faketime-origin-{origin}"))
    }

    /// Sets `origin`'s wall clock `secs` away from the real one (libfaketime re-reads
    /// the file within a second). Only for clusters started with `faketime`.
    pub fn set_skew(&self, origin: u32, secs: i64) -> anyhow::Result<()> {
        if !self.opts.faketime {
            bail!("this cluster was not started under libfaketime");
        }
        std::fs::write(self.skew_file(origin), format!("{secs:+}\n"))?;
        Ok(())
    }

    /// (Re)starts `node` with its addresses and data dir.
    pub async fn spawn(&mut self, node: Node) -> anyhow::Result<()> {
        if self.procs.contains_key(&node) {
            bail!("{node} is already running");
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path(node))?;
        let prefix = self.backend.exec_prefix(node);
        let bin = self.opts.bin.to_string_lossy().to_string();
        let mut argv: Vec<String> = prefix;
        argv.push(bin);
        let a = self.addrs[&node];
        let dir = &self.opts.dir;
        match node {
            Node::Origin(id) => {
                argv.extend(["origin".into(), "--id".into(), id.to_string()]);
                argv.extend(["--http".into(), a.http.to_string(), "--media".into(), a.media.to_string()]);
                argv.extend(["--data-dir".into(), self.data_dir(id).to_string_lossy().into()]);
                argv.extend(["--admin-token-file".into(), dir.join("admin-token").to_string_lossy().into()]);
            }
            Node::Edge(e) => {
                let origins: Vec<String> =
                    ORIGINS.iter().map(|o| self.addrs[&Node::Origin(*o)].http.to_string()).collect();
                argv.extend(["edge".into(), "--id".into(), format!("edge-{e}")]);
                argv.extend(["--rtmp".into(), a.media.to_string(), "--http".into(), a.http.to_string()]);
                argv.extend(["--origins".into(), origins.join(",")]);
                argv.extend(["--www".into(), dir.join("www").to_string_lossy().into()]);
            }
        }
        argv.extend(["--cluster-secret-file".into(), dir.join("cluster-secret").to_string_lossy().into()]);
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .env_remove("RAFTCAST_CLUSTER_SECRET")
            .env_remove("RAFTCAST_ADMIN_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        if let (Node::Origin(id), true) = (node, self.opts.faketime) {
            cmd.env("LD_PRELOAD", FAKETIME_LIB)
                .env("FAKETIME_TIMESTAMP_FILE", self.skew_file(id))
                .env("FAKETIME_CACHE_DURATION", "1")
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        let child = cmd.spawn().with_context(|| format!("starting {node}"))?;
        let pid = child.id().context("no pid")?;
        cleanup::add_pid(pid);
        self.procs.insert(node, Proc { child, pid });
        Ok(())
    }

    pub fn pid(&self, node: Node) -> Option<u32> {
        self.procs.get(&node).map(|p| p.pid)
    }

    async fn signal(pid: u32, sig: &str) -> anyhow::Result<()> {
        let status = Command::new("kill").args([sig, &pid.to_string()]).stdin(Stdio::null()).status().await?;
        if !status.success() {
            bail!("kill {sig} {pid} failed");
        }
        Ok(())
    }

    /// SIGKILL and reap.
    pub async fn kill(&mut self, node: Node) -> anyhow::Result<()> {
        let Some(mut p) = self.procs.remove(&node) else { bail!("{node} is not running") };
        p.child.kill().await?;
        cleanup::remove_pid(p.pid);
        Ok(())
    }

    /// SIGTERM, wait up to 10 s for a graceful exit, then SIGKILL.
    pub async fn terminate(&mut self, node: Node) -> anyhow::Result<()> {
        let Some(mut p) = self.procs.remove(&node) else { bail!("{node} is not running") };
        Self::signal(p.pid, "-TERM").await?;
        if tokio::time::timeout(Duration::from_secs(10), p.child.wait()).await.is_err() {
            p.child.kill().await?;
        }
        cleanup::remove_pid(p.pid);
        Ok(())
    }

    pub async fn pause(&self, node: Node) -> anyhow::Result<()> {
        Self::signal(self.pid(node).context("not running")?, "-STOP").await
    }

    pub async fn resume(&self, node: Node) -> anyhow::Result<()> {
        Self::signal(self.pid(node).context("not running")?, "-CONT").await
    }

    /// Kills everything (edges first).
    pub async fn stop_all(&mut self) {
        self.retired.clear();
        for node in [Node::Edge(1), Node::Edge(2), Node::Origin(1), Node::Origin(2), Node::Origin(3)] {
            if let Some(p) = self.procs.get(&node) {
                let _ = Self::signal(p.pid, "-CONT").await;
            }
            let _ = self.kill(node).await;
        }
    }

    /// An authenticated admin request to `origin`; `(status, body)`.
    pub async fn call(
        &self,
        client: &reqwest::Client,
        origin: u32,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, String)],
    ) -> Result<(u16, Value), reqwest::Error> {
        let url = format!("http://{}{}", self.addrs[&Node::Origin(origin)].http, path);
        admin_call(client, &url, &self.token, method, body, headers).await
    }

    pub async fn status(&self, origin: u32) -> Option<Value> {
        match self.call(&self.client, origin, reqwest::Method::GET, "/cluster/status", None, &[]).await {
            Ok((200, v)) => Some(v),
            _ => None,
        }
    }

    /// The origin that says it leads, seen by the majority of answers at the newest term.
    pub async fn leader(&self) -> Option<u32> {
        let mut best: Option<(u64, u32)> = None;
        for id in ORIGINS {
            if let Some(s) = self.status(id).await {
                if s["state"] == "Leader" {
                    let term = s["term"].as_u64().unwrap_or(0);
                    if best.is_none_or(|(t, _)| term > t) {
                        best = Some((term, id));
                    }
                }
            }
        }
        best.map(|(_, id)| id)
    }

    /// Waits until every origin answers, all name the same leader, and every node has
    /// applied what the leader had when asked.
    pub async fn wait_healthy(&self, timeout: Duration) -> anyhow::Result<()> {
        self.wait_for(timeout, "a healthy cluster (one leader, three voters caught up)", || async {
            let mut statuses = Vec::new();
            for id in ORIGINS {
                statuses.push(self.status(id).await?);
            }
            let leader = statuses[0]["leader_id"].as_u64()?;
            if statuses.iter().any(|s| s["leader_id"].as_u64() != Some(leader)) {
                return None;
            }
            let ls = statuses.iter().find(|s| s["id"].as_u64() == Some(leader))?;
            if ls["state"] != "Leader" || ls["voters"].as_array()?.len() != 3 {
                return None;
            }
            let target = ls["last_log_index"].as_u64()?;
            let lagging = statuses.iter().any(|s| s["applied_index"].as_u64().unwrap_or(0) + 2 < target);
            (!lagging).then_some(())
        })
        .await
    }

    async fn init(&self) -> anyhow::Result<()> {
        let nodes: serde_json::Map<String, Value> = ORIGINS
            .iter()
            .map(|id| {
                let a = self.addrs[&Node::Origin(*id)];
                (id.to_string(), json!({ "http": a.http.to_string(), "media": a.media.to_string() }))
            })
            .collect();
        let body = json!({ "nodes": nodes });
        self.wait_for(Duration::from_secs(30), "cluster init", || async {
            let r = self.call(&self.client, 1, reqwest::Method::POST, "/cluster/init", Some(&body), &[]).await;
            matches!(r, Ok((s, _)) if (200..300).contains(&s)).then_some(())
        })
        .await?;
        self.wait_healthy(Duration::from_secs(30)).await
    }

    /// Polls `f` every 100 ms until it answers, or fails after `timeout`.
    pub async fn wait_for<T, F, Fut>(&self, timeout: Duration, what: &str, mut f: F) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f().await {
                return Ok(v);
            }
            if Instant::now() >= deadline {
                bail!("timed out after {timeout:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Resident memory of `node`'s process in KiB.
    pub fn rss_kib(&self, node: Node) -> Option<u64> {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.pid(node)?)).ok()?;
        text.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
    }

    /// Bytes under `origin`'s data dir.
    pub fn data_bytes(&self, origin: u32) -> u64 {
        dir_bytes(&self.data_dir(origin))
    }
}

/// The edges' `--www` folder: a page, plus what a careless deploy leaves beside it and
/// the `www-escape` attack asks for (`attack::http::WWW_FORBIDDEN`): a symlink out of the
/// folder to the cluster secret, `node_modules`, `test/` and dotfiles.
fn plant_www(dir: &Path) -> anyhow::Result<()> {
    let www = dir.join("www");
    std::fs::create_dir_all(www.join("node_modules/pkg"))?;
    std::fs::create_dir_all(www.join("test"))?;
    std::fs::write(www.join("index.html"), "<!doctype html><title>chaos</title>\n")?;
    std::fs::write(www.join("node_modules/pkg/package.json"), "{\"name\": \"pkg\"}\n")?;
    std::fs::write(www.join("test/secret.txt"), "test fixture\n")?;
    std::fs::write(www.join(".npmrc"), "//registry.example/:_authToken=chaos\n")?;
    std::fs::write(www.join(".env"), "SECRET=chaos\n")?;
    let secret = std::fs::canonicalize(dir.join("cluster-secret"))?;
    let link = www.join("leak");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(secret, link)?;
    Ok(())
}

fn dir_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// One admin API request with the bearer token; the body parsed as JSON (or kept as a
/// string when it is not JSON).
pub async fn admin_call(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    method: reqwest::Method,
    body: Option<&Value>,
    headers: &[(&str, String)],
) -> Result<(u16, Value), reqwest::Error> {
    let mut req = client.request(method, url).bearer_auth(token);
    if let Some(body) = body {
        req = req.json(body);
    }
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let res = req.send().await?;
    let status = res.status().as_u16();
    let text = res.text().await?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
}
