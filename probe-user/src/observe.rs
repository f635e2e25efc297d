//! `pushscope observe`: attaches the eBPF probes to a server by PID.

use loadgen::outcome::{usage, Outcome};

#[derive(Debug, clap::Args)]
pub struct ObserveArgs {
    /// PID of the server to observe.
    #[arg(long)]
    pub pid: u32,
}

pub fn run(_args: ObserveArgs) -> anyhow::Result<Outcome> {
    Err(usage("`pushscope observe` is not implemented yet"))
}
