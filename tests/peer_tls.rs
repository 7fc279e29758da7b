//! The cluster's mutual TLS (`--peer-tls-*`) keeps out whoever the cluster CA did not
//! sign: on an origin's HTTP port (admin API, Raft RPC, the edges' requests) and on its
//! media-link port, a client without a certificate, with another CA's, or speaking plain
//! TCP is refused at the handshake; an origin with another CA's certificate cannot join;
//! an edge with one gets no link. A member edge, beside them, links and plays.
//! (`tests/failover.rs` runs an owner failover over the same TLS.)

#[path = "common/certs.rs"]
mod certs;
mod common;
#[path = "common/edges.rs"]
mod edges;

use std::path::Path;
use std::time::Duration;

use common::{eventually, Cluster, BIN};
use edges::{ffmpeg_publish, ffprobe_video_packets, EdgeProc};
use raftcast::link::stream::LinkStream;
use raftcast::link::{Control, FrameCodec, LinkFrame, PROTOCOL_VERSION};
use raftcast::tls::peer::{PeerTls, PeerTlsPaths};
use raftcast::tls::CertPaths;
use reqwest::Method;
use serde_json::{json, Value};

/// Member certificates in `dir`, signed by a new CA there.
fn members(dir: &Path, names: &[&str]) {
    certs::make_ca(dir);
    for (serial, name) in names.iter().enumerate() {
        certs::make_member(dir, name, serial as u32 + 1);
    }
}

/// An HTTPS client trusting `ca`, presenting `dir/NAME.pem` (or nothing).
fn client(ca: &Path, identity: Option<(&Path, &str)>) -> reqwest::Client {
    let builder = reqwest::Client::builder().timeout(Duration::from_secs(5));
    let builder = match identity {
        Some((dir, name)) => {
            let paths = PeerTlsPaths {
                ca: ca.to_owned(),
                identity: CertPaths { cert: dir.join(format!("{name}.pem")), key: dir.join(format!("{name}-key.pem")) },
            };
            builder.use_preconfigured_tls(PeerTls::load(&paths).unwrap().client_config())
        }
        None => builder.add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap()),
    };
    builder.build().unwrap()
}

/// `listener`'s handshakes with `outcome` on origin `id` (`raftcast_peer_tls_handshakes_total`).
async fn handshakes(c: &Cluster, id: u64, listener: &str, outcome: &str) -> f64 {
    let (_, text) = c.call(id, Method::GET, "/metrics", None, &[]).await.unwrap();
    let series = format!("raftcast_peer_tls_handshakes_total{{listener=\"{listener}\",outcome=\"{outcome}\"}} ");
    text.as_str().unwrap().lines().find_map(|l| l.strip_prefix(series.as_str())?.parse().ok()).unwrap()
}

/// The states of `edge`'s links to origins, from its `/status`.
async fn link_states(edge: &EdgeProc) -> Vec<String> {
    let status: Value = edge.status().await;
    status["upstreams"].as_array().unwrap().iter().map(|u| u["state"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_members_signed_by_the_cluster_ca_get_in() {
    let certs = tempfile::tempdir().unwrap();
    members(certs.path(), &["origin-1", "origin-2", "origin-3", "edge-1", "ctl"]);
    let strangers = tempfile::tempdir().unwrap();
    members(strangers.path(), &["edge-x", "origin-4", "ctl"]);
    let ca = certs.path().join("ca.pem");
    // Raft elects a leader and takes three voters over TLS (the harness's client is a member).
    let mut c = Cluster::start_with_peer_tls(3, certs.path()).await;
    let origin = c.http(1);

    // The HTTP port: plain HTTP, no certificate, another CA's certificate.
    let plain = reqwest::get(format!("http://{origin}/health")).await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success(), "plain HTTP is not served");
    let url = format!("https://{origin}/health");
    for (who, client) in [
        ("no certificate", client(&ca, None)),
        ("another CA's certificate", client(&ca, Some((strangers.path(), "ctl")))),
    ] {
        let res = client.get(&url).send().await;
        assert!(res.is_err(), "{who}: refused at the handshake, got {res:?}");
    }
    let member = client(&ca, Some((certs.path(), "ctl"))).get(&url).send().await.unwrap();
    assert!(member.status().is_success(), "a member gets in");
    assert!(handshakes(&c, 1, "http", "failed").await >= 3.0, "the refusals are counted");

    // ctl with a member's certificate and with a stranger's.
    let ctl = |dir: &Path| {
        let mut cmd = std::process::Command::new(BIN);
        cmd.args(["ctl", "--origin", &origin.to_string(), "--token-file"])
            .arg(c.dir.path().join("admin-token"))
            .arg("--peer-tls-ca")
            .arg(&ca)
            .arg("--peer-tls-cert")
            .arg(dir.join("ctl.pem"))
            .arg("--peer-tls-key")
            .arg(dir.join("ctl-key.pem"))
            .arg("status");
        cmd.output().unwrap()
    };
    let out = ctl(certs.path());
    assert!(out.status.success(), "ctl as a member: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("voters: [1, 2, 3]"));
    let out = ctl(strangers.path());
    assert!(!out.status.success(), "ctl with another CA's certificate is refused");

    // An origin with another CA's certificate (trusting the cluster's CA) cannot join:
    // the leader's Raft RPCs refuse its certificate, so it never catches up.
    c.origins.insert(4, common::Origin { id: 4, http: common::free_addr(), media: common::free_addr(), child: None });
    c.extra_args = vec![
        "--peer-tls-ca".into(),
        ca.to_str().unwrap().into(),
        "--peer-tls-cert".into(),
        strangers.path().join("origin-4.pem").to_str().unwrap().into(),
        "--peer-tls-key".into(),
        strangers.path().join("origin-4-key.pem").to_str().unwrap().into(),
    ];
    // The harness adds the cluster's own flags for origin-4, which do not exist: start
    // it by hand with the stranger's only.
    c.peer_tls = None;
    c.spawn(4);
    c.peer_tls = Some(certs.path().to_owned());
    c.extra_args.clear();
    let o4 = &c.origins[&4];
    let body = json!({ "id": 4, "http": o4.http.to_string(), "media": o4.media.to_string() });
    let leader = c.wait_leader(None, Duration::from_secs(5)).await;
    let (status, answer) = c.call(leader, Method::POST, "/cluster/learners", Some(&body), &[]).await.unwrap();
    assert!(!status.is_success(), "a stranger origin never catches up: {status} {answer}");
    let (status, _) = c.call(leader, Method::DELETE, "/cluster/nodes/4", None, &[]).await.unwrap();
    assert!(status.is_success());
    c.kill(4);
    let (_, cluster) = c.call(leader, Method::GET, "/cluster/status", None, &[]).await.unwrap();
    assert_eq!(cluster["voters"], json!([1, 2, 3]), "{cluster}");

    // Edges: a member, one with another CA's certificate, one without TLS.
    let flags = |ca: &Path, dir: &Path, name: &str| -> Vec<String> {
        let path = |f: String| dir.join(f).to_str().unwrap().to_owned();
        vec![
            "--peer-tls-ca".into(),
            ca.to_str().unwrap().into(),
            "--peer-tls-cert".into(),
            path(format!("{name}.pem")),
            "--peer-tls-key".into(),
            path(format!("{name}-key.pem")),
        ]
    };
    let (member_flags, stranger_flags) = (flags(&ca, certs.path(), "edge-1"), flags(&ca, strangers.path(), "edge-x"));
    let member = EdgeProc::start(&c, "edge-1", &member_flags.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let stranger = EdgeProc::start(&c, "edge-x", &stranger_flags.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let plain = EdgeProc::start(&c, "edge-p", &[]).await;
    let media_refused = handshakes(&c, 1, "media", "failed").await
        + handshakes(&c, 2, "media", "failed").await
        + handshakes(&c, 3, "media", "failed").await;

    let _publisher = ffmpeg_publish(&member.rtmp_url("live", "members"), c.dir.path().join("publisher.log"));
    let packets = eventually(Duration::from_secs(20), "the member edge to play the stream", || async {
        ffprobe_video_packets(&member.rtmp_url("live", "members"), 2).await.ok().filter(|n| *n > 0)
    })
    .await;
    eprintln!("member edge: {packets} video packets in 2 s; links {:?}", link_states(&member).await);
    assert!(link_states(&member).await.iter().any(|s| s == "live"), "the member edge's links are up");

    // The strangers' requests to the origins fail at the handshake, so they never learn
    // an owner, and no link of theirs is up.
    for edge in [&stranger, &plain] {
        let played = ffprobe_video_packets(&edge.rtmp_url("live", "members"), 2).await;
        assert!(!matches!(played, Ok(n) if n > 0), "{}: no stream without the cluster ({played:?})", edge.name);
        let states = link_states(edge).await;
        assert!(states.iter().all(|s| s != "live"), "{}: no link is up: {states:?}", edge.name);
    }

    // The media-link port itself, with the cluster secret: a member gets `Welcome`; a
    // stranger's certificate and plain TCP get nothing.
    let media = c.origins[&1].media;
    let identity = |dir: &Path, name: &str| {
        let identity = CertPaths { cert: dir.join(format!("{name}.pem")), key: dir.join(format!("{name}-key.pem")) };
        PeerTls::load(&PeerTlsPaths { ca: ca.clone(), identity }).unwrap()
    };
    let (member_tls, stranger_tls) = (identity(certs.path(), "edge-1"), identity(strangers.path(), "edge-x"));
    let welcome = hello(media, Some(&member_tls), &c.secret).await;
    assert!(matches!(welcome, Ok(LinkFrame::Control(Control::Welcome { .. }))), "a member links: {welcome:?}");
    for (who, tls) in [("another CA's certificate", Some(&*stranger_tls)), ("plain TCP", None)] {
        let answer = hello(media, tls, &c.secret).await;
        assert!(answer.is_err(), "{who}: no link ({answer:?})");
    }
    let refused_now = handshakes(&c, 1, "media", "failed").await
        + handshakes(&c, 2, "media", "failed").await
        + handshakes(&c, 3, "media", "failed").await;
    assert!(refused_now >= media_refused + 2.0, "the media-link port counted both refusals");
}

/// Connects to the media-link port at `addr`, says `Hello` with `secret`, and returns
/// the first frame the origin answers.
async fn hello(addr: std::net::SocketAddr, tls: Option<&PeerTls>, secret: &str) -> Result<LinkFrame, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut reader, mut writer) = LinkStream::connect(addr, tls).await.map_err(|e| e.to_string())?.split();
    let hello = Control::Hello { protocol: PROTOCOL_VERSION, edge: "probe".into(), secret: secret.into() };
    let mut out = bytes::BytesMut::new();
    FrameCodec::encode(&LinkFrame::Control(hello), &mut out);
    writer.write_all(&out).await.map_err(|e| e.to_string())?;
    writer.flush().await.map_err(|e| e.to_string())?;
    let mut buf = bytes::BytesMut::new();
    loop {
        if let Some(frame) = FrameCodec::decode(&mut buf).map_err(|e| e.to_string())? {
            return Ok(frame);
        }
        let read = tokio::time::timeout(Duration::from_secs(5), reader.read_buf(&mut buf)).await;
        if read.map_err(|_| "no answer in 5 s".to_owned())?.map_err(|e| e.to_string())? == 0 {
            return Err("closed".into());
        }
    }
}
