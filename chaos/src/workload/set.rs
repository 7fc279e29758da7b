//! The append-only set for lost-write detection: clients add unique slots (value
//! `true`) to one shared object through their origin; at the end the object is read
//! through every origin, and every acknowledged add must be there.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::Method;
use serde_json::json;
use tokio::sync::watch;

use super::{Ctx, REQUEST_TIMEOUT};
use crate::cluster::admin_call;
use crate::history::{AddOutcome, FinalRead, SetAdd};

/// The set object that holds `element` (`o<origin>-<period>-<n>`): one per period.
pub fn object_of(element: &str) -> String {
    let period = element.split('-').nth(1).unwrap_or("0");
    format!("chaos-set-{period}")
}

async fn add(http: &reqwest::Client, token: &str, addr: SocketAddr, element: &str) -> AddOutcome {
    let url = format!("http://{addr}/shared-objects/{}/slots/{element}", object_of(element));
    let headers = [("idempotency-key", element.to_string())];
    match admin_call(http, &url, token, Method::PUT, Some(&json!(true)), &headers).await {
        Ok((200, _)) => AddOutcome::Acked,
        Ok((400 | 401 | 403 | 404 | 409 | 412 | 413, _)) => AddOutcome::Failed,
        Err(e) if e.is_connect() => AddOutcome::Failed,
        _ => AddOutcome::Unknown,
    }
}

/// One client adding `o<origin>-<period>-<n>` until `stop`.
pub async fn client(ctx: Ctx, origin: u32, addr: SocketAddr, mut stop: watch::Receiver<bool>) -> Vec<SetAdd> {
    let Ok(http) = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build() else { return Vec::new() };
    let mut adds = Vec::new();
    let mut n = 0u64;
    while !*stop.borrow() {
        n += 1;
        let period = ctx.start.elapsed().as_secs() / super::PERIOD_SECS;
        let element = format!("o{origin}-{period}-{n}");
        let call_us = ctx.now_us();
        let outcome = add(&http, &ctx.token, addr, &element).await;
        let ret_us = (outcome != AddOutcome::Unknown).then(|| ctx.now_us());
        adds.push(SetAdd { element, origin, call_us, ret_us, outcome });
        let ms = if outcome == AddOutcome::Acked { 20..60 } else { 150..300 };
        let pause = Duration::from_millis(rand::thread_rng().gen_range(ms));
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => {}
        }
    }
    adds
}

/// Re-sends unknown adds with their idempotency key (see `register::resolve`).
pub async fn resolve(ctx: &Ctx, adds: &mut [SetAdd], origins: &[SocketAddr]) {
    let Ok(http) = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build() else { return };
    for a in adds.iter_mut().filter(|a| a.outcome == AddOutcome::Unknown) {
        for addr in origins {
            let out = add(&http, &ctx.token, *addr, &a.element).await;
            if out == AddOutcome::Acked {
                a.outcome = out;
                a.ret_us = Some(ctx.now_us());
                break;
            }
        }
    }
}

/// Linearizable reads of every set object (`periods` of them) through `origin`, each
/// retried for up to 15 s; `None` if any of them failed.
pub async fn final_read(ctx: &Ctx, origin: u32, addr: SocketAddr, periods: u64) -> FinalRead {
    let Ok(http) = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build() else {
        return FinalRead { origin, elements: None };
    };
    let mut all = Vec::new();
    for period in 0..periods {
        let deadline = Instant::now() + Duration::from_secs(15);
        let url = format!("http://{addr}/shared-objects/chaos-set-{period}");
        loop {
            match admin_call(&http, &url, &ctx.token, Method::GET, None, &[]).await {
                Ok((200, body)) => {
                    let Some(slots) = body["slots"].as_object() else {
                        return FinalRead { origin, elements: None };
                    };
                    all.extend(slots.keys().cloned());
                    break;
                }
                Ok((404, _)) => break,
                _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
                _ => return FinalRead { origin, elements: None },
            }
        }
    }
    FinalRead { origin, elements: Some(all) }
}
