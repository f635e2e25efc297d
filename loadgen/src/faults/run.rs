//! A run's faults from start to records: the scheduler, the connection
//! events it needs, and the outcome of each fault once the stages are
//! judged. Used the same way by `pushscope load` and `pushscope run`:
//!
//! ```ignore
//! let mut faults = FaultRun::start(&sc, &env, mono_ns())?;      // before the load
//! // RunOptions { conn_events: faults.as_ref().map(|f| f.conn_events()),
//! //              control: faults.as_mut().and_then(|f| f.take_control()), .. }
//! // on StageEvent::Started: faults.stage_started(stage, mono_ns)
//! let records = faults.finish(&stage_reports, mono_ns());        // after the load
//! ```

use super::{
    events::{measure, ConnEvents},
    schedule::Scheduler,
    FaultEnv, FaultRecord,
};
use crate::{
    runner::{Control, ControlRx},
    scenario::Scenario,
    StageReport,
};
use std::sync::Arc;

pub struct FaultRun {
    scheduler: Scheduler,
    events: Arc<ConnEvents>,
    sharded: bool,
    control: Option<ControlRx>,
}

impl FaultRun {
    /// `None` when the scenario has no faults. An error is a usage error
    /// (a fault that cannot run in this environment), said before any load.
    /// The faults get the sending end of a new [`Control`] (slow-consumers,
    /// cert-rotate act on the subscribers through it); the load gets its
    /// receiving end from [`FaultRun::take_control`].
    pub fn start(sc: &Scenario, env: &FaultEnv, t0_ns: u64) -> Result<Option<FaultRun>, String> {
        if sc.faults.is_empty() {
            return Ok(None);
        }
        let (control, rx) = Control::new();
        let env = FaultEnv {
            control: Some(control),
            ..env.clone()
        };
        Ok(Some(FaultRun {
            scheduler: Scheduler::start(&sc.faults, &env, t0_ns)?,
            events: Arc::new(ConnEvents::default()),
            sharded: sc.max_connections().div_ceil(sc.shard_cap) > 1,
            control: Some(rx),
        }))
    }

    /// The receiving end of the faults' [`Control`], for
    /// `RunOptions::control` (once: when the load ends and drops it, a
    /// fault still sending is told at once that the load is over).
    pub fn take_control(&mut self) -> Option<ControlRx> {
        self.control.take()
    }

    pub fn conn_events(&self) -> Arc<ConnEvents> {
        self.events.clone()
    }

    /// Called from the load's stage callback (cheap, never blocks long).
    pub fn stage_started(&self, stage: usize, mono_ns: u64) {
        self.scheduler.stage_started(stage, mono_ns);
    }

    /// Stops the faults (one still in effect ends now), then measures
    /// each fault's outcome: connection figures from the events between
    /// its start and the next fault's start (or `run_end_ns`), loss,
    /// duplicates and latency of its stage from the judged `stages`, and
    /// the kind's own judgement of its stage (slow-consumers: buffered /
    /// dropped / disconnected; cert-rotate: the figures after the fault).
    pub fn finish(self, stages: &[StageReport], run_end_ns: u64) -> Vec<FaultRecord> {
        let mut records = self.scheduler.finish();
        let (events, dropped) = self.events.snapshot();
        let starts: Vec<Option<u64>> = records.iter().map(|r| r.start_mono_ns).collect();
        for r in &mut records {
            let (Some(start), Some(end)) = (r.start_mono_ns, r.end_mono_ns) else {
                r.outcome
                    .notes
                    .push("the fault did not run: nothing was measured".into());
                continue;
            };
            let until = starts
                .iter()
                .flatten()
                .copied()
                .filter(|s| *s > start)
                .min()
                .unwrap_or(run_end_ns)
                .max(end);
            if self.sharded {
                r.outcome.notes.push(
                    "the load ran in worker processes: disconnects, reconnects and resumed messages are not measured per fault".into(),
                );
            } else {
                measure(&events, start, end, until, &mut r.outcome);
                if dropped > 0 {
                    r.outcome.notes.push(format!(
                        "{dropped} connection events beyond the recorder's cap were not kept: connection figures are a floor"
                    ));
                }
            }
            match stages.iter().find(|s| s.stage as usize + 1 == r.stage) {
                Some(st) => {
                    r.outcome.lost = Some(st.messages.lost);
                    r.outcome.duplicates = Some(st.messages.duplicates);
                    r.outcome.latency_p99_ms = st.latency_ms.p99;
                    r.outcome.latency_max_ms = st.latency_ms.max;
                    super::slow_consumers::judge(&mut r.outcome, st);
                    super::cert_rotate::judge(&mut r.outcome, st);
                }
                None => r.outcome.notes.push(format!(
                    "stage {} was not judged: its loss and latency are not measured",
                    r.stage
                )),
            }
        }
        records
    }
}
