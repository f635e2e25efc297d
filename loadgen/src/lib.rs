//! loadgen: pushscope's WebSocket load generator. Used by `pushscope load`
//! and `pushscope run`.
//!
//! Library use: build a [`Scenario`] (from flags via [`LoadArgs::scenario`]
//! or from a TOML file), then [`runner::run`] it with a callback that sees
//! every stage start and every judged stage ([`StageReport`], the per-stage
//! `summary.json` shape) with its `Instant`s.

pub mod accounting;
pub mod client;
pub mod clock;
pub mod duration;
pub mod faults;
pub mod lane;
pub mod live;
pub mod marker;
pub mod msgpath;
pub mod net;
pub mod oplog;
pub mod outcome;
pub mod pool;
pub mod protocol;
pub mod publisher;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod shard;
pub mod sockdiag;
pub mod tls;
pub mod verify;

pub use report::StageReport;
pub use runner::{run, Control, ControlRx, LoadError, RunOptions, RunReport, StageEvent};
pub use scenario::Scenario;

use outcome::{usage, Outcome};
pub use scenario::Overrides;
use scenario::ScenarioFile;
use std::path::PathBuf;

/// Arguments of `pushscope load`: a scenario file, the flags that
/// override it ([`Overrides`]) and the hidden shard-worker switch.
#[derive(Debug, Default, clap::Args)]
pub struct LoadArgs {
    /// Scenario TOML file (same keys as the flags, snake_case); flags override it.
    #[arg(long)]
    pub scenario: Option<PathBuf>,
    #[command(flatten)]
    pub flags: Overrides,
    /// Internal: run as a worker process of a sharded run.
    #[arg(long, hide = true)]
    pub shard_worker: bool,
}

impl LoadArgs {
    /// The validated scenario these flags (and their --scenario file) describe.
    pub fn scenario(&self) -> anyhow::Result<Scenario> {
        let file = match &self.scenario {
            Some(p) => ScenarioFile::load(p).map_err(|e| usage(e.to_string()))?,
            None => ScenarioFile::default(),
        };
        Scenario::build(file, self.flags.clone()).map_err(|e| usage(e.to_string()))
    }
}

/// Arguments of `pushscope verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Directory written by `pushscope load --log-dir`.
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
    /// Server-side list of msg_ids (one per line) to compare with the publish log.
    #[arg(long)]
    pub server_ids: Option<PathBuf>,
}

pub fn run_load(args: LoadArgs) -> anyhow::Result<Outcome> {
    if args.shard_worker {
        shard::worker_main()?;
        return Ok(Outcome::Completed);
    }
    let sc = args.scenario()?;
    let out = sc
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("pushscope-load"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let opts = RunOptions {
        worker: None,
        live: true,
        tracer: None,
        control: None,
    };
    // Judged stages are kept as they come, so a run that fails midway
    // still leaves what it measured (marked incomplete).
    let mut judged: Vec<StageReport> = Vec::new();
    let result = rt.block_on(runner::run(&sc, opts, &mut |ev| {
        if let StageEvent::Ended { report, .. } = ev {
            judged.push(report.clone());
        }
    }));
    let (stages, warnings, complete) = match &result {
        Ok(r) => (r.stages.clone(), r.warnings.clone(), true),
        Err(e) => (judged, vec![format!("the run stopped early: {e}")], false),
    };
    if complete || !stages.is_empty() {
        let summary = report::Summary {
            schema: 1,
            complete,
            scenario: &sc,
            stages: &stages,
            warnings: &warnings,
        };
        let path = report::write_summary(&out, &summary)?;
        for w in &warnings {
            eprintln!("pushscope load: warning: {w}");
        }
        eprintln!("pushscope load: summary written to {}", path.display());
    }
    result.map_err(anyhow::Error::new)?;
    Ok(Outcome::Completed)
}

pub fn run_verify(args: VerifyArgs) -> anyhow::Result<Outcome> {
    let dir = args.log_dir.ok_or_else(|| {
        usage("pass --log-dir DIR (the directory given to `pushscope load --log-dir`)")
    })?;
    let result = verify::verify(&dir, args.server_ids.as_deref())?;
    print!("{}", result.render());
    Ok(if result.is_clean() {
        Outcome::Completed
    } else {
        Outcome::Rejected
    })
}
