//! pushscope: the `pushscope` command. `Opts` and `run` live here (not in
//! main.rs) so tests can parse arguments and run subcommands in-process.

pub mod abi;
pub mod flame;
pub mod gate;
pub mod lifecycle;
pub mod metrics;
pub mod msgpath;
pub mod observe;
pub mod observe_summary;
pub mod phases;
pub mod probes;
pub mod profile;
pub mod report;
pub mod run;
pub mod target;
pub mod trace;

use clap::{Parser, Subcommand};
use loadgen::outcome::{exit_code_for, Outcome};

#[derive(Debug, Parser)]
#[command(
    name = "pushscope",
    version,
    about = "Admission tests for WebSocket push servers: staged load, eBPF observation by PID, and a gate"
)]
pub struct Opts {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load + observe + gate: the whole admission run against a server PID.
    Run(run::RunArgs),
    /// Staged WebSocket load with per-message accounting (no root needed).
    Load(loadgen::LoadArgs),
    /// Attach eBPF probes to a running server by PID and attribute every connection's life.
    Observe(observe::ObserveArgs),
    /// Compare publish and receive logs of a load run: lost, duplicated, unexpected msg_ids.
    Verify(loadgen::VerifyArgs),
    /// Profile a running process by PID: on-CPU and off-CPU stacks, run-queue latency, stalls.
    Profile(profile::ProfileArgs),
}

/// Runs one subcommand and maps its outcome to the process exit code:
/// 0 admitted/completed, 1 rejected, 2 bad usage or config, 3 runtime failure.
pub fn main_with(opts: Opts) -> std::process::ExitCode {
    let result = match opts.command {
        Command::Run(args) => run::run(args),
        Command::Load(args) => loadgen::run_load(args),
        Command::Observe(args) => observe::run(args),
        Command::Verify(args) => loadgen::run_verify(args),
        Command::Profile(args) => profile::run(args),
    };
    if let Err(e) = &result {
        eprintln!("pushscope: {e:#}");
    }
    std::process::ExitCode::from(exit_code_for(&result))
}

/// The outcome type every subcommand returns.
pub type CmdResult = anyhow::Result<Outcome>;
