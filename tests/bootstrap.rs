//! `scripts/bootstrap.sh`: start forms a three-voter cluster behind two edges and prints
//! working publish and play URLs, a second start adds no duplicates, start restarts a
//! killed node, stop leaves no process behind. The binary runs under another name than
//! `raftcast`, as an operator's copy might: the script must know its nodes by their
//! arguments.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

/// The binary the cluster in `data` runs: a copy of raftcast named `rc-node`, beside it.
fn node_bin(data: &Path) -> std::path::PathBuf {
    data.with_file_name("rc-node")
}

fn script(data: &Path, http_base: u16, action: &str) -> Output {
    script_with(data, http_base, action, &[])
}

/// [`script`] with more environment: `env` pairs.
fn script_with(data: &Path, http_base: u16, action: &str, env: &[(&str, String)]) -> Output {
    Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/bootstrap.sh"))
        .arg(action)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RAFTCAST_BIN", node_bin(data))
        .env("RAFTCAST_DATA_DIR", data)
        .env("RAFTCAST_HTTP_BASE", http_base.to_string())
        .env("RAFTCAST_MEDIA_BASE", (http_base + 10).to_string())
        .env("RAFTCAST_RTMP_BASE", (http_base + 4).to_string())
        .env("RAFTCAST_EDGE_HTTP_BASE", (http_base + 14).to_string())
        .env_remove("RAFTCAST_ADMIN_TOKEN")
        .env_remove("RAFTCAST_CLUSTER_SECRET")
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "bootstrap failed:\n{text}");
    text
}

const NAMES: [&str; 5] = ["origin-1", "origin-2", "origin-3", "edge-1", "edge-2"];

fn pids(data: &Path) -> Vec<(String, u32)> {
    NAMES
        .iter()
        .map(|name| {
            let pid = std::fs::read_to_string(data.join(format!("pids/{name}.pid"))).unwrap().trim().parse().unwrap();
            (name.to_string(), pid)
        })
        .collect()
}

fn alive(pid: u32) -> bool {
    // A zombie is dead for our purposes; /proc/PID/stat's third field says.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

fn status(data: &Path, http_base: u16) -> Value {
    let origins: Vec<String> = (1..=3).map(|i| format!("127.0.0.1:{}", http_base + i)).collect();
    let out = Command::new(common::BIN)
        .args(["ctl", "--json", "--origin", &origins.join(","), "--token-file"])
        .arg(data.join("admin-token"))
        .arg("status")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Runs `bootstrap.sh stop` when dropped, so a failing test leaves no cluster behind.
struct StopOnDrop<'a> {
    data: &'a Path,
    base: u16,
}

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        let _ = script(self.data, self.base, "stop");
    }
}

#[test]
fn bootstrap_starts_three_voters_and_two_edges_restarts_the_dead_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::copy(common::BIN, node_bin(&data)).unwrap();
    let base = common::free_base();
    let _cleanup = StopOnDrop { data: &data, base };
    let out = ok(script(&data, base, "start"));
    assert!(out.contains("cluster initialized"), "{out}");
    let s = status(&data, base);
    assert_eq!(s["cluster"]["voters"].as_array().unwrap().len(), 3, "{s}");
    let leaders: Vec<_> =
        s["nodes"].as_object().unwrap().values().filter(|n| n["status"]["state"] == "Leader").collect();
    assert_eq!(leaders.len(), 1, "{s}");
    // The printed URLs point at the edges, which serve.
    let (rtmp1, rtmp2, http2) = (base + 5, base + 6, base + 16);
    assert!(out.contains(&format!("publish: rtmp://127.0.0.1:{rtmp1}/live/test")), "{out}");
    assert!(out.contains(&format!("rtmp://127.0.0.1:{rtmp2}/live/test")), "{out}");
    assert!(out.contains(&format!("http://127.0.0.1:{http2}/live/test.flv")), "{out}");
    assert!(out.contains("ffmpeg -nostdin -re") && out.contains("ffplay"), "{out}");
    // The webcast URL carries a write token for that stream's objects.
    let webcast = out.lines().find(|l| l.contains("/webcast/?stream=live/test&token=rc1.")).expect(&out);
    let token = webcast.split("token=").nth(1).unwrap().trim();
    let edge_http = webcast.trim_start_matches("http://").split('/').next().unwrap().to_owned();
    let put = |object: &str| {
        let url = format!("http://{edge_http}/shared-objects/{object}/slots/k");
        let auth = format!("Authorization: Bearer {token}");
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT", "-H", &auth])
            .args(["-H", "content-type: application/json", "--data", "1", &url])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(put("webcast%2Flive%2Ftest%2Fchat"), "200");
    assert_eq!(put("webcast%2Flive%2Fother%2Fchat"), "403");
    for port in [base + 15, http2] {
        let health = Command::new("curl").args(["-fsS", &format!("http://127.0.0.1:{port}/health")]).output().unwrap();
        assert!(health.status.success(), "edge on {port} does not serve /health");
    }
    for port in [rtmp1, rtmp2] {
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(), "no RTMP listener on {port}");
    }
    // The origin's data: owner-only (the process's umask is 077).
    let mut todo = vec![data.join("origin-1")];
    while let Some(dir) = todo.pop() {
        use std::os::unix::fs::PermissionsExt;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
            let want = if entry.file_type().unwrap().is_dir() { 0o700 } else { 0o600 };
            assert_eq!(mode, want, "{}", entry.path().display());
            if want == 0o700 {
                todo.push(entry.path());
            }
        }
    }
    for secret in ["cluster-secret", "admin-token"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.join(secret)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{secret}");
    }

    // Running start again starts nothing new.
    let first = pids(&data);
    let out = ok(script(&data, base, "start"));
    assert_eq!(out.matches("already running").count(), 5, "{out}");
    assert!(!out.contains("cluster initialized"), "initialized twice: {out}");
    assert_eq!(pids(&data), first);

    // A killed node is restarted from its data and rejoins.
    let (_, victim) = first[1];
    Command::new("kill").args(["-9", &victim.to_string()]).status().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while alive(victim) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = ok(script(&data, base, "start"));
    assert!(out.contains("started origin-2"), "{out}");
    let restarted = pids(&data);
    assert_ne!(restarted[1].1, victim);
    let s = status(&data, base);
    assert!(!s["nodes"]["2"]["status"].is_null(), "origin-2 not serving: {s}");

    // stop ends exactly what start started.
    ok(script(&data, base, "stop"));
    for (name, pid) in restarted {
        assert!(!alive(pid), "{name} (pid {pid}) still running after stop");
    }
    assert!(!alive(victim));
}

#[test]
fn bootstrap_with_tls_serves_rtmps_and_https_and_members_speak_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::copy(common::BIN, node_bin(&data)).unwrap();
    let base = common::free_base();
    // RTMPS on base+7/8 and HTTPS on base+17/18 for edge-1/edge-2.
    let env = [
        ("RAFTCAST_TLS", "1".to_owned()),
        ("RAFTCAST_PEER_TLS", "1".to_owned()),
        ("RAFTCAST_RTMPS_BASE", (base + 6).to_string()),
        ("RAFTCAST_HTTPS_BASE", (base + 16).to_string()),
    ];
    let _cleanup = StopOnDrop { data: &data, base };
    let out = ok(script_with(&data, base, "start", &env));
    assert!(out.contains("cluster initialized") && out.contains("members: mutual TLS"), "{out}");
    let (ca, peer) = (data.join("tls/ca.pem"), data.join("tls/peer"));
    for file in ["ca-key.pem", "origin-1-key.pem", "edge-2-key.pem", "ctl-key.pem"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(peer.join(file)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }

    // ctl: refused without the cluster certificate, answered with it.
    let origins: Vec<String> = (1..=3).map(|i| format!("127.0.0.1:{}", base + i)).collect();
    let ctl = |tls: bool| {
        let mut cmd = Command::new(common::BIN);
        cmd.args(["ctl", "--json", "--timeout", "3", "--origin", &origins.join(","), "--token-file"])
            .arg(data.join("admin-token"));
        if tls {
            cmd.arg("--peer-tls-ca").arg(peer.join("ca.pem"));
            cmd.arg("--peer-tls-cert").arg(peer.join("ctl.pem"));
            cmd.arg("--peer-tls-key").arg(peer.join("ctl-key.pem"));
        }
        cmd.arg("status").env_remove("RAFTCAST_PEER_TLS_CA").output().unwrap()
    };
    assert!(!ctl(false).status.success(), "plain ctl is refused");
    let answer = ctl(true);
    assert!(answer.status.success(), "{}", String::from_utf8_lossy(&answer.stderr));
    let s: Value = serde_json::from_slice(&answer.stdout).unwrap();
    assert_eq!(s["cluster"]["voters"].as_array().unwrap().len(), 3, "{s}");
    // `status` finds the cluster's TLS on its own (sticky with the data dir).
    let status = ok(script(&data, base, "status"));
    assert!(status.contains("voters: [1, 2, 3]"), "{status}");

    // RTMPS through the edges, verified against the throw-away CA.
    let (rtmps1, rtmps2, https2) = (base + 7, base + 8, base + 18);
    let verify = ["-tls_verify", "1", "-ca_file", ca.to_str().unwrap()];
    let publish = format!("rtmps://127.0.0.1:{rtmps1}/live/tls");
    let mut publisher = Command::new("ffmpeg")
        .args(["-nostdin", "-loglevel", "error", "-re", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25"])
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-f", "flv"])
        .args(verify)
        .arg(&publish)
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("ffmpeg runs (scripts/install-deps.sh)");
    let play = format!("rtmps://127.0.0.1:{rtmps2}/live/tls");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let packets = loop {
        let out = Command::new("ffprobe")
            .args(verify)
            .args(["-v", "error", "-select_streams", "v:0", "-count_packets", "-read_intervals", "%+2"])
            .args(["-show_entries", "stream=nb_read_packets", "-of", "csv=p=0", &play])
            .output()
            .unwrap();
        let n: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
        if n > 0 || std::time::Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let _ = publisher.kill();
    let _ = publisher.wait();
    assert!(packets > 0, "ffprobe read no video over RTMPS from edge-2");

    // HTTPS on edge-2 answers over HTTP/2.
    let https = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_version} %{http_code}", "--http2", "--cacert"])
        .arg(&ca)
        .arg(format!("https://127.0.0.1:{https2}/health"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&https.stdout), "2 200", "{}", String::from_utf8_lossy(&https.stderr));
    ok(script(&data, base, "stop"));
}
