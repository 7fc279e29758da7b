//! Remote Shared Objects through real edges and origins: RTMP clients (message type 19)
//! on two edges, Server-Sent Events on an edge's HTTP port, the origins' admin API,
//! a leader kill during writes, conflicting writers, hostile messages, limits, the
//! lifetime of temporary and persistent objects, and authorization: write tokens,
//! their scope, expiry, key rotation, quotas and escaped names.

mod common;
#[path = "common/edges.rs"]
mod edges;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{eventually, Cluster};
use edges::EdgeProc;
use futures::StreamExt;
use raftcast::bench::client::RtmpClient;
use raftcast::rtmp::amf0::Amf0Value;
use raftcast::rtmp::session::ClientEvent;
use raftcast::rtmp::shared_object::{self, SoEvent, SoMessage};
use reqwest::Method;
use serde_json::{json, Value};

/// An RTMP client that speaks shared objects.
struct SoClient {
    rtmp: RtmpClient,
    /// Every shared-object message received, in order.
    log: Vec<SoMessage>,
    /// The slots as this client sees them, per object.
    mirror: BTreeMap<String, BTreeMap<String, Amf0Value>>,
}

impl SoClient {
    /// Connects with `token` on the connect URL (`rtmp://edge/live?token=T`).
    async fn connect(addr: SocketAddr, token: Option<&str>) -> SoClient {
        let app = match token {
            Some(t) => format!("live?token={t}"),
            None => "live".to_owned(),
        };
        let rtmp = RtmpClient::connect(addr, &app).await.expect("RTMP connect");
        SoClient { rtmp, log: Vec::new(), mirror: BTreeMap::new() }
    }

    async fn send(&mut self, name: &str, persistent: bool, events: Vec<SoEvent>) {
        let body = shared_object::encode(&SoMessage { name: name.into(), version: 0, persistent, events });
        self.rtmp.send_shared_object(Bytes::from(body), false).await.expect("send");
    }

    /// Uses `name` and waits for the use success.
    async fn use_object(&mut self, name: &str, persistent: bool) {
        self.send(name, persistent, vec![SoEvent::Use]).await;
        self.until(Duration::from_secs(10), |m| m.name == name && m.events.contains(&SoEvent::UseSuccess)).await;
    }

    async fn set(&mut self, name: &str, key: &str, value: Amf0Value) {
        self.send(name, false, vec![SoEvent::RequestChange { key: key.into(), value }]).await;
    }

    /// The next shared-object message, `None` when the connection closed.
    async fn next(&mut self) -> Option<SoMessage> {
        loop {
            match self.rtmp.next_event().await {
                Ok(Some(ClientEvent::SharedObject { payload, .. })) => {
                    let msg = shared_object::decode(&payload).expect("the edge sends valid messages");
                    let mirror = self.mirror.entry(msg.name.clone()).or_default();
                    for e in &msg.events {
                        match e {
                            SoEvent::Change { key, value } => {
                                mirror.insert(key.clone(), value.clone());
                            }
                            SoEvent::Remove { key } => {
                                mirror.remove(key);
                            }
                            SoEvent::Clear => mirror.clear(),
                            _ => {}
                        }
                    }
                    self.log.push(msg.clone());
                    return Some(msg);
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Reads messages until one satisfies `f`; panics after `timeout`.
    async fn until(&mut self, timeout: Duration, mut f: impl FnMut(&SoMessage) -> bool) -> SoMessage {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.next()).await {
                Ok(Some(m)) if f(&m) => return m,
                Ok(Some(_)) => {}
                Ok(None) => panic!("connection closed; got {:?}", self.log),
                Err(_) => panic!("nothing matched within {timeout:?}; got {:?}", self.log),
            }
        }
    }

    /// Versions of the messages received for `name` carrying changes (not statuses).
    /// A writer's `success` that follows its own change (which came first through the
    /// feed) repeats the version last sent: it is counted once.
    fn versions(&self, name: &str) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .log
            .iter()
            .filter(|m| m.name == name)
            .filter(|m| m.events.iter().any(|e| matches!(e, SoEvent::Change { .. } | SoEvent::Success { .. })))
            .map(|m| m.version)
            .collect();
        v.dedup();
        v
    }
}

/// A Server-Sent Events reader.
struct Sse {
    body: futures::stream::BoxStream<'static, reqwest::Result<Bytes>>,
    buf: String,
}

impl Sse {
    async fn open(url: String) -> Sse {
        let res = reqwest::Client::new().get(url).send().await.expect("SSE request");
        assert!(res.status().is_success(), "SSE status {}", res.status());
        Sse { body: res.bytes_stream().boxed(), buf: String::new() }
    }

    /// The next event as (name, data JSON).
    async fn next(&mut self, timeout: Duration) -> (String, Value) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut kind, mut data) = (String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        kind = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if !data.is_empty() {
                    return (kind, serde_json::from_str(&data).expect("SSE data is JSON"));
                }
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.body.next()).await {
                Ok(Some(Ok(chunk))) => self.buf.push_str(std::str::from_utf8(&chunk).unwrap()),
                other => panic!("SSE ended or timed out: {other:?}"),
            }
        }
    }

    async fn until(&mut self, timeout: Duration, mut f: impl FnMut(&str, &Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let (kind, data) = self.next(deadline.saturating_duration_since(Instant::now())).await;
            if f(&kind, &data) {
                return data;
            }
        }
    }
}

fn s(text: &str) -> Amf0Value {
    Amf0Value::String(text.into())
}

/// A token from the admin API (`POST /tokens` with `body`), once a leader answers.
async fn issue(c: &Cluster, body: Value) -> String {
    eventually(Duration::from_secs(20), "a token", || async {
        let (status, answer) = c.call(1, Method::POST, "/tokens", Some(&body), &[]).await.ok()?;
        assert!(status == 201 || status.is_server_error(), "POST /tokens {body}: {status} {answer}");
        answer["token"].as_str().map(str::to_owned)
    })
    .await
}

/// A write token for exactly `object`.
async fn write_token(c: &Cluster, object: &str) -> String {
    issue(c, json!({ "object": object, "rights": "write" })).await
}

fn status_event(code: &str) -> SoEvent {
    SoEvent::Status { code: code.into(), level: "error".into() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_one_edge_reaches_the_other_edge_sse_and_later_users() {
    let c = Cluster::start(3).await;
    let edge1 = EdgeProc::start(&c, "edge-1", &[]).await;
    let edge2 = EdgeProc::start(&c, "edge-2", &[]).await;

    let token = write_token(&c, "room").await;
    let mut a = SoClient::connect(edge1.rtmp, Some(&token)).await;
    let mut b = SoClient::connect(edge2.rtmp, None).await;
    a.use_object("room", false).await;
    b.use_object("room", false).await;
    let mut sse = Sse::open(format!("http://{}/shared-objects/room/events", edge2.http)).await;
    let (kind, first) = sse.next(Duration::from_secs(5)).await;
    assert_eq!(kind, "state", "{first}");

    a.set("room", "title", s("hello")).await;
    let mine = a.until(Duration::from_secs(10), |m| m.events.contains(&SoEvent::Success { key: "title".into() })).await;
    let theirs = b
        .until(Duration::from_secs(10), |m| {
            m.events.contains(&SoEvent::Change { key: "title".into(), value: s("hello") })
        })
        .await;
    assert_eq!(mine.version, theirs.version, "the writer and the other edge see the same version");
    let change = sse.until(Duration::from_secs(10), |k, d| k == "change" && d["set"]["title"] == "hello").await;
    assert_eq!(change["version"], mine.version);

    // A client that uses the object later gets the whole state.
    let mut late = SoClient::connect(edge2.rtmp, None).await;
    late.use_object("room", false).await;
    assert_eq!(late.mirror["room"].get("title"), Some(&s("hello")), "{:?}", late.log);

    // A broadcast reaches the RTMP client on the other edge and the SSE watcher.
    a.send("room", false, vec![SoEvent::SendMessage { handler: "chat".into(), args: vec![s("hi all")] }]).await;
    let got =
        b.until(Duration::from_secs(10), |m| m.events.iter().any(|e| matches!(e, SoEvent::SendMessage { .. }))).await;
    assert_eq!(got.events, vec![SoEvent::SendMessage { handler: "chat".into(), args: vec![s("hi all")] }]);
    let msg = sse.until(Duration::from_secs(10), |k, _| k == "message").await;
    assert_eq!(msg, json!({ "handler": "chat", "args": ["hi all"] }));

    // HTTP writes through the edge reach RTMP clients too; If-Match guards them.
    let http = reqwest::Client::new();
    let url = format!("http://{}/shared-objects/room/slots/topic", edge1.http);
    let res = http.put(&url).bearer_auth(&token).json(&json!("news")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let version = res.json::<Value>().await.unwrap()["version"].as_u64().unwrap();
    b.until(Duration::from_secs(10), |m| m.events.contains(&SoEvent::Change { key: "topic".into(), value: s("news") }))
        .await;
    let stale = http
        .put(&url)
        .bearer_auth(&token)
        .header("if-match", (version - 1).to_string())
        .json(&json!("old"))
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 412);
    let now = http.get(format!("http://{}/shared-objects/room", edge2.http)).send().await.unwrap();
    let now: Value = now.json().await.unwrap();
    assert_eq!(now["slots"], json!({ "title": "hello", "topic": "news" }), "{now}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_kill_during_writes_loses_no_acknowledged_write_and_subscribers_agree() {
    let mut c = Cluster::start(3).await;
    let edge1 = EdgeProc::start(&c, "edge-1", &[]).await;
    let edge2 = EdgeProc::start(&c, "edge-2", &[]).await;
    let token = write_token(&c, "ledger").await;
    let mut writer = SoClient::connect(edge1.rtmp, Some(&token)).await;
    let mut s1 = SoClient::connect(edge1.rtmp, None).await;
    let mut s2 = SoClient::connect(edge2.rtmp, None).await;
    for client in [&mut writer, &mut s1, &mut s2] {
        client.use_object("ledger", true).await;
    }
    let subscribers = tokio::spawn(async move {
        // Both subscribers read until the writer's last slot arrives.
        let last = SoEvent::Change { key: "k119".into(), value: Amf0Value::Number(119.0) };
        let (r1, r2) = tokio::join!(
            s1.until(Duration::from_secs(60), |m| m.events.contains(&last)),
            s2.until(Duration::from_secs(60), |m| m.events.contains(&last)),
        );
        drop((r1, r2));
        (s1, s2)
    });
    let leader = c.wait_leader(None, Duration::from_secs(5)).await;
    let mut acked = Vec::new();
    for i in 0..120u32 {
        if i == 40 {
            c.kill(leader);
        }
        writer.set("ledger", &format!("k{i}"), Amf0Value::Number(f64::from(i))).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
        // Collect answers as they come, without waiting for each.
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(1), writer.next()).await {
            acked.extend(m.events.iter().filter_map(|e| match e {
                SoEvent::Success { key } => Some(key.clone()),
                _ => None,
            }));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.len() < 120 && Instant::now() < deadline {
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(1), writer.next()).await {
            let statuses: Vec<_> = m.events.iter().filter(|e| matches!(e, SoEvent::Status { .. })).collect();
            assert!(statuses.is_empty(), "a write failed: {m:?}");
            acked.extend(m.events.iter().filter_map(|e| match e {
                SoEvent::Success { key } => Some(key.clone()),
                _ => None,
            }));
        }
    }
    assert_eq!(acked.len(), 120, "every write was acknowledged once: {acked:?}");
    let (s1, s2) = subscribers.await.unwrap();

    // Every acknowledged write is in the replicated object, read through a survivor.
    let survivor = (1..=3).find(|id| *id != leader).unwrap();
    let object =
        eventually(Duration::from_secs(10), "the object to be readable", || c.object(survivor, "ledger", false)).await;
    for key in &acked {
        assert!(object["slots"].get(key).is_some(), "acknowledged {key} is missing: {object}");
    }
    // Each subscriber saw versions in increasing order and ended with the same state.
    for (name, sub) in [("s1", &s1), ("s2", &s2)] {
        let v = sub.versions("ledger");
        assert!(v.windows(2).all(|w| w[0] < w[1]), "{name} saw versions out of order: {v:?}");
        assert_eq!(sub.mirror["ledger"].len(), 120, "{name} holds every slot");
    }
    assert_eq!(s1.mirror["ledger"], s2.mirror["ledger"]);
    // Where both saw a version, they saw the same change.
    let changes = |sub: &SoClient| -> BTreeMap<u32, Vec<SoEvent>> {
        sub.log
            .iter()
            .filter(|m| m.name == "ledger" && !m.events.contains(&SoEvent::UseSuccess))
            .map(|m| (m.version, m.events.clone()))
            .collect()
    };
    let (c1, c2) = (changes(&s1), changes(&s2));
    let common: Vec<_> = c1.keys().filter(|v| c2.contains_key(v)).collect();
    assert!(common.len() >= 100, "the subscribers share most versions: {} of 120", common.len());
    for v in common {
        if !c1[v].contains(&SoEvent::Clear) && !c2[v].contains(&SoEvent::Clear) {
            assert_eq!(c1[v], c2[v], "version {v}");
        }
    }
    drop((edge1, edge2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_writes_through_two_edges_converge_on_one_value() {
    let c = Cluster::start(3).await;
    let edge1 = EdgeProc::start(&c, "edge-1", &[]).await;
    let edge2 = EdgeProc::start(&c, "edge-2", &[]).await;
    let token = write_token(&c, "score").await;
    let mut a = SoClient::connect(edge1.rtmp, Some(&token)).await;
    let mut b = SoClient::connect(edge2.rtmp, Some(&token)).await;
    a.use_object("score", false).await;
    b.use_object("score", false).await;
    let mut sse = Sse::open(format!("http://{}/shared-objects/score/events", edge1.http)).await;
    for i in 0..30 {
        a.set("score", "x", s(&format!("a{i}"))).await;
        b.set("score", "x", s(&format!("b{i}"))).await;
    }
    // Both writers' last writes are acknowledged…
    let last_a = SoEvent::Success { key: "x".into() };
    let mut a_acks = 0;
    let mut b_acks = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while (a_acks < 30 || b_acks < 30) && Instant::now() < deadline {
        tokio::select! {
            Some(m) = a.next() => a_acks += m.events.iter().filter(|e| **e == last_a).count(),
            Some(m) = b.next() => b_acks += m.events.iter().filter(|e| **e == last_a).count(),
        }
    }
    assert_eq!((a_acks, b_acks), (30, 30));
    // …then everyone converges on the value of the highest version.
    let object = eventually(Duration::from_secs(10), "the object", || c.object(1, "score", false)).await;
    let final_value = object["slots"]["x"].as_str().unwrap().to_owned();
    let version = object["version"].as_u64().unwrap();
    assert_eq!(version, 60);
    // Drain whatever is still in flight to the clients.
    for client in [&mut a, &mut b] {
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(500), client.next()).await {}
        let v = client.versions("score");
        assert!(v.windows(2).all(|w| w[0] < w[1]), "versions out of order: {v:?}");
        assert_eq!(v.last().copied(), Some(60));
    }
    // The writer whose value won holds it from its own write; the other got it as a change.
    let value = |cl: &SoClient| cl.mirror["score"].get("x").cloned();
    let (winner, loser) = if final_value.starts_with('a') { (&a, &b) } else { (&b, &a) };
    assert_eq!(value(loser), Some(s(&final_value)));
    let _ = winner;
    let last = sse.until(Duration::from_secs(10), |k, d| k == "change" && d["version"] == 60).await;
    assert_eq!(last["set"]["x"], final_value.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_shared_object_messages_close_only_their_connection_and_limits_answer_statuses() {
    let c = Cluster::start(3).await;
    let edge = EdgeProc::start(&c, "edge-1", &[]).await;
    let token = write_token(&c, "lobby").await;
    let mut bystander = SoClient::connect(edge.rtmp, None).await;
    bystander.use_object("lobby", false).await;

    let valid = shared_object::encode(&SoMessage {
        name: "lobby".into(),
        version: 0,
        persistent: false,
        events: vec![SoEvent::RequestChange { key: "k".into(), value: Amf0Value::Boolean(true) }],
    });
    let mut bad_length = valid.clone();
    bad_length[20] = 0xFF; // the event's length (bytes 20..24) runs past the message
    let mut unknown_event = valid.clone();
    unknown_event[19] = 42; // the event type
    let mut bad_amf = valid.clone();
    let n = bad_amf.len();
    bad_amf[n - 2] = 0x42; // not an AMF0 marker
    let truncated = valid[..9].to_vec();
    for (what, body) in [
        ("bad length", bad_length),
        ("unknown event", unknown_event),
        ("invalid AMF", bad_amf),
        ("truncated", truncated),
    ] {
        let mut hostile = SoClient::connect(edge.rtmp, Some(&token)).await;
        hostile.rtmp.send_shared_object(Bytes::from(body), false).await.unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(5), hostile.next()).await;
        assert!(matches!(closed, Ok(None)), "{what}: the sender's connection closes");
    }
    // The bystander is still served.
    let mut writer = SoClient::connect(edge.rtmp, Some(&token)).await;
    writer.use_object("lobby", false).await;
    writer.set("lobby", "after", s("still here")).await;
    bystander
        .until(Duration::from_secs(10), |m| {
            m.events.contains(&SoEvent::Change { key: "after".into(), value: s("still here") })
        })
        .await;

    // Limits answer with a status and put the client's value back.
    writer.set("lobby", "big", s(&"x".repeat(70_000))).await;
    let m =
        writer.until(Duration::from_secs(5), |m| m.events.iter().any(|e| matches!(e, SoEvent::Status { .. }))).await;
    assert!(
        m.events.contains(&SoEvent::Status { code: "SharedObject.LimitExceeded".into(), level: "error".into() }),
        "{m:?}"
    );
    assert!(m.events.contains(&SoEvent::Remove { key: "big".into() }), "the refused slot is put back: {m:?}");
    writer.set("unused", "k", s("v")).await;
    let m = writer.until(Duration::from_secs(5), |m| m.name == "unused").await;
    assert!(
        m.events.contains(&SoEvent::Status { code: "SharedObject.NotInUse".into(), level: "error".into() }),
        "{m:?}"
    );
    // Past the message rate (burst 100), requests are refused with a status.
    for i in 0..150 {
        writer.set("lobby", "fast", Amf0Value::Number(f64::from(i))).await;
    }
    writer
        .until(Duration::from_secs(10), |m| {
            m.events.contains(&SoEvent::Status { code: "SharedObject.RateLimited".into(), level: "error".into() })
        })
        .await;
    // HTTP limits are 4xx with a clear message.
    let http = reqwest::Client::new();
    let res = http
        .put(format!("http://{}/shared-objects/lobby/slots/big", edge.http))
        .bearer_auth(&token)
        .json(&json!("y".repeat(70_000)))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    assert!(res.text().await.unwrap().contains("at most"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_objects_vanish_after_their_last_user_and_persistent_ones_survive_a_full_restart() {
    let mut c = Cluster::start_with(3, &["--temporary-grace", "1s"]).await;
    let edge = EdgeProc::start(&c, "edge-1", &[]).await;
    // Objects a client creates are temporary unless its token says persistent.
    let temporary = write_token(&c, "tmp").await;
    let persistent = issue(&c, json!({ "object": "perm", "rights": "write", "persistent": true })).await;
    let mut a = SoClient::connect(edge.rtmp, Some(&temporary)).await;
    let mut b = SoClient::connect(edge.rtmp, None).await;
    let mut p = SoClient::connect(edge.rtmp, Some(&persistent)).await;
    a.use_object("tmp", false).await;
    b.use_object("tmp", false).await;
    p.use_object("perm", false).await;
    a.set("tmp", "k", s("v")).await;
    p.set("perm", "k", s("kept")).await;
    p.until(Duration::from_secs(10), |m| m.name == "perm" && m.events.contains(&SoEvent::Success { key: "k".into() }))
        .await;
    eventually(Duration::from_secs(10), "the temporary object to exist", || c.object(1, "tmp", false)).await;
    // One user left: the object stays.
    a.send("tmp", false, vec![SoEvent::Release]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(c.object(1, "tmp", false).await.is_some(), "b still uses tmp");
    // The last user leaves (its connection closes): the object goes.
    drop(b);
    eventually(Duration::from_secs(15), "the temporary object to be removed", || async {
        let (status, _) = c.call(1, Method::GET, "/shared-objects/tmp", None, &[]).await.ok()?;
        (status == 404).then_some(())
    })
    .await;
    drop(a);
    drop(p);
    drop(edge);
    // The whole cluster restarts; the persistent object is still there.
    for id in 1..=3 {
        c.kill(id);
    }
    for id in 1..=3 {
        c.spawn(id);
    }
    c.wait_leader(None, Duration::from_secs(20)).await;
    let perm =
        eventually(Duration::from_secs(20), "the persistent object after the restart", || c.object(2, "perm", false))
            .await;
    assert_eq!(perm["slots"]["k"], "kept");
    assert_eq!(perm["persistent"], true);
    let status = eventually(Duration::from_secs(10), "an answer about the temporary object", || async {
        let (status, _) = c.call(1, Method::GET, "/shared-objects/tmp", None, &[]).await.ok()?;
        (status != 503).then_some(status)
    })
    .await;
    assert_eq!(status, 404, "the temporary object stays removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_an_edge_need_a_token_for_that_object() {
    let c = Cluster::start(3).await;
    let edge = EdgeProc::start(&c, "edge-1", &[]).await;
    let http = reqwest::Client::new();
    let base = format!("http://{}/shared-objects", edge.http);
    // The admin writes a slot; a watcher follows the object.
    eventually(Duration::from_secs(20), "the admin's write", || async {
        let (status, _) =
            c.call(1, Method::PUT, "/shared-objects/chat/slots/topic", Some(&json!("admin's")), &[]).await.ok()?;
        status.is_success().then_some(())
    })
    .await;
    let mut sse = Sse::open(format!("{base}/chat/events")).await;
    sse.until(Duration::from_secs(10), |k, d| k == "state" && d["slots"]["topic"] == "admin's").await;

    let chat = write_token(&c, "chat").await;
    let other = write_token(&c, "other").await;
    let read_only = issue(&c, json!({ "object": "chat", "rights": "read" })).await;
    let short = issue(&c, json!({ "object": "chat", "rights": "write", "ttl_secs": 1 })).await;
    let mut forged = chat.clone();
    forged.pop();
    forged.push(if chat.ends_with('A') { 'B' } else { 'A' });

    // No token, a forged one: 401. Another object's token, a read token: 403.
    let put = |token: Option<&str>| {
        let mut req = http.put(format!("{base}/chat/slots/topic")).json(&json!("spoofed"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    assert_eq!(put(None).await.unwrap().status(), 401);
    assert_eq!(put(Some(&forged)).await.unwrap().status(), 401);
    assert_eq!(put(Some("rc1.garbage")).await.unwrap().status(), 401);
    let res = put(Some(&other)).await.unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(res.json::<Value>().await.unwrap()["error"]["code"], "forbidden");
    assert_eq!(put(Some(&read_only)).await.unwrap().status(), 403);
    let del = http.delete(format!("{base}/chat/slots/topic")).send().await.unwrap();
    assert_eq!(del.status(), 401);
    let del = http.delete(format!("{base}/chat/slots/topic")).bearer_auth(&other).send().await.unwrap();
    assert_eq!(del.status(), 403);
    let spoof = json!({ "handler": "say", "args": ["spoofed"] });
    let msg = http.post(format!("{base}/chat/messages")).json(&spoof).send().await.unwrap();
    assert_eq!(msg.status(), 401);
    let msg = http.post(format!("{base}/chat/messages?token={other}")).json(&spoof).send().await.unwrap();
    assert_eq!(msg.status(), 403);

    // An expired token is refused like a missing one.
    let expired_at = Instant::now() + Duration::from_millis(2_100);
    tokio::time::sleep_until(expired_at.into()).await;
    let res = put(Some(&short)).await.unwrap();
    assert_eq!(res.status(), 401);
    assert!(res.text().await.unwrap().contains("expired"));

    // Over RTMP: without a token, and with another object's, a change is refused with a
    // status and put back; with the object's token it commits.
    for (token, code) in [(None, "SharedObject.Unauthorized"), (Some(other.as_str()), "SharedObject.Forbidden")] {
        let mut client = SoClient::connect(edge.rtmp, token).await;
        client.use_object("chat", false).await;
        client.set("chat", "topic", s("spoofed")).await;
        let m = client
            .until(Duration::from_secs(10), |m| m.events.iter().any(|e| matches!(e, SoEvent::Status { .. })))
            .await;
        assert!(m.events.contains(&status_event(code)), "{m:?}");
        assert!(m.events.contains(&SoEvent::Change { key: "topic".into(), value: s("admin's") }), "put back: {m:?}");
        client
            .send("chat", false, vec![SoEvent::SendMessage { handler: "say".into(), args: vec![s("spoofed")] }])
            .await;
        client.until(Duration::from_secs(10), |m| m.events.contains(&status_event(code))).await;
    }
    let object = c.object(1, "chat", false).await.unwrap();
    assert_eq!(object["slots"], json!({ "topic": "admin's" }), "nothing unauthorized was applied");

    // With the right token: a broadcast (the watcher's first message event is this one,
    // so none of the refused ones got through), an HTTP write (also with ?token=) and
    // an RTMP write.
    let ok = json!({ "handler": "say", "args": ["hello"] });
    let msg = http.post(format!("{base}/chat/messages?token={chat}")).json(&ok).send().await.unwrap();
    assert_eq!(msg.status(), 202);
    let first = sse.until(Duration::from_secs(10), |k, _| k == "message").await;
    assert_eq!(first, ok);
    let res = http.put(format!("{base}/chat/slots/note?token={chat}")).json(&json!("by token")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let mut writer = SoClient::connect(edge.rtmp, Some(&chat)).await;
    writer.use_object("chat", false).await;
    writer.set("chat", "topic", s("client's")).await;
    writer.until(Duration::from_secs(10), |m| m.events.contains(&SoEvent::Success { key: "topic".into() })).await;
    // The token for chat does not write other objects over RTMP either.
    writer.use_object("other", false).await;
    writer.set("other", "k", s("v")).await;
    writer.until(Duration::from_secs(10), |m| m.events.contains(&status_event("SharedObject.Forbidden"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_looks_like_a_path_stays_one_object_name() {
    let c = Cluster::start(3).await;
    let edge = EdgeProc::start(&c, "edge-1", &[]).await;
    let name = "../../raft/forward?";
    let escaped = "..%2F..%2Fraft%2Fforward%3F";
    let token = write_token(&c, name).await;
    let http = reqwest::Client::new();
    // The edge's feed and its broadcast both reach the object of that name (and nothing
    // else: a message sent to /raft/forward would not come back on this feed).
    let mut sse = Sse::open(format!("http://{}/shared-objects/{escaped}/events", edge.http)).await;
    let state = sse.until(Duration::from_secs(10), |k, _| k == "state").await;
    assert_eq!(state["name"], name);
    let body = json!({ "handler": "h", "args": [1] });
    let res = http
        .post(format!("http://{}/shared-objects/{escaped}/messages", edge.http))
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202, "{}", res.text().await.unwrap());
    assert_eq!(sse.until(Duration::from_secs(10), |k, _| k == "message").await, body);
    let res = http
        .put(format!("http://{}/shared-objects/{escaped}/slots/{escaped}", edge.http))
        .bearer_auth(&token)
        .json(&json!(1))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (status, object) = c.call(1, Method::GET, &format!("/shared-objects/{escaped}"), None, &[]).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(object["slots"], json!({ name: 1 }));
    // A name that is not one is refused before anything is asked of an origin.
    let res = http.get(format!("http://{}/shared-objects/a%0Ab/events", edge.http)).send().await.unwrap();
    assert_eq!(res.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_keeps_old_tokens_valid_until_the_old_key_is_dropped() {
    let c = Cluster::start(3).await;
    let edge = EdgeProc::start(&c, "edge-1", &[]).await;
    let http = reqwest::Client::new();
    let put = |token: String| {
        http.put(format!("http://{}/shared-objects/rot/slots/k", edge.http)).bearer_auth(token).json(&json!(1)).send()
    };
    let first = write_token(&c, "rot").await;
    assert_eq!(put(first.clone()).await.unwrap().status(), 200);
    let rotate = || async {
        let (status, answer) = c.call(1, Method::POST, "/tokens/rotate", None, &[]).await.unwrap();
        assert_eq!(status, 200, "{answer}");
        answer
    };
    assert_eq!(rotate().await["key_ids"], json!([1, 2]));
    // A token of the new key verifies at once (the edge fetches the key it lacks)…
    let second = write_token(&c, "rot").await;
    assert_ne!(first, second);
    assert_eq!(put(second.clone()).await.unwrap().status(), 200);
    // …and the old one still does.
    assert_eq!(put(first.clone()).await.unwrap().status(), 200);
    // The next rotation drops the first key: its tokens stop verifying (within the
    // edge's key cache age); the second key's still verify.
    assert_eq!(rotate().await["key_ids"], json!([2, 3]));
    eventually(Duration::from_secs(15), "the dropped key's token to be refused", || async {
        (put(first.clone()).await.ok()?.status() == 401).then_some(())
    })
    .await;
    assert_eq!(put(second).await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_refuse_a_client_while_the_admin_still_writes_and_objects_can_be_deleted() {
    let c = Cluster::start(3).await;
    let edge = EdgeProc::start(&c, "edge-1", &[]).await;
    let http = reqwest::Client::new();
    let token = issue(
        &c,
        json!({ "object_prefix": "q-", "rights": "write", "subject": "greedy", "persistent": true,
                "quota": { "objects": 1, "slots": 2, "bytes": 1000 } }),
    )
    .await;
    let put = |object: &str, slot: &str, value: Value| {
        http.put(format!("http://{}/shared-objects/{object}/slots/{slot}", edge.http))
            .bearer_auth(&token)
            .json(&value)
            .send()
    };
    assert_eq!(put("q-a", "x", json!(1)).await.unwrap().status(), 200);
    assert_eq!(put("q-a", "y", json!(2)).await.unwrap().status(), 200);
    for (object, slot, value, what) in [
        ("q-a", "z", json!(3), "a third slot"),
        ("q-b", "x", json!(1), "a second object"),
        ("q-a", "x", json!("v".repeat(2000)), "more bytes"),
    ] {
        let res = put(object, slot, value).await.unwrap();
        assert_eq!(res.status(), 403, "{what}");
        assert_eq!(res.json::<Value>().await.unwrap()["error"]["code"], "quota_exceeded", "{what}");
    }
    // The admin is not bound by the client's quota.
    let (status, _) = c.call(1, Method::PUT, "/shared-objects/q-a/slots/z", Some(&json!(3)), &[]).await.unwrap();
    assert_eq!(status, 200);
    let (status, _) = c.call(1, Method::PUT, "/shared-objects/q-admin/slots/x", Some(&json!(1)), &[]).await.unwrap();
    assert_eq!(status, 200);
    // Deleting the client's object (admin API) gives its quota back.
    let (status, _) = c.call(1, Method::DELETE, "/shared-objects/q-a", None, &[]).await.unwrap();
    assert_eq!(status, 200);
    let (status, _) = c.call(1, Method::GET, "/shared-objects/q-a", None, &[]).await.unwrap();
    assert_eq!(status, 404);
    let (status, _) = c.call(1, Method::DELETE, "/shared-objects/q-a", None, &[]).await.unwrap();
    assert_eq!(status, 404);
    assert_eq!(put("q-b", "x", json!(1)).await.unwrap().status(), 200);

    // The same through `raftcast ctl`: a token it signs writes, `so delete` removes.
    let ctl = |args: &[&str]| {
        let out = std::process::Command::new(common::BIN)
            .args(["ctl", "--origin", &c.http(1).to_string()])
            .args(args)
            .env("RAFTCAST_ADMIN_TOKEN", &c.token)
            .output()
            .unwrap();
        assert!(out.status.success(), "ctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let signed = ctl(&["tokens", "sign", "--object", "q-ctl", "--write", "--ttl", "60", "--quota-objects", "1"]);
    assert!(signed.starts_with("rc1."), "{signed}");
    let res = http
        .put(format!("http://{}/shared-objects/q-ctl/slots/k", edge.http))
        .bearer_auth(&signed)
        .json(&json!(1))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    ctl(&["so", "delete", "q-ctl"]);
    let (status, _) = c.call(1, Method::GET, "/shared-objects/q-ctl", None, &[]).await.unwrap();
    assert_eq!(status, 404);
    assert!(ctl(&["tokens", "rotate"]).contains("keys kept"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_of_an_app_that_requires_play_tokens_need_a_read_token() {
    let c = Cluster::start(1).await;
    let edge = EdgeProc::start(&c, "edge-1", &[]).await;
    let http = reqwest::Client::new();
    // live/room/chat belongs to app live, which requires play tokens; lobby is open.
    let (status, v) =
        c.call(1, Method::PUT, "/apps/live", Some(&json!({"play_token_required": true})), &[]).await.unwrap();
    assert!(status.is_success(), "{v}");
    for object in ["live%2Froom%2Fchat", "lobby"] {
        let (status, _) = c
            .call(1, Method::PUT, &format!("/shared-objects/{object}/slots/topic"), Some(&json!("hi")), &[])
            .await
            .unwrap();
        assert!(status.is_success());
    }
    let reader = issue(&c, json!({ "object": "live/room/chat", "rights": "read" })).await;
    let other = issue(&c, json!({ "object": "live/room/other", "rights": "read" })).await;
    let get = |object: &str, token: Option<&str>| {
        let mut req = http.get(format!("http://{}/shared-objects/{object}", edge.http));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    // The edge learns the rule within its cache's age (5 s).
    eventually(Duration::from_secs(15), "the edge to protect live/…", || async {
        (get("live%2Froom%2Fchat", None).await == 401).then_some(())
    })
    .await;
    assert_eq!(get("live%2Froom%2Fchat", Some(&other)).await, 403);
    assert_eq!(get("live%2Froom%2Fchat", Some(&reader)).await, 200);
    assert_eq!(get("lobby", None).await, 200, "objects of no protected app stay open");
    let events = |token: &str| format!("http://{}/shared-objects/live%2Froom%2Fchat/events?token={token}", edge.http);
    assert_eq!(http.get(events("")).send().await.unwrap().status(), 401, "the feed too");
    let feed = http.get(events(&reader)).send().await.unwrap();
    assert_eq!(feed.status(), 200);
    drop(feed);

    // Over RTMP: using it needs the token on the connect URL.
    let mut stranger = SoClient::connect(edge.rtmp, None).await;
    stranger.send("live/room/chat", false, vec![SoEvent::Use]).await;
    stranger.until(Duration::from_secs(10), |m| m.events.contains(&status_event("SharedObject.Unauthorized"))).await;
    assert!(!stranger.log.iter().any(|m| m.events.contains(&SoEvent::UseSuccess)), "{:?}", stranger.log);
    let mut member = SoClient::connect(edge.rtmp, Some(&reader)).await;
    member.use_object("live/room/chat", false).await;
}
