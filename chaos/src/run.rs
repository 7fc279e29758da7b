//! One schedule, end to end: a fresh cluster, the workloads, the faults at their times,
//! the heal, the drain, the idempotent resolution of unknown outcomes, the final
//! reads, the checkers, and the history files under `DIR/<schedule>/`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::attack::AttackReport;
use crate::check;
use crate::check::recovery::RecoveryRecord;
use crate::cluster::{Cluster, ClusterOptions, FAKETIME_LIB, ORIGINS};
use crate::history::{AddOutcome, FaultRecord, RegisterOutput};
use crate::nemesis::{self, Fault};
use crate::net::{Backend, Node, NODES};
use crate::probe;
use crate::report::{NodeStats, Outcome, ScheduleReport};
use crate::schedule::Schedule;
use crate::workload::{self, media, observer, register, set, Ctx};

/// Register keys (one shared object each).
const KEYS: u32 = 4;
/// Register clients per origin.
const CLIENTS_PER_ORIGIN: u32 = 2;
/// How long unknown set adds are resent after the run before the rest stay unknown
/// (which the lost-write checker allows): a cluster an attack left without a working
/// Raft would otherwise hold every add for three request timeouts.
const RESOLVE_WITHIN: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub bin: PathBuf,
    pub out: PathBuf,
    pub seed: u64,
}

/// Runs `schedule`; never panics on a product failure, it reports it.
pub async fn run(backend: Arc<Backend>, schedule: &Schedule, opts: &RunOptions) -> Outcome {
    let started = Instant::now();
    let dir = opts.out.join(&schedule.name);
    let _ = std::fs::remove_dir_all(&dir);
    let mut outcome = match std::fs::create_dir_all(&dir) {
        Ok(()) => match execute(backend, schedule, opts, &dir).await {
            Ok(o) => o,
            Err(e) => Outcome { problems: vec![format!("harness: {e:#}")], ..Default::default() },
        },
        Err(e) => Outcome { problems: vec![format!("cannot create {}: {e}", dir.display())], ..Default::default() },
    };
    outcome.report.schedule = schedule.name.clone();
    outcome.wall_secs = started.elapsed().as_secs_f64();
    let verdict = serde_json::json!({
        "report": outcome.report,
        "passed": outcome.passed(),
        "problems": outcome.problems,
        "nodes": outcome.nodes,
        "wall_secs": outcome.wall_secs,
    });
    let _ = std::fs::write(dir.join("verdict.json"), serde_json::to_string_pretty(&verdict).unwrap_or_default());
    outcome
}

fn write_jsonl<T: Serialize>(path: &Path, items: &[T]) -> anyhow::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for i in items {
        serde_json::to_writer(&mut f, i)?;
        f.write_all(b"\n")?;
    }
    f.flush()?;
    Ok(())
}

/// Aborts the workload tasks it holds when dropped, so a schedule that ends early
/// leaves no client reconnecting into the next one.
#[derive(Default)]
struct Tasks(Vec<tokio::task::AbortHandle>);

impl Tasks {
    fn add<T>(&mut self, h: JoinHandle<T>) -> JoinHandle<T> {
        self.0.push(h.abort_handle());
        h
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

async fn join_all<T>(tasks: Vec<JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for t in tasks {
        if let Ok(v) = t.await {
            out.push(v);
        }
    }
    out
}

fn node_sample(cluster: &Cluster) -> Vec<(Option<u64>, Option<u64>)> {
    NODES
        .iter()
        .map(|n| {
            let data = match n {
                Node::Origin(id) => Some(cluster.data_bytes(*id)),
                Node::Edge(_) => None,
            };
            (cluster.rss_kib(*n), data)
        })
        .collect()
}

async fn execute(backend: Arc<Backend>, schedule: &Schedule, opts: &RunOptions, dir: &Path) -> anyhow::Result<Outcome> {
    let tag = &schedule.name;
    let mut problems = Vec::new();
    let needs_faketime = schedule.steps.iter().any(|s| s.fault.needs_faketime());
    let faketime = needs_faketime && Path::new(FAKETIME_LIB).exists();
    if needs_faketime && !faketime {
        problems.push(format!("{FAKETIME_LIB} is missing (install libfaketime): clock skew cannot be injected"));
    }
    let mut cluster =
        Cluster::start(backend.clone(), ClusterOptions { bin: opts.bin.clone(), dir: dir.to_path_buf(), faketime })
            .await
            .context("starting the cluster")?;
    let ctx = Ctx { start: Instant::now(), token: cluster.token.clone() };
    let origin_addrs: Vec<(u32, SocketAddr)> =
        ORIGINS.iter().map(|o| (*o, cluster.addrs(Node::Origin(*o)).http)).collect();
    let (stop_tx, stop_rx) = watch::channel(false);
    let (obs_tx, obs_rx) = watch::channel(false);
    let (pub_tx, pub_rx) = watch::channel(false);
    let (play_tx, play_rx) = watch::channel(false);
    let roles = Arc::new(Mutex::new(observer::Roles::default()));
    let stream_key = format!("{}/{}", media::APP, media::STREAM);
    let mut guard = Tasks::default();
    let obs =
        guard.add(tokio::spawn(observer::run(ctx.clone(), origin_addrs.clone(), stream_key, roles.clone(), obs_rx)));

    // Media first: the players must be receiving before the faults start.
    let last_sent = Arc::new(AtomicU64::new(media::NONE));
    let publisher = guard.add(tokio::spawn(media::publisher(
        ctx.clone(),
        cluster.addrs(Node::Edge(1)).media,
        last_sent.clone(),
        pub_rx,
    )));
    let mut players = Vec::new();
    let mut seen = Vec::new();
    for (name, edge) in [("player-edge-2", 2), ("player-edge-1", 1)] {
        let s = Arc::new(AtomicU64::new(0));
        seen.push(s.clone());
        let addr = cluster.addrs(Node::Edge(edge)).media;
        players.push(guard.add(tokio::spawn(media::player(ctx.clone(), name.into(), addr, s, play_rx.clone()))));
    }
    cluster
        .wait_for(Duration::from_secs(30), "every player to receive frames", || {
            let ok = seen.iter().all(|s| s.load(Ordering::Acquire) > 0);
            async move { ok.then_some(()) }
        })
        .await?;

    let mut regs = Vec::new();
    let mut n = 0;
    for (origin, addr) in &origin_addrs {
        for _ in 0..CLIENTS_PER_ORIGIN {
            n += 1;
            regs.push(guard.add(tokio::spawn(register::client(ctx.clone(), n, *origin, *addr, KEYS, stop_rx.clone()))));
        }
    }
    let sets: Vec<_> = origin_addrs
        .iter()
        .map(|(origin, addr)| guard.add(tokio::spawn(set::client(ctx.clone(), *origin, *addr, stop_rx.clone()))))
        .collect();
    let work_start_us = ctx.now_us();
    let start_sample = node_sample(&cluster);

    let warm_until = tokio::time::Instant::now() + schedule.warmup;
    if schedule.warms_store() {
        let ok = probe::warm_store(&cluster).await;
        println!(
            "[{tag}] {:>6.1}s warm-up: {ok} writes of 64 KiB stored and deleted ({} MiB asked)",
            ctx.now_us() as f64 / 1e6,
            probe::WARM_STORE_BYTES >> 20
        );
        let ok = probe::fill_dedup_window(&cluster).await;
        println!(
            "[{tag}] {:>6.1}s warm-up: {ok} small writes committed (the de-duplication window holds {})",
            ctx.now_us() as f64 / 1e6,
            probe::WARM_WINDOW_WRITES
        );
    }
    tokio::time::sleep_until(warm_until).await;
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut faults = Vec::new();
    let mut fault_count = 0;
    let mut attack_reports = Vec::new();
    let mut recoveries = Vec::new();
    let mut abused = false;
    for (i, step) in schedule.steps.iter().enumerate() {
        let start_us = ctx.now_us();
        let is_abuse = matches!(step.fault, Fault::Abuse { .. });
        abused |= is_abuse;
        let rss_before = probe::rss_now(&cluster);
        match nemesis::inject(step.fault, &mut cluster, &roles, &mut rng).await {
            Ok(injected) => {
                println!("[{tag}] {:>6.1}s {}: {}", start_us as f64 / 1e6, step.fault.name(), injected.detail);
                fault_count += injected.count;
                let mut detail = injected.detail;
                match step.fault {
                    Fault::Abuse { stop_follower_secs, .. } if stop_follower_secs > 0 => {
                        let stop = Duration::from_secs(u64::from(stop_follower_secs));
                        match catch_up_during(&mut cluster, step.hold, stop).await {
                            Ok(d) => {
                                println!("[{tag}] {:>6.1}s {d}", ctx.now_us() as f64 / 1e6);
                                detail = format!("{detail}; {d}");
                            }
                            Err(e) => problems.push(format!("follower during {}: {e:#}", step.fault.name())),
                        }
                    }
                    _ => tokio::time::sleep(step.hold).await,
                }
                match nemesis::heal(injected.active, &mut cluster).await {
                    Ok(reports) => {
                        for r in &reports {
                            println!("[{tag}] {}", attack_line(r));
                            for f in &r.findings {
                                problems.push(format!("{}: {f}", r.attack));
                            }
                        }
                        attack_reports.extend(reports);
                    }
                    Err(e) => problems.push(format!("healing {}: {e:#}", step.fault.name())),
                }
                faults.push(FaultRecord { kind: step.fault.name(), detail, start_us, end_us: ctx.now_us() });
                if is_abuse {
                    let rec = probe::after_attack(&cluster, step.fault.name(), &rss_before, i as u64).await;
                    println!("[{tag}] {:>6.1}s after the attack: {}", ctx.now_us() as f64 / 1e6, recovery_line(&rec));
                    problems.extend(check::recovery::check(&rec));
                    recoveries.push(rec);
                }
            }
            Err(e) => problems.push(format!("injecting {}: {e:#}", step.fault.name())),
        }
        tokio::time::sleep(step.recover).await;
    }

    // Everything healed: the cluster must come back whole.
    if let Err(e) = cluster.backend.apply(&Default::default()).await {
        problems.push(format!("clearing network rules: {e:#}"));
    }
    if let Err(e) = cluster.wait_healthy(Duration::from_secs(30)).await {
        problems.push(format!("after the faults: {e:#}"));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = stop_tx.send(true);
    let mut reg_ops: Vec<_> = join_all(regs).await.into_iter().flatten().collect();
    let mut adds: Vec<_> = join_all(sets).await.into_iter().flatten().collect();
    let work_end_us = ctx.now_us();

    // Drain the stream: everything sent must arrive.
    let _ = pub_tx.send(true);
    let pub_trace = publisher.await.context("publisher task")?;
    let sent = last_sent.load(Ordering::Acquire);
    let target = if sent == media::NONE { 0 } else { sent + 1 };
    let drained = cluster
        .wait_for(Duration::from_secs(10), "every player to receive the last frame", || {
            let ok = seen.iter().all(|s| s.load(Ordering::Acquire) >= target);
            async move { ok.then_some(()) }
        })
        .await;
    if let Err(e) = drained {
        problems.push(format!("media: {e:#}"));
    }
    let _ = play_tx.send(true);
    let player_traces = join_all(players).await;

    // Resolve unknown adds through their idempotency keys (unknown register writes were
    // resent by their clients at once), then read the set.
    let addrs: Vec<SocketAddr> = origin_addrs.iter().map(|(_, a)| *a).collect();
    if tokio::time::timeout(RESOLVE_WITHIN, set::resolve(&ctx, &mut adds, &addrs)).await.is_err() {
        println!("[{tag}] unknown set adds not all resolved within {RESOLVE_WITHIN:?}: the rest stay unknown");
    }
    let mut reads = Vec::new();
    let periods = work_end_us / 1_000_000 / workload::PERIOD_SECS + 1;
    for (origin, addr) in &origin_addrs {
        reads.push(set::final_read(&ctx, *origin, *addr, periods).await);
    }
    let _ = obs_tx.send(true);
    let observed = obs.await.context("observer task")?;
    let end_sample = node_sample(&cluster);
    cluster.stop_all().await;

    // History for replay.
    reg_ops.sort_by_key(|o| o.call_us);
    adds.sort_by_key(|a| a.call_us);
    write_jsonl(&dir.join("registers.jsonl"), &reg_ops)?;
    write_jsonl(&dir.join("set.jsonl"), &adds)?;
    write_jsonl(&dir.join("set-final-reads.jsonl"), &reads)?;
    write_jsonl(&dir.join("statuses.jsonl"), &observed.statuses)?;
    write_jsonl(&dir.join("claims.jsonl"), &observed.claims)?;
    write_jsonl(&dir.join("faults.jsonl"), &faults)?;
    if abused {
        write_jsonl(&dir.join("attacks.jsonl"), &attack_reports)?;
        write_jsonl(&dir.join("recovery.jsonl"), &recoveries)?;
    }
    let mut traces = vec![pub_trace.clone()];
    traces.extend(player_traces.iter().cloned());
    write_jsonl(&dir.join("media.jsonl"), &traces)?;

    // Checkers.
    let violations = check::linearizable::check(&reg_ops);
    for v in &violations {
        problems.push(format!("key {} not linearizable at {:?}: {}", v.key, v.op, v.reason));
    }
    let set_verdict = check::lost::check(&adds, &reads);
    if !set_verdict.lost.is_empty() {
        problems.push(format!("{} acknowledged adds lost: {:?}", set_verdict.lost.len(), set_verdict.lost));
    }
    if !set_verdict.unexpected.is_empty() {
        problems.push(format!("elements nobody added: {:?}", set_verdict.unexpected));
    }
    if !set_verdict.unread.is_empty() {
        problems.push(format!("final set read failed through origins {:?}", set_verdict.unread));
    }
    let owners = check::owners::check(&observed.claims);
    if owners.max_owners_per_epoch > 1 {
        problems.push(format!("two owners at one epoch: {:?}", owners.conflicts));
    }
    let last = (sent != media::NONE).then_some(sent);
    let mut frames_lost = 0;
    let mut max_stall = 0;
    let mut disconnects = check::media::disconnects(&pub_trace);
    for t in &player_traces {
        let v = check::media::check_player(t, last);
        frames_lost += v.lost;
        max_stall = max_stall.max(v.max_stall_ms);
        disconnects += v.disconnects;
        if v.lost > 0 {
            problems.push(format!("{}: {} frames lost (gaps after seq, count: {:?})", t.client, v.lost, v.gaps));
        }
        if v.frames == 0 {
            problems.push(format!("{}: no frames at all", t.client));
        }
    }
    if abused {
        problems.extend(check::recovery::canary(max_stall));
    }
    if disconnects > 0 {
        let whys: Vec<String> = traces
            .iter()
            .flat_map(|t| {
                t.events.iter().filter_map(move |e| match e {
                    crate::history::MediaEvent::Disconnect { why, .. } => Some(format!("{}: {why}", t.client)),
                    _ => None,
                })
            })
            .collect();
        problems.push(format!("{disconnects} RTMP disconnects: {whys:?}"));
    }
    let mut acks: Vec<u64> = reg_ops.iter().filter(|o| o.acked_write()).filter_map(|o| o.ret_us).collect();
    acks.extend(adds.iter().filter(|a| a.outcome == AddOutcome::Acked).filter_map(|a| a.ret_us));
    let acked_writes = acks.len() as u64;
    let report = ScheduleReport {
        schedule: schedule.name.clone(),
        faults: fault_count,
        operations: (reg_ops.len() + adds.len()) as u64,
        acked_writes,
        lost_writes: set_verdict.lost.len() as u64,
        linearizable: violations.is_empty(),
        max_unavailable_ms: check::availability::max_unavailable_ms(acks, work_start_us, work_end_us),
        max_media_stall_ms: max_stall,
        frames_lost,
        client_disconnects: disconnects,
        leader_changes: check::availability::leader_changes(&observed.statuses),
        owners_per_epoch_max: owners.max_owners_per_epoch as u64,
    };
    let nodes = NODES
        .iter()
        .zip(start_sample.iter().zip(end_sample.iter()))
        .map(|(n, (s, e))| NodeStats {
            node: n.to_string(),
            rss_kib_start: s.0,
            rss_kib_end: e.0,
            data_bytes_start: s.1,
            data_bytes_end: e.1,
        })
        .collect();
    let unknown_after = reg_ops.iter().filter(|o| o.output == RegisterOutput::Unknown).count();
    println!(
        "[{tag}] {} register ops ({} answered after resends, {unknown_after} unknown), {} set adds, {} claims seen",
        reg_ops.len(),
        reg_ops.iter().filter(|o| o.resolved).count(),
        adds.len(),
        owners.claims
    );
    Ok(Outcome { report, problems, nodes, wall_secs: 0.0 })
}

/// One line per attack for the log: what it sent and what came back.
fn attack_line(r: &AttackReport) -> String {
    format!(
        "attack {} from {} -> {}: {} connections (peak {} open, {} failed, {} closed by the server, {} held to the end), {} requests, {:.1} MB sent, {}{:?}{}",
        r.attack,
        r.source.as_deref().unwrap_or("-"),
        r.target,
        r.connections,
        r.peak_open,
        r.connect_failures,
        r.closed_by_server,
        r.held_at_end,
        r.requests,
        r.bytes_sent as f64 / 1e6,
        if r.token { "with a write token, " } else { "" },
        r.outcomes,
        if r.findings.is_empty() { String::new() } else { format!("; FINDINGS {:?}", r.findings) }
    )
}

fn recovery_line(r: &RecoveryRecord) -> String {
    let edges: Vec<String> = r
        .edges
        .iter()
        .map(|e| match (e.first_frame_ms, &e.error) {
            (Some(ms), _) => format!("{} new pub+play {ms} ms", e.edge),
            (None, why) => format!("{} new pub+play FAILED ({})", e.edge, why.as_deref().unwrap_or("?")),
        })
        .collect();
    let rss: Vec<String> = r
        .rss
        .iter()
        .map(|t| {
            let last = t.samples.last().map_or(0, |s| s.1);
            let back =
                check::recovery::rss_back_at(t).map_or("not back".to_string(), |ms| format!("back at {} s", ms / 1000));
            format!("{} {:.0}->{:.0} MiB {back}", t.node, t.before_kib as f64 / 1024.0, last as f64 / 1024.0)
        })
        .collect();
    format!(
        "commit {}; {}; rss {}",
        r.commit_ms.map_or("NONE".to_string(), |ms| format!("{ms} ms")),
        edges.join(", "),
        rss.join(", ")
    )
}

/// How long [`catch_up_during`] waits for a leader before it picks the follower.
const LEADER_WAIT: Duration = Duration::from_secs(10);

/// For `hold`: stops a follower (SIGKILL) for `stopped`, restarts it, and waits until
/// its applied index reaches the leader's last log index as read just before (while
/// the writes go on); describes how long that took, or fails if it never did.
async fn catch_up_during(cluster: &mut Cluster, hold: Duration, stopped: Duration) -> anyhow::Result<String> {
    let started = Instant::now();
    // The flood starts at the same moment, and may cost an election: a leader within
    // seconds is what the schedule needs (the availability checker counts the gap).
    let leader = cluster.wait_for(LEADER_WAIT, "a leader to pick a follower against", || cluster.leader()).await?;
    let follower = ORIGINS.iter().copied().find(|o| *o != leader).context("no follower")?;
    cluster.kill(Node::Origin(follower)).await?;
    tokio::time::sleep(stopped).await;
    cluster.spawn(Node::Origin(follower)).await?;
    let restarted = Instant::now();
    let mut caught = None;
    let mut lag = None;
    while started.elapsed() < hold {
        if caught.is_none() {
            if let Some(l) = cluster.leader().await {
                let target = cluster.status(l).await.and_then(|s| s["last_log_index"].as_u64());
                let applied = cluster.status(follower).await.and_then(|s| s["applied_index"].as_u64());
                if let (Some(t), Some(a)) = (target, applied) {
                    lag = Some(t.saturating_sub(a));
                    if a >= t {
                        caught = Some(restarted.elapsed());
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    match caught {
        Some(d) => Ok(format!(
            "origin-{follower} stopped {} s, caught up {:.1} s after its restart, during the writes",
            stopped.as_secs(),
            d.as_secs_f64()
        )),
        None => anyhow::bail!(
            "origin-{follower}, stopped {} s, had not caught up {:.0} s after its restart (last lag {lag:?} entries)",
            stopped.as_secs(),
            restarted.elapsed().as_secs_f64()
        ),
    }
}
