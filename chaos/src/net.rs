//! The network the nodes run on, and the network faults.
//!
//! - **netns** (root, `ip netns` and `nft` work): every origin and edge runs in its own
//!   network namespace with one veth on a Linux bridge in the root namespace
//!   (`10.A.B.0/24`, the harness at `.254`). Faults are nftables rules in a `bridge`
//!   table's forward hook, i.e. dropped inside the bridge, never on a sender's OUTPUT
//!   hook (NOTES.md): a blocked directed pair `(from, to)` drops every packet from
//!   `from`'s address to `to`'s, and a lossy pair drops a random share of them
//!   (`numgen random`). The harness's own traffic (clients, probes) is never dropped.
//!   For latency, new connections from a node to a peer are redirected (DNAT in the
//!   node's namespace) to a delaying proxy on the harness's address (`proxy.rs`).
//! - **loopback** (no root): every node on 127.0.0.1 with its own ports; process faults
//!   work, network faults cannot be injected and the schedules that need them fail.
//!
//! Knows nothing of Raft, media or workloads.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;

use anyhow::{bail, Context};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::cleanup;

/// A node of the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Node {
    /// Origin with this Raft node id (1..=3).
    Origin(u32),
    /// Edge number (1 or 2).
    Edge(u32),
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Node::Origin(i) => write!(f, "origin-{i}"),
            Node::Edge(i) => write!(f, "edge-{i}"),
        }
    }
}

impl Node {
    fn short(&self) -> String {
        match self {
            Node::Origin(i) => format!("o{i}"),
            Node::Edge(i) => format!("e{i}"),
        }
    }

    fn host(&self) -> u8 {
        match self {
            Node::Origin(i) => *i as u8,
            Node::Edge(i) => 10 + *i as u8,
        }
    }
}

/// Network faults in force: the whole set is rewritten on every change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rules {
    /// Directed pairs `(from, to)` whose packets are all dropped.
    pub blocked: BTreeSet<(Node, Node)>,
    /// Directed pairs and the percentage of their packets dropped.
    pub lossy: Vec<(Node, Node, u32)>,
}

impl Rules {
    /// Blocks both directions between every node of `a` and every node of `b`.
    pub fn cut(&mut self, a: &[Node], b: &[Node]) {
        for x in a {
            for y in b {
                if x != y {
                    self.blocked.insert((*x, *y));
                    self.blocked.insert((*y, *x));
                }
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.blocked.is_empty() && self.lossy.is_empty()
    }
}

/// Where the nodes run.
/// The attacker's host number on the bridge's /24 (the harness is `.254`).
const ATTACKER_HOST: u8 = 250;
/// Attack windows take their address in turn from this many (`.250`, `.249`, …): a
/// window must meet the caps it aims at, not a ban an earlier window earned.
const ATTACKER_ADDRESSES: u8 = 4;

pub enum Backend {
    Netns(Netns),
    Loopback,
}

impl Backend {
    /// Namespaces when possible, else loopback; says which, loudly when it falls back.
    pub async fn choose(tag: &str) -> Backend {
        match Netns::setup(tag).await {
            Ok(n) => {
                println!("backend: netns (each node in its own network namespace on bridge {}, {}.0/24; faults are nftables rules in the bridge)", n.bridge, n.net_prefix());
                Backend::Netns(n)
            }
            Err(e) => {
                eprintln!("################################################################");
                eprintln!("WARNING: network namespaces unavailable ({e:#}).");
                eprintln!("FALLING BACK to the loopback backend: process faults only; every");
                eprintln!("schedule that needs a network fault will FAIL, not be skipped.");
                eprintln!("################################################################");
                println!("backend: loopback");
                Backend::Loopback
            }
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Backend::Netns(_) => "netns",
            Backend::Loopback => "loopback",
        }
    }

    /// The address `node` binds and is reached at.
    pub fn ip(&self, node: Node) -> IpAddr {
        match self {
            Backend::Netns(n) => IpAddr::V4(n.ip(node)),
            Backend::Loopback => IpAddr::V4(Ipv4Addr::LOCALHOST),
        }
    }

    /// Command prefix that runs a program as `node` (`ip netns exec NS`), empty on loopback.
    pub fn exec_prefix(&self, node: Node) -> Vec<String> {
        match self {
            Backend::Netns(n) => vec!["ip".into(), "netns".into(), "exec".into(), n.ns(node)],
            Backend::Loopback => Vec::new(),
        }
    }

    /// The harness's own address on the nodes' network (netns only).
    pub fn harness_ip(&self) -> anyhow::Result<IpAddr> {
        match self {
            Backend::Netns(n) => Ok(IpAddr::V4(Ipv4Addr::new(10, n.prefix.0, n.prefix.1, 254))),
            Backend::Loopback => bail!("the loopback backend cannot redirect links through a proxy"),
        }
    }

    /// The address the attacks of abuse window `window` (0, 1, …) come from: a host of
    /// its own on the bridge (netns: `.250`, `.249`, … in turn), `127.0.0.2`, `.3`, … on
    /// loopback; never the address of the harness's legitimate clients.
    pub fn attacker_ip(&self, window: u32) -> anyhow::Result<IpAddr> {
        let turn = (window % u32::from(ATTACKER_ADDRESSES)) as u8;
        match self {
            Backend::Netns(n) => Ok(IpAddr::V4(Ipv4Addr::new(10, n.prefix.0, n.prefix.1, ATTACKER_HOST - turn))),
            Backend::Loopback => Ok(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + turn))),
        }
    }

    /// Inside `node`'s namespace, sends new TCP connections to each `(to, port)` to
    /// `via` instead (DNAT on its OUTPUT hook), then cuts its established connections to
    /// those destinations so they reconnect through `via`. An empty list removes the
    /// redirection (connections already through `via` stay).
    pub async fn redirect(&self, node: Node, links: &[(Node, u16, SocketAddr)]) -> anyhow::Result<()> {
        let Backend::Netns(n) = self else { bail!("the loopback backend cannot redirect links") };
        let ns = n.ns(node);
        let mut script = String::from("add table ip rcchaos-nat\ndelete table ip rcchaos-nat\n");
        if !links.is_empty() {
            script += "table ip rcchaos-nat {\n  chain out {\n    type nat hook output priority -100; policy accept;\n";
            for (to, port, via) in links {
                script += &format!("    ip daddr {} tcp dport {port} dnat to {via}\n", n.ip(*to));
            }
            script += "  }\n}\n";
        }
        nft_script(&["ip", "netns", "exec", &ns, "nft", "-f", "-"], &script).await?;
        for (to, port, _) in links {
            let ip = n.ip(*to).to_string();
            run(&["ip", "netns", "exec", &ns, "ss", "-K", "dst", &ip, "dport", "=", &port.to_string()]).await?;
        }
        Ok(())
    }

    /// Installs exactly `rules` (replacing the previous ones).
    pub async fn apply(&self, rules: &Rules) -> anyhow::Result<()> {
        match self {
            Backend::Netns(n) => n.apply(rules).await,
            Backend::Loopback if rules.is_empty() => Ok(()),
            Backend::Loopback => bail!("the loopback backend cannot inject network faults (no namespaces here)"),
        }
    }
}

/// Namespaces on a bridge.
pub struct Netns {
    tag: String,
    prefix: (u8, u8),
    bridge: String,
    table: String,
}

pub const NODES: [Node; 5] = [Node::Origin(1), Node::Origin(2), Node::Origin(3), Node::Edge(1), Node::Edge(2)];

async fn run(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {}", args.join(" ")))?;
    if !out.status.success() {
        bail!("{} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl Netns {
    fn ns(&self, node: Node) -> String {
        format!("rc{}-{}", self.tag, node.short())
    }

    fn net_prefix(&self) -> String {
        format!("10.{}.{}", self.prefix.0, self.prefix.1)
    }

    fn ip(&self, node: Node) -> Ipv4Addr {
        Ipv4Addr::new(10, self.prefix.0, self.prefix.1, node.host())
    }

    async fn setup(tag: &str) -> anyhow::Result<Netns> {
        let uid = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")));
        if uid != Some(true) {
            bail!("not running as root");
        }
        run(&["nft", "--version"]).await.context("nft (nftables) is needed")?;
        let n: u32 = u32::from_str_radix(tag, 16).unwrap_or(0);
        let netns = Netns {
            tag: tag.into(),
            prefix: (200 + (n >> 8) as u8 % 50, n as u8),
            bridge: format!("rc{tag}br"),
            table: format!("rc{tag}"),
        };
        let br = netns.bridge.clone();
        run(&["ip", "link", "add", &br, "type", "bridge"]).await?;
        cleanup::add_link(&br);
        run(&["ip", "addr", "add", &format!("{}.254/24", netns.net_prefix()), "dev", &br]).await?;
        // The attacker's own address (abuse faults): per-address caps must tell it
        // apart from the harness's legitimate clients at .254.
        for turn in 0..ATTACKER_ADDRESSES {
            let host = ATTACKER_HOST - turn;
            run(&["ip", "addr", "add", &format!("{}.{host}/24", netns.net_prefix()), "dev", &br]).await?;
        }
        run(&["ip", "link", "set", &br, "up"]).await?;
        for node in NODES {
            let ns = netns.ns(node);
            run(&["ip", "netns", "add", &ns]).await?;
            cleanup::add_netns(&ns);
            let veth = format!("rc{}{}", tag, node.short());
            run(&["ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns]).await?;
            cleanup::add_link(&veth);
            run(&["ip", "link", "set", &veth, "master", &br, "up"]).await?;
            let addr = format!("{}/24", netns.ip(node));
            run(&["ip", "netns", "exec", &ns, "ip", "addr", "add", &addr, "dev", "eth0"]).await?;
            run(&["ip", "netns", "exec", &ns, "ip", "link", "set", "eth0", "up"]).await?;
            run(&["ip", "netns", "exec", &ns, "ip", "link", "set", "lo", "up"]).await?;
        }
        run(&["nft", "add", "table", "bridge", &netns.table]).await?;
        cleanup::add_nft_table("bridge", &netns.table);
        netns.apply(&Rules::default()).await?;
        Ok(netns)
    }

    async fn apply(&self, rules: &Rules) -> anyhow::Result<()> {
        let t = &self.table;
        let mut script = format!(
            "delete table bridge {t}\ntable bridge {t} {{\n  chain filt {{\n    type filter hook forward priority 0; policy accept;\n"
        );
        for (from, to) in &rules.blocked {
            script += &format!("    ip saddr {} ip daddr {} drop\n", self.ip(*from), self.ip(*to));
        }
        for (from, to, pct) in &rules.lossy {
            script += &format!(
                "    ip saddr {} ip daddr {} numgen random mod 100 < {pct} drop\n",
                self.ip(*from),
                self.ip(*to)
            );
        }
        script += "  }\n}\n";
        nft_script(&["nft", "-f", "-"], &script).await
    }
}

/// Runs `argv` (an `nft -f -`) with `script` on its standard input.
async fn nft_script(argv: &[&str], script: &str) -> anyhow::Result<()> {
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting nft")?;
    let mut stdin = child.stdin.take().context("nft stdin")?;
    stdin.write_all(script.as_bytes()).await?;
    drop(stdin);
    let out = child.wait_with_output().await?;
    if !out.status.success() {
        bail!("nft -f failed: {}\n{script}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}
