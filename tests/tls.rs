//! TLS on the edges with real clients: ffmpeg publishes over RTMPS to one edge and
//! ffprobe/ffmpeg play over RTMPS from the other, curl fetches HLS over HTTPS with
//! HTTP/2, and a certificate replaced on disk reaches new connections while a player
//! connected before keeps receiving frames. Certificates come from a throw-away CA
//! made with openssl.

#[path = "common/certs.rs"]
mod certs;
mod common;
#[path = "common/edges.rs"]
mod edges;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use certs::{make_ca, make_cert};
use common::{eventually, free_addr, Cluster};
use edges::{ffmpeg_publish_with, ffprobe_video_packets_with, metric_value, require, EdgeProc, Proc};
use tokio::io::AsyncReadExt;

/// The subject of the certificate a new TLS connection to `addr` is served, verified
/// against `ca` (openssl s_client).
fn served_subject(addr: SocketAddr, ca: &Path) -> Option<String> {
    let script = format!(
        "openssl s_client -connect {addr} -servername localhost -verify_return_error -CAfile {} </dev/null 2>/dev/null \
         | openssl x509 -noout -subject",
        ca.display()
    );
    let out = Command::new("sh").args(["-c", &script]).output().ok()?;
    let subject = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !subject.is_empty()).then_some(subject)
}

/// curl over HTTPS: (HTTP version, status), e.g. ("2", 200).
fn curl(url: &str, ca: &Path) -> (String, u16) {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "--max-time", "10", "--http2", "--cacert"])
        .arg(ca)
        .args(["-w", "%{http_version} %{http_code}", url])
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (version, code) = text.split_once(' ').unwrap_or(("", "0"));
    (version.to_owned(), code.parse().unwrap_or(0))
}

/// Frames an `ffmpeg -progress` file reports so far.
fn progress_frames(path: &Path) -> u64 {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().rev().find_map(|l| l.strip_prefix("frame=")?.trim().parse().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmps_and_https_with_http2_serve_real_clients_and_a_new_certificate_reaches_new_connections_only() {
    for tool in ["ffmpeg", "ffprobe", "openssl", "curl"] {
        require(tool);
    }
    let c = Cluster::start(1).await;
    let tls = c.dir.path().join("tls");
    std::fs::create_dir(&tls).unwrap();
    let ca = make_ca(&tls);
    let (cert, key) = (tls.join("edge.pem"), tls.join("edge-key.pem"));
    make_cert(&tls, "edge first", 1, &cert, &key);
    let tls_args = |rtmps: SocketAddr, https: SocketAddr| {
        ["--rtmps", &rtmps.to_string(), "--https", &https.to_string()]
            .map(str::to_owned)
            .into_iter()
            .chain(["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()].map(str::to_owned))
            .chain(["--handshake-timeout-ms", "2000", "--http-header-timeout-ms", "2000"].map(str::to_owned))
            .collect::<Vec<String>>()
    };
    let (rtmps1, https1, rtmps2, https2) = (free_addr(), free_addr(), free_addr(), free_addr());
    let args1 = tls_args(rtmps1, https1);
    let args2 = tls_args(rtmps2, https2);
    let edge1 = EdgeProc::start(&c, "edge-1", &args1.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let edge2 = EdgeProc::start(&c, "edge-2", &args2.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let verify = ["-tls_verify", "1", "-ca_file", ca.to_str().unwrap()];

    // Publish over RTMPS to edge-1, the certificate checked against the CA.
    let _ffmpeg = ffmpeg_publish_with(&format!("rtmps://{rtmps1}/live/tls"), &verify, c.dir.path().join("ffmpeg.log"));
    eventually(Duration::from_secs(20), "edge-1 to receive the RTMPS publish", || async {
        let status = edge1.status().await;
        (status["publishers"].as_u64().unwrap_or(0) > 0).then_some(())
    })
    .await;

    // Play over RTMPS from edge-2: ~30 video packets a second.
    let url2 = format!("rtmps://{rtmps2}/live/tls");
    let packets = ffprobe_video_packets_with(&url2, &verify, 5).await.expect("ffprobe over RTMPS");
    assert!(packets >= 90, "{packets} video packets in 5 s over RTMPS");

    // HLS over HTTPS, HTTP/2 negotiated by ALPN (and HTTP/1.1 still served).
    let playlist = format!("https://{https2}/live/tls/index.m3u8");
    let (version, status) = eventually(Duration::from_secs(20), "an HLS playlist over HTTPS", || {
        let answer = curl(&playlist, &ca);
        async move { (answer.1 == 200).then_some(answer) }
    })
    .await;
    assert_eq!((version.as_str(), status), ("2", 200));
    let http1 = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "--http1.1", "--cacert", ca.to_str().unwrap()])
        .args(["-w", "%{http_version} %{http_code}", &format!("https://localhost:{}/health", https1.port())])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&http1.stdout), "1.1 200", "HTTP/1.1 over TLS, by name");

    // A stranger holding a TCP connection without a TLS handshake is closed at the
    // handshake deadline (2 s here: the RTMP handshake timeout, the HTTP header
    // timeout) on both listeners.
    for addr in [rtmps2, https2] {
        let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        let read = tokio::time::timeout(Duration::from_secs(6), idle.read(&mut [0u8; 16])).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{addr}: a silent connection was not closed: {read:?}");
    }

    // A player connected before the swap.
    let progress = c.dir.path().join("player-progress.txt");
    let player = Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-loglevel", "warning"])
        .args(verify)
        .args(["-rw_timeout", "5000000", "-i", &url2, "-c", "copy", "-f", "null", "-progress"])
        .arg(&progress)
        .arg("-")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(c.dir.path().join("player.log")).unwrap())
        .spawn()
        .unwrap();
    let mut player = Proc(player);
    eventually(Duration::from_secs(20), "the RTMPS player's first frames", || {
        let frames = progress_frames(&progress);
        async move { (frames >= 30).then_some(()) }
    })
    .await;
    let first = served_subject(rtmps2, &ca).expect("a verified TLS handshake");
    assert!(first.contains("edge first"), "{first}");

    // Swap the certificate on disk: new connections get it within a few seconds.
    make_cert(&tls, "edge second", 2, &cert, &key);
    for addr in [rtmps1, rtmps2, https1, https2] {
        let subject = eventually(Duration::from_secs(10), "the new certificate on new connections", || {
            let subject = served_subject(addr, &ca).filter(|s| s.contains("edge second"));
            async move { subject }
        })
        .await;
        assert!(subject.contains("edge second"), "{addr}: {subject}");
    }
    // The player from before the swap keeps receiving frames on its old session.
    let at_swap = progress_frames(&progress);
    eventually(Duration::from_secs(15), "frames to keep reaching the player connected before the swap", || {
        let frames = progress_frames(&progress);
        async move { (frames >= at_swap + 90).then_some(()) }
    })
    .await;
    assert!(player.running(), "the player from before the swap is still connected");

    // A broken pair on disk is refused: the second certificate stays.
    std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n").unwrap();
    let _ = Command::new("kill").args(["-HUP", &edge2.pid().to_string()]).status();
    let log = edge2.log.clone();
    eventually(Duration::from_secs(10), "edge-2 to log the refused reload", || {
        let refused = std::fs::read_to_string(&log).unwrap_or_default().contains("not reloaded");
        async move { refused.then_some(()) }
    })
    .await;
    let still = served_subject(rtmps2, &ca).expect("still a verified TLS handshake");
    assert!(still.contains("edge second"), "{still}");
    let (version, status) = curl(&playlist, &ca);
    assert_eq!((version.as_str(), status), ("2", 200), "HTTPS still served after a refused reload");
}

/// A TLS client session to `addr` that trusts `ca`, after `prefix` in clear text
/// (a PROXY header), from the local address `from`.
async fn tls_connect(
    from: &str,
    addr: SocketAddr,
    prefix: &[u8],
    ca: &Path,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    // The client the load tool uses (ring, like the edges; see src/tls.rs), with ALPN.
    let mut config = (*raftcast::bench::client::tls_client_config(ca).unwrap()).clone();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut tcp = socket.connect(addr).await.unwrap();
    tcp.write_all(prefix).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .expect("a TLS handshake in time")
        .expect("a verified TLS handshake")
}

/// Edge `edge-1` of `c` with RTMPS and HTTPS on fresh ports, a certificate for
/// `localhost` from a fresh CA, and `extra` flags; the edge, the CA file and the two
/// TLS addresses.
async fn tls_edge(c: &Cluster, extra: &[&str]) -> (EdgeProc, PathBuf, SocketAddr, SocketAddr) {
    let dir = c.dir.path().join("tls");
    std::fs::create_dir(&dir).unwrap();
    let ca = make_ca(&dir);
    let (cert, key) = (dir.join("edge.pem"), dir.join("edge-key.pem"));
    make_cert(&dir, "edge", 1, &cert, &key);
    let (rtmps, https) = (free_addr(), free_addr());
    let (rtmps_s, https_s) = (rtmps.to_string(), https.to_string());
    let mut args = vec![
        "--rtmps",
        &rtmps_s,
        "--https",
        &https_s,
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    (EdgeProc::start(c, "edge-1", &args).await, ca, rtmps, https)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_balancer_the_proxy_header_comes_before_tls_on_both_listeners() {
    use tokio::io::AsyncWriteExt;
    require("openssl");
    let c = Cluster::start(1).await;
    let (_edge, ca, rtmps, https) = tls_edge(&c, &["--proxy-protocol-from", "127.0.0.5"]).await;
    let header = |to: SocketAddr| format!("PROXY TCP4 127.0.0.2 127.0.0.1 40000 {}\r\n", to.port()).into_bytes();

    // HTTPS: the header, TLS (HTTP/1.1 by ALPN), a request.
    let mut conn = tls_connect("127.0.0.5", https, &header(https), &ca, &[b"http/1.1"]).await;
    conn.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf)).await.unwrap().unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));

    // RTMPS: the header, TLS, then C0+C1 gets S0+S1.
    let mut conn = tls_connect("127.0.0.5", rtmps, &header(rtmps), &ca, &[]).await;
    let mut c01 = vec![3u8];
    c01.extend_from_slice(&[0u8; 1536]);
    conn.write_all(&c01).await.unwrap();
    let mut s0 = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut s0)).await.unwrap().unwrap();
    assert_eq!(s0[0], 3, "S0 over TLS after a PROXY header");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_is_closed_and_handshakes_are_counted() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    require("openssl");
    let c = Cluster::start(1).await;
    let (edge, ca, rtmps, https) = tls_edge(&c, &["--http-header-timeout-ms", "1000"]).await;

    // An HTTP/2 client that sends its preface and settings, then nothing: hyper has no
    // idle timer for HTTP/2; the edge's closes it after the header timeout (1 s).
    let mut h2 = tls_connect("127.0.0.1", https, b"", &ca, &[b"h2"]).await;
    assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await.unwrap();
    h2.flush().await.unwrap();
    let opened = std::time::Instant::now();
    let mut seen = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(8), async {
        let mut buf = [0u8; 4096];
        loop {
            match h2.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let after = opened.elapsed();
    assert!(closed.is_ok(), "an idle HTTP/2 connection stayed open for 8 s");
    assert!(after >= Duration::from_millis(900), "closed after {after:?}, before the idle timeout");
    // The server's frames (9-byte headers: length, type, flags, stream): a GOAWAY
    // (type 7) came before the close, a graceful shutdown.
    let (mut at, mut types) = (0, Vec::new());
    while at + 9 <= seen.len() {
        let len = usize::from(seen[at]) << 16 | usize::from(seen[at + 1]) << 8 | usize::from(seen[at + 2]);
        types.push(seen[at + 3]);
        at += 9 + len;
    }
    assert!(types.contains(&7), "no GOAWAY among the server's frames {types:?}");
    eprintln!("idle HTTP/2 connection closed after {after:?}");

    // A good handshake and a bad one on each listener are counted.
    for addr in [rtmps, https] {
        let mut bad = tokio::net::TcpStream::connect(addr).await.unwrap();
        bad.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(5), bad.read(&mut [0u8; 64])).await;
    }
    drop(tls_connect("127.0.0.1", rtmps, b"", &ca, &[]).await);
    eventually(Duration::from_secs(5), "handshakes counted", || async {
        let m = edge.metrics().await;
        let n = |listener: &str, outcome: &str| {
            metric_value(&m, &format!("edge_tls_handshakes_total{{listener=\"{listener}\",outcome=\"{outcome}\"}}"))
                .unwrap_or(0.0)
        };
        (n("https", "ok") >= 1.0
            && n("https", "failed") >= 1.0
            && n("rtmps", "ok") >= 1.0
            && n("rtmps", "failed") >= 1.0)
            .then_some(())
    })
    .await;
}
