//! VOD through an edge (`docs/vod.md`), with real processes: ffmpeg publishes a short
//! recorded stream through an edge; once the recording is finished, `GET
//! /vod/{id}.flv` on the edge gives the same bytes as the origins' admin route
//! `/recordings/{id}.flv`, fetched from the origins once and then served from the
//! edge's cache (its metrics say so); byte ranges, a range past the end, a hostile id,
//! an unknown one and an edge without a cache get the answers the contract names; a
//! media-library file on one origin only plays through the edge (the edge tries the
//! origins in turn). The same recording plays as HLS VOD from the cached file, with
//! the same decoded video frames as the file. An edge whose cache has room for two of
//! ten library clips keeps the two used last (on disk, in its gauge), evicts the
//! others (fetched again on the next GET, the same bytes) and still has the kept ones
//! after a restart. Without a rule for the app `vod` all of
//! it needs no token; once `vod` requires play tokens, `.flv` and the playlist are
//! refused without one or with another id's (as live, counted, before any fetch), and a
//! play token for the id plays both, the playlist listing segment-token URIs that play
//! without the play token.

mod common;
#[path = "common/edges.rs"]
mod edges;

use std::path::Path;
use std::time::Duration;

use common::{eventually, Cluster};
use edges::{ffmpeg_publish, EdgeProc};
use reqwest::header::{ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// The id of the recording of live/`name` once it is finished, as the catalog says.
async fn finished_recording(c: &Cluster, name: &str) -> Option<u64> {
    let (s, v) = c.call(1, Method::GET, "/recordings", None, &[]).await.ok()?;
    s.is_success().then_some(())?;
    let r = v["recordings"].as_array()?.iter().find(|r| r["app"] == "live" && r["name"] == name)?;
    (r["finished"] == true).then(|| r["id"].as_u64()).flatten()
}

/// The edge's `/metrics` sample `series`, 0 when absent.
async fn metric(edge: &EdgeProc, series: &str) -> f64 {
    edges::metric_value(&edge.metrics().await, series).unwrap_or(0.0)
}

/// The MD5 of each decoded video frame of `url`, in order (ffmpeg's framemd5; the
/// timestamps are left out: HLS VOD starts its timeline at 0, the file at the
/// publisher's first timestamp).
async fn video_frames(url: String) -> Vec<String> {
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new("ffmpeg")
            .args(["-v", "error", "-i", &url, "-map", "0:v", "-f", "framemd5", "-"])
            .output()
            .expect("ffmpeg (scripts/install-deps.sh)");
        assert!(out.status.success(), "ffmpeg {url}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit(',').next().map(|h| h.trim().to_owned()))
            .collect()
    })
    .await
    .unwrap()
}

const HITS: &str = "raftcast_edge_vod_cache_hits_total";
const MISSES: &str = "raftcast_edge_vod_cache_misses_total";
const FETCHED: &str = "raftcast_edge_vod_cache_fetched_bytes_total";
const CACHED: &str = "raftcast_edge_vod_cache_bytes";
const EVICTIONS: &str = "raftcast_edge_vod_cache_evictions_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recordings_and_library_files_play_through_an_edges_cache() {
    // Three origins; only origin 3 has a media library.
    let mut c = Cluster::new();
    let library = c.dir.path().join("media-3");
    std::fs::create_dir_all(&library).unwrap();
    c.origin_args.insert(3, vec!["--media-dir".into(), library.to_str().unwrap().into()]);
    for id in 1..=3 {
        c.add_origin(id);
    }
    c.wait_listening().await;
    c.init().await;
    c.wait_voters(3).await;
    let rule = serde_json::json!({ "record": true });
    let (s, v) = c.call(1, Method::PUT, "/recording-rules/live/vod", Some(&rule), &[]).await.unwrap();
    assert!(s.is_success(), "{v}");

    let cache = c.dir.path().join("edge-1-vod");
    let edge = EdgeProc::start(&c, "edge-1", &["--vod-cache-dir", cache.to_str().unwrap()]).await;
    let plain = EdgeProc::start(&c, "edge-2", &[]).await;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let vod = |edge: &EdgeProc, file: &str| format!("http://{}/vod/{file}", edge.http);

    // A short recording: about four seconds of ffmpeg's test pattern.
    let mut publisher = ffmpeg_publish(&edge.rtmp_url("live", "vod"), c.dir.path().join("publisher.log"));
    eventually(Duration::from_secs(20), "the recording to start", || async {
        let (_, v) = c.call(1, Method::GET, "/recordings", None, &[]).await.ok()?;
        v["recordings"].as_array()?.iter().any(|r| r["name"] == "vod").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    publisher.0.kill().unwrap();
    let _ = publisher.0.wait();
    let id = eventually(Duration::from_secs(20), "the recording to finish", || finished_recording(&c, "vod")).await;

    // The origins' own copy, through the admin route.
    let admin = c.client.get(c.url(1, &format!("/recordings/{id}.flv"))).bearer_auth(&c.token).send().await.unwrap();
    assert_eq!(admin.status(), StatusCode::OK);
    let original = admin.bytes().await.unwrap();
    assert!(original.len() > 10_000, "a recording of {} bytes", original.len());

    // First GET: a miss, fetched from an origin. (The publisher's claim may take a
    // moment to go after the pieces finish: 409 until then.)
    let url = vod(&edge, &format!("{id}.flv"));
    let first = eventually(Duration::from_secs(10), "the edge to serve the recording", || async {
        let res = http.get(&url).send().await.ok()?;
        match res.status() {
            StatusCode::OK => Some(res),
            StatusCode::CONFLICT => None,
            other => panic!("GET {url}: {other} {}", res.text().await.unwrap_or_default()),
        }
    })
    .await;
    assert_eq!(first.headers()[CONTENT_TYPE], "video/x-flv");
    assert_eq!(first.headers()[ACCEPT_RANGES], "bytes");
    assert_eq!(first.headers()[CONTENT_LENGTH], original.len().to_string().as_str());
    let got = first.bytes().await.unwrap();
    assert!(got == original, "the edge's file ({} bytes) is the origins' ({} bytes)", got.len(), original.len());
    let (hits, misses, fetched) =
        (metric(&edge, HITS).await, metric(&edge, MISSES).await, metric(&edge, FETCHED).await);
    assert!(misses >= 1.0, "a miss (one more for each 409 while the claim went)");
    assert_eq!(fetched, original.len() as f64, "fetched once, whole");
    assert_eq!(metric(&edge, CACHED).await, original.len() as f64);
    assert!(cache.join(format!("{id}.flv")).exists(), "kept on the edge's disk");

    // Second GET: a hit, nothing fetched.
    let again = http.get(&url).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    assert!(again.bytes().await.unwrap() == original, "the same bytes from the cache");
    assert_eq!(metric(&edge, HITS).await, hits + 1.0, "the second GET is a cache hit");
    assert_eq!(metric(&edge, FETCHED).await, fetched, "and fetches nothing");

    // HEAD: the length, no body.
    let head = http.head(&url).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()[CONTENT_LENGTH], original.len().to_string().as_str());
    assert!(head.bytes().await.unwrap().is_empty());

    // One range: exactly that slice, with Content-Range.
    let len = original.len();
    let tail = format!("bytes={}-", len - 50);
    for (range, start, end) in
        [("bytes=100-4195", 100, 4195), (tail.as_str(), len - 50, len - 1), ("bytes=-7", len - 7, len - 1)]
    {
        let res = http.get(&url).header(RANGE, range).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(res.headers()[CONTENT_RANGE], format!("bytes {start}-{end}/{len}").as_str(), "{range}");
        assert!(res.bytes().await.unwrap() == original[start..=end], "{range}: exactly the slice");
    }
    // Several ranges: the whole file.
    let res = http.get(&url).header(RANGE, "bytes=0-1,5-6").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.bytes().await.unwrap().len(), len);
    // Past the end: 416 and the length.
    let res = http.get(&url).header(RANGE, format!("bytes={len}-")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(res.headers()[CONTENT_RANGE], format!("bytes */{len}").as_str());

    // A hostile id never reaches a file system; an unknown one is a 404; an edge with
    // no cache says VOD is off.
    let status = |res: reqwest::Response| async move {
        let status = res.status();
        (status, res.json::<Value>().await.unwrap_or_default())
    };
    let (s, v) = status(http.get(vod(&edge, "lib-..%2Fx.flv")).send().await.unwrap()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = status(http.get(vod(&edge, "999999999.flv")).send().await.unwrap()).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")), "{v}");
    let (s, v) = status(http.get(vod(&plain, &format!("{id}.flv"))).send().await.unwrap()).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("vod_off")), "{v}");
    // The peer route is for members only.
    let res = reqwest::get(c.url(1, &format!("/internal/vod/{id}"))).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    // The same recording as HLS VOD from the cached file: ffmpeg decodes the same video
    // frames from the playlist as from the file, and nothing more is fetched.
    let fetched = metric(&edge, FETCHED).await;
    let res = http.get(vod(&edge, &format!("{id}/index.m3u8"))).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[CONTENT_TYPE], "application/vnd.apple.mpegurl");
    let playlist = res.text().await.unwrap();
    assert!(
        playlist.contains("#EXT-X-PLAYLIST-TYPE:VOD") && playlist.trim_end().ends_with("#EXT-X-ENDLIST"),
        "{playlist}"
    );
    let from_file = video_frames(url.clone()).await;
    let from_hls = video_frames(vod(&edge, &format!("{id}/index.m3u8"))).await;
    assert!(from_file.len() > 50, "{} video frames decoded from the file", from_file.len());
    assert!(from_hls == from_file, "HLS VOD: {} frames, the file: {}", from_hls.len(), from_file.len());
    assert_eq!(metric(&edge, FETCHED).await, fetched, "HLS VOD reads the cached file");
    let segments = playlist.lines().filter(|l| l.ends_with(".m4s")).count();
    let (s, v) = status(http.get(vod(&edge, &format!("{id}/{segments}.m4s"))).send().await.unwrap()).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "past the last segment: {v}");
    let (s, v) = status(http.get(vod(&edge, &format!("{id}/0.ts"))).send().await.unwrap()).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (s, v) = status(http.get(vod(&edge, "lib-..%2Fx/index.m3u8")).send().await.unwrap()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    // With no rule for the app `vod`, the URIs carry the playlist's query as it came.
    let res = http.get(vod(&edge, &format!("{id}/index.m3u8?x=1"))).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let asked = res.text().await.unwrap();
    assert!(asked.contains("\n0.m4s?x=1\n") && asked.contains("init.mp4?x=1"), "{asked}");

    // A library file on origin 3 alone: the edge asks the origins in turn until one has it.
    let clip: Vec<u8> = original.iter().rev().copied().collect();
    std::fs::write(library.join("clip.flv"), &clip).unwrap();
    let res = http.get(vod(&edge, "lib-clip.flv")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.bytes().await.unwrap() == clip, "the library file, byte for byte");
    assert_eq!(metric(&edge, CACHED).await, (original.len() + clip.len()) as f64, "both kept");
    let (s, v) = status(http.get(vod(&edge, "lib-nothing.flv")).send().await.unwrap()).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");

    // The app `vod` requires play tokens: the rule reaches the edge within 5 s.
    let leader = c.wait_leader(None, Duration::from_secs(10)).await;
    let rule = serde_json::json!({ "play_token_required": true });
    let (s, v) = c.call(leader, Method::PUT, "/apps/vod", Some(&rule), &[]).await.unwrap();
    assert!(s.is_success(), "{v}");
    let sign = |name: String, right: &'static str| {
        let body = serde_json::json!({ "app": "vod", "name": name, "right": right, "ttl_secs": 600 });
        let c = &c;
        async move {
            let (s, v) = c.call(leader, Method::POST, "/tokens/stream", Some(&body), &[]).await.unwrap();
            assert_eq!(s, StatusCode::CREATED, "{v}");
            v["token"].as_str().unwrap().to_owned()
        }
    };
    let play = sign(id.to_string(), "play").await;
    let play_other = sign("lib-clip".to_owned(), "play").await;
    let publish = sign(id.to_string(), "publish").await;
    let plain_url = vod(&plain, &format!("{id}.flv"));
    for url in [&url, &plain_url] {
        eventually(Duration::from_secs(10), "the edges to require VOD play tokens", || async {
            (http.get(url).send().await.ok()?.status() == StatusCode::UNAUTHORIZED).then_some(())
        })
        .await;
    }

    // Refused as live refuses, and before the cache is asked: an id this edge never
    // fetched costs no fetch. The edge without a cache refuses the same way.
    let misses = metric(&edge, MISSES).await;
    let with = |file: &str, token: &str| vod(&edge, &format!("{file}?token={token}"));
    for (url, code) in [
        (url.clone(), StatusCode::UNAUTHORIZED),
        (with(&format!("{id}.flv"), &play_other), StatusCode::FORBIDDEN),
        (with(&format!("{id}.flv"), &publish), StatusCode::FORBIDDEN),
        (vod(&edge, &format!("{id}/index.m3u8")), StatusCode::UNAUTHORIZED),
        (with(&format!("{id}/index.m3u8"), &play_other), StatusCode::FORBIDDEN),
        (vod(&edge, "999999998.flv"), StatusCode::UNAUTHORIZED),
        (vod(&edge, "999999998/index.m3u8"), StatusCode::UNAUTHORIZED),
        (plain_url.clone(), StatusCode::UNAUTHORIZED),
    ] {
        let res = http.get(&url).send().await.unwrap();
        assert_eq!(res.headers()["cache-control"], "no-store", "{url}");
        let (s, v) = status(res).await;
        let reason = if code == StatusCode::UNAUTHORIZED { "missing" } else { "forbidden" };
        assert_eq!((s, v["error"]["code"].as_str()), (code, Some(reason)), "{url}: {v}");
    }
    assert_eq!(metric(&edge, MISSES).await, misses, "a refused request asks the cache nothing");
    let refused = |protocol: &str, reason: &str| {
        format!("edge_auth_refused_total{{protocol=\"{protocol}\",reason=\"{reason}\"}}")
    };
    assert_eq!(metric(&edge, &refused("flv", "missing")).await, 3.0, "and the one that saw the rule");
    assert_eq!(metric(&edge, &refused("flv", "forbidden")).await, 2.0);
    assert_eq!(metric(&edge, &refused("hls", "missing")).await, 2.0);
    assert_eq!(metric(&edge, &refused("hls", "forbidden")).await, 1.0);

    // A play token for the id plays the file, in the query or as a Bearer token.
    let res = http.get(with(&format!("{id}.flv"), &play)).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.bytes().await.unwrap() == original, "the file, with a token");
    let res = http.get(&url).bearer_auth(&play).header(RANGE, "bytes=0-2").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(&res.bytes().await.unwrap()[..], b"FLV");

    // And the playlist, whose URIs carry the segment token, not the play token: they
    // play without it, as a CDN would fetch them; a bare URI is refused.
    let res = http.get(with(&format!("{id}/index.m3u8"), &play)).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let guarded = res.text().await.unwrap();
    let map = guarded.split("URI=\"").nth(1).and_then(|rest| rest.split('"').next()).unwrap().to_owned();
    let st = map.strip_prefix("init.mp4?st=").unwrap_or_else(|| panic!("{map} in\n{guarded}")).to_owned();
    // Made to last the file's duration (a few seconds: one extra 10-minute window), as
    // a VOD playlist is read once.
    assert!(st.split('.').nth(1).is_some_and(|window| window.ends_with("+1")), "a lasting segment token: {st}");
    let listed: Vec<&str> = guarded.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(listed.len(), segments, "{guarded}");
    for uri in listed.iter().copied().chain([map.as_str()]) {
        assert!(uri.ends_with(&format!(".m4s?st={st}")) || uri == map, "{uri} in\n{guarded}");
        let res = http.get(vod(&edge, &format!("{id}/{uri}"))).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{uri}");
    }
    let bare = vod(&edge, &format!("{id}/0.m4s"));
    assert_eq!(http.get(&bare).send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(http.get(format!("{bare}?token={play}")).send().await.unwrap().status(), StatusCode::OK);
    assert_eq!(http.get(format!("{bare}?token={play_other}")).send().await.unwrap().status(), StatusCode::FORBIDDEN);
    // A player follows them: the same frames as the file.
    let from_guarded = video_frames(with(&format!("{id}/index.m3u8"), &play)).await;
    assert!(from_guarded == from_file, "HLS VOD with a token: {} frames", from_guarded.len());
    drop((edge, plain));
}

/// The `.flv` files in an edge's cache directory: (name, bytes), by name.
fn cached_files(dir: &Path) -> Vec<(String, u64)> {
    let mut files: Vec<(String, u64)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".flv"))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().unwrap().len()))
        .collect();
    files.sort();
    files
}

/// The edge keeps exactly the clips `which` in `cache`, within `bound`, and its gauge
/// says so.
async fn assert_kept(edge: &EdgeProc, cache: &Path, bound: usize, clips: &[Vec<u8>], which: [usize; 2]) {
    let mut want: Vec<(String, u64)> = which.map(|i| (format!("lib-clip{i}.flv"), clips[i].len() as u64)).into();
    want.sort();
    let total: u64 = want.iter().map(|(_, len)| len).sum();
    assert!(total <= bound as u64, "{want:?} exceed {bound} bytes");
    assert_eq!(metric(edge, CACHED).await, total as f64, "the gauge counts {want:?}");
    // An evicted file is unlinked just after the answer that evicted it.
    let what = format!("the cache directory to hold {want:?} alone");
    eventually(Duration::from_secs(5), &what, || {
        let found = cached_files(cache);
        let done = found == want;
        async move { done.then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edges_cache_keeps_the_most_recently_used_files_within_its_bound() {
    // One origin whose media library holds ten different clips of about the same size:
    // one ffmpeg run, cut into ten FLV files of one second each.
    let mut c = Cluster::new();
    let library = c.dir.path().join("media");
    std::fs::create_dir_all(&library).unwrap();
    edges::require("ffmpeg");
    let status = std::process::Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-loglevel", "error"])
        .args(["-f", "lavfi", "-i", "testsrc=size=160x120:rate=30,noise=alls=12:allf=t+u", "-t", "10"])
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-g", "30", "-threads", "1"])
        .args(["-f", "segment", "-segment_time", "1", "-reset_timestamps", "1", "-segment_format", "flv"])
        .arg(library.join("clip%d.flv"))
        .status()
        .unwrap();
    assert!(status.success(), "ffmpeg could not make the clips");
    let clips: Vec<Vec<u8>> = (0..10).map(|i| std::fs::read(library.join(format!("clip{i}.flv"))).unwrap()).collect();
    c.origin_args.insert(1, vec!["--media-dir".into(), library.to_str().unwrap().into()]);
    c.add_origin(1);
    c.wait_listening().await;
    c.init().await;
    c.wait_voters(1).await;

    // Room for two clips, never three.
    let (min, max) = (clips.iter().map(Vec::len).min().unwrap(), clips.iter().map(Vec::len).max().unwrap());
    let bound = 2 * max + min / 2;
    assert!(bound < 3 * min, "clips of {min} to {max} bytes are too unlike for a bound of two");
    let cache = c.dir.path().join("edge-vod");
    let args = ["--vod-cache-dir", cache.to_str().unwrap(), "--vod-cache-bytes", &bound.to_string()];
    let mut edge = EdgeProc::start(&c, "edge-1", &args).await;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let get = |edge: &EdgeProc, i: usize| {
        let (http, clips) = (&http, &clips);
        let url = format!("http://{}/vod/lib-clip{i}.flv", edge.http);
        async move {
            let res = http.get(&url).send().await.unwrap();
            assert_eq!(res.status(), StatusCode::OK, "GET {url}");
            assert!(res.bytes().await.unwrap() == clips[i], "clip {i}, byte for byte");
        }
    };
    // Ten clips through an edge with room for two: eight evicted, the last two kept.
    for i in 0..10 {
        get(&edge, i).await;
    }
    assert_eq!((metric(&edge, HITS).await, metric(&edge, MISSES).await), (0.0, 10.0));
    let fetched = metric(&edge, FETCHED).await;
    assert_eq!(fetched, clips.iter().map(Vec::len).sum::<usize>() as f64, "each clip fetched once");
    assert_kept(&edge, &cache, bound, &clips, [8, 9]).await;
    // (Counted before the unlinks that assert_kept waited for.)
    assert_eq!(metric(&edge, EVICTIONS).await, 8.0);
    // A kept clip is a hit, nothing fetched; an evicted one is fetched again (a miss)
    // and evicts the least recently used, clip 9.
    get(&edge, 8).await;
    assert_eq!((metric(&edge, HITS).await, metric(&edge, FETCHED).await), (1.0, fetched), "clip 8 is a hit");
    get(&edge, 0).await;
    assert_eq!(metric(&edge, MISSES).await, 11.0, "clip 0 is a miss");
    assert_eq!(metric(&edge, FETCHED).await, fetched + clips[0].len() as f64, "clip 0 is fetched again");
    assert_kept(&edge, &cache, bound, &clips, [8, 0]).await;
    assert_eq!(metric(&edge, EVICTIONS).await, 9.0);

    // Restarted on the same directory, the edge still has them: hits, nothing fetched.
    assert!(edge.terminate().await.success());
    let edge = EdgeProc::start(&c, "edge-1", &args).await;
    assert_kept(&edge, &cache, bound, &clips, [8, 0]).await;
    for i in [0, 8] {
        get(&edge, i).await;
    }
    assert_eq!((metric(&edge, HITS).await, metric(&edge, MISSES).await), (2.0, 0.0), "both kept clips are hits");
    assert_eq!((metric(&edge, FETCHED).await, metric(&edge, EVICTIONS).await), (0.0, 0.0));
}
