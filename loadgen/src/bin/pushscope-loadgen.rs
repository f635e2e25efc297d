//! `pushscope-loadgen`: the load generator alone (`load`, `verify`), same
//! flags and exit codes as `pushscope load` / `pushscope verify`, for hosts
//! that only drive load (no eBPF build needed) and for the bench.

use clap::{Parser, Subcommand};
use loadgen::outcome::exit_code_for;

#[derive(Debug, Parser)]
#[command(
    name = "pushscope-loadgen",
    version,
    about = "pushscope's WebSocket load generator"
)]
struct Opts {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
#[expect(clippy::large_enum_variant, reason = "parsed once per process")]
enum Cmd {
    /// Staged WebSocket load with per-message accounting.
    Load(loadgen::LoadArgs),
    /// Compare publish and receive logs of a load run.
    Verify(loadgen::VerifyArgs),
    /// The ramp's floor: connections/s this host's kernel alone sets up on
    /// loopback (fixed upgrade request and 101, no work on either side).
    ConnectFloor(loadgen::connect_floor::FloorArgs),
}

fn main() -> std::process::ExitCode {
    let result = match Opts::parse().command {
        Cmd::Load(a) => loadgen::run_load(a),
        Cmd::Verify(a) => loadgen::run_verify(a),
        Cmd::ConnectFloor(a) => {
            loadgen::connect_floor::run(a).map(|()| loadgen::outcome::Outcome::Completed)
        }
    };
    if let Err(e) = &result {
        eprintln!("pushscope-loadgen: {e:#}");
    }
    std::process::ExitCode::from(exit_code_for(&result))
}
