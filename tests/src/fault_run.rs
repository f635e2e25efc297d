//! Runs a scenario with `[[faults]]` in-process: the load (with a
//! `Control` for the faults), the fault scheduler told of every stage
//! start, and each fault's outcome judged against its stage's report.

use loadgen::faults::{self, schedule::Scheduler, FaultEnv, FaultRecord, TargetPid};
use std::{path::Path, time::Duration};

pub struct FaultRun {
    pub stages: Vec<loadgen::StageReport>,
    pub faults: Vec<FaultRecord>,
}

impl FaultRun {
    /// `faults[i].outcome.extra[key]`.
    pub fn extra(&self, i: usize, key: &str) -> &serde_json::Value {
        &self.faults[i].outcome.extra[key]
    }
}

/// `toml`: a scenario file's text; `pid`/`port`: the target.
pub fn run(dir: &Path, toml: &str, pid: Option<u32>, port: u16) -> anyhow::Result<FaultRun> {
    let path = dir.join("scenario.toml");
    std::fs::write(&path, toml)?;
    let sc = loadgen::LoadArgs {
        scenario: Some(path),
        ..Default::default()
    }
    .scenario()?;
    let (control, rx) = loadgen::Control::new();
    let env = FaultEnv {
        target: TargetPid::new(pid),
        target_port: Some(port),
        out_dir: dir.to_path_buf(),
        control: Some(control),
        ..Default::default()
    };
    let sched = Scheduler::start(&sc.faults, &env, loadgen::clock::mono_ns())
        .map_err(anyhow::Error::msg)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let opts = loadgen::RunOptions {
        control: Some(rx),
        ..Default::default()
    };
    let report = rt.block_on(loadgen::run(&sc, opts, &mut |ev| {
        if let loadgen::StageEvent::Started { stage, mono_ns, .. } = ev {
            sched.stage_started(stage as usize, mono_ns);
        }
    }));
    sched.wait_idle(Duration::from_secs(30));
    let mut recs = sched.finish();
    let report = report?;
    for r in &mut recs {
        if let Some(stage) = report.stages.get(r.stage - 1) {
            faults::slow_consumers::judge(&mut r.outcome, stage);
            faults::cert_rotate::judge(&mut r.outcome, stage);
        }
    }
    Ok(FaultRun {
        stages: report.stages,
        faults: recs,
    })
}
