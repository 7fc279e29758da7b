//! RTMPT on the edges' HTTP port with real clients: ffmpeg publishes over
//! `rtmpt://`, ffmpeg (ffprobe) and rtmpdump play over `rtmpt://`, and players over RTMP
//! and HLS see the same stream; then the tunnel's protocol by hand: `/fcs/ident2`,
//! `/open/1`, the RTMP handshake through `/send` and `/idle`, sequence numbers, the
//! per-address cap, idle expiry and `/close`.

#[path = "common/certs.rs"]
mod certs;
mod common;
#[path = "common/edges.rs"]
mod edges;

use std::time::Duration;

use common::{eventually, free_addr, Cluster};
use edges::{ffmpeg_publish_with, ffprobe_video_packets, metric_value, require, EdgeProc};
use reqwest::{Method, StatusCode};

/// Waits until the stream is published and the owner has received frames.
async fn wait_publishing(c: &Cluster, app: &str, name: &str) {
    eventually(Duration::from_secs(20), "the owner to receive frames", || async {
        let (s, v) = c.call(1, Method::GET, "/streams", None, &[]).await.ok()?;
        if !s.is_success() {
            return None;
        }
        let e = v["streams"].as_array()?.iter().find(|e| e["app"] == app && e["name"] == name)?.clone();
        (e["publishing"] == true && e["frames_in"].as_u64().unwrap_or(0) > 30).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_publishes_over_rtmpt_and_rtmpt_rtmp_rtmpdump_and_hls_players_get_it() {
    require("ffmpeg");
    require("rtmpdump");
    let c = Cluster::start(1).await;
    let edge = EdgeProc::start(&c, "edge-1", &[]).await;
    let rtmpt_url = format!("rtmpt://{}/live/x", edge.http);
    let _ffmpeg = ffmpeg_publish_with(&rtmpt_url, &[], c.dir.path().join("ffmpeg.log"));
    wait_publishing(&c, "live", "x").await;
    let text = edge.metrics().await;
    assert_eq!(metric_value(&text, "edge_rtmpt_sessions"), Some(1.0), "the publisher's session");

    // About 150 video packets in 5 s of a 30 fps stream, over RTMPT and RTMP at once.
    let rtmp_url = edge.rtmp_url("live", "x");
    let (tunnelled, direct) = tokio::join!(ffprobe_video_packets(&rtmpt_url, 5), ffprobe_video_packets(&rtmp_url, 5));
    let (tunnelled, direct) = (tunnelled.unwrap(), direct.unwrap());
    eprintln!("ffprobe over 5 s: rtmpt {tunnelled} video packets, rtmp {direct}");
    assert!((120..=190).contains(&tunnelled), "RTMPT: {tunnelled} packets in 5 s");
    assert!((120..=190).contains(&direct), "RTMP: {direct} packets in 5 s");

    // HLS of the same stream, packaged by the edge the publisher tunnels into.
    let hls = format!("http://{}/live/x/index.m3u8", edge.http);
    let playlist = eventually(Duration::from_secs(15), "an HLS playlist with a segment", || async {
        let r = reqwest::get(&hls).await.ok()?;
        let text = r.text().await.ok()?;
        text.contains("#EXTINF").then_some(text)
    })
    .await;
    assert!(playlist.contains("#EXT-X-PART"), "{playlist}");

    // rtmpdump (librtmp's own RTMPT) plays for 4 s into a file ffprobe can read.
    let probe = edges::rtmpdump_records(&rtmpt_url, &c.dir.path().join("dump.flv"), 4).await;
    assert!(probe.contains("h264") && probe.contains("aac"), "rtmpdump's file: {probe}");

    let text = edge.metrics().await;
    let series = |s: &str| metric_value(&text, &format!("edge_rtmpt_{s}")).unwrap_or(-1.0);
    eprintln!(
        "rtmpt requests: open {} send {} idle {} close {}; bytes in {} out {}",
        series("requests_total{kind=\"open\"}"),
        series("requests_total{kind=\"send\"}"),
        series("requests_total{kind=\"idle\"}"),
        series("requests_total{kind=\"close\"}"),
        series("bytes_total{direction=\"in\"}"),
        series("bytes_total{direction=\"out\"}"),
    );
    for kind in ["open", "send", "idle"] {
        let n = metric_value(&text, &format!("edge_rtmpt_requests_total{{kind=\"{kind}\"}}")).unwrap();
        assert!(n >= 1.0, "{kind} requests: {n}");
    }
    let out = metric_value(&text, "edge_rtmpt_bytes_total{direction=\"out\"}").unwrap();
    assert!(out > 1_000_000.0, "the tunnelled players got {out} bytes");
}

/// An RTMPT request: (status, body).
async fn post(client: &reqwest::Client, base: &str, path: &str, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
    let r = client
        .post(format!("{base}{path}"))
        .header("content-type", "application/x-fcs")
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status(), r.bytes().await.unwrap().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rtmpt_session_checks_sequence_numbers_repeats_replies_is_capped_and_expires() {
    let c = Cluster::start(1).await;
    let flags = ["--max-rtmpt-sessions-per-address", "2", "--rtmpt-idle-timeout-ms", "1500"];
    let edge = EdgeProc::start(&c, "edge-1", &flags).await;
    let client = reqwest::Client::new();
    let base = format!("http://{}", edge.http);

    assert_eq!(post(&client, &base, "/fcs/ident2", vec![0]).await.0, StatusCode::NOT_FOUND);
    let r = client.post(format!("{base}/open/1")).body(vec![0]).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/x-fcs");
    let named = r.headers()["x-rtmpt-session"].to_str().unwrap().to_owned();
    let id = r.text().await.unwrap().trim_end().to_owned();
    assert!(id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit()), "session id {id:?}");
    assert_eq!(named, id, "the header a balancer sticks on names the session");

    // C0 C1 through /send, S0 S1 S2 back through the replies (polls with /idle).
    let mut c0c1 = vec![3u8];
    c0c1.extend((0..1536).map(|i| (i % 251) as u8));
    let (status, reply) = post(&client, &base, &format!("/send/{id}/0"), c0c1).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(reply[0], 1, "the polling byte while data flows");
    let mut got = reply[1..].to_vec();
    let mut seq = 0;
    let mut last = reply;
    while got.len() < 1 + 2 * 1536 {
        seq += 1;
        let (status, reply) = post(&client, &base, &format!("/idle/{id}/{seq}"), vec![0]).await;
        assert_eq!(status, StatusCode::OK);
        assert!((1..=0x21).contains(&reply[0]), "polling byte {}", reply[0]);
        got.extend_from_slice(&reply[1..]);
        last = reply;
        assert!(seq < 50, "no handshake after {seq} polls: {} bytes", got.len());
    }
    assert_eq!(got.len(), 1 + 2 * 1536, "S0 S1 S2 and nothing more");
    assert_eq!(got[0], 3, "S0: RTMP version 3");

    // A repeat gets the same reply; a gap is refused; an unknown session is a 404.
    assert_eq!(post(&client, &base, &format!("/idle/{id}/{seq}"), vec![0]).await, (StatusCode::OK, last));
    let skipped = format!("/idle/{id}/{}", seq + 2);
    assert_eq!(post(&client, &base, &skipped, vec![0]).await.0, StatusCode::BAD_REQUEST);
    let unknown = format!("/idle/{}/1", "0".repeat(32));
    assert_eq!(post(&client, &base, &unknown, vec![0]).await.0, StatusCode::NOT_FOUND);
    assert_eq!(post(&client, &base, &format!("/send/{id}/x"), vec![0]).await.0, StatusCode::BAD_REQUEST);
    let huge = vec![0u8; 2 * 1024 * 1024 + 1];
    assert_eq!(post(&client, &base, &format!("/send/{id}/{}", seq + 1), huge).await.0, StatusCode::PAYLOAD_TOO_LARGE);

    // Refusals read the body too, so the keep-alive connection goes on (pipelined
    // here, as librtmp does); header names are Title-Case for librtmp.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut raw = tokio::net::TcpStream::connect(edge.http).await.unwrap();
        let request = |path: &str| format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n\0");
        let pipelined = request(&unknown) + &request(&format!("/idle/{id}/x")) + &request("/fcs/ident2");
        raw.write_all(pipelined.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while got.windows(12).filter(|w| w.starts_with(b"HTTP/1.1 ")).count() < 3 {
            let n = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut buf)).await.unwrap().unwrap();
            assert!(n > 0, "closed after: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got);
        let statuses: Vec<_> = text.match_indices("HTTP/1.1 ").map(|(i, _)| &text[i + 9..i + 12]).collect();
        assert_eq!(statuses, ["404", "400", "404"], "{text}");
        assert!(text.contains("Content-Length: "), "{text}");

        // The body after the head, as reqwest and ffmpeg send it: the 404 waits for it
        // and the connection serves the next request.
        let mut raw = tokio::net::TcpStream::connect(edge.http).await.unwrap();
        let head = format!("POST {unknown} HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n");
        raw.write_all(head.as_bytes()).await.unwrap();
        // Not a synchronization: gives a server that answered without the body the
        // time to close the connection.
        tokio::time::sleep(Duration::from_millis(100)).await;
        raw.write_all(b"\0").await.unwrap();
        let mut answers = Vec::new();
        for next in [request("/fcs/ident2"), String::new()] {
            let n = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut buf)).await.unwrap().unwrap_or(0);
            answers.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            let _ = raw.write_all(next.as_bytes()).await;
        }
        assert!(answers.iter().all(|a| a.starts_with("HTTP/1.1 404")), "{answers:?}");
    }

    // Two sessions per address: a third is refused until one closes.
    let (status, second) = post(&client, &base, "/open/1", vec![0]).await;
    assert_eq!(status, StatusCode::OK);
    let second = String::from_utf8(second).unwrap().trim_end().to_owned();
    assert_eq!(post(&client, &base, "/open/1", vec![0]).await.0, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(post(&client, &base, &format!("/close/{second}/0"), vec![0]).await, (StatusCode::OK, vec![0]));
    assert_eq!(post(&client, &base, &format!("/idle/{second}/1"), vec![0]).await.0, StatusCode::NOT_FOUND);

    // The first session, left without requests, expires; its RTMP connection with it.
    eventually(Duration::from_secs(5), "the idle session to expire", || async {
        let text = edge.metrics().await;
        (metric_value(&text, "edge_rtmpt_expired_total") == Some(1.0)).then_some(())
    })
    .await;
    let next = format!("/idle/{id}/{}", seq + 1);
    assert_eq!(post(&client, &base, &next, vec![0]).await.0, StatusCode::NOT_FOUND);
    eventually(Duration::from_secs(5), "no session and no RTMP connection left", || async {
        let text = edge.metrics().await;
        let open = metric_value(&text, "edge_rtmpt_sessions");
        (open == Some(0.0) && metric_value(&text, "edge_connections_open") == Some(0.0)).then_some(())
    })
    .await;
    let (status, _) = post(&client, &base, "/open/1", vec![0]).await;
    assert_eq!(status, StatusCode::OK, "the cap is free again");
}

/// The tunnel over the HTTPS listener, and what a webhook is told of its publisher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmpts_on_the_https_port_publishes_and_plays() {
    require("openssl");
    let c = Cluster::start(1).await;
    let dir = c.dir.path().join("tls");
    std::fs::create_dir(&dir).unwrap();
    certs::make_ca(&dir);
    let (cert, key) = (dir.join("edge.pem"), dir.join("edge-key.pem"));
    certs::make_cert(&dir, "edge", 1, &cert, &key);
    // A webhook endpoint that records what the edge tells it of publishers.
    let calls = std::sync::Arc::new(std::sync::Mutex::new(Vec::<serde_json::Value>::new()));
    let recorder = calls.clone();
    let hook = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| {
            recorder.lock().unwrap().push(body);
            async { StatusCode::NO_CONTENT }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, hook).await.unwrap() });
    let hooks = serde_json::json!({ "on_publish": hook_url, "timeout_ms": 2000 });
    let (status, answer) = c.call(1, Method::PUT, "/apps/live/hooks", Some(&hooks), &[]).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{answer}");

    let https = free_addr().to_string();
    let flags = ["--https", &https, "--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()];
    let edge = EdgeProc::start(&c, "edge-1", &flags).await;
    // ffmpeg does not verify the certificate of RTMPTS (its HTTPS requests take no TLS
    // options); the point here is the tunnel over TLS.
    let url = format!("rtmpts://{https}/live/s");
    let _ffmpeg = ffmpeg_publish_with(&url, &[], c.dir.path().join("ffmpeg.log"));
    wait_publishing(&c, "live", "s").await;
    let packets = ffprobe_video_packets(&url, 3).await.unwrap();
    eprintln!("ffprobe over 3 s of rtmpts: {packets} video packets");
    assert!((70..=120).contains(&packets), "RTMPTS: {packets} packets in 3 s");
    let text = edge.metrics().await;
    assert!(metric_value(&text, "edge_tls_handshakes_total{listener=\"https\",outcome=\"ok\"}").unwrap() >= 2.0);
    // The hook saw an RTMPT publisher over HTTPS: `rtmpts`.
    let published: Vec<_> = calls.lock().unwrap().iter().filter(|c| c["event"] == "on_publish").cloned().collect();
    assert_eq!(published.len(), 1, "{published:?}");
    assert_eq!(published[0]["protocol"], "rtmpts", "{}", published[0]);
}

/// An RTMPT session holds an RTMP connection: the RTMP listener's per-address cap
/// counts it, both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmpt_sessions_count_against_the_rtmp_connection_cap() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let c = Cluster::start(1).await;
    let edge = EdgeProc::start(&c, "edge-1", &["--max-connections-per-address", "1"]).await;
    let client = reqwest::Client::new();
    let base = format!("http://{}", edge.http);
    let (status, id) = post(&client, &base, "/open/1", vec![0]).await;
    assert_eq!(status, StatusCode::OK);
    let (status, refused) = post(&client, &base, "/open/1", vec![0]).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{}", String::from_utf8_lossy(&refused));
    assert!(String::from_utf8_lossy(&refused).contains("rtmp_connections"));

    // An RTMP client from the same address is closed (or reset) at accept: C0 C1 get
    // no S0.
    if let Ok(mut tcp) = tokio::net::TcpStream::connect(edge.rtmp).await {
        let _ = tcp.write_all(&[3u8; 1537]).await;
        let mut s0 = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut s0)).await.unwrap();
        assert!(matches!(read, Ok(0) | Err(_)), "the RTMP connection was served: {read:?}");
    }

    // Closing the session frees the connection for RTMP.
    let id = String::from_utf8(id).unwrap().trim_end().to_owned();
    assert_eq!(post(&client, &base, &format!("/close/{id}/0"), vec![0]).await.0, StatusCode::OK);
    eventually(Duration::from_secs(5), "an RTMP handshake once the session is closed", || async {
        let mut tcp = tokio::net::TcpStream::connect(edge.rtmp).await.ok()?;
        tcp.write_all(&[3u8; 1537]).await.ok()?;
        let mut s0 = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(2), tcp.read(&mut s0)).await.ok()?.ok()?;
        (n == 1 && s0[0] == 3).then_some(())
    })
    .await;
}
