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
pub mod connect_floor;
pub mod duration;
pub mod faults;
pub mod lane;
pub mod link;
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
pub mod ws;

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
    /// Bench floor: subscribers only count the frames they receive (no
    /// UTF-8 check, marker or accounting); `cargo xtask bench loadgen`
    /// compares the full load generator with it.
    #[arg(long, hide = true)]
    pub floor: bool,
}

impl LoadArgs {
    /// The validated scenario these flags (and their --scenario file) describe.
    pub fn scenario(&self) -> anyhow::Result<Scenario> {
        let file = match &self.scenario {
            Some(p) => ScenarioFile::load(p).map_err(|e| usage(e.to_string()))?,
            None => ScenarioFile::default(),
        };
        let mut sc = Scenario::build(file, self.flags.clone()).map_err(|e| usage(e.to_string()))?;
        sc.floor = self.floor;
        Ok(sc)
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
    // Faults that need no target PID (pushscope run has them all); a
    // partition needs a link to cut (transparent without --network).
    let link = match sc.faults.iter().any(|f| f.kind.needs_link()) {
        true => Some(std::sync::Arc::new(
            link::Link::start(sc.network.unwrap_or(link::NetworkSpec::transparent())).map_err(
                |e| match e {
                    link::LinkError::Permission(_) => usage(e.to_string()),
                    e => anyhow::Error::new(e),
                },
            )?,
        )),
        false => None,
    };
    let mut env = faults::FaultEnv::for_scenario(&sc, &out);
    env.link = link
        .as_ref()
        .map(|l| std::sync::Arc::new(l.control()) as std::sync::Arc<dyn faults::PartitionSwitch>);
    let mut faults = faults::FaultRun::start(&sc, &env, clock::mono_ns()).map_err(usage)?;
    let opts = RunOptions {
        worker: None,
        live: true,
        tracer: None,
        conn_events: faults.as_ref().map(|f| f.conn_events()),
        link,
        control: faults.as_mut().and_then(|f| f.take_control()),
    };
    // Judged stages are kept as they come, so a run that fails midway
    // still leaves what it measured (marked incomplete).
    let mut judged: Vec<StageReport> = Vec::new();
    let result = rt.block_on(runner::run(&sc, opts, &mut |ev| match ev {
        StageEvent::Ended { report, .. } => judged.push(report.clone()),
        StageEvent::Started { stage, mono_ns, .. } => {
            if let Some(f) = &faults {
                f.stage_started(stage as usize, mono_ns);
            }
        }
        StageEvent::Tick { .. } => {}
    }));
    let fault_records = faults
        .map(|f| f.finish(&judged, clock::mono_ns()))
        .unwrap_or_default();
    let (stages, warnings, complete, network) = match &result {
        Ok(r) => (
            r.stages.clone(),
            r.warnings.clone(),
            true,
            r.network.clone(),
        ),
        Err(e) => (
            judged,
            vec![format!("the run stopped early: {e}")],
            false,
            None,
        ),
    };
    if complete || !stages.is_empty() {
        let summary = report::Summary {
            schema: 1,
            complete,
            scenario: &sc,
            stages: &stages,
            warnings: &warnings,
            faults: &fault_records,
            network: network.as_ref(),
        };
        let path = report::write_summary(&out, &summary)?;
        for w in &warnings {
            eprintln!("pushscope load: warning: {w}");
        }
        eprintln!("pushscope load: summary written to {}", path.display());
    }
    match result {
        // Not being root is the user's to fix, like the observer's probes.
        Err(e @ LoadError::Link(link::LinkError::Permission(_))) => Err(usage(e.to_string())),
        Err(e) => Err(anyhow::Error::new(e)),
        Ok(_) => Ok(Outcome::Completed),
    }
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
