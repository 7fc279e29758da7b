//! Play and publish tokens through real edges and origins: an app that requires both,
//! every edge protocol (RTMP publish and play, RTMPS play, HTTP-FLV, HLS playlists and
//! media), each kind of bad token refused with its RTMP status or HTTP code, a valid
//! token working on both edges, identical segment URLs on both edges, and key rotation
//! then retirement.

mod common;
#[path = "common/edges.rs"]
mod edges;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{eventually, free_addr, Cluster};
use edges::{ffmpeg_publish, ffprobe_video_packets_with, metric_value, require, EdgeProc};
use raftcast::bench::client::{RtmpClient, StatusError};
use raftcast::rtmp::session::ClientEvent;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Issues a stream token through origin `via`; `scope` is `{"name"}` or `{"name_prefix"}`.
async fn issue(c: &Cluster, via: u64, scope: Value, right: &str, ttl_secs: u64) -> String {
    let mut body = json!({ "app": "live", "right": right, "ttl_secs": ttl_secs });
    body.as_object_mut().unwrap().extend(scope.as_object().unwrap().clone());
    let (status, answer) = c.call(via, Method::POST, "/tokens/stream", Some(&body), &[]).await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let token = answer["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("rs1."), "{token}");
    token
}

fn name(n: &str) -> Value {
    json!({ "name": n })
}

/// `token` with one character of its MAC (the last dot-separated part) changed, away
/// from its end (whose last character may only carry padding bits).
fn forge(token: &str) -> String {
    let mut bytes = token.as_bytes().to_vec();
    let at = bytes.len() - 5;
    assert!(token.rfind('.').unwrap() < at, "{token}");
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

/// Publishes `stream` (may carry `?token=…`) on a new connection to `edge`; the RTMP
/// status code and description of a refusal, or `None` once publishing started.
async fn publish_refusal(edge: &EdgeProc, app: &str, stream: &str) -> Option<(String, String)> {
    let mut client = RtmpClient::connect(edge.rtmp, app).await.expect("connects");
    match client.publish(stream).await {
        Ok(_) => None,
        Err(e) => {
            let e = e.downcast::<StatusError>().unwrap_or_else(|e| panic!("not a status: {e}"));
            Some((e.code, e.description))
        }
    }
}

/// Plays `stream` on a new connection; like [`publish_refusal`]. A play that starts
/// must bring video.
async fn play_refusal(edge: &EdgeProc, app: &str, stream: &str) -> Option<(String, String)> {
    let mut client = RtmpClient::connect(edge.rtmp, app).await.expect("connects");
    match client.play(stream).await {
        Ok(_) => {
            let video = tokio::time::timeout(Duration::from_secs(10), async {
                while let Some(event) = client.next_event().await.unwrap() {
                    if matches!(event, ClientEvent::Video { .. }) {
                        return true;
                    }
                }
                false
            });
            assert!(video.await.unwrap_or(false), "no video on {stream} from {}", edge.name);
            None
        }
        Err(e) => {
            let e = e.downcast::<StatusError>().unwrap_or_else(|e| panic!("not a status: {e}"));
            Some((e.code, e.description))
        }
    }
}

/// GETs `url`, with `bearer` as `Authorization: Bearer`; the status and the first bytes.
async fn get(http: &reqwest::Client, url: &str, bearer: Option<&str>) -> (u16, Vec<u8>) {
    let mut req = http.get(url);
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    let mut r = req.send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = r.status().as_u16();
    let first = r.chunk().await.ok().flatten().map(|b| b.to_vec()).unwrap_or_default();
    (status, first)
}

async fn status_of(http: &reqwest::Client, url: &str) -> u16 {
    get(http, url, None).await.0
}

/// The URIs a media playlist names: the map, the parts, the segments and the hint, in
/// order.
fn uris(playlist: &str) -> Vec<String> {
    playlist
        .lines()
        .filter_map(|l| match l.find("URI=\"") {
            Some(at) => Some(l[at + 5..].split('"').next().unwrap().to_owned()),
            None => (!l.is_empty() && !l.starts_with('#')).then(|| l.to_owned()),
        })
        .collect()
}

/// The segment URIs (the lines that are not tags).
fn segments(playlist: &str) -> Vec<String> {
    playlist.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_owned).collect()
}

/// `edge_auth_refused_total` for `protocol` and `reason` on `edge`.
async fn refused(edge: &EdgeProc, protocol: &str, reason: &str) -> f64 {
    let series = format!("edge_auth_refused_total{{protocol=\"{protocol}\",reason=\"{reason}\"}}");
    metric_value(&edge.metrics().await, &series).unwrap_or(-1.0)
}

/// A self-signed certificate for 127.0.0.1 in `dir`: (cert, key).
fn self_signed(dir: &Path) -> (String, String) {
    let (cert, key) = (dir.join("edge.pem"), dir.join("edge-key.pem"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"])
        .args(["-keyout", key.to_str().unwrap(), "-out", cert.to_str().unwrap()])
        .output()
        .expect("openssl runs");
    assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
    (cert.to_str().unwrap().to_owned(), key.to_str().unwrap().to_owned())
}

const UNAUTHORIZED_PUBLISH: &str = "NetStream.Publish.Unauthorized";
const PLAY_FAILED: &str = "NetStream.Play.Failed";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn play_and_publish_tokens_are_enforced_on_every_protocol_of_both_edges_across_key_rotation() {
    for tool in ["ffmpeg", "ffprobe", "openssl"] {
        require(tool);
    }
    let c = Cluster::start(3).await;
    let (cert, key) = self_signed(c.dir.path());
    let rtmps = free_addr();
    let edge1 = EdgeProc::start(&c, "edge-1", &[]).await;
    let rtmps_args = ["--rtmps", &rtmps.to_string(), "--tls-cert", &cert, "--tls-key", &key];
    let edge2 = EdgeProc::start(&c, "edge-2", &rtmps_args).await;
    let edges = [&edge1, &edge2];
    let http = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
    let leader = c.wait_leader(None, Duration::from_secs(10)).await;

    let rules = json!({ "play_token_required": true, "publish_token_required": true });
    let (status, answer) = c.call(leader, Method::PUT, "/apps/live", Some(&rules), &[]).await.unwrap();
    assert!(status.is_success(), "{status} {answer}");

    let publish = issue(&c, leader, name("cam"), "publish", 600).await;
    let play = issue(&c, leader, name("cam"), "play", 600).await;
    let play_other = issue(&c, leader, name("other"), "play", 600).await;
    let publish_other = issue(&c, leader, name("other"), "publish", 600).await;
    let play_expired = issue(&c, leader, name("cam"), "play", 1).await;
    let publish_expired = issue(&c, leader, name("cam"), "publish", 1).await;
    let publish_side = issue(&c, leader, json!({ "name_prefix": "side" }), "publish", 600).await;

    // Both edges know the rules (fetched on first use, at most 5 s old).
    for edge in edges {
        let url = edge.flv_url("live", "cam");
        eventually(Duration::from_secs(10), "the edge to require play tokens", || async {
            (status_of(&http, &url).await == 401).then_some(())
        })
        .await;
    }
    // The 1-second tokens have expired (a condition, not a sleep).
    let url = format!("{}?token={play_expired}", edge1.flv_url("live", "cam"));
    eventually(Duration::from_secs(15), "the short token to expire", || async {
        (status_of(&http, &url).await == 401).then_some(())
    })
    .await;

    // RTMP publish through edge-1: every bad token is refused before the claim.
    for (token, why) in [
        (None, "requires a publish token"),
        (Some(&publish_expired), "expired"),
        (Some(&publish_other), "does not allow publish on live/cam"),
        (Some(&forge(&publish)), "signature"),
        (Some(&play), "does not allow publish on live/cam"),
    ] {
        let stream = token.map_or("cam".to_owned(), |t| format!("cam?token={t}"));
        let (code, description) = publish_refusal(&edge1, "live", &stream).await.expect("refused");
        assert_eq!(code, UNAUTHORIZED_PUBLISH, "{stream}");
        assert!(description.contains(why), "{stream}: {description}");
    }
    // A token on the connect URL counts too (a prefix token: any stream under it).
    assert_eq!(publish_refusal(&edge1, &format!("live?token={publish_side}"), "side-1").await, None);

    // The real publisher, through edge-1 with its publish token.
    let _ffmpeg =
        ffmpeg_publish(&format!("rtmp://{}/live/cam?token={publish}", edge1.rtmp), c.dir.path().join("ffmpeg.log"));
    eventually(Duration::from_secs(20), "edge-1 to take the publish", || async {
        (edge1.status().await["publishers"].as_u64().unwrap_or(0) > 0).then_some(())
    })
    .await;

    // RTMP play: refused on both edges for each bad token, played with the right one.
    for edge in edges {
        for (token, why) in [
            (None, "requires a play token"),
            (Some(&play_expired), "expired"),
            (Some(&play_other), "does not allow play on live/cam"),
            (Some(&forge(&play)), "signature"),
            (Some(&publish), "does not allow play on live/cam"),
        ] {
            let stream = token.map_or("cam".to_owned(), |t| format!("cam?token={t}"));
            let (code, description) = play_refusal(edge, "live", &stream).await.expect("refused");
            assert_eq!(code, PLAY_FAILED, "{} {stream}", edge.name);
            assert!(description.contains(why), "{} {stream}: {description}", edge.name);
        }
        assert_eq!(play_refusal(edge, "live", &format!("cam?token={play}")).await, None, "{}", edge.name);
        assert_eq!(play_refusal(edge, &format!("live?token={play}"), "cam").await, None, "{}", edge.name);
    }

    // RTMPS on edge-2: the same connection code after TLS.
    let tls = ["-tls_verify", "0"];
    let url = format!("rtmps://{rtmps}/live/cam");
    assert!(ffprobe_video_packets_with(&url, &tls, 2).await.is_err(), "RTMPS without a token");
    let packets = ffprobe_video_packets_with(&format!("{url}?token={play}"), &tls, 3).await.expect("RTMPS play");
    assert!(packets > 0, "{packets} packets over RTMPS");

    // HTTP-FLV on both edges: 401 for no, expired or forged tokens, 403 for a valid
    // token of another stream or right; the right one in the query or the header.
    for edge in edges {
        let flv = edge.flv_url("live", "cam");
        for (token, status) in [
            (None, 401),
            (Some(&play_expired), 401),
            (Some(&play_other), 403),
            (Some(&forge(&play)), 401),
            (Some(&publish), 403),
        ] {
            let url = token.map_or(flv.clone(), |t| format!("{flv}?token={t}"));
            assert_eq!(status_of(&http, &url).await, status, "{} {url}", edge.name);
        }
        let (status, first) = get(&http, &format!("{flv}?token={play}"), None).await;
        assert_eq!((status, &first[..3]), (200, &b"FLV"[..]), "{}", edge.name);
        let (status, first) = get(&http, &flv, Some(&play)).await;
        assert_eq!((status, &first[..3]), (200, &b"FLV"[..]), "{}", edge.name);
    }

    // HLS: the playlist needs a play token and lists every URI with the segment token.
    let playlist_url = |edge: &EdgeProc, q: &str| format!("http://{}/live/cam/index.m3u8{q}", edge.http);
    let mut playlists = Vec::new();
    for edge in edges {
        let url = playlist_url(edge, &format!("?token={play}"));
        let text = eventually(Duration::from_secs(30), "two HLS segments", || async {
            let r = http.get(&url).send().await.ok()?;
            let text = r.text().await.ok()?;
            (segments(&text).len() >= 2).then_some(text)
        })
        .await;
        playlists.push(text);
        for (token, status) in [
            (None, 401),
            (Some(&play_expired), 401),
            (Some(&play_other), 403),
            (Some(&forge(&play)), 401),
            (Some(&publish), 403),
        ] {
            let url = playlist_url(edge, &token.map_or(String::new(), |t| format!("?token={t}")));
            assert_eq!(status_of(&http, &url).await, status, "{} {url}", edge.name);
        }
        let (status, _) = get(&http, &playlist_url(edge, ""), Some(&play)).await;
        assert_eq!(status, 200, "Bearer on {}", edge.name);
    }
    let st = {
        let all = uris(&playlists[0]);
        let st = all[0].split_once("?st=").expect("the map carries st").1.to_owned();
        for uri in &all {
            assert!(uri.ends_with(&format!("?st={st}")), "{uri} in\n{}", playlists[0]);
        }
        st
    };
    assert_eq!(st.split('.').count(), 3, "{st}");
    // Both edges list the same segment URLs (the windows may be a part apart: retried
    // until both answer the same list).
    let (url1, url2) =
        (playlist_url(&edge1, &format!("?token={play}")), playlist_url(&edge2, &format!("?token={play}")));
    let listed = eventually(Duration::from_secs(15), "the same segment URLs on both edges", || async {
        let a = segments(&http.get(&url1).send().await.ok()?.text().await.ok()?);
        let b = segments(&http.get(&url2).send().await.ok()?.text().await.ok()?);
        (a == b).then_some(a)
    })
    .await;
    assert!(listed.iter().all(|s| s.ends_with(&format!("?st={st}"))), "{listed:?}");

    // Media: a URL one edge listed works on the other; without st, with a forged st,
    // or with another stream's or right's token it is refused.
    let text = http.get(&url1).send().await.unwrap().text().await.unwrap();
    let all = uris(&text);
    let segment = segments(&text)[0].clone();
    let part = all.iter().find(|u| u.starts_with("part-")).expect("a part").clone();
    let map = all[0].clone();
    for edge in edges {
        let base = format!("http://{}/live/cam/", edge.http);
        for uri in [&segment, &part, &map] {
            assert_eq!(status_of(&http, &format!("{base}{uri}")).await, 200, "{} {uri}", edge.name);
            let bare = uri.split_once('?').unwrap().0;
            for (query, status) in [
                (String::new(), 401),
                (format!("?st={}", forge(&st)), 401),
                (format!("?token={play_other}"), 403),
                (format!("?token={publish}"), 403),
                (format!("?token={play_expired}"), 401),
                (format!("?token={play}"), 200),
            ] {
                assert_eq!(
                    status_of(&http, &format!("{base}{bare}{query}")).await,
                    status,
                    "{} {bare}{query}",
                    edge.name
                );
            }
        }
    }

    // Every refusal was counted, by protocol and reason.
    assert!(refused(&edge1, "rtmp", "missing").await >= 2.0, "{}", edge1.metrics().await);
    assert!(refused(&edge2, "rtmp", "forbidden").await >= 2.0);
    assert!(refused(&edge2, "flv", "invalid").await >= 2.0);
    assert!(refused(&edge2, "hls", "forbidden").await >= 4.0);

    // Rotation: a new key signs from now on; tokens signed before still work.
    let (status, answer) = c.call(leader, Method::POST, "/tokens/rotate", None, &[]).await.unwrap();
    assert!(status.is_success(), "{status} {answer}");
    let play_new = issue(&c, leader, name("cam"), "play", 600).await;
    for edge in edges {
        let flv = edge.flv_url("live", "cam");
        assert_eq!(get(&http, &format!("{flv}?token={play_new}"), None).await.0, 200, "{}", edge.name);
        assert_eq!(get(&http, &format!("{flv}?token={play}"), None).await.0, 200, "{}", edge.name);
        assert_eq!(play_refusal(edge, "live", &format!("cam?token={play}")).await, None, "{}", edge.name);
    }

    // Retirement: only the newest key verifies; the old token and the old segment
    // token are refused on both edges (within their key cache's age), the new ones work.
    let (status, answer) = c.call(leader, Method::POST, "/tokens/retire", None, &[]).await.unwrap();
    assert!(status.is_success(), "{status} {answer}");
    for edge in edges {
        let flv = edge.flv_url("live", "cam");
        let old = format!("{flv}?token={play}");
        eventually(Duration::from_secs(10), "the old key to stop verifying", || async {
            (status_of(&http, &old).await == 401).then_some(())
        })
        .await;
        assert_eq!(get(&http, &format!("{flv}?token={play_new}"), None).await.0, 200, "{}", edge.name);
        let (code, _) = play_refusal(edge, "live", &format!("cam?token={play}")).await.expect("refused");
        assert_eq!(code, PLAY_FAILED);
        assert_eq!(play_refusal(edge, "live", &format!("cam?token={play_new}")).await, None, "{}", edge.name);
        let old_segment = format!("http://{}/live/cam/{segment}", edge.http);
        assert_eq!(status_of(&http, &old_segment).await, 401, "{} {old_segment}", edge.name);
        assert_eq!(status_of(&http, &playlist_url(edge, &format!("?token={play}"))).await, 401);
    }
    // The playlists now list the new key's segment token, which works on both edges.
    let url1_new = playlist_url(&edge1, &format!("?token={play_new}"));
    let new_st = eventually(Duration::from_secs(10), "a playlist with the new segment token", || async {
        let text = http.get(&url1_new).send().await.ok()?.text().await.ok()?;
        let first = segments(&text).first()?.clone();
        let new_st = first.split_once("?st=")?.1.to_owned();
        (new_st != st).then_some((first, text))
    })
    .await;
    let (first, _) = new_st;
    for edge in edges {
        assert_eq!(status_of(&http, &format!("http://{}/live/cam/{first}", edge.http)).await, 200, "{}", edge.name);
    }
    let url2_new = playlist_url(&edge2, &format!("?token={play_new}"));
    assert_eq!(status_of(&http, &url2_new).await, 200);
}
