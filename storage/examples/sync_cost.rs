//! What one durable point costs: a small sled insert followed by [`Syncer::sync_blocking`]
//! (flush, `fdatasync` of the database file, directory syncs only when a listing
//! changed), against the full sync it replaced (flush, then `fsync` of the database
//! file, the blob directory and the store directory every time), measured in the same
//! run, interleaved.
//!
//!   cargo run --release -p raftcast-storage --example sync_cost -- [SYNCS] [ROUNDS]
//!
//! Prints wall time, CPU time (the whole process: sled's I/O threads included) and
//! context switches per sync, and the ratio of each.

use std::path::Path;
use std::time::Instant;

use raftcast_storage::sync::{fsync, sled_io, Syncer};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let syncs: u64 = args.next().map(|a| a.parse().expect("SYNCS is a number")).unwrap_or(2000);
    let rounds: u64 = args.next().map(|a| a.parse().expect("ROUNDS is a number")).unwrap_or(3);
    let mut totals = [Cost::default(), Cost::default()];
    for round in 1..=rounds {
        for (i, kind) in ["full", "lean"].into_iter().enumerate() {
            let cost = run(kind, syncs)?;
            println!(
                "round {round} {kind}: {:.0} µs wall, {:.0} µs CPU, {:.1} context switches per sync",
                cost.wall_us / syncs as f64,
                cost.cpu_us / syncs as f64,
                cost.switches / syncs as f64
            );
            totals[i].add(&cost);
        }
    }
    let [full, lean] = totals;
    println!(
        "lean / full: wall {:.2}x, CPU {:.2}x, context switches {:.2}x",
        lean.wall_us / full.wall_us,
        lean.cpu_us / full.cpu_us,
        lean.switches / full.switches
    );
    Ok(())
}

#[derive(Default)]
struct Cost {
    wall_us: f64,
    cpu_us: f64,
    switches: f64,
}

impl Cost {
    fn add(&mut self, other: &Cost) {
        self.wall_us += other.wall_us;
        self.cpu_us += other.cpu_us;
        self.switches += other.switches;
    }
}

fn run(kind: &str, syncs: u64) -> std::io::Result<Cost> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("db");
    let db = sled::Config::new().path(&path).cache_capacity(64 * 1024 * 1024).open().map_err(sled_io)?;
    let tree = db.open_tree("log").map_err(sled_io)?;
    let syncer = Syncer::new(db.clone(), path.clone());
    let value = vec![7u8; 200];
    let (cpu, switches, wall) = (cpu_us()?, context_switches()?, Instant::now());
    for i in 0..syncs {
        tree.insert(i.to_be_bytes(), value.as_slice()).map_err(sled_io)?;
        match kind {
            "lean" => syncer.sync_blocking()?,
            _ => full_sync(&db, &path)?,
        }
    }
    Ok(Cost {
        wall_us: wall.elapsed().as_secs_f64() * 1e6,
        cpu_us: cpu_us()? - cpu,
        switches: context_switches()? - switches,
    })
}

/// The sync the store did before: flush and `fsync` everything, every time.
fn full_sync(db: &sled::Db, dir: &Path) -> std::io::Result<()> {
    db.flush().map_err(sled_io)?;
    fsync(&dir.join("db"))?;
    let blobs = dir.join("blobs");
    if blobs.is_dir() {
        for entry in std::fs::read_dir(&blobs)? {
            fsync(&entry?.path())?;
        }
        fsync(&blobs)?;
    }
    fsync(dir)
}

/// User and system CPU of the whole process, from /proc/self/stat.
fn cpu_us() -> std::io::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap_or(0.0) + fields[12].parse::<f64>().unwrap_or(0.0);
    Ok(ticks * 1e6 / 100.0) // USER_HZ is 100 on Linux
}

/// Voluntary and involuntary context switches of every live thread of the process.
fn context_switches() -> std::io::Result<f64> {
    let mut total = 0.0;
    for task in std::fs::read_dir("/proc/self/task")? {
        let status = std::fs::read_to_string(task?.path().join("status")).unwrap_or_default();
        for line in status.lines() {
            if let Some(n) =
                line.strip_prefix("voluntary_ctxt_switches:").or(line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                total += n.trim().parse::<f64>().unwrap_or(0.0);
            }
        }
    }
    Ok(total)
}
