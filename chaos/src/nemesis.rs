//! Nemeses: each fault is aimed at whoever holds a role when it starts (the leader, the
//! owner of the chaos stream), applied to the real processes or the network, and healed
//! at the end of its window. Knows the cluster and the network, not the workloads.
//! Abuse faults run attack generators ([`crate::attack`]) from the attacker's own
//! address against the edges' and origins' listeners for the window.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::attack::{self, Aim, AttackKind, AttackReport, Targets};
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
    /// These attacks at once for the window (`full`: the connection counts,
    /// else smoke-sized ones); with `stop_follower_secs`, a follower is also stopped for
    /// that long at the start and must catch up while the attacks go on.
    Abuse { attacks: AttackSet, full: bool, stop_follower_secs: u32 },
}

/// A set of attacks (a bit per [`AttackKind::ALL`] entry), `Copy` like every fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttackSet(pub u32);

impl AttackSet {
    pub fn of(kinds: &[AttackKind]) -> AttackSet {
        AttackSet(kinds.iter().map(|k| 1 << Self::bit(*k)).fold(0, |a, b| a | b))
    }

    fn bit(k: AttackKind) -> u32 {
        AttackKind::ALL.iter().position(|x| *x == k).unwrap_or(0) as u32
    }

    pub fn kinds(&self) -> Vec<AttackKind> {
        AttackKind::ALL.into_iter().filter(|k| self.0 & (1 << Self::bit(*k)) != 0).collect()
    }

    pub fn names(&self) -> String {
        self.kinds().iter().map(|k| k.name()).collect::<Vec<_>>().join("+")
    }
}

/// The longest an abuse fault's attacks run if nobody heals them (they are stopped at
/// the end of their window; this bounds them if the harness fails in between).
pub const ABUSE_MAX: Duration = Duration::from_secs(15 * 60);

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
            Fault::Abuse { attacks, .. } => return format!("abuse:{}", attacks.names()),
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
    /// Attacks running until told to stop.
    Abuse {
        stop: tokio::sync::watch::Sender<bool>,
        tasks: Vec<tokio::task::JoinHandle<AttackReport>>,
    },
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
        Fault::Abuse { attacks, full, .. } => {
            let source = cluster.backend.attacker_ip(cluster.abuse_windows).ok();
            cluster.abuse_windows += 1;
            let leader = cluster.leader().await.unwrap_or(1);
            let owner = roles.lock().unwrap_or_else(|p| p.into_inner()).owner.map(|(_, o)| o).unwrap_or(2);
            let (stop, rx) = tokio::sync::watch::channel(false);
            let mut tasks = Vec::new();
            let mut aimed = Vec::new();
            for kind in attacks.kinds() {
                let target = match kind.aim() {
                    Aim::EdgeHttp => cluster.addrs(Node::Edge(1)).http,
                    Aim::EdgeRtmp => cluster.addrs(Node::Edge(1)).media,
                    Aim::OriginHttp => cluster.addrs(Node::Origin(leader)).http,
                    // The canary stream's owner: its publishes are what a full link
                    // port would refuse.
                    Aim::OriginMedia => cluster.addrs(Node::Origin(owner)).media,
                };
                let mut params = kind.default_params(full);
                params.duration = ABUSE_MAX;
                params.source = source;
                let targets = Targets {
                    target,
                    origin: Some(cluster.addrs(Node::Origin(leader)).http),
                    admin_token: Some(cluster.token.clone()),
                };
                aimed.push(format!("{} x{} -> {target}", kind.name(), params.connections));
                tasks.push(tokio::spawn(attack::run(kind, targets, params, rx.clone())));
            }
            let from = source.map_or("the harness's address".to_string(), |s| s.to_string());
            return Ok(Injected {
                active: Active::Abuse { stop, tasks },
                detail: format!("from {from}: {}", aimed.join(", ")),
                count: 1,
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

/// Undoes an injected fault; an abuse fault's attacks report what they did.
pub async fn heal(active: Active, cluster: &mut Cluster) -> anyhow::Result<Vec<AttackReport>> {
    if let Active::Abuse { stop, tasks } = active {
        let _ = stop.send(true);
        let mut reports = Vec::new();
        for t in tasks {
            match tokio::time::timeout(Duration::from_secs(30), t).await {
                Ok(Ok(r)) => reports.push(r),
                Ok(Err(e)) => bail!("an attack task failed: {e}"),
                Err(_) => bail!("an attack did not stop within 30 s"),
            }
        }
        return Ok(reports);
    }
    heal_fault(active, cluster).await.map(|()| Vec::new())
}

async fn heal_fault(active: Active, cluster: &mut Cluster) -> anyhow::Result<()> {
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
        Active::Nothing | Active::Abuse { .. } => Ok(()),
    }
}
