//! loadgen: pushscope's WebSocket load generator. Used by `pushscope load`
//! and `pushscope run`.

pub mod outcome;

use outcome::{usage, Outcome};

/// Arguments of `pushscope load`.
#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// WebSocket URL of the server under test.
    #[arg(long)]
    pub url: Option<String>,
}

/// Arguments of `pushscope verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Directory written by `pushscope load --log-dir`.
    #[arg(long)]
    pub log_dir: Option<std::path::PathBuf>,
}

pub fn run_load(_args: LoadArgs) -> anyhow::Result<Outcome> {
    Err(usage("`pushscope load` is not implemented yet"))
}

pub fn run_verify(_args: VerifyArgs) -> anyhow::Result<Outcome> {
    Err(usage("`pushscope verify` is not implemented yet"))
}
