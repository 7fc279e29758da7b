//! Everything the harness must undo, whatever happens: processes it started, network
//! namespaces, links and nftables tables it created. One registry, emptied by
//! [`run_all`] from the normal end of a run, from a [`Guard`]'s `Drop` (panics and early
//! returns) and from the Ctrl-C / SIGTERM handler.
//!
//! Teardown runs synchronous commands (`kill`, `ip`, `nft`); it is only called at the
//! end of a run or from a blocking context, never in the middle of the workloads.

use std::process::{Command, Stdio};
use std::sync::Mutex;

#[derive(Default)]
struct Registry {
    /// Processes started and not yet reaped.
    pids: Vec<u32>,
    /// `(family, table)` nftables tables in the root namespace.
    nft_tables: Vec<(String, String)>,
    /// Network namespaces created.
    netns: Vec<String>,
    /// Links in the root namespace (bridges, veths).
    links: Vec<String>,
}

static REGISTRY: Mutex<Registry> =
    Mutex::new(Registry { pids: Vec::new(), nft_tables: Vec::new(), netns: Vec::new(), links: Vec::new() });

fn with<T>(f: impl FnOnce(&mut Registry) -> T) -> T {
    let mut r = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    f(&mut r)
}

pub fn add_pid(pid: u32) {
    with(|r| r.pids.push(pid));
}

pub fn remove_pid(pid: u32) {
    with(|r| r.pids.retain(|p| *p != pid));
}

pub fn add_nft_table(family: &str, table: &str) {
    with(|r| r.nft_tables.push((family.into(), table.into())));
}

pub fn add_netns(name: &str) {
    with(|r| r.netns.push(name.into()));
}

pub fn add_link(name: &str) {
    with(|r| r.links.push(name.into()));
}

fn quiet(cmd: &mut Command) {
    let _ = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status();
}

/// Kills every registered process (continuing paused ones first, so they die at once),
/// then removes tables, namespaces and links. Idempotent.
pub fn run_all() {
    let r = with(std::mem::take);
    for pid in &r.pids {
        quiet(Command::new("kill").args(["-KILL", &pid.to_string()]));
        quiet(Command::new("kill").args(["-CONT", &pid.to_string()]));
    }
    for (family, table) in &r.nft_tables {
        quiet(Command::new("nft").args(["delete", "table", family, table]));
    }
    for ns in &r.netns {
        quiet(Command::new("ip").args(["netns", "delete", ns]));
    }
    for link in &r.links {
        quiet(Command::new("ip").args(["link", "delete", link]));
    }
}

/// Calls [`run_all`] when dropped: a run that panics or returns early still cleans up.
pub struct Guard;

impl Drop for Guard {
    fn drop(&mut self) {
        run_all();
    }
}

/// Cleans up and exits on SIGINT or SIGTERM.
pub fn install_signal_handler() {
    tokio::spawn(async {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
            eprintln!("warning: cannot install signal handlers; Ctrl-C will not clean up");
            return;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        eprintln!("interrupted: cleaning up processes, namespaces and rules");
        let _ = tokio::task::spawn_blocking(run_all).await;
        std::process::exit(130);
    });
}
