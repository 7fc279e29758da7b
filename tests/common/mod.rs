//! Test harness: real `raftcast origin` processes on loopback, driven over HTTP.
//!
//! Every wait is a condition polled against a deadline, never a bare sleep.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tempfile::TempDir;

pub const BIN: &str = env!("CARGO_BIN_EXE_raftcast");

/// A free loopback address for a server process to bind later
/// ([`raftcast::bench::free_loopback_port`]: below the ephemeral range).
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], raftcast::bench::free_loopback_port().expect("a free loopback port")))
}

/// A base port whose next twenty ports (base+1 ..= base+20) bind now, for
/// `scripts/bootstrap.sh`'s `RAFTCAST_*_BASE` variables; below the ephemeral range like
/// [`free_addr`], so no outgoing connection takes one before its node binds it.
pub fn free_base() -> u16 {
    raftcast::bench::free_loopback_range(21).expect("21 free loopback ports in a row")
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub struct Origin {
    pub id: u64,
    pub http: SocketAddr,
    pub media: SocketAddr,
    pub child: Option<Child>,
}

/// A cluster of origin processes sharing one temporary directory.
pub struct Cluster {
    pub dir: TempDir,
    pub token: String,
    pub secret: String,
    pub origins: BTreeMap<u64, Origin>,
    pub client: reqwest::Client,
    /// Extra flags for every origin started from now on.
    pub extra_args: Vec<String>,
    /// Extra flags for one origin (after `extra_args`), by id.
    pub origin_args: BTreeMap<u64, Vec<String>>,
    /// With the cluster's mutual TLS: the folder holding `ca.pem` and each member's
    /// `NAME.pem`/`NAME-key.pem` (origins `origin-ID`, this harness's client `ctl`).
    pub peer_tls: Option<PathBuf>,
}

impl Cluster {
    /// Starts `n` origins (ids 1..=n), initializes them through node 1 and waits for a
    /// leader and `n` voters.
    pub async fn start(n: u64) -> Cluster {
        Self::start_with(n, &[]).await
    }

    /// Like [`Cluster::start`], passing `args` to every origin.
    pub async fn start_with(n: u64, args: &[&str]) -> Cluster {
        let mut c = Cluster::new();
        c.extra_args = args.iter().map(|a| a.to_string()).collect();
        for id in 1..=n {
            c.add_origin(id);
        }
        c.wait_listening().await;
        c.init().await;
        c.wait_voters(n as usize).await;
        c
    }

    /// Like [`Cluster::start`], every origin speaking mutual TLS with the certificates
    /// in `certs` (see [`Cluster::peer_tls`]).
    pub async fn start_with_peer_tls(n: u64, certs: &std::path::Path) -> Cluster {
        let mut c = Cluster::new();
        c.peer_tls = Some(certs.to_owned());
        let paths = raftcast::tls::peer::PeerTlsPaths {
            ca: certs.join("ca.pem"),
            identity: raftcast::tls::CertPaths { cert: certs.join("ctl.pem"), key: certs.join("ctl-key.pem") },
        };
        let tls = raftcast::tls::peer::PeerTls::load(&paths).expect("the test client's cluster certificate");
        c.client = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .use_preconfigured_tls(tls.client_config())
            .build()
            .unwrap();
        for id in 1..=n {
            c.add_origin(id);
        }
        c.wait_listening().await;
        c.init().await;
        c.wait_voters(n as usize).await;
        c
    }

    /// The `--peer-tls-*` flags of member `name` (none without the cluster's TLS).
    pub fn peer_tls_flags(&self, name: &str) -> Vec<String> {
        let Some(dir) = &self.peer_tls else { return Vec::new() };
        let path = |file: String| dir.join(file).to_str().unwrap().to_owned();
        vec![
            "--peer-tls-ca".into(),
            path("ca.pem".into()),
            "--peer-tls-cert".into(),
            path(format!("{name}.pem")),
            "--peer-tls-key".into(),
            path(format!("{name}-key.pem")),
        ]
    }

    /// `http://` or (with the cluster's TLS) `https://` origin `id`, then `path`.
    pub fn url(&self, id: u64, path: &str) -> String {
        let scheme = if self.peer_tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.http(id))
    }

    pub fn new() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let secret = "cluster-secret-for-tests-0123456789".to_owned();
        let token = "admin-token-for-tests-0123456789".to_owned();
        std::fs::write(dir.path().join("cluster-secret"), &secret).unwrap();
        std::fs::write(dir.path().join("admin-token"), &token).unwrap();
        let client = reqwest::Client::builder().timeout(Duration::from_secs(15)).build().unwrap();
        Cluster {
            dir,
            token,
            secret,
            origins: BTreeMap::new(),
            client,
            extra_args: Vec::new(),
            origin_args: BTreeMap::new(),
            peer_tls: None,
        }
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("origin-{id}"))
    }

    pub fn log_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("origin-{id}.log"))
    }

    /// Registers and starts origin `id` on fresh ports.
    pub fn add_origin(&mut self, id: u64) {
        let origin = Origin { id, http: free_addr(), media: free_addr(), child: None };
        self.origins.insert(id, origin);
        self.spawn(id);
    }

    /// Waits until every origin serves `/health`. A port from [`free_addr`] can still be
    /// taken (by another process) before the origin binds it; that origin
    /// exits, and gets new ports and another start here, so a cluster never goes on
    /// one origin short. Only before `init`: the ports are not yet in the membership.
    pub async fn wait_listening(&mut self) {
        let ids: Vec<u64> = self.origins.keys().copied().collect();
        for id in ids {
            for attempt in 1.. {
                let deadline = Instant::now() + Duration::from_secs(10);
                let up = loop {
                    let url = self.url(id, "/health");
                    if self.client.get(&url).send().await.is_ok() {
                        break true;
                    }
                    let child = self.origins.get_mut(&id).unwrap().child.as_mut().expect("origin started");
                    if child.try_wait().unwrap().is_some() || Instant::now() >= deadline {
                        break false;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                };
                if up {
                    break;
                }
                let log = std::fs::read_to_string(self.log_path(id)).unwrap_or_default();
                assert!(attempt < 3, "origin {id} did not start {attempt} times; its log:\n{log}");
                eprintln!("origin {id} did not start (attempt {attempt}); retrying on new ports");
                self.kill(id);
                let o = self.origins.get_mut(&id).unwrap();
                (o.http, o.media) = (free_addr(), free_addr());
                self.spawn(id);
            }
        }
    }

    /// (Re)starts the process of origin `id` with its original ports and data dir.
    pub fn spawn(&mut self, id: u64) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path(id)).unwrap();
        let o = &self.origins[&id];
        let child = Command::new(BIN)
            .arg("origin")
            .args(["--id", &id.to_string()])
            .args(["--http", &o.http.to_string()])
            .args(["--media", &o.media.to_string()])
            .arg("--data-dir")
            .arg(self.data_dir(id))
            .arg("--cluster-secret-file")
            .arg(self.dir.path().join("cluster-secret"))
            .arg("--admin-token-file")
            .arg(self.dir.path().join("admin-token"))
            .args(&self.extra_args)
            .args(self.origin_args.get(&id).into_iter().flatten())
            .args(self.peer_tls_flags(&format!("origin-{id}")))
            .env_remove("RAFTCAST_CLUSTER_SECRET")
            .env_remove("RAFTCAST_ADMIN_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.origins.get_mut(&id).unwrap().child = Some(child);
    }

    /// SIGKILLs origin `id` and reaps it.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.origins.get_mut(&id).unwrap().child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Waits (10 s at most) for origin `id`'s process to exit on its own.
    pub async fn wait_exit(&mut self, id: u64) -> std::process::ExitStatus {
        let mut child = self.origins.get_mut(&id).unwrap().child.take().expect("origin running");
        eventually(Duration::from_secs(10), "the origin to exit", || {
            let status = child.try_wait().unwrap();
            async move { status }
        })
        .await
    }

    pub fn http(&self, id: u64) -> SocketAddr {
        self.origins[&id].http
    }

    /// `raftcast ctl --json ARGS` against origins `ids`: (success, stdout, stderr).
    pub fn ctl(&self, ids: &[u64], args: &[&str]) -> (bool, String, String) {
        let origins: Vec<String> = ids.iter().map(|i| self.http(*i).to_string()).collect();
        let out = Command::new(BIN)
            .args(["ctl", "--json", "--origin", &origins.join(","), "--token-file"])
            .arg(self.dir.path().join("admin-token"))
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success(), text, String::from_utf8_lossy(&out.stderr).into_owned())
    }

    pub fn nodes_json(&self) -> Value {
        let nodes: serde_json::Map<String, Value> = self
            .origins
            .values()
            .map(|o| (o.id.to_string(), json!({ "http": o.http.to_string(), "media": o.media.to_string() })))
            .collect();
        json!({ "nodes": nodes })
    }

    pub async fn init(&self) {
        let body = self.nodes_json();
        eventually(Duration::from_secs(20), "cluster init", || async {
            let (status, _) = self.call(1, Method::POST, "/cluster/init", Some(&body), &[]).await.ok()?;
            status.is_success().then_some(())
        })
        .await;
    }

    /// Sends an authenticated admin request to origin `via`.
    pub async fn call(
        &self,
        via: u64,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<(StatusCode, Value), reqwest::Error> {
        let mut req = self.client.request(method, self.url(via, path)).bearer_auth(&self.token);
        if let Some(body) = body {
            req = req.json(body);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = req.send().await?;
        let status = res.status();
        let text = res.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
    }

    pub async fn status(&self, id: u64) -> Option<Value> {
        match self.call(id, Method::GET, "/cluster/status", None, &[]).await {
            Ok((s, v)) if s.is_success() => Some(v),
            _ => None,
        }
    }

    /// The node that reports itself leader, if any (excluding `except`).
    pub async fn leader(&self, except: Option<u64>) -> Option<u64> {
        for id in self.origins.keys().copied().filter(|id| Some(*id) != except) {
            if let Some(s) = self.status(id).await {
                if s["state"] == "Leader" {
                    return Some(id);
                }
            }
        }
        None
    }

    pub async fn wait_leader(&self, except: Option<u64>, timeout: Duration) -> u64 {
        eventually(timeout, "a leader", || self.leader(except)).await
    }

    pub async fn wait_voters(&self, n: usize) {
        eventually(Duration::from_secs(20), "leader and voters", || async {
            let leader = self.leader(None).await?;
            let s = self.status(leader).await?;
            (s["voters"].as_array()?.len() == n).then_some(())
        })
        .await;
    }

    /// PUTs a slot; returns the status and body.
    pub async fn put_slot(
        &self,
        via: u64,
        object: &str,
        slot: &str,
        value: &Value,
        if_match: Option<u64>,
    ) -> Result<(StatusCode, Value), reqwest::Error> {
        let m = if_match.map(|v| v.to_string());
        let headers: Vec<(&str, &str)> = m.as_deref().map(|v| ("if-match", v)).into_iter().collect();
        self.call(via, Method::PUT, &format!("/shared-objects/{object}/slots/{slot}"), Some(value), &headers).await
    }

    pub async fn object(&self, via: u64, object: &str, stale: bool) -> Option<Value> {
        let q = if stale { "?stale=true" } else { "" };
        match self.call(via, Method::GET, &format!("/shared-objects/{object}{q}"), None, &[]).await {
            Ok((s, v)) if s.is_success() => Some(v),
            _ => None,
        }
    }

    /// Sends `sig` (`-STOP`, `-CONT`, …) to origin `id`'s process.
    pub fn signal(&self, id: u64, sig: &str) {
        let pid = self.origins[&id].child.as_ref().expect("origin running").id();
        let status = Command::new("kill").args([sig, &pid.to_string()]).status().unwrap();
        assert!(status.success(), "kill {sig} {pid}");
    }

    /// Sends an internal request to origin `id`'s `/raft/forward` (cluster secret) and
    /// decodes its answer; `None` if it does not answer in 15 s or answers garbage.
    pub async fn forward_to(&self, id: u64, req: &raftcast_raft::Forward) -> Option<raftcast_raft::ForwardReply> {
        let res = self
            .client
            .post(self.url(id, "/raft/forward"))
            .header(raftcast_raft::rpc::SECRET_HEADER, &self.secret)
            .body(raftcast_raft::rpc::encode(req))
            .send()
            .await
            .ok()?;
        raftcast_raft::rpc::decode(&res.bytes().await.ok()?).ok()
    }

    /// Sends an internal request the way an edge does: to each running origin in turn
    /// until one answers with something other than `NotLeader` (10 s at most).
    pub async fn forward(&self, req: &raftcast_raft::Forward) -> raftcast_raft::ForwardReply {
        use raftcast_raft::ForwardReply;
        let running: Vec<u64> = self.origins.values().filter(|o| o.child.is_some()).map(|o| o.id).collect();
        eventually(Duration::from_secs(10), "an origin to answer a forwarded request", || async {
            for id in &running {
                match self.forward_to(*id, req).await {
                    None | Some(ForwardReply::NotLeader { .. }) => {}
                    Some(reply) => return Some(reply),
                }
            }
            None
        })
        .await
    }

    /// Prints each origin's log (for failed tests).
    pub fn dump_logs(&self) {
        for id in self.origins.keys() {
            if let Ok(log) = std::fs::read_to_string(self.log_path(*id)) {
                // A panic's message is usually far above the tail.
                for line in log.lines().filter(|l| l.contains("panicked")).take(5) {
                    eprintln!("origin-{id}: {line}");
                }
                let tail: Vec<&str> = log.lines().rev().take(80).collect();
                eprintln!("--- origin-{id} log (last 40 lines) ---");
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        for o in self.origins.values_mut() {
            if let Some(mut child) = o.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
