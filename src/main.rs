//! The `raftcast` command: dispatch to the origin, the admin client, and friends.

use clap::{Parser, Subcommand};

/// jemalloc, with its background threads purging freed pages: under glibc's malloc an
/// origin that carried a flood of 64 KiB writes kept hundreds of MiB it no longer used
/// (freed chunks stay in per-thread arenas), so memory never came back after a burst.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "raftcast", version, about = "A live-streaming cluster for RTMP with a Raft-replicated origin tier")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run an origin: Raft voter, admin API and media origin.
    Origin(Box<raftcast::origin::OriginArgs>),
    /// Run an edge: RTMP and HTTP-FLV front door for publishers and players.
    Edge(Box<raftcast::edge::EdgeArgs>),
    /// Administer a running cluster through any origin's admin API.
    Ctl(raftcast::ctl::CtlArgs),
    /// Load generators with a JSON report.
    #[command(subcommand)]
    Bench(raftcast::bench::BenchCommand),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Without background threads jemalloc purges only when the process allocates, so an
    // idle process after a burst would keep the pages; ignore failure (no threads).
    let _ = tikv_jemalloc_ctl::background_thread::write(true);
    match cli.command {
        Cmd::Origin(args) => raftcast::origin::main(*args),
        Cmd::Edge(args) => raftcast::edge::main(*args),
        Cmd::Ctl(args) => raftcast::ctl::main(args),
        Cmd::Bench(cmd) => raftcast::bench::main(cmd),
    }
}
