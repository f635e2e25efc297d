//! The scheduler: one thread per fault waits for its stage to start (told
//! by [`Scheduler::stage_started`], a non-blocking call from the load's
//! stage callback), then for `at`, starts the fault, holds it for
//! `duration` and ends it, recording planned and actual times on
//! CLOCK_MONOTONIC. [`Scheduler::finish`] stops every thread (a fault in
//! effect is ended at once) and returns the records in scenario order.

use super::{Fault, FaultEnv, FaultOutcome, FaultRecord, FaultStatus, Injector};
use crate::clock::mono_ns;
use std::{
    sync::{Arc, Condvar, Mutex},
    thread::JoinHandle,
    time::Duration,
};

#[derive(Default)]
struct State {
    /// CLOCK_MONOTONIC start of each stage, as they start.
    stage_starts: Vec<Option<u64>>,
    stop: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    cv: Condvar,
}

impl Shared {
    /// Waits until `f` gives a value or the run stops (`None`).
    fn wait_for<T>(&self, mut f: impl FnMut(&State) -> Option<T>) -> Option<T> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(v) = f(&st) {
                return Some(v);
            }
            if st.stop {
                return None;
            }
            // Bounded: woken by every stage start and by the stop.
            st = self
                .cv
                .wait_timeout(st, Duration::from_millis(200))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Sleeps until CLOCK_MONOTONIC reaches `deadline_ns`; false when the
    /// run stopped first.
    fn sleep_until(&self, deadline_ns: u64) -> bool {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if st.stop {
                return false;
            }
            let now = mono_ns();
            if now >= deadline_ns {
                return true;
            }
            let left = Duration::from_nanos(deadline_ns - now).min(Duration::from_millis(200));
            st = self
                .cv
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

pub struct Scheduler {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<FaultRecord>>,
}

impl Scheduler {
    /// Builds every fault's injector (an error here is a usage error: the
    /// run has not started) and starts their threads. `t0_ns` is the run's
    /// start on CLOCK_MONOTONIC, for the records' seconds.
    pub fn start(faults: &[Fault], env: &FaultEnv, t0_ns: u64) -> Result<Scheduler, String> {
        let injectors = faults
            .iter()
            .map(|f| super::injector(f, env))
            .collect::<Result<Vec<_>, _>>()?;
        let shared = Arc::new(Shared::default());
        let threads = faults
            .iter()
            .cloned()
            .zip(injectors)
            .map(|(f, inj)| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("fault-{}", f.index + 1))
                    .spawn(move || fire(&shared, &f, inj, t0_ns))
                    .map_err(|e| format!("cannot start the fault thread: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Scheduler { shared, threads })
    }

    /// A stage started at `mono_ns` (cheap; called on the load's runtime).
    pub fn stage_started(&self, stage: usize, mono_ns: u64) {
        let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.stage_starts.len() <= stage {
            st.stage_starts.resize(stage + 1, None);
        }
        st.stage_starts[stage] = Some(mono_ns);
        drop(st);
        self.shared.cv.notify_all();
    }

    /// Waits (bounded by `max`) until every fault planned so far is over:
    /// lets a fault in the last seconds of the load finish before the run
    /// stops it. Returns false on timeout.
    pub fn wait_idle(&self, max: Duration) -> bool {
        let until = std::time::Instant::now() + max;
        while std::time::Instant::now() < until {
            if self.threads.iter().all(|t| t.is_finished()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Stops every fault (one in effect is ended now) and returns the
    /// records in scenario order.
    pub fn finish(self) -> Vec<FaultRecord> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stop = true;
        self.shared.cv.notify_all();
        self.threads
            .into_iter()
            .map(|t| {
                t.join().unwrap_or_else(|_| FaultRecord {
                    status: FaultStatus::Failed,
                    error: Some("the fault's thread panicked".into()),
                    ..blank_record()
                })
            })
            .collect()
    }
}

fn blank_record() -> FaultRecord {
    FaultRecord {
        fault: 0,
        kind: String::new(),
        stage: 0,
        at_s: 0.0,
        duration_s: 0.0,
        status: FaultStatus::NotFired,
        planned_start_mono_ns: None,
        planned_end_mono_ns: None,
        start_mono_ns: None,
        end_mono_ns: None,
        start_s: None,
        end_s: None,
        start_lag_ms: None,
        error: None,
        outcome: FaultOutcome::default(),
    }
}

/// One fault's life on its thread.
fn fire(shared: &Shared, f: &Fault, mut inj: Box<dyn Injector>, t0_ns: u64) -> FaultRecord {
    let secs = |ns: u64| ns.saturating_sub(t0_ns) as f64 / 1e9;
    let mut rec = FaultRecord {
        fault: f.index + 1,
        kind: f.kind.name().to_string(),
        stage: f.stage + 1,
        at_s: f.at.as_secs_f64(),
        duration_s: f.duration.as_secs_f64(),
        ..blank_record()
    };
    let Some(stage_start) = shared.wait_for(|st| st.stage_starts.get(f.stage).copied().flatten())
    else {
        return rec;
    };
    let planned = stage_start + f.at.as_nanos() as u64;
    let planned_end = planned + f.duration.as_nanos() as u64;
    rec.planned_start_mono_ns = Some(planned);
    rec.planned_end_mono_ns = Some(planned_end);
    if !shared.sleep_until(planned) {
        return rec;
    }
    let started = mono_ns();
    rec.start_mono_ns = Some(started);
    rec.start_s = Some(secs(started));
    rec.start_lag_ms = Some(started.saturating_sub(planned) as f64 / 1e6);
    if let Err(e) = inj.start() {
        rec.status = FaultStatus::Failed;
        rec.error = Some(format!("starting it failed: {e}"));
        // A partial start (e.g. some processes stopped) is undone.
        let _ = inj.end();
        rec.end_mono_ns = Some(mono_ns());
        rec.end_s = rec.end_mono_ns.map(secs);
        inj.outcome(&mut rec.outcome);
        return rec;
    }
    let full = shared.sleep_until(planned_end);
    let ended = inj.end();
    let end_ns = mono_ns();
    rec.end_mono_ns = Some(end_ns);
    rec.end_s = Some(secs(end_ns));
    rec.status = match (&ended, full) {
        (Err(e), _) => {
            rec.error = Some(format!("ending it failed: {e}"));
            FaultStatus::Failed
        }
        (Ok(()), true) => FaultStatus::Done,
        (Ok(()), false) => FaultStatus::CutShort,
    };
    inj.outcome(&mut rec.outcome);
    rec
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::{FaultKind, TargetPid};

    /// A pause of a process we own: the scheduler's timing and status.
    #[test]
    fn fires_on_time_and_cuts_short_at_finish() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let env = FaultEnv {
            target: TargetPid::new(Some(child.id())),
            ..Default::default()
        };
        let faults = vec![
            Fault {
                index: 0,
                stage: 0,
                at: Duration::from_millis(100),
                duration: Duration::from_millis(200),
                kind: FaultKind::Pause,
            },
            Fault {
                index: 1,
                stage: 1,
                at: Duration::from_millis(50),
                duration: Duration::from_secs(60),
                kind: FaultKind::Pause,
            },
            Fault {
                index: 2,
                stage: 2,
                at: Duration::ZERO,
                duration: Duration::from_secs(1),
                kind: FaultKind::Pause,
            },
        ];
        let t0 = mono_ns();
        let s = Scheduler::start(&faults, &env, t0).unwrap();
        s.stage_started(0, t0);
        assert!(
            !s.wait_idle(Duration::from_millis(50)),
            "nothing can be idle yet"
        );
        // Stage 2 starts; its 60 s fault is cut short by finish.
        std::thread::sleep(Duration::from_millis(400));
        let s2 = mono_ns();
        s.stage_started(1, s2);
        let bounded = std::time::Instant::now();
        while super::super::proc::state(child.id()) != Some('T') {
            assert!(bounded.elapsed() < Duration::from_secs(5), "never stopped");
            std::thread::sleep(Duration::from_millis(10));
        }
        let r = s.finish();
        let bounded = std::time::Instant::now();
        while super::super::proc::state(child.id()) == Some('T') {
            assert!(
                bounded.elapsed() < Duration::from_secs(5),
                "never continued"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(r[0].status, FaultStatus::Done);
        let held = r[0].end_mono_ns.unwrap() - r[0].start_mono_ns.unwrap();
        assert!((200_000_000..1_500_000_000).contains(&held), "{held}");
        assert_eq!(r[0].planned_start_mono_ns, Some(t0 + 100_000_000));
        assert!(r[0].start_mono_ns.unwrap() >= t0 + 100_000_000);
        assert_eq!(r[1].status, FaultStatus::CutShort);
        assert_eq!(r[1].planned_start_mono_ns, Some(s2 + 50_000_000));
        assert_eq!(
            (r[2].status, r[2].start_mono_ns),
            (FaultStatus::NotFired, None)
        );
        let _ = child.kill();
        let _ = child.wait();
    }
}
