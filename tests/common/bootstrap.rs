//! `RAFTCAST_LB=1 scripts/bootstrap.sh` driven from tests: a whole cluster (three
//! origins, two or three edges, HAProxy in front) on one block of free loopback ports,
//! stopped when the guard drops (printing the logs' tails first if the test panicked).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::common::{eventually, BIN};

/// The ports of one cluster, from `base`: origins' HTTP on base+1..3 and media on
/// base+11..13; edges' RTMP on base+5.. and HTTP on base+15.. (at most 3 edges); the
/// balancer on base+4 (RTMP) and base+14 (HTTP), its stats page on base+19; the edges'
/// agent checks on base+21...
pub struct Ports {
    pub base: u16,
    pub edges: u16,
}

impl Ports {
    /// A block of 25 free ports for a cluster of `edges` edges (1 to 3).
    pub fn new(edges: u16) -> Ports {
        assert!((1..=3).contains(&edges), "the port layout has room for 3 edges");
        let base = raftcast::bench::free_loopback_range(25).expect("25 free loopback ports in a row");
        Ports { base, edges }
    }
    pub fn lb_http(&self) -> String {
        format!("127.0.0.1:{}", self.base + 14)
    }
    pub fn lb_rtmp(&self) -> String {
        format!("127.0.0.1:{}", self.base + 4)
    }
    /// Edge `i`'s HTTP address (1-based, as `edge-i`); also its entry in `--rtmpt-peers`,
    /// at index `i - 1`.
    pub fn edge_http(&self, i: u16) -> String {
        format!("127.0.0.1:{}", self.base + 14 + i)
    }
    pub fn edge_rtmp(&self, i: u16) -> String {
        format!("127.0.0.1:{}", self.base + 4 + i)
    }
    pub fn origin_http(&self, i: u16) -> String {
        format!("127.0.0.1:{}", self.base + i)
    }
}

/// Runs `scripts/bootstrap.sh ACTION` with `RAFTCAST_LB=1` for the cluster in `data`,
/// which runs a copy of the test build named `rc-node` beside `data` (no release build).
pub fn script(data: &Path, p: &Ports, action: &str) -> Output {
    Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/bootstrap.sh"))
        .arg(action)
        .env("RAFTCAST_BIN", data.with_file_name("rc-node"))
        .env("RAFTCAST_DATA_DIR", data)
        .env("RAFTCAST_EDGES", p.edges.to_string())
        .env("RAFTCAST_HTTP_BASE", p.base.to_string())
        .env("RAFTCAST_MEDIA_BASE", (p.base + 10).to_string())
        .env("RAFTCAST_RTMP_BASE", (p.base + 4).to_string())
        .env("RAFTCAST_EDGE_HTTP_BASE", (p.base + 14).to_string())
        .env("RAFTCAST_AGENT_BASE", (p.base + 20).to_string())
        .env("RAFTCAST_LB_STATS", format!("127.0.0.1:{}", p.base + 19))
        .env("RAFTCAST_LB", "1")
        .env_remove("RAFTCAST_ADMIN_TOKEN")
        .env_remove("RAFTCAST_CLUSTER_SECRET")
        .env_remove("RAFTCAST_EDGE_RTMPT_PEERS")
        .output()
        .unwrap()
}

/// The script's output; panics with it if the script failed.
pub fn ok(out: Output) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "bootstrap failed:\n{text}");
    text
}

/// The pid of `name` (`edge-1`, `origin-2`, `haproxy`) from the script's pid files.
pub fn pid(data: &Path, name: &str) -> u32 {
    std::fs::read_to_string(data.join(format!("pids/{name}.pid"))).unwrap().trim().parse().unwrap()
}

pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

/// A cluster started by the script in a temporary directory; `stop` when dropped.
pub struct Bootstrapped {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub ports: Ports,
}

impl Bootstrapped {
    /// `start` with `edges` edges; returns the cluster and the script's output.
    pub fn start(edges: u16) -> (Bootstrapped, String) {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::copy(BIN, data.with_file_name("rc-node")).unwrap();
        let b = Bootstrapped { dir, data, ports: Ports::new(edges) };
        let out = ok(script(&b.data, &b.ports, "start"));
        (b, out)
    }

    pub fn script(&self, action: &str) -> Output {
        script(&self.data, &self.ports, action)
    }

    pub fn pid(&self, name: &str) -> u32 {
        pid(&self.data, name)
    }

    /// SIGKILLs `name` (`edge-2`, `origin-3`) and waits for it to be gone.
    pub async fn kill(&self, name: &str) {
        let pid = self.pid(name);
        assert!(Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap().success());
        let what = format!("{name} to die");
        eventually(Duration::from_secs(5), &what, || async move { (!alive(pid)).then_some(()) }).await;
    }

    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data.join("admin-token")).unwrap().trim().to_owned()
    }

    /// GET `path` on origin `i`'s admin API: the JSON body of a 2xx answer.
    pub async fn admin_get(&self, i: u16, path: &str) -> Option<serde_json::Value> {
        let url = format!("http://{}{path}", self.ports.origin_http(i));
        let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
        let r = client.get(url).bearer_auth(self.admin_token()).send().await.ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.json().await.ok()
    }

    /// `/metrics` of edge `i`, or `None` if it does not answer.
    pub async fn edge_metrics(&self, i: u16) -> Option<String> {
        let url = format!("http://{}/metrics", self.ports.edge_http(i));
        let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
        client.get(url).send().await.ok()?.text().await.ok()
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.data.join(format!("logs/{name}.log"))).unwrap_or_default()
    }

    /// Prints the tail of every node's log and HAProxy's (panics first: they are far up).
    pub fn dump_logs(&self, lines: usize) {
        let mut names = vec!["haproxy".to_owned()];
        names.extend((1..=3).map(|i| format!("origin-{i}")));
        names.extend((1..=self.ports.edges).map(|i| format!("edge-{i}")));
        for name in names {
            let text = self.log(&name);
            for line in text.lines().filter(|l| l.contains("panicked")).take(5) {
                eprintln!("{name}: {line}");
            }
            let tail: Vec<&str> = text.lines().rev().take(lines).collect();
            eprintln!("--- {name} (last {lines} lines) ---\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
    }
}

impl Drop for Bootstrapped {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs(40);
        }
        let _ = self.script("stop");
    }
}

/// The sum of every series of metric `name` (any labels) in a Prometheus text page;
/// `None` when it has none.
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{')))
        .filter_map(|l| l.rsplit(' ').next()?.trim().parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}
