//! An edge behind a load balancer (`--proxy-protocol-from`): connections from the
//! trusted balancer carry the client's address in a PROXY protocol header, and the
//! per-address caps count that client, not the balancer. A trusted connection without
//! a header is closed; an untrusted one is never parsed for a header.
//!
//! The balancer is played by sockets bound to 127.0.0.5; the clients it "relays" are
//! 127.0.0.2 and 127.0.0.3 (only named in headers, never connected to).

mod common;
#[path = "common/edges.rs"]
mod edges;

use std::net::SocketAddr;
use std::time::Duration;

use common::Cluster;
use edges::{metric_value, EdgeProc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const BALANCER: &str = "127.0.0.5";

async fn connect_from(local: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{local}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

/// A PROXY v2 header for a TCP4 client `src` connecting to `dst`.
fn v2_header(src: &str, dst: SocketAddr) -> Vec<u8> {
    let src: std::net::Ipv4Addr = src.parse().unwrap();
    let SocketAddr::V4(dst) = dst else { panic!("IPv4 expected") };
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.ip().octets());
    h.extend_from_slice(&40000u16.to_be_bytes());
    h.extend_from_slice(&dst.port().to_be_bytes());
    h
}

/// Sends `prefix` then a keep-alive `GET /health`; the status line's code, or `None`
/// when the edge closed the connection without an answer.
async fn health(conn: &mut TcpStream, prefix: &[u8]) -> Option<u16> {
    let mut req = prefix.to_vec();
    req.extend_from_slice(b"GET /health HTTP/1.1\r\nHost: edge\r\n\r\n");
    if conn.write_all(&req).await.is_err() {
        return None;
    }
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf)).await.expect("an answer or a close");
    let text = String::from_utf8_lossy(&buf[..n.unwrap_or(0)]).into_owned();
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// Sends `prefix` then an RTMP C0+C1; whether S0+S1 came back (the handshake went on)
/// rather than a close.
async fn rtmp_handshake(conn: &mut TcpStream, prefix: &[u8]) -> bool {
    let mut c01 = prefix.to_vec();
    c01.push(3);
    c01.extend_from_slice(&[0u8; 1536]);
    if conn.write_all(&c01).await.is_err() {
        return false;
    }
    let mut s01 = [0u8; 1537];
    let read = tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut s01)).await.expect("S0S1 or a close");
    read.is_ok() && s01[0] == 3
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_count_the_client_behind_the_balancer() {
    let c = Cluster::start(1).await;
    let edge = EdgeProc::start(
        &c,
        "edge-1",
        &[
            "--proxy-protocol-from",
            BALANCER,
            "--http-max-connections-per-address",
            "2",
            "--max-connections-per-address",
            "2",
        ],
    )
    .await;

    // HTTP: two connections of client .2 through the balancer are served and held open;
    // its third is refused, while client .3 through the same balancer is served. The
    // balancer's own address holds four connections, twice its cap.
    let mut held = Vec::new();
    for i in 0..2 {
        let mut conn = connect_from(BALANCER, edge.http).await;
        assert_eq!(health(&mut conn, &v2_header("127.0.0.2", edge.http)).await, Some(200), "client .2, conn {i}");
        held.push(conn);
    }
    let mut third = connect_from(BALANCER, edge.http).await;
    assert_eq!(health(&mut third, &v2_header("127.0.0.2", edge.http)).await, None, "client .2's third connection");
    let mut other = connect_from(BALANCER, edge.http).await;
    assert_eq!(health(&mut other, &v2_header("127.0.0.3", edge.http)).await, Some(200), "client .3");
    held.push(other);
    // v1 works as well (HAProxy's send-proxy).
    let mut v1 = connect_from(BALANCER, edge.http).await;
    let line = format!("PROXY TCP4 127.0.0.4 {} 40000 {}\r\n", edge.http.ip(), edge.http.port());
    assert_eq!(health(&mut v1, line.as_bytes()).await, Some(200), "a v1 header");
    held.push(v1);
    // The balancer without a header: closed unanswered.
    let mut bare = connect_from(BALANCER, edge.http).await;
    assert_eq!(health(&mut bare, b"").await, None, "a trusted connection without a header");
    // Anyone else is not trusted: a header from them is just bad HTTP (400), and their
    // connections are counted under their own address.
    let mut forged = connect_from("127.0.0.1", edge.http).await;
    assert_eq!(health(&mut forged, &v2_header("127.0.0.9", edge.http)).await, Some(400), "an untrusted header");

    // RTMP: the same caps per client.
    let mut rtmp_held = Vec::new();
    for i in 0..2 {
        let mut conn = connect_from(BALANCER, edge.rtmp).await;
        assert!(rtmp_handshake(&mut conn, &v2_header("127.0.0.2", edge.rtmp)).await, "RTMP client .2, conn {i}");
        rtmp_held.push(conn);
    }
    let mut third = connect_from(BALANCER, edge.rtmp).await;
    assert!(!rtmp_handshake(&mut third, &v2_header("127.0.0.2", edge.rtmp)).await, "RTMP client .2's third connection");
    let mut other = connect_from(BALANCER, edge.rtmp).await;
    assert!(rtmp_handshake(&mut other, &v2_header("127.0.0.3", edge.rtmp)).await, "RTMP client .3");
    rtmp_held.push(other);
    let mut bare = connect_from(BALANCER, edge.rtmp).await;
    assert!(!rtmp_handshake(&mut bare, b"").await, "a trusted RTMP connection without a header");

    // Each refusal was a per-address one, of the relayed client. One scrape, with the
    // 127.0.0.1 connection above closed: 127.0.0.1 is capped at 2 connections here too,
    // and a scrape per value could find the last ones still closing on the edge.
    drop(forged);
    let m = edge.metrics().await;
    let value = |series: &str| metric_value(&m, series).unwrap_or_else(|| panic!("no {series}"));
    assert_eq!(value("edge_limit_refused_total{class=\"http_connections\",scope=\"address\"}"), 1.0);
    assert_eq!(value("edge_limit_refused_total{class=\"rtmp_connections\",scope=\"address\"}"), 1.0);
    assert_eq!(value("edge_limit_in_use{class=\"proxy_headers\"}"), 0.0);
    drop((held, rtmp_held));
}

/// Sends `prefix` then `GET path` (with `bearer`); the status code.
async fn get_via(edge: SocketAddr, prefix: &[u8], path: &str, bearer: Option<&str>) -> Option<u16> {
    let mut conn = connect_from(BALANCER, edge).await;
    let mut req = prefix.to_vec();
    let auth = bearer.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    req.extend_from_slice(format!("GET {path} HTTP/1.1\r\nHost: edge\r\n{auth}Connection: close\r\n\r\n").as_bytes());
    conn.write_all(&req).await.ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut buf)).await.expect("an answer").ok()?;
    String::from_utf8_lossy(&buf).strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_metrics_answer_strangers_only_with_the_ops_token() {
    let c = Cluster::start(1).await;
    let token_file = c.dir.path().join("ops-token");
    std::fs::write(&token_file, "an-ops-token-for-tests\n").unwrap();
    let open = EdgeProc::start(&c, "edge-1", &["--proxy-protocol-from", BALANCER]).await;
    let guarded = EdgeProc::start(
        &c,
        "edge-2",
        &["--proxy-protocol-from", BALANCER, "--ops-token-file", token_file.to_str().unwrap()],
    )
    .await;
    let stranger = |edge: SocketAddr| v2_header("203.0.113.7", edge);
    let local = |edge: SocketAddr| v2_header("127.0.0.9", edge);
    for path in ["/status", "/metrics"] {
        // No token configured: loopback clients only.
        assert_eq!(get_via(open.http, &stranger(open.http), path, None).await, Some(403), "{path}");
        assert_eq!(get_via(open.http, &local(open.http), path, None).await, Some(200), "{path}");
        // A token configured: strangers with it, loopback without.
        assert_eq!(get_via(guarded.http, &stranger(guarded.http), path, None).await, Some(401), "{path}");
        assert_eq!(get_via(guarded.http, &stranger(guarded.http), path, Some("wrong-token-xxxxxxx")).await, Some(401));
        assert_eq!(
            get_via(guarded.http, &stranger(guarded.http), path, Some("an-ops-token-for-tests")).await,
            Some(200),
            "{path}"
        );
        assert_eq!(get_via(guarded.http, &local(guarded.http), path, None).await, Some(200), "{path}");
    }
    // What players use stays open to strangers.
    assert_eq!(get_via(open.http, &stranger(open.http), "/health", None).await, Some(200));
}
