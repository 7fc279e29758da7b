//! The `raftcast` command: dispatch to the origin, the admin client, and friends.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "raftcast", version, about = "A live-streaming cluster for RTMP with a Raft-replicated origin tier")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run an origin: Raft voter, admin API and media origin.
    Origin(raftcast::origin::OriginArgs),
    /// Run an edge: RTMP and HTTP-FLV front door for publishers and players.
    Edge(raftcast::edge::EdgeArgs),
    /// Administer a running cluster through any origin's admin API.
    Ctl(raftcast::ctl::CtlArgs),
    /// Load generators with a JSON report.
    #[command(subcommand)]
    Bench(raftcast::bench::BenchCommand),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Origin(args) => raftcast::origin::main(args),
        Cmd::Edge(args) => raftcast::edge::main(args),
        Cmd::Ctl(args) => raftcast::ctl::main(args),
        Cmd::Bench(cmd) => raftcast::bench::main(cmd),
    }
}
