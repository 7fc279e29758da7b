//! Register operations on a few keys, one shared object per key (slot `v`): linearizable
//! reads, writes of unique values and compare-and-set on the object's version, from
//! several clients each bound to one origin. Every write carries an `Idempotency-Key`,
//! so an unknown outcome can be resolved after the faults heal by sending it again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::{current_version, Ctx, REQUEST_TIMEOUT};
use crate::cluster::admin_call;
use crate::history::{RegisterInput, RegisterOp, RegisterOutput};

/// The shared object behind key `k`.
pub fn object(key: u32) -> String {
    format!("chaos-reg-{key}")
}

/// One client: operations until `stop` turns true.
pub async fn client(
    ctx: Ctx,
    client: u32,
    origin: u32,
    addr: SocketAddr,
    keys: u32,
    mut stop: watch::Receiver<bool>,
) -> Vec<RegisterOp> {
    let http = match reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build() {
        Ok(h) => h,
        Err(_) => return Vec::new(),
    };
    let mut rng = StdRng::from_entropy();
    let mut versions: HashMap<u32, u64> = HashMap::new();
    let mut ops = Vec::new();
    let mut counter: i64 = 0;
    while !*stop.borrow() {
        // Fresh keys every period keep each key's history short for the checker.
        let period = (ctx.start.elapsed().as_secs() / super::PERIOD_SECS) as u32;
        let key = period * keys + rng.gen_range(0..keys);
        counter += 1;
        let value = (i64::from(client) << 32) | counter;
        let input = match rng.gen_range(0..10) {
            0..=3 => RegisterInput::Read,
            4..=6 => RegisterInput::Write { value },
            _ => RegisterInput::Cas { expect: versions.get(&key).copied().unwrap_or(0), value },
        };
        let idem = (input != RegisterInput::Read).then(|| format!("c{client}-{counter}"));
        let call_us = ctx.now_us();
        let mut output = send(&http, &ctx.token, addr, key, input, idem.as_deref()).await;
        // An unknown write is sent again with its key, as a careful client does, until a
        // definite answer: the first answer if it was applied, or it applies now. Done
        // at once, well inside the cluster's dedup window (a resend long after could be
        // applied twice). The operation spans from its first call to that answer.
        let retried = output == RegisterOutput::Unknown && input != RegisterInput::Read;
        if retried {
            let deadline = tokio::time::Instant::now() + RETRY_FOR;
            while output == RegisterOutput::Unknown && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(250)).await;
                output = match send(&http, &ctx.token, addr, key, input, idem.as_deref()).await {
                    // A refused resend says nothing about the first attempt.
                    RegisterOutput::Failed => RegisterOutput::Unknown,
                    other => other,
                };
            }
        }
        let ret_us = (output != RegisterOutput::Unknown).then(|| ctx.now_us());
        match output {
            RegisterOutput::Read { version, .. }
            | RegisterOutput::Written { version }
            | RegisterOutput::Mismatch { current: version } => {
                versions.insert(key, version);
            }
            RegisterOutput::Unknown | RegisterOutput::Failed => {}
        }
        // Back off while this client's origin is down or slow.
        let ok = matches!(
            output,
            RegisterOutput::Read { .. } | RegisterOutput::Written { .. } | RegisterOutput::Mismatch { .. }
        );
        ops.push(RegisterOp {
            client,
            origin,
            key,
            call_us,
            ret_us,
            input,
            output,
            idem,
            resolved: retried && ret_us.is_some(),
        });
        let pause = Duration::from_millis(if ok { rng.gen_range(10..40) } else { rng.gen_range(150..300) });
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => {}
        }
    }
    ops
}

/// How long a client keeps resending a write whose outcome is unknown.
const RETRY_FOR: Duration = Duration::from_secs(30);

/// Sends one operation; a refused connection is a definite failure (nothing was
/// sent), any answer other than 2xx, 404 on a read or 412 is unknown.
pub async fn send(
    http: &reqwest::Client,
    token: &str,
    addr: SocketAddr,
    key: u32,
    input: RegisterInput,
    idem: Option<&str>,
) -> RegisterOutput {
    let obj = object(key);
    match input {
        RegisterInput::Read => {
            let url = format!("http://{addr}/shared-objects/{obj}");
            match admin_call(http, &url, token, Method::GET, None, &[]).await {
                Ok((200, body)) => {
                    let Some(version) = body["version"].as_u64() else { return RegisterOutput::Unknown };
                    let value = body["slots"]["v"].as_i64();
                    RegisterOutput::Read { version, value }
                }
                Ok((404, _)) => RegisterOutput::Read { version: 0, value: None },
                Err(e) if e.is_connect() => RegisterOutput::Failed,
                _ => RegisterOutput::Unknown,
            }
        }
        RegisterInput::Write { value } | RegisterInput::Cas { value, .. } => {
            let url = format!("http://{addr}/shared-objects/{obj}/slots/v");
            let mut headers = Vec::new();
            if let Some(k) = idem {
                headers.push(("idempotency-key", k.to_string()));
            }
            if let RegisterInput::Cas { expect, .. } = input {
                headers.push(("if-match", expect.to_string()));
            }
            let body: Value = json!(value);
            match admin_call(http, &url, token, Method::PUT, Some(&body), &headers).await {
                Ok((200, body)) => body["version"]
                    .as_u64()
                    .map_or(RegisterOutput::Unknown, |version| RegisterOutput::Written { version }),
                Ok((412, body)) => current_version(&body)
                    .map_or(RegisterOutput::Unknown, |current| RegisterOutput::Mismatch { current }),
                Err(e) if e.is_connect() => RegisterOutput::Failed,
                _ => RegisterOutput::Unknown,
            }
        }
    }
}
