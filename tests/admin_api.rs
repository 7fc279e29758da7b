//! Hostile and mistaken admin requests: every one gets a 4xx with a JSON error, and the
//! node keeps serving. Raft RPC refuses requests without the cluster secret.

mod common;

use std::time::Duration;

use common::Cluster;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

struct Bad {
    what: &'static str,
    method: Method,
    path: String,
    content_type: Option<&'static str>,
    body: Option<Vec<u8>>,
    auth: Auth,
    headers: Vec<(&'static str, &'static str)>,
    expect: StatusCode,
}

#[derive(Clone, Copy)]
enum Auth {
    Token,
    None,
    Wrong,
}

fn bad(what: &'static str, method: Method, path: &str, body: Option<&str>, expect: StatusCode) -> Bad {
    Bad {
        what,
        method,
        path: path.to_owned(),
        content_type: body.map(|_| "application/json"),
        body: body.map(|b| b.as_bytes().to_vec()),
        auth: Auth::Token,
        headers: Vec::new(),
        expect,
    }
}

fn corpus(c: &Cluster) -> Vec<Bad> {
    use Method as M;
    use StatusCode as S;
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let big = format!("\"{}\"", "x".repeat(300 * 1024));
    let me = c.http(1).to_string();
    let mut v = vec![
        bad("malformed JSON", M::POST, "/cluster/init", Some("{\"nodes\":"), S::BAD_REQUEST),
        bad("not JSON at all", M::PUT, "/shared-objects/o/slots/s", Some("hello"), S::BAD_REQUEST),
        bad("wrong type for nodes", M::POST, "/cluster/init", Some("{\"nodes\": [1,2]}"), S::BAD_REQUEST),
        bad(
            "node id not a number",
            M::POST,
            "/cluster/init",
            Some("{\"nodes\": {\"x\": {\"http\":\"a:1\",\"media\":\"a:2\"}}}"),
            S::BAD_REQUEST,
        ),
        bad("unknown field", M::PUT, "/cluster/voters", Some("{\"ids\": [1], \"force\": true}"), S::BAD_REQUEST),
        bad("ids of the wrong type", M::PUT, "/cluster/voters", Some("{\"ids\": \"1,2\"}"), S::BAD_REQUEST),
        bad("negative node id", M::PUT, "/cluster/voters", Some("{\"ids\": [-1]}"), S::BAD_REQUEST),
        bad("empty voter set", M::PUT, "/cluster/voters", Some("{\"ids\": []}"), S::BAD_REQUEST),
        bad("unknown voter id", M::PUT, "/cluster/voters", Some("{\"ids\": [1, 2, 99]}"), S::NOT_FOUND),
        bad("remove an unknown node", M::DELETE, "/cluster/nodes/42", None, S::NOT_FOUND),
        bad("node id in the path is not a number", M::DELETE, "/cluster/nodes/abc", None, S::BAD_REQUEST),
        bad("node id overflows", M::DELETE, "/cluster/nodes/99999999999999999999999", None, S::BAD_REQUEST),
        bad(
            "learner with a bad address",
            M::POST,
            "/cluster/learners",
            Some("{\"id\":5,\"http\":\"nohost\",\"media\":\"a:1\"}"),
            S::BAD_REQUEST,
        ),
        bad(
            "learner id 0",
            M::POST,
            "/cluster/learners",
            Some("{\"id\":0,\"http\":\"a:1\",\"media\":\"a:2\"}"),
            S::BAD_REQUEST,
        ),
        bad("learner missing media", M::POST, "/cluster/learners", Some("{\"id\":5,\"http\":\"a:1\"}"), S::BAD_REQUEST),
        bad(
            "init with other members",
            M::POST,
            "/cluster/init",
            Some(&format!("{{\"nodes\": {{\"1\": {{\"http\": \"{me}\", \"media\": \"127.0.0.1:1\"}}}}}}")),
            S::CONFLICT,
        ),
        bad("init without nodes", M::POST, "/cluster/init", Some("{\"nodes\": {}}"), S::BAD_REQUEST),
        bad("deeply nested value", M::PUT, "/shared-objects/o/slots/s", Some(&deep), S::BAD_REQUEST),
        bad("body over the limit", M::PUT, "/shared-objects/o/slots/s", Some(&big), S::PAYLOAD_TOO_LARGE),
        bad(
            "date that is not a number",
            M::PUT,
            "/shared-objects/o/slots/s",
            Some("{\"$date\": \"soon\"}"),
            S::BAD_REQUEST,
        ),
        bad("missing object", M::GET, "/shared-objects/nothing-here", None, S::NOT_FOUND),
        bad("delete a missing slot", M::DELETE, "/shared-objects/nothing-here/slots/s", None, S::NOT_FOUND),
        bad("object name with a control character", M::GET, "/shared-objects/a%01b", None, S::BAD_REQUEST),
        bad("key for a bad app name", M::POST, "/keys", Some("{\"app\": \"../etc\"}"), S::BAD_REQUEST),
        bad("key without an app", M::POST, "/keys", Some("{\"name\": \"x\"}"), S::BAD_REQUEST),
        bad(
            "app policy of the wrong type",
            M::PUT,
            "/apps/live",
            Some("{\"publish_key_required\": \"yes\"}"),
            S::BAD_REQUEST,
        ),
        bad("pin to an origin that is not a member", M::PUT, "/pins/live/x", Some("{\"origin\": 99}"), S::BAD_REQUEST),
        bad("pin origin of the wrong type", M::PUT, "/pins/live/x", Some("{\"origin\": \"2\"}"), S::BAD_REQUEST),
        bad("pin with an unknown field", M::PUT, "/pins/live/x", Some("{\"origin\": 2, \"x\": 1}"), S::BAD_REQUEST),
        bad("pin without a body", M::PUT, "/pins/live/x", Some("{"), S::BAD_REQUEST),
        bad("pin pattern with a space", M::PUT, "/pins/live/a%20b", Some("{\"origin\": 2}"), S::BAD_REQUEST),
        bad("pin pattern with a slash", M::PUT, "/pins/live/a%2Fb", Some("{\"origin\": 2}"), S::BAD_REQUEST),
        bad("pin app with a glob", M::PUT, "/pins/li*e/x", Some("{\"origin\": 2}"), S::BAD_REQUEST),
        bad("delete a missing pin", M::DELETE, "/pins/live/nothing-here", None, S::NOT_FOUND),
        bad("pins route without a pattern", M::PUT, "/pins/live", Some("{\"origin\": 2}"), S::NOT_FOUND),
        bad("unknown route", M::GET, "/cluster/nope", None, S::NOT_FOUND),
        bad("root", M::GET, "/", None, S::NOT_FOUND),
        bad("wrong method", M::DELETE, "/cluster/status", None, S::METHOD_NOT_ALLOWED),
        bad("wrong method on init", M::GET, "/cluster/init", None, S::METHOD_NOT_ALLOWED),
    ];
    let mut no_type = bad(
        "JSON without a content type",
        M::POST,
        "/cluster/init",
        Some("{\"nodes\": {}}"),
        S::UNSUPPORTED_MEDIA_TYPE,
    );
    no_type.content_type = None;
    v.push(no_type);
    let mut text_type =
        bad("text/plain body", M::PUT, "/cluster/voters", Some("{\"ids\": [1]}"), S::UNSUPPORTED_MEDIA_TYPE);
    text_type.content_type = Some("text/plain");
    v.push(text_type);
    let mut bad_match =
        bad("If-Match that is not a version", M::PUT, "/shared-objects/o/slots/s", Some("1"), S::BAD_REQUEST);
    bad_match.headers.push(("if-match", "yesterday"));
    v.push(bad_match);
    for (what, auth) in [("no token", Auth::None), ("wrong token", Auth::Wrong)] {
        for path in ["/cluster/status", "/streams", "/shared-objects/o", "/metrics", "/pins"] {
            let mut b = bad(what, M::GET, path, None, S::UNAUTHORIZED);
            b.auth = auth;
            v.push(b);
        }
        let mut b = bad(what, M::PUT, "/shared-objects/o/slots/s", Some("1"), S::UNAUTHORIZED);
        b.auth = auth;
        v.push(b);
    }
    let mut invalid_utf8 = bad("invalid UTF-8", M::PUT, "/shared-objects/o/slots/s", Some(""), S::BAD_REQUEST);
    invalid_utf8.body = Some(vec![b'"', 0xff, 0xfe, b'"']);
    v.push(invalid_utf8);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_admin_requests_get_a_json_4xx_and_the_node_stays_healthy() {
    let c = Cluster::start(3).await;
    for b in corpus(&c) {
        let mut req = c.client.request(b.method.clone(), format!("http://{}{}", c.http(1), b.path));
        match b.auth {
            Auth::Token => req = req.bearer_auth(&c.token),
            Auth::Wrong => req = req.bearer_auth("not-the-token-at-all-0000"),
            Auth::None => {}
        }
        if let Some(ct) = b.content_type {
            req = req.header("content-type", ct);
        }
        for (k, v) in &b.headers {
            req = req.header(*k, *v);
        }
        if let Some(body) = b.body.clone() {
            req = req.body(body);
        }
        let res = req.send().await.unwrap_or_else(|e| panic!("{}: {e}", b.what));
        let status = res.status();
        let text = res.text().await.unwrap();
        assert_eq!(status, b.expect, "{}: {} {} answered {status}: {text}", b.what, b.method, b.path);
        let json: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{}: not JSON: {text}", b.what));
        assert!(json["error"]["code"].is_string() && json["error"]["message"].is_string(), "{}: {json}", b.what);
    }
    // Still healthy, still a working cluster.
    for id in 1..=3 {
        let res = c.client.get(format!("http://{}/health", c.http(id))).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    let (s, body) = c.put_slot(1, "after", "ok", &json!(true), None).await.unwrap();
    assert_eq!(s, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_learner_that_is_not_running_is_a_clear_503() {
    let c = Cluster::start(3).await;
    let dead = common::free_addr();
    let body = json!({ "id": 7, "http": dead.to_string(), "media": "127.0.0.1:9" });
    let (s, b) = c.call(1, Method::POST, "/cluster/learners", Some(&body), &[]).await.unwrap();
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{b}");
    assert!(b["error"]["message"].as_str().unwrap().contains("is it running"), "{b}");
    // The cluster stays writable: the learner does not count towards the quorum.
    let (s, _) = c.put_slot(2, "o", "s", &json!(1), None).await.unwrap();
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_rpc_requires_the_cluster_secret_and_a_valid_body() {
    let c = Cluster::start(1).await;
    let url = |p: &str| format!("http://{}{p}", c.http(1));
    for path in ["/raft/append", "/raft/vote", "/raft/snapshot", "/raft/forward"] {
        let res = c.client.post(url(path)).body(vec![0u8; 16]).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{path} without a secret");
        let res = c
            .client
            .post(url(path))
            .header("x-raftcast-cluster-secret", "wrong")
            .body(vec![1u8; 8])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{path} with a wrong secret");
        let garbage: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let res =
            c.client.post(url(path)).header("x-raftcast-cluster-secret", &c.secret).body(garbage).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{path} with garbage");
    }
    // The owner's live stream facts are for origins only.
    let live = url("/internal/streams");
    let res = c.client.get(&live).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "live facts without a secret");
    let res = c.client.get(&live).bearer_auth(&c.token).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "the admin token is not the cluster secret");
    let res = c.client.get(&live).header("x-raftcast-cluster-secret", "wrong").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "live facts with a wrong secret");
    let res = c.client.get(&live).header("x-raftcast-cluster-secret", &c.secret).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.json::<Value>().await.unwrap(), json!({"origin": 1, "streams": []}));
    // A huge length prefix must not make the node allocate it.
    let mut huge = vec![0xffu8; 9];
    huge[0] = 0xfd;
    let res = c
        .client
        .post(url("/raft/append"))
        .header("x-raftcast-cluster-secret", &c.secret)
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    tokio::time::timeout(Duration::from_secs(5), async {
        let (s, _) = c.put_slot(1, "o", "s", &json!(1), None).await.unwrap();
        assert_eq!(s, StatusCode::OK);
    })
    .await
    .unwrap();
}
