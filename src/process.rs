//! The one start-up path of `raftcast origin` and `raftcast edge`: logging, the
//! configuration (exit status 2 when it is invalid), the runtime, the process's span,
//! and the exit status from what the process's `run` returns.

use std::future::Future;
use std::process::ExitCode;

/// Runs a server process: `parse` reads its configuration, `runtime` is the runtime to
/// build (every I/O and timer driver is enabled here), `span` names the process in every
/// log line, `run` serves until it returns.
pub fn main<C, F>(
    name: &str,
    parse: impl FnOnce() -> Result<C, String>,
    mut runtime: tokio::runtime::Builder,
    span: impl FnOnce(&C) -> tracing::Span,
    run: impl FnOnce(C) -> F,
) -> ExitCode
where
    F: Future<Output = anyhow::Result<()>>,
{
    crate::logging::init();
    let config = match parse() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("raftcast {name}: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match runtime.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("raftcast {name}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let span = span(&config);
    match runtime.block_on(tracing::Instrument::instrument(run(config), span)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("raftcast {name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}
