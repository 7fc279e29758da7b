//! Nemeses: each fault is aimed at whoever holds a role when it starts (the leader, the
//! owner of the chaos stream), applied to the real processes or the network, and healed
//! at the end of its window. Knows the cluster and the network, not the workloads.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::cluster::{Cluster, ORIGINS};
use crate::net::{Node, Rules, NODES};
use crate::proxy::DelayProxy;
use crate::workload::observer::Roles;

/// Whom a process fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Leader,
    /// The origin that owns the chaos stream.
    Owner,
    /// Any origin.
    Random,
}

/// One fault.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Fault {
    /// SIGKILL; restarted (same data dir) at the end of the window.
    Kill { target: Target },
    /// SIGSTOP; SIGCONT at the end of the window.
    Pause { target: Target },
    /// The leader cut off from every other node, origins and edges.
    IsolateLeader,
    /// The origins split at random into a minority and a majority.
    Halves,
    /// Two origins cannot reach each other; the third reaches both.
    Bridge,
    /// Packets from one origin to another are dropped (the other direction flows).
    OneWay,
    /// An edge and the stream's owner cannot reach each other.
    EdgeOwnerCut,
    /// Every link between nodes drops this share of packets.
    Loss { percent: u32 },
    /// Every Raft link between origins delayed by `ms` each way (a delaying proxy per
    /// directed link; the links' open connections are cut once to move them onto it).
    Latency { ms: u64 },
    /// Every origin in turn: SIGTERM, restart, wait until it follows a leader again.
    RollingRestart,
    /// One origin's wall clock moves `secs` away (libfaketime).
    ClockSkew { target: Target, secs: i64 },
}

impl Fault {
    pub fn name(&self) -> String {
        match self {
            Fault::Kill { .. } => "kill",
            Fault::Pause { .. } => "pause",
            Fault::IsolateLeader => "isolate-leader",
            Fault::Halves => "halves",
            Fault::Bridge => "bridge",
            Fault::OneWay => "one-way",
            Fault::EdgeOwnerCut => "edge-owner-cut",
            Fault::Loss { .. } => "loss",
            Fault::Latency { .. } => "latency",
            Fault::RollingRestart => "rolling-restart",
            Fault::ClockSkew { .. } => "clock-skew",
        }
        .into()
    }

    /// Whether the fault needs origins started under libfaketime.
    pub fn needs_faketime(&self) -> bool {
        matches!(self, Fault::ClockSkew { .. })
    }
}

/// What must be undone when a fault's window ends.
pub enum Active {
    Restart(Node),
    /// Redirections to remove from these origins; the proxies go on at zero delay.
    Latency(Vec<DelayProxy>),
    Resume(Node),
    Rules,
    Skew(u32),
    Nothing,
}

/// An injected fault: what to heal, a description, and how many node-level faults it was.
pub struct Injected {
    pub active: Active,
    pub detail: String,
    pub count: u64,
}

async fn resolve(
    cluster: &Cluster,
    roles: &Arc<Mutex<Roles>>,
    target: Target,
    rng: &mut StdRng,
) -> anyhow::Result<u32> {
    match target {
        Target::Leader => cluster.leader().await.context("no leader to aim at"),
        Target::Owner => {
            let owner = roles.lock().unwrap_or_else(|p| p.into_inner()).owner;
            owner.map(|(_, o)| o).context("the chaos stream has no owner to aim at")
        }
        Target::Random => Ok(*ORIGINS.choose(rng).expect("three origins")),
    }
}

/// Injects `fault` now.
pub async fn inject(
    fault: Fault,
    cluster: &mut Cluster,
    roles: &Arc<Mutex<Roles>>,
    rng: &mut StdRng,
) -> anyhow::Result<Injected> {
    let origins: Vec<Node> = ORIGINS.iter().map(|o| Node::Origin(*o)).collect();
    let net = |rules: Rules, detail: String| (rules, detail);
    let (rules, detail) = match fault {
        Fault::Kill { target } => {
            let n = resolve(cluster, roles, target, rng).await?;
            cluster.kill(Node::Origin(n)).await?;
            return Ok(Injected {
                active: Active::Restart(Node::Origin(n)),
                detail: format!("SIGKILL origin-{n}"),
                count: 1,
            });
        }
        Fault::Pause { target } => {
            let n = resolve(cluster, roles, target, rng).await?;
            cluster.pause(Node::Origin(n)).await?;
            return Ok(Injected {
                active: Active::Resume(Node::Origin(n)),
                detail: format!("SIGSTOP origin-{n}"),
                count: 1,
            });
        }
        Fault::ClockSkew { target, secs } => {
            let n = resolve(cluster, roles, target, rng).await?;
            cluster.set_skew(n, secs)?;
            return Ok(Injected { active: Active::Skew(n), detail: format!("origin-{n} clock {secs:+} s"), count: 1 });
        }
        Fault::RollingRestart => {
            for id in ORIGINS {
                let node = Node::Origin(id);
                cluster.terminate(node).await?;
                cluster.spawn(node).await?;
                cluster
                    .wait_for(Duration::from_secs(30), &format!("{node} to follow a leader again"), || async {
                        let s = cluster.status(id).await?;
                        let leader = s["leader_id"].as_u64()?;
                        (s["applied_index"].as_u64()? > 0 && leader > 0).then_some(())
                    })
                    .await?;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            return Ok(Injected {
                active: Active::Nothing,
                detail: "SIGTERM + restart origin-1, 2, 3 in turn".into(),
                count: 3,
            });
        }
        Fault::Latency { ms } => {
            let via = cluster.backend.harness_ip()?;
            let mut proxies = Vec::new();
            for from in ORIGINS {
                let mut links = Vec::new();
                for to in ORIGINS.iter().copied().filter(|t| *t != from) {
                    let target = cluster.addrs(Node::Origin(to)).http;
                    let p = DelayProxy::start(via, target, ms).await?;
                    links.push((Node::Origin(to), target.port(), p.addr));
                    proxies.push(p);
                }
                cluster.backend.redirect(Node::Origin(from), &links).await?;
            }
            return Ok(Injected {
                active: Active::Latency(proxies),
                detail: format!("+{ms} ms each way on every Raft link"),
                count: 1,
            });
        }
        Fault::IsolateLeader => {
            let l = resolve(cluster, roles, Target::Leader, rng).await?;
            let others: Vec<Node> = NODES.iter().copied().filter(|n| *n != Node::Origin(l)).collect();
            let mut r = Rules::default();
            r.cut(&[Node::Origin(l)], &others);
            net(r, format!("origin-{l} (leader) cut off from every node"))
        }
        Fault::Halves => {
            let mut o = origins.clone();
            o.shuffle(rng);
            let mut r = Rules::default();
            r.cut(&o[..1], &o[1..]);
            net(r, format!("{} | {} {}", o[0], o[1], o[2]))
        }
        Fault::Bridge => {
            let mut o = origins.clone();
            o.shuffle(rng);
            let mut r = Rules::default();
            r.cut(&o[..1], &o[2..]);
            net(r, format!("{} | {}, {} sees both", o[0], o[2], o[1]))
        }
        Fault::OneWay => {
            let mut o = origins.clone();
            o.shuffle(rng);
            let mut r = Rules::default();
            r.blocked.insert((o[0], o[1]));
            net(r, format!("{} -> {} dropped", o[0], o[1]))
        }
        Fault::EdgeOwnerCut => {
            let owner = resolve(cluster, roles, Target::Owner, rng).await?;
            let edge = Node::Edge(rng.gen_range(1..=2));
            let mut r = Rules::default();
            r.cut(&[edge], &[Node::Origin(owner)]);
            net(r, format!("{edge} <-> origin-{owner} (owner) cut"))
        }
        Fault::Loss { percent } => {
            let mut r = Rules::default();
            for a in NODES {
                for b in NODES {
                    if a != b {
                        r.lossy.push((a, b, percent));
                    }
                }
            }
            net(r, format!("{percent}% of packets dropped on every link"))
        }
    };
    if let Err(e) = cluster.backend.apply(&rules).await {
        bail!("cannot inject {}: {e:#}", fault.name());
    }
    Ok(Injected { active: Active::Rules, detail, count: 1 })
}

/// Undoes an injected fault.
pub async fn heal(active: Active, cluster: &mut Cluster) -> anyhow::Result<()> {
    match active {
        Active::Restart(node) => cluster.spawn(node).await,
        Active::Resume(node) => cluster.resume(node).await,
        Active::Rules => cluster.backend.apply(&Rules::default()).await,
        Active::Latency(proxies) => {
            for id in ORIGINS {
                cluster.backend.redirect(Node::Origin(id), &[]).await?;
            }
            for p in &proxies {
                p.set_delay(0);
            }
            // Connections through them live on; they end with the cluster.
            cluster.retired.extend(proxies);
            Ok(())
        }
        Active::Skew(n) => cluster.set_skew(n, 0),
        Active::Nothing => Ok(()),
    }
}
