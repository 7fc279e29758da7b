//! The hand-over of a stream's HLS numbering between owners. The owner of a new claim
//! asks the owner of the claim right before it (another origin) for its last mark under
//! that claim ([`asker`]); every origin answers for its own on [`MARK_ROUTE`] (cluster
//! secret, JSON). The answer is the mark stamped under exactly the epoch asked about,
//! given only once the answering origin has applied the new claim, so no publisher
//! numbers under the old one there any more (`LinkContext::handed_over_mark`).
//!
//! The answer comes from another process: it is read within [`MAX_MARK_ANSWER`] bytes,
//! parsed strictly and used only if it answers exactly the question asked. Which claim
//! came before which is decided in `link_server` (`history`, `numbering`), not here.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use raftcast_raft::rpc::ClusterSecret;
use raftcast_raft::typ::Raft;
use raftcast_raft::{NodeId, StreamKey};
use serde::{Deserialize, Serialize};

use super::link_server::{Ask, AskPrevious, LinkContext, NotFinal, PREVIOUS_OWNER_WAIT};
use super::membership::node_addr;
use crate::hls::mark::Continuation;
use crate::peer::{self, PeerClient};

/// The internal route on which an origin tells its last mark of a stream under a claim.
pub const MARK_ROUTE: &str = "/internal/marks";

/// How long an origin asked for a mark waits to apply the later claim named. Below the
/// asker's [`PREVIOUS_OWNER_WAIT`], so a lagging origin says so rather than going silent.
pub const APPLY_WAIT: Duration = Duration::from_millis(500);

/// Largest answer read from a peer (a real one is under 200 bytes).
pub const MAX_MARK_ANSWER: usize = 1024;

/// The question, as the query string of [`MARK_ROUTE`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarkQuery {
    pub app: String,
    pub name: String,
    /// The claim whose last mark is asked for.
    pub epoch: u64,
    /// The later claim the asker holds: answered once it is applied here.
    pub after: u64,
}

/// The answer: the question's stream and epoch, and the mark (`null` when this origin
/// has none stamped under that epoch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarkAnswer {
    pub origin: NodeId,
    pub app: String,
    pub name: String,
    pub epoch: u64,
    /// Present, `null` or not (a missing field is not read as `null`).
    #[serde(deserialize_with = "Option::deserialize")]
    pub mark: Option<WireMark>,
}

/// [`Continuation`] as it crosses between origins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireMark {
    pub msn: u64,
    pub discontinuity: u32,
    pub time_ms: u64,
}

impl From<Continuation> for WireMark {
    fn from(c: Continuation) -> Self {
        WireMark { msn: c.msn, discontinuity: c.discontinuity, time_ms: c.time_ms }
    }
}

impl From<WireMark> for Continuation {
    fn from(w: WireMark) -> Self {
        Continuation { msn: w.msn, discontinuity: w.discontinuity, time_ms: w.time_ms }
    }
}

/// What [`route`] needs. Cheap to clone.
#[derive(Clone)]
pub struct MarkServer {
    id: NodeId,
    secret: ClusterSecret,
    links: LinkContext,
}

impl MarkServer {
    pub fn new(id: NodeId, secret: ClusterSecret, links: LinkContext) -> Self {
        MarkServer { id, secret, links }
    }
}

/// [`MARK_ROUTE`]: this origin's last mark of a stream under a claim, for origins
/// presenting the cluster secret. 400 for a malformed question, 503 when the mark is
/// not final here yet ([`NotFinal`]).
pub async fn route(State(server): State<MarkServer>, headers: HeaderMap, Query(q): Query<MarkQuery>) -> Response {
    if !server.secret.admits(&headers) {
        return (StatusCode::UNAUTHORIZED, "missing or wrong cluster secret").into_response();
    }
    let Ok(stream) = StreamKey::new(&q.app, &q.name) else {
        return (StatusCode::BAD_REQUEST, "not a stream key").into_response();
    };
    match server.links.handed_over_mark(&stream, q.epoch, q.after, APPLY_WAIT).await {
        Ok(mark) => {
            let answer = MarkAnswer {
                origin: server.id,
                app: q.app,
                name: q.name,
                epoch: q.epoch,
                mark: mark.map(WireMark::from),
            };
            Json(answer).into_response()
        }
        Err(e @ NotFinal::Order { .. }) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

/// Asks other origins over `peers`, at the HTTP address `raft`'s membership gives each.
pub fn asker(peers: PeerClient, raft: Raft) -> AskPrevious {
    Arc::new(move |ask: Ask| {
        let (peers, raft) = (peers.clone(), raft.clone());
        Box::pin(async move {
            let http = node_addr(&raft, ask.owner).map(|a| a.http);
            let http = http.ok_or_else(|| format!("origin {} is not a member", ask.owner))?;
            ask_at(&peers, &http, &ask).await
        })
    })
}

/// Puts `ask` to the origin at `http`, within [`PREVIOUS_OWNER_WAIT`].
pub async fn ask_at(peers: &PeerClient, http: &str, ask: &Ask) -> Result<Option<Continuation>, String> {
    let query =
        MarkQuery { app: ask.stream.app.clone(), name: ask.stream.name.clone(), epoch: ask.epoch, after: ask.after };
    let attempt = async {
        let res = peers
            .get(peers.url(http, MARK_ROUTE))
            .query(&query)
            .timeout(PREVIOUS_OWNER_WAIT)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !res.status().is_success() {
            return Err(format!("status {}", res.status()));
        }
        let body = peer::body_within(res, MAX_MARK_ANSWER).await.map_err(|e| e.to_string())?;
        parse_answer(&body, ask)
    };
    // The client's own timeout covers the request; this one covers the body too.
    match tokio::time::timeout(PREVIOUS_OWNER_WAIT, attempt).await {
        Ok(answer) => answer,
        Err(_) => Err(format!("no answer within {PREVIOUS_OWNER_WAIT:?}")),
    }
}

/// The mark in `body` if it answers exactly `ask`.
fn parse_answer(body: &[u8], ask: &Ask) -> Result<Option<Continuation>, String> {
    let answer: MarkAnswer = serde_json::from_slice(body).map_err(|e| format!("malformed answer: {e}"))?;
    let asked = (ask.owner, ask.stream.app.as_str(), ask.stream.name.as_str(), ask.epoch);
    if (answer.origin, answer.app.as_str(), answer.name.as_str(), answer.epoch) != asked {
        return Err(format!(
            "answer about origin {}'s {}/{} under epoch {}, not the question",
            answer.origin, answer.app, answer.name, answer.epoch
        ));
    }
    Ok(answer.mark.map(Continuation::from))
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn ask() -> Ask {
        Ask { owner: 2, stream: StreamKey::new("live", "s").unwrap(), epoch: 7, after: 9 }
    }

    fn peers() -> PeerClient {
        PeerClient::new(ClusterSecret::new("a-secret-of-sixteen-bytes").unwrap(), None)
    }

    #[test]
    fn only_an_answer_to_the_question_is_taken() {
        let good =
            r#"{"origin":2,"app":"live","name":"s","epoch":7,"mark":{"msn":41,"discontinuity":3,"time_ms":9000}}"#;
        let mark = Continuation { msn: 41, discontinuity: 3, time_ms: 9000 };
        assert_eq!(parse_answer(good.as_bytes(), &ask()), Ok(Some(mark)));
        let none = r#"{"origin":2,"app":"live","name":"s","epoch":7,"mark":null}"#;
        assert_eq!(parse_answer(none.as_bytes(), &ask()), Ok(None));
        for bad in [
            good.replace(r#""epoch":7"#, r#""epoch":6"#),   // another claim
            good.replace(r#""origin":2"#, r#""origin":3"#), // another origin
            good.replace(r#""name":"s""#, r#""name":"t""#), // another stream
            good.replace(r#""time_ms":9000"#, r#""time_ms":9000,"x":1"#), // unknown field
            good.replace(r#""msn":41"#, r#""msn":-1"#),     // not a number of ours
            good.replace(r#""discontinuity":3"#, r#""discontinuity":4294967296"#),
            good.replace(r#","mark":{"msn":41,"discontinuity":3,"time_ms":9000}"#, ""), // no mark field
            format!("{good} trailing"),
            String::new(),
        ] {
            assert!(parse_answer(bad.as_bytes(), &ask()).is_err(), "taken: {bad}");
        }
    }

    #[tokio::test]
    async fn a_dead_previous_owner_costs_no_wait() {
        // Nothing listens here any more: the connection is refused at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let started = Instant::now();
        let answer = ask_at(&peers(), &format!("127.0.0.1:{port}"), &ask()).await;
        assert!(answer.is_err(), "{answer:?}");
        assert!(started.elapsed() < Duration::from_millis(300), "refused after {:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_silent_previous_owner_costs_at_most_the_wait() {
        // Accepts and never answers (a hung process).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                open.push(socket);
            }
        });
        let started = Instant::now();
        let answer = ask_at(&peers(), &addr.to_string(), &ask()).await;
        let took = started.elapsed();
        held.abort();
        assert!(answer.is_err(), "{answer:?}");
        assert!(took >= PREVIOUS_OWNER_WAIT - Duration::from_millis(50), "gave up early: {took:?}");
        assert!(took < PREVIOUS_OWNER_WAIT + Duration::from_millis(250), "waited {took:?}");
    }

    #[tokio::test]
    async fn an_oversized_answer_is_refused() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = socket.read(&mut buf).await;
            // Chunked, so no length tells it in advance.
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
            let _ = socket.write_all(head.as_bytes()).await;
            let chunk = vec![b' '; 512];
            for _ in 0..8 {
                let _ = socket.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await;
                let _ = socket.write_all(&chunk).await;
                let _ = socket.write_all(b"\r\n").await;
            }
            let _ = socket.write_all(b"0\r\n\r\n").await;
        });
        let answer = ask_at(&peers(), &addr.to_string(), &ask()).await;
        server.abort();
        assert_eq!(answer, Err(format!("answer larger than {MAX_MARK_ANSWER} bytes")));
    }
}
