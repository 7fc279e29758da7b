//! Samples every origin a few times a second: `GET /cluster/status` (term, leader) and
//! `GET /streams?stale=true` (each origin's own view of the claims). Keeps the current
//! roles (leader, owner of the chaos stream) for the nemeses to aim at.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Method;
use tokio::sync::watch;

use super::Ctx;
use crate::cluster::admin_call;
use crate::history::{ClaimSeen, StatusSeen};

/// How often the origins are sampled.
pub const PERIOD: Duration = Duration::from_millis(250);

/// Who holds which role, as last seen.
#[derive(Debug, Clone, Copy, Default)]
pub struct Roles {
    /// `(term, leader)` at the newest term some origin named a leader in.
    pub leader: Option<(u64, u32)>,
    /// `(epoch, owner)` of the media stream's newest claim.
    pub owner: Option<(u64, u32)>,
}

/// Everything the observer saw.
#[derive(Debug, Default)]
pub struct Observed {
    pub statuses: Vec<StatusSeen>,
    pub claims: Vec<ClaimSeen>,
}

pub async fn run(
    ctx: Ctx,
    origins: Vec<(u32, SocketAddr)>,
    stream: String,
    roles: Arc<Mutex<Roles>>,
    mut stop: watch::Receiver<bool>,
) -> Observed {
    let mut seen = Observed::default();
    let Ok(http) = reqwest::Client::builder().timeout(Duration::from_millis(1_000)).build() else { return seen };
    while !*stop.borrow() {
        let samples = futures_join(&ctx, &http, &origins).await;
        for (id, status, streams) in samples {
            let t_us = ctx.now_us();
            if let Some(s) = status {
                let term = s["term"].as_u64().unwrap_or(0);
                let leader = s["leader_id"].as_u64().map(|l| l as u32);
                seen.statuses.push(StatusSeen { t_us, via: id, term, leader, is_leader: s["state"] == "Leader" });
                if let Some(l) = leader {
                    let mut r = roles.lock().unwrap_or_else(|p| p.into_inner());
                    if r.leader.is_none_or(|(t, _)| term >= t) {
                        r.leader = Some((term, l));
                    }
                }
            }
            if let Some(list) = streams.as_ref().and_then(|v| v["streams"].as_array().cloned()) {
                for c in list {
                    let (Some(app), Some(name), Some(epoch), Some(owner)) =
                        (c["app"].as_str(), c["name"].as_str(), c["epoch"].as_u64(), c["owner"].as_u64())
                    else {
                        continue;
                    };
                    let key = format!("{app}/{name}");
                    if key == stream {
                        let mut r = roles.lock().unwrap_or_else(|p| p.into_inner());
                        if r.owner.is_none_or(|(e, _)| epoch >= e) {
                            r.owner = Some((epoch, owner as u32));
                        }
                    }
                    seen.claims.push(ClaimSeen { t_us, via: id, stream: key, epoch, owner: owner as u32 });
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(PERIOD) => {}
            _ = stop.changed() => {}
        }
    }
    seen
}

type Sample = (u32, Option<serde_json::Value>, Option<serde_json::Value>);

/// Asks every origin at once (a paused one only delays its own answer).
async fn futures_join(ctx: &Ctx, http: &reqwest::Client, origins: &[(u32, SocketAddr)]) -> Vec<Sample> {
    let mut tasks = tokio::task::JoinSet::new();
    for (id, addr) in origins.iter().copied() {
        let (http, token) = (http.clone(), ctx.token.clone());
        tasks.spawn(async move {
            let get = |path: &'static str| {
                let url = format!("http://{addr}{path}");
                let (http, token) = (http.clone(), token.clone());
                async move {
                    match admin_call(&http, &url, &token, Method::GET, None, &[]).await {
                        Ok((200, v)) => Some(v),
                        _ => None,
                    }
                }
            };
            let (status, streams) = tokio::join!(get("/cluster/status"), get("/streams?stale=true"));
            (id, status, streams)
        });
    }
    let mut out = Vec::new();
    while let Some(r) = tasks.join_next().await {
        if let Ok(s) = r {
            out.push(s);
        }
    }
    out.sort_by_key(|s| s.0);
    out
}
