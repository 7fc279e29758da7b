//! `raftcast-chaos`: starts three origins and two edges from the real release binary,
//! runs workloads against them while nemeses kill, pause, partition and skew them,
//! checks the history, prints a table, writes `DIR/report.json` and exits non-zero
//! when any schedule fails. See `docs/chaos.md`.
//!
//! It drives the product from outside only: processes, sockets, HTTP and RTMP; it never
//! links the product's internals beyond its RTMP client and synthetic stream.

mod attack;
mod check;
mod cleanup;
mod cluster;
mod history;
mod nemesis;
mod net;
mod probe;
mod proxy;
mod report;
mod run;
mod schedule;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "raftcast-chaos", about = "Fault injection against real raftcast processes")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one schedule: a named one, or `random` with `--seed` and `--duration`.
    Run {
        #[arg(long)]
        schedule: String,
        #[command(flatten)]
        common: Common,
        /// Seed of the fault sequence (and of random choices such as which halves).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Length of a `random` schedule: `30m`, `90s`, `1h`.
        #[arg(long, default_value = "5m")]
        duration: String,
    },
    /// Every named schedule, short: the CI check.
    Smoke {
        #[command(flatten)]
        common: Common,
    },
    /// The nightly abuse suite: every attack alone at the size, then the 64 KiB
    /// write flood for 5 minutes while a follower is stopped and catches up.
    Suite {
        #[command(flatten)]
        common: Common,
    },
    /// One attack against one address, no cluster started: prints its report as JSON.
    Abuse {
        /// The attack (see `docs/chaos.md`): write-flood-edge, rtmp-drip, …
        #[arg(long)]
        attack: String,
        /// The listener attacked (an edge's HTTP or RTMP port, an origin's admin API
        /// or media-link port, as the attack needs).
        #[arg(long)]
        target: std::net::SocketAddr,
        /// An origin's admin API, for write tokens and the victim slot.
        #[arg(long)]
        origin: Option<std::net::SocketAddr>,
        /// File holding the admin bearer token (for tokens, the victim and origin floods).
        #[arg(long)]
        admin_token_file: Option<PathBuf>,
        /// Concurrent clients or connections [default: the attack's smoke size].
        #[arg(long)]
        connections: Option<u32>,
        /// How long: `30s`, `5m`.
        #[arg(long, default_value = "30s")]
        duration: String,
        /// New connections or requests per second over all clients (0: as fast as they go).
        #[arg(long, default_value_t = 0)]
        rate: u32,
        /// Drip interval / pause between probing requests, in ms [default: the attack's].
        #[arg(long)]
        interval_ms: Option<u64>,
        /// Bind this source address before connecting.
        #[arg(long)]
        source: Option<std::net::IpAddr>,
        /// Slot value size of the write floods (at most 65 000).
        #[arg(long)]
        value_bytes: Option<usize>,
        /// Use the connection counts instead of the smoke size.
        #[arg(long)]
        full: bool,
    },
    /// Re-checks a saved register history (`DIR/<schedule>/registers.jsonl`).
    Check {
        /// The history file.
        history: PathBuf,
    },
}

#[derive(clap::Args)]
struct Common {
    /// Where the report, histories and node logs go.
    #[arg(long, default_value = "chaos-out")]
    out: PathBuf,
    /// The raftcast binary [default: `raftcast` beside this program].
    #[arg(long)]
    bin: Option<PathBuf>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (n, unit) = text.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("{text:?} is not a duration (30m, 90s, 1h)"))?;
    match unit {
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("{text:?} is not a duration (30m, 90s, 1h)")),
    }
}

fn default_bin() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.join("raftcast");
    bin.exists().then_some(bin)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _guard = cleanup::Guard;
    match runtime.block_on(main_async(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `check`: the linearizability checker over a saved history.
fn recheck(path: &std::path::Path) -> anyhow::Result<bool> {
    let text = std::fs::read_to_string(path)?;
    let ops: Vec<history::RegisterOp> =
        text.lines().filter(|l| !l.trim().is_empty()).map(serde_json::from_str).collect::<Result<_, _>>()?;
    let violations = check::linearizable::check(&ops);
    for v in &violations {
        println!("key {}: {} at {:?}", v.key, v.reason, v.op);
    }
    println!("{} operations, {} keys not linearizable", ops.len(), violations.len());
    Ok(violations.is_empty())
}

async fn main_async(cli: Cli) -> anyhow::Result<bool> {
    if let Cmd::Check { history } = &cli.command {
        return recheck(history);
    }
    if let Cmd::Abuse {
        attack,
        target,
        origin,
        admin_token_file,
        connections,
        duration,
        rate,
        interval_ms,
        source,
        value_bytes,
        full,
    } = cli.command
    {
        let kind = attack::AttackKind::parse(&attack).ok_or_else(|| {
            let known: Vec<&str> = attack::AttackKind::ALL.iter().map(|k| k.name()).collect();
            anyhow::anyhow!("unknown attack {attack:?}; known: {}", known.join(", "))
        })?;
        let mut params = kind.default_params(full);
        params.duration = parse_duration(&duration).map_err(anyhow::Error::msg)?;
        params.rate = rate;
        params.source = source;
        if let Some(c) = connections {
            params.connections = c;
        }
        if let Some(ms) = interval_ms {
            params.interval = Duration::from_millis(ms);
        }
        if let Some(v) = value_bytes {
            params.value_bytes = v;
        }
        let admin_token = match admin_token_file {
            Some(p) => Some(std::fs::read_to_string(p)?.trim().to_string()),
            None => None,
        };
        let (_stop, rx) = tokio::sync::watch::channel(false);
        let report = attack::run(kind, attack::Targets { target, origin, admin_token }, params, rx).await;
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(true);
    }
    cleanup::install_signal_handler();
    let (schedules, common, seed) = match cli.command {
        Cmd::Run { schedule, common, seed, duration } => {
            let s = if schedule == "random" {
                schedule::random(seed, parse_duration(&duration).map_err(anyhow::Error::msg)?)
            } else {
                schedule::named(&schedule).ok_or_else(|| {
                    anyhow::anyhow!(
                        "unknown schedule {schedule:?}; known: random, {}, {}",
                        schedule::NAMED.join(", "),
                        schedule::abuse_suite().join(", ")
                    )
                })?
            };
            (vec![s], common, seed)
        }
        Cmd::Smoke { common } => (schedule::NAMED.iter().filter_map(|n| schedule::named(n)).collect(), common, 1),
        Cmd::Suite { common } => {
            (schedule::abuse_suite().iter().filter_map(|n| schedule::named(n)).collect(), common, 1)
        }
        Cmd::Check { .. } | Cmd::Abuse { .. } => unreachable!("handled above"),
    };
    let bin = common.bin.or_else(default_bin).ok_or_else(|| {
        anyhow::anyhow!("no raftcast binary beside this program: build it (cargo build --release) or pass --bin")
    })?;
    std::fs::create_dir_all(&common.out)?;
    let tag = format!("{:04x}", std::process::id() & 0xffff);
    let started = Instant::now();
    let backend = Arc::new(net::Backend::choose(&tag).await);
    let opts = run::RunOptions { bin, out: common.out.clone(), seed };
    let mut outcomes = Vec::new();
    for s in &schedules {
        println!("== {} ({} faults planned)", s.name, s.steps.len());
        let o = run::run(backend.clone(), s, &opts).await;
        println!("{}", report::table(std::slice::from_ref(&o)).lines().nth(1).unwrap_or_default());
        print!("{}", report::node_table(&o));
        outcomes.push(o);
        let reports: Vec<_> = outcomes.iter().map(|o| &o.report).collect();
        std::fs::write(common.out.join("report.json"), serde_json::to_string_pretty(&reports)?)?;
    }
    let backend_name = backend.name();
    drop(backend);
    tokio::task::spawn_blocking(cleanup::run_all).await?;
    let passed = outcomes.iter().filter(|o| o.passed()).count();
    let failed = outcomes.len() - passed;
    println!();
    print!("{}", report::table(&outcomes));
    println!(
        "backend: {}; wall time {:.0} s; report: {}",
        backend_name,
        started.elapsed().as_secs_f64(),
        common.out.join("report.json").display()
    );
    println!("{passed} passed, {failed} failed");
    Ok(failed == 0)
}
