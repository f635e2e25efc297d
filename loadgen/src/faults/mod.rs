//! Scheduled faults: the scenario's `[[faults]]` tables, validated into
//! typed [`Fault`]s, fired at their time by the [`schedule::Scheduler`]
//! (one thread per fault, never on the load's runtime), each leaving a
//! [`FaultRecord`] (planned and actual start/end on CLOCK_MONOTONIC,
//! status, measured [`FaultOutcome`]).
//!
//! ```toml
//! [[faults]]
//! at = "3s"            # from the start of its stage
//! stage = 2            # 1-based, as the report names stages
//! kind = "pause"       # pause | kill-restart | partition | cert-rotate | slow-consumers
//! duration = "2s"
//! ```
//!
//! Extension point: a kind is one variant of [`FaultKind`], one module
//! here that parses its own keys (`parse(&mut Keys)`) and builds an
//! [`Injector`] (`start` puts the fault in effect, `end` lifts it and is
//! always called once `start` succeeded, also when the run stops early),
//! and one arm in [`FaultKind::parse`] and [`injector`]. What the load
//! generator measured around the fault (disconnects, reconnects, resumed
//! messages) is folded in by [`events`].

pub mod cert_rotate;
pub mod events;
pub mod kill_restart;
pub mod partition;
pub mod pause;
pub mod proc;
pub mod run;
pub mod schedule;
pub mod slow_consumers;

pub use run::FaultRun;

use crate::scenario::{DurationValue, Stage};
use serde::{Deserialize, Serialize};
use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    },
    time::Duration,
};

/// One `[[faults]]` table as written. The common keys are named; every
/// other key is handed to the kind, which takes what it knows and the
/// rest is rejected by name.
#[derive(Debug, Clone, Deserialize)]
pub struct FaultFile {
    pub at: DurationValue,
    pub stage: usize,
    pub kind: String,
    #[serde(default)]
    pub duration: Option<DurationValue>,
    #[serde(flatten)]
    pub keys: toml::Table,
}

/// A validated fault.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    /// Position in the scenario (0-based); the report says `fault N+1`.
    pub index: usize,
    /// Stage index (0-based; the scenario file writes it 1-based).
    pub stage: usize,
    /// From the start of the stage.
    #[serde(with = "crate::scenario::dur_secs")]
    pub at: Duration,
    #[serde(with = "crate::scenario::dur_secs")]
    pub duration: Duration,
    pub kind: FaultKind,
}

/// What the fault does, with its kind-specific settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum FaultKind {
    /// SIGSTOP the target's process tree for `duration`, then SIGCONT.
    Pause,
    /// SIGKILL the target's process tree, wait `duration`, run
    /// `restart_cmd` (`sh -c`), find the new target and re-attach.
    KillRestart(kill_restart::Spec),
    /// Drop all traffic between load generator and target for `duration`.
    Partition,
    /// New connections present another client certificate and/or the
    /// server's certificate is reloaded (`reload_cmd`) at the start.
    CertRotate(cert_rotate::Spec),
    /// A share of the subscribers stops reading for `duration`.
    SlowConsumers(slow_consumers::Spec),
}

impl FaultKind {
    /// The kind's name as written in the scenario.
    pub fn name(&self) -> &'static str {
        match self {
            FaultKind::Pause => "pause",
            FaultKind::KillRestart(_) => "kill-restart",
            FaultKind::Partition => "partition",
            FaultKind::CertRotate(_) => "cert-rotate",
            FaultKind::SlowConsumers(_) => "slow-consumers",
        }
    }

    /// Builds the kind from its name and its own keys (the table minus
    /// at/stage/kind/duration). `defaults` are run-wide settings a kind
    /// may fall back on (e.g. `--restart-cmd`).
    fn parse(name: &str, keys: &mut Keys, defaults: &FaultDefaults) -> Result<FaultKind, String> {
        Ok(match name {
            "pause" => FaultKind::Pause,
            "kill-restart" => FaultKind::KillRestart(kill_restart::Spec::parse(keys, defaults)?),
            "partition" => FaultKind::Partition,
            "cert-rotate" => FaultKind::CertRotate(cert_rotate::Spec::parse(keys)?),
            "slow-consumers" => FaultKind::SlowConsumers(slow_consumers::Spec::parse(keys)?),
            other => {
                return Err(format!(
                "unknown kind `{other}`: use pause, kill-restart, partition, cert-rotate or slow-consumers"
            ))
            }
        })
    }

    /// True when the fault acts on the link between load generator and
    /// target: the run then needs one (a transparent one without `--network`).
    pub fn needs_link(&self) -> bool {
        matches!(self, FaultKind::Partition)
    }

    /// Whether `duration` must be given (and be > 0). A kill-restart's
    /// duration is the downtime before the restart and may be 0.
    fn needs_duration(&self) -> bool {
        !matches!(self, FaultKind::KillRestart(_))
    }
}

/// Run-wide settings a fault may fall back on.
#[derive(Debug, Clone, Default)]
pub struct FaultDefaults {
    /// `--restart-cmd` / `restart_cmd`.
    pub restart_cmd: Option<String>,
}

/// The kind-specific keys of one fault table: a kind takes what it knows,
/// [`Keys::finish`] rejects the rest by name.
pub struct Keys {
    table: toml::Table,
    kind: String,
}

impl Keys {
    /// The key's value as written, whatever its type.
    pub fn take(&mut self, key: &str) -> Option<toml::Value> {
        self.table.remove(key)
    }

    pub fn take_str(&mut self, key: &str) -> Result<Option<String>, String> {
        match self.table.remove(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(format!("`{key}` must be a string, not {}", v.type_str())),
        }
    }

    pub fn take_f64(&mut self, key: &str) -> Result<Option<f64>, String> {
        match self.table.remove(key) {
            None => Ok(None),
            Some(toml::Value::Float(f)) => Ok(Some(f)),
            Some(toml::Value::Integer(i)) => Ok(Some(i as f64)),
            Some(v) => Err(format!("`{key}` must be a number, not {}", v.type_str())),
        }
    }

    pub fn take_duration(&mut self, key: &str) -> Result<Option<Duration>, String> {
        match self.table.remove(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => crate::duration::parse_duration(&s).map(Some),
            Some(toml::Value::Integer(i)) if i >= 0 => Ok(Some(Duration::from_secs(i as u64))),
            Some(toml::Value::Float(f)) => Duration::try_from_secs_f64(f)
                .map(Some)
                .map_err(|_| format!("`{key}` = {f} is not a duration")),
            Some(v) => Err(format!(
                "`{key}` = {v} is not a duration: write e.g. \"5s\""
            )),
        }
    }

    /// Errors on the first key the kind did not take.
    pub fn finish(self) -> Result<(), String> {
        match self.table.keys().next() {
            None => Ok(()),
            Some(k) => Err(format!(
                "unknown key `{k}` for kind `{}` (common keys: at, stage, kind, duration)",
                self.kind
            )),
        }
    }
}

/// Validates the scenario's fault tables against its stages: the stage
/// exists, the kind and its keys are known, and the fault ends inside its
/// stage (ramp at `connect_rate` + hold). Errors say which fault (1-based).
pub fn parse_faults(
    files: Vec<FaultFile>,
    stages: &[Stage],
    connect_rate: f64,
    defaults: &FaultDefaults,
) -> Result<Vec<Fault>, String> {
    files
        .into_iter()
        .enumerate()
        .map(|(index, f)| {
            let n = index + 1;
            let err = |m: String| format!("fault {n} ({}): {m}", f.kind);
            if f.stage == 0 || f.stage > stages.len() {
                return Err(err(format!(
                    "stage = {} does not exist: stages are numbered 1 to {}",
                    f.stage,
                    stages.len()
                )));
            }
            let stage = f.stage - 1;
            let at = crate::duration::parse_duration(&f.at.clone().text()).map_err(&err)?;
            let mut keys = Keys {
                table: f.keys.clone(),
                kind: f.kind.clone(),
            };
            let kind = FaultKind::parse(&f.kind, &mut keys, defaults).map_err(&err)?;
            keys.finish().map_err(&err)?;
            let duration = match f.duration.clone() {
                Some(d) => crate::duration::parse_duration(&d.text()).map_err(&err)?,
                None if kind.needs_duration() => {
                    return Err(err("needs a `duration`, e.g. duration = \"5s\"".into()))
                }
                None => Duration::ZERO,
            };
            if kind.needs_duration() && duration.is_zero() {
                return Err(err("`duration` must be more than 0".into()));
            }
            let length = stage_length(stages, stage, connect_rate);
            if at + duration > length {
                return Err(err(format!(
                    "at {:.3}s + duration {:.3}s ends after stage {} ({:.3}s: ramp at the connect rate + hold): move it earlier or lengthen the stage",
                    at.as_secs_f64(),
                    duration.as_secs_f64(),
                    f.stage,
                    length.as_secs_f64()
                )));
            }
            Ok(Fault {
                index,
                stage,
                at,
                duration,
                kind,
            })
        })
        .collect()
}

/// A stage's expected length: its ramp (new connections ÷ connect rate)
/// plus its hold. A ramp that runs slower only makes the stage longer.
pub fn stage_length(stages: &[Stage], k: usize, connect_rate: f64) -> Duration {
    let prev = k.checked_sub(1).map_or(0, |p| stages[p].connections);
    let new = stages[k].connections.saturating_sub(prev) as f64;
    let ramp = if connect_rate > 0.0 {
        Duration::try_from_secs_f64(new / connect_rate).unwrap_or(Duration::MAX)
    } else {
        Duration::ZERO
    };
    ramp.saturating_add(stages[k].hold)
}

/// The target's PID as the faults see it: a kill-restart replaces it.
#[derive(Debug, Clone, Default)]
pub struct TargetPid(Arc<AtomicU32>);

impl TargetPid {
    pub fn new(pid: Option<u32>) -> TargetPid {
        TargetPid(Arc::new(AtomicU32::new(pid.unwrap_or(0))))
    }
    pub fn get(&self) -> Option<u32> {
        Some(self.0.load(Ordering::SeqCst)).filter(|p| *p != 0)
    }
    pub fn set(&self, pid: u32) {
        self.0.store(pid, Ordering::SeqCst);
    }
}

/// Called with the new target's PID after a kill-restart found it (e.g.
/// `pushscope run` re-attaches its observer); an error is recorded in the
/// fault's outcome.
pub type RestartHook = Arc<dyn Fn(u32) -> Result<(), String> + Send + Sync>;

/// Cuts or restores the path between load generator and target
/// (implemented by the emulated link).
pub trait PartitionSwitch: Send + Sync {
    fn set_partitioned(&self, on: bool) -> Result<(), String>;
}

/// What the injectors may act on. Built once per run by its caller.
#[derive(Clone, Default)]
pub struct FaultEnv {
    /// The target's process (pause, kill-restart).
    pub target: TargetPid,
    /// The port the target listens on (from `--url`): how a restarted
    /// target is found.
    pub target_port: Option<u16>,
    /// Where restart logs go (`restart-<n>.log`).
    pub out_dir: PathBuf,
    /// Called with the target's PID just before a kill-restart kills it
    /// (e.g. the observer stops treating its exit as the end of the run).
    pub before_kill: Option<Arc<dyn Fn(u32) + Send + Sync>>,
    pub on_restart: Option<RestartHook>,
    /// The emulated link's partition control, when the run has a link.
    pub link: Option<Arc<dyn PartitionSwitch>>,
    /// Commands to the load generator's subscribers (slow-consumers,
    /// cert-rotate): `RunOptions::control`'s sending end.
    pub control: Option<crate::runner::Control>,
}

impl FaultEnv {
    /// The environment of a run of `sc` writing to `out_dir`: the target's
    /// port from `--url`, no PID (set `target`), no link, no hook.
    pub fn for_scenario(sc: &crate::Scenario, out_dir: &std::path::Path) -> FaultEnv {
        FaultEnv {
            target_port: crate::net::endpoint(&sc.url, None)
                .ok()
                .map(|e| e.addr.port()),
            out_dir: out_dir.to_path_buf(),
            ..Default::default()
        }
    }
}

/// What puts one fault in effect and lifts it. Methods run on the fault's
/// own thread; they may block (bounded).
pub trait Injector: Send {
    /// Puts the fault in effect.
    fn start(&mut self) -> Result<(), String>;
    /// Lifts it; always called once `start` succeeded, also when the run
    /// stops early. Must be idempotent with the injector's `Drop`.
    fn end(&mut self) -> Result<(), String>;
    /// The kind's own outcome fields (e.g. the restarted PID).
    fn outcome(&self, _out: &mut FaultOutcome) {}
}

/// The injector of a fault in this environment, or why it cannot run
/// (checked before the load starts: a usage error).
pub fn injector(f: &Fault, env: &FaultEnv) -> Result<Box<dyn Injector>, String> {
    let n = f.index + 1;
    let needs_pid = || {
        env.target.get().is_some().then_some(()).ok_or_else(|| {
            format!(
                "fault {n} ({}) acts on the target's process: pass its PID (pushscope run --pid PID)",
                f.kind.name()
            )
        })
    };
    Ok(match &f.kind {
        FaultKind::Pause => {
            needs_pid()?;
            Box::new(pause::Pause::new(env.target.clone()))
        }
        FaultKind::KillRestart(spec) => {
            needs_pid()?;
            Box::new(kill_restart::KillRestart::new(spec.clone(), f.index, env)?)
        }
        FaultKind::Partition => Box::new(partition::Partition::new(f.index, env)?),
        FaultKind::CertRotate(spec) => {
            Box::new(cert_rotate::CertRotate::new(spec.clone(), f.index, env)?)
        }
        FaultKind::SlowConsumers(spec) => Box::new(slow_consumers::SlowConsumers::new(
            spec.clone(),
            f.index,
            env,
        )?),
    })
}

/// How a scheduled fault went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultStatus {
    /// Started and ended as planned.
    Done,
    /// Started; ended early because the run stopped.
    CutShort,
    /// The run ended before its time came (e.g. its stage never started).
    NotFired,
    /// Starting or ending it failed (`error` says why).
    Failed,
}

/// One fault as it happened: a row of summary.json `faults[]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultRecord {
    /// 1-based, as the report names it.
    pub fault: usize,
    pub kind: String,
    /// 1-based stage.
    pub stage: usize,
    pub at_s: f64,
    pub duration_s: f64,
    pub status: FaultStatus,
    /// CLOCK_MONOTONIC ns (the probes' clock): planned from the stage's
    /// actual start; actual when the action was taken / lifted.
    pub planned_start_mono_ns: Option<u64>,
    pub planned_end_mono_ns: Option<u64>,
    pub start_mono_ns: Option<u64>,
    pub end_mono_ns: Option<u64>,
    /// The same instants in seconds since the run's start (charts).
    pub start_s: Option<f64>,
    pub end_s: Option<f64>,
    /// How late the action was against its plan, ms.
    pub start_lag_ms: Option<f64>,
    /// How long lifting it took from `end_mono_ns`, ms (e.g. a restart
    /// until the target listened again).
    pub lift_ms: Option<f64>,
    pub error: Option<String>,
    pub outcome: FaultOutcome,
}

/// What was measured around one fault. Every figure is optional: `None`
/// is "not measured" (said in `notes`), never zero.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FaultOutcome {
    /// Subscribers that saw an unexpected disconnect between the fault's
    /// start and its end + recovery window.
    pub disconnected: Option<u64>,
    /// Fault start → the first unexpected disconnect the clients detected, ms.
    pub detection_ms: Option<f64>,
    /// Disconnected subscribers connected again (resumed) by the end of the stage.
    pub reconnected: Option<u64>,
    /// Fault end → reconnected, over the disconnected subscribers, ms.
    pub recovery_p50_ms: Option<f64>,
    pub recovery_p99_ms: Option<f64>,
    pub recovery_max_ms: Option<f64>,
    /// Messages received after a reconnect that were scheduled before it
    /// (the server's resume replay), in the fault's window.
    pub resumed_messages: Option<u64>,
    /// Loss and duplicates of the fault's stage (judged after its grace).
    pub lost: Option<u64>,
    pub duplicates: Option<u64>,
    /// e2e latency of the fault's stage, ms.
    pub latency_p99_ms: Option<f64>,
    pub latency_max_ms: Option<f64>,
    /// Kill-restart: the restarted target's PID, how long it took to
    /// listen again, whether the observer followed it.
    pub new_pid: Option<u32>,
    pub restart_ms: Option<f64>,
    pub observer_reattached: Option<bool>,
    /// Kind-specific figures a kind adds (by name).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, serde_json::Value>,
    /// What could not be measured, or caveats, in plain words.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stages() -> Vec<Stage> {
        crate::scenario::parse_stages("100:5s,200:10s").unwrap()
    }

    fn parse(text: &str) -> Result<Vec<Fault>, String> {
        #[derive(Deserialize)]
        struct F {
            faults: Vec<FaultFile>,
        }
        let f: F = toml::from_str(text).map_err(|e| e.to_string())?;
        parse_faults(
            f.faults,
            &stages(),
            100.0,
            &FaultDefaults {
                restart_cmd: Some("true".into()),
            },
        )
    }

    #[test]
    fn parses_each_kind_with_its_keys() {
        let f = parse(
            "[[faults]]\nat = \"2s\"\nstage = 2\nkind = \"pause\"\nduration = \"2s\"\n\
             [[faults]]\nat = 1\nstage = 1\nkind = \"kill-restart\"\nrestart_cmd = \"exec x\"\n\
             [[faults]]\nat = 0.5\nstage = 2\nkind = \"partition\"\nduration = 5\n",
        )
        .unwrap();
        assert_eq!(f.len(), 3);
        assert_eq!(
            (f[0].stage, f[0].at, f[0].duration),
            (1, Duration::from_secs(2), Duration::from_secs(2))
        );
        assert_eq!(f[0].kind, FaultKind::Pause);
        assert_eq!(
            f[1].kind,
            FaultKind::KillRestart(kill_restart::Spec {
                restart_cmd: "exec x".into(),
                wait_listen: Duration::from_secs(10)
            })
        );
        assert_eq!(f[1].duration, Duration::ZERO);
        assert_eq!(f[2].at, Duration::from_millis(500));
        // Round trip through JSON (shard workers get the scenario as JSON).
        let j = serde_json::to_string(&f).unwrap();
        assert_eq!(serde_json::from_str::<Vec<Fault>>(&j).unwrap(), f);
    }

    #[test]
    fn rejects_with_a_sentence_naming_the_fault() {
        let cases = [
            (
                "stage = 3\nkind = \"pause\"\nduration = 1",
                "fault 1 (pause): stage = 3 does not exist",
            ),
            (
                "stage = 1\nkind = \"paws\"\nduration = 1",
                "unknown kind `paws`",
            ),
            ("stage = 1\nkind = \"pause\"", "needs a `duration`"),
            (
                "stage = 1\nkind = \"pause\"\nduration = 0",
                "must be more than 0",
            ),
            (
                "stage = 1\nkind = \"pause\"\nduration = 1\nshare = 0.1",
                "unknown key `share` for kind `pause`",
            ),
            // stage 1: 100 conns at 100/s = 1 s ramp + 5 s hold = 6 s.
            (
                "stage = 1\nkind = \"pause\"\nduration = \"5.5s\"",
                "ends after stage 1 (6.000s",
            ),
            (
                "stage = 1\nkind = \"pause\"\nduration = \"1y\"",
                "unknown unit",
            ),
        ];
        for (body, want) in cases {
            let e = parse(&format!("[[faults]]\nat = \"1s\"\n{body}\n")).unwrap_err();
            assert!(e.contains(want), "{body:?}: {e}");
        }
        let e = parse("[[faults]]\nat = \"1s\"\nstage = 1\nkind = \"pause\"\nduration = 1\n[[faults]]\nat = 1\nstage = 2\nkind = \"partition\"\n").unwrap_err();
        assert!(e.starts_with("fault 2 (partition)"), "{e}");
        // Stage 2 ramps 100 more connections (1 s) then holds 10 s: 11 s fits.
        assert!(
            parse("[[faults]]\nat = 6\nstage = 2\nkind = \"partition\"\nduration = 5\n").is_ok()
        );
    }

    #[test]
    fn kill_restart_needs_a_command() {
        #[derive(Deserialize)]
        struct F {
            faults: Vec<FaultFile>,
        }
        let f: F =
            toml::from_str("[[faults]]\nat = 1\nstage = 1\nkind = \"kill-restart\"\n").unwrap();
        let e = parse_faults(f.faults, &stages(), 100.0, &FaultDefaults::default()).unwrap_err();
        assert!(e.contains("--restart-cmd"), "{e}");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_fault_tables_never_panic(at in "[0-9.a-z]{0,6}", stage in 0usize..5, kind in "[a-z-]{0,14}", dur in "[0-9.a-z]{0,6}") {
            let _ = parse(&format!("[[faults]]\nat = \"{at}\"\nstage = {stage}\nkind = \"{kind}\"\nduration = \"{dur}\"\n"));
        }
    }
}
