//! Webhooks through real edges and origins: a hook endpoint in this process, an app
//! whose hooks admit or refuse publishers and players, and `on_publish_done` arriving
//! once per session even when the stream's owner origin is killed in between.

mod common;
#[path = "common/edges.rs"]
mod edges;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, Cluster};
use edges::{ffmpeg_publish, EdgeProc};
use raftcast::bench::client::{RtmpClient, StatusError};
use raftcast::rtmp::session::ClientEvent;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// A hook endpoint: records every call and refuses (403) streams named `blocked*`.
struct Endpoint {
    url: String,
    calls: Arc<Mutex<Vec<Value>>>,
}

impl Endpoint {
    async fn start() -> Endpoint {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post({
                let calls = calls.clone();
                move |axum::Json(body): axum::Json<Value>| {
                    let calls = calls.clone();
                    async move {
                        let refuse = body["stream"].as_str().is_some_and(|s| s.starts_with("blocked"));
                        calls.lock().unwrap().push(body);
                        if refuse {
                            axum::http::StatusCode::FORBIDDEN
                        } else {
                            axum::http::StatusCode::NO_CONTENT
                        }
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Endpoint { url, calls }
    }

    /// The calls of `event` for `stream` so far.
    fn calls(&self, event: &str, stream: &str) -> Vec<Value> {
        let calls = self.calls.lock().unwrap();
        calls.iter().filter(|c| c["event"] == event && c["stream"] == stream).cloned().collect()
    }
}

async fn set_hooks(c: &Cluster, hooks: Value) {
    let (status, answer) = c.call(1, Method::PUT, "/apps/live/hooks", Some(&hooks), &[]).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{answer}");
}

/// The owner of live/`name` as origin `via` sees it.
async fn owner_of(c: &Cluster, via: u64, name: &str) -> Option<(u64, u64)> {
    let (_, v) = c.call(via, Method::GET, "/streams?stale=true", None, &[]).await.ok()?;
    v["streams"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == name)
        .map(|s| (s["owner"].as_u64().unwrap(), s["epoch"].as_u64().unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_admit_and_refuse_publishers_and_players() {
    let c = Cluster::start(3).await;
    let hook = Endpoint::start().await;
    set_hooks(&c, json!({ "on_publish": hook.url, "on_play": hook.url, "on_play_done": hook.url, "timeout_ms": 2000 }))
        .await;
    let edge = EdgeProc::start(&c, "edge-1", &[]).await;

    // Refused by the hook: the publisher hears why, in RTMP terms.
    let mut client = RtmpClient::connect(edge.rtmp, "live").await.unwrap();
    let refusal = client.publish("blocked-1").await.unwrap_err().downcast::<StatusError>().unwrap();
    assert_eq!(refusal.code, "NetStream.Publish.Unauthorized", "{}", refusal.description);
    assert_eq!(hook.calls("on_publish", "blocked-1").len(), 1);

    // Admitted: the call carries who and what.
    let mut publisher = RtmpClient::connect(edge.rtmp, "live").await.unwrap();
    publisher.publish("open?x=1").await.unwrap();
    let call = &hook.calls("on_publish", "open")[0];
    assert_eq!(
        (call["app"].as_str(), call["edge"].as_str(), call["protocol"].as_str()),
        (Some("live"), Some("edge-1"), Some("rtmp"))
    );
    assert_eq!(call["query"], "x=1");
    assert!(call["client"].as_str().unwrap().starts_with("127."), "{call}");

    // Players: RTMP refused by the hook, HTTP-FLV refused with 403.
    let mut player = RtmpClient::connect(edge.rtmp, "live").await.unwrap();
    let refusal = player.play("blocked-2").await.unwrap_err().downcast::<StatusError>().unwrap();
    assert_eq!(refusal.code, "NetStream.Play.Failed", "{}", refusal.description);
    let flv = reqwest::get(edge.flv_url("live", "blocked-3")).await.unwrap();
    assert_eq!(flv.status(), StatusCode::FORBIDDEN);
    assert_eq!((hook.calls("on_play", "blocked-2").len(), hook.calls("on_play", "blocked-3").len()), (1, 1));

    // An admitted player's session ends with one on_play_done.
    let mut player = RtmpClient::connect(edge.rtmp, "live").await.unwrap();
    player.play("open").await.unwrap();
    assert_eq!(hook.calls("on_play", "open").len(), 1);
    drop(player);
    eventually(Duration::from_secs(10), "on_play_done", || async {
        (!hook.calls("on_play_done", "open").is_empty()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(hook.calls("on_play_done", "open").len(), 1);
    drop(publisher);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_hook_refuses_unless_the_app_fails_open() {
    let c = Cluster::start(3).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let url = format!("http://{closed}/hook");
    set_hooks(&c, json!({ "on_publish": url, "timeout_ms": 300 })).await;
    let edge = EdgeProc::start(&c, "edge-1", &[]).await;
    let mut client = RtmpClient::connect(edge.rtmp, "live").await.unwrap();
    let refusal = client.publish("a").await.unwrap_err().downcast::<StatusError>().unwrap();
    assert_eq!(refusal.code, "NetStream.Publish.Unauthorized", "{}", refusal.description);
    set_hooks(&c, json!({ "on_publish": url, "timeout_ms": 300, "fail_open": true })).await;
    // Edges refetch rules at most every 5 s.
    eventually(Duration::from_secs(15), "the edge to fail open", || async {
        let mut client = RtmpClient::connect(edge.rtmp, "live").await.ok()?;
        client.publish("b").await.ok().map(|_| ())
    })
    .await;
    let failed = edge.metric("edge_hook_calls_total{event=\"on_publish\",outcome=\"failed\"}").await;
    assert!(failed >= 2.0, "failed calls counted: {failed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_publish_done_arrives_once_per_session_across_an_owner_failover() {
    let mut c = Cluster::start(3).await;
    let hook = Endpoint::start().await;
    set_hooks(&c, json!({ "on_publish": hook.url, "on_publish_done": hook.url })).await;
    let edge = EdgeProc::start(&c, "edge-1", &[]).await;
    let mut ffmpeg = ffmpeg_publish(&edge.rtmp_url("live", "moving"), c.dir.path().join("ffmpeg.log"));
    let (owner, epoch) =
        eventually(Duration::from_secs(15), "the stream to be published", || owner_of(&c, 1, "moving")).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.kill(owner);
    let via = (1..=3).find(|i| *i != owner).unwrap();
    eventually(Duration::from_secs(10), "the stream to move", || async {
        owner_of(&c, via, "moving").await.filter(|(o, e)| *o != owner && *e > epoch)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(ffmpeg.running(), "the publisher kept publishing");
    assert!(hook.calls("on_publish_done", "moving").is_empty(), "no done notice while the session lives");
    drop(ffmpeg);
    eventually(Duration::from_secs(10), "on_publish_done", || async {
        (!hook.calls("on_publish_done", "moving").is_empty()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (started, done) = (hook.calls("on_publish", "moving"), hook.calls("on_publish_done", "moving"));
    assert_eq!((started.len(), done.len()), (1, 1), "one session, one of each: {started:?} {done:?}");
    assert_eq!(started[0]["session"], done[0]["session"]);
    let _ = ClientEvent::Connected;
}
