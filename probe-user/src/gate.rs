//! The admission gate: thresholds (built-in profiles or a TOML file) and
//! their evaluation against each stage's figures.
//!
//! A criterion whose figure could not be measured fails ("not measured"):
//! a stage never passes on missing evidence. Unknown keys in a thresholds
//! file are errors, so a mistyped threshold can never silently pass
//! (the k6 #1526 trap).

use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, path::Path};

/// Connection phases the observer measures; per-phase limits may name them.
pub const PHASES: &[&str] = &[
    "accept_wait",
    "tls_handshake",
    "ws_upgrade",
    "first_push",
    "lifetime",
];

/// Thresholds of the gate. Every field is optional: an absent field is not
/// judged. Built-in profiles fill them; a file may `extends` one of them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// Base profile whose values apply where this file sets none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extends: Option<String>,
    /// End-to-end latency P99 (scheduled send → receive), milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e2e_p99_ms: Option<f64>,
    /// Messages lost (gaps never filled), count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_max: Option<u64>,
    /// Duplicates / expected deliveries, percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate_rate_max_pct: Option<f64>,
    /// 1 − unexpected disconnects per connection, percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stability_min_pct: Option<f64>,
    /// Target CPU peak, percent of the machine's cores (100 = all busy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_peak_max_pct: Option<f64>,
    /// Target RSS growth while a stage holds, percent, per 10k connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_growth_per_10k_max_pct: Option<f64>,
    /// 1 − open fds / RLIMIT_NOFILE at the stage's peak, percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fd_headroom_min_pct: Option<f64>,
    /// Probe ring-buffer drops (with drops the run is not admissible evidence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_drops_max: Option<u64>,
    /// Failed connection attempts ÷ attempts (every upgrade attempt,
    /// retries included), percent: a server that refuses connections and is
    /// retried until all are up must not pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_failure_max_pct: Option<f64>,
    /// Connections the observer tracked ÷ connections the target accepted,
    /// percent: an untracked connection is unobserved evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observer_coverage_min_pct: Option<f64>,
    /// Longest stall of the target (none of its threads ran although one
    /// wanted to), milliseconds; optional, in no built-in profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stall_max_ms: Option<f64>,
    /// Scheduled faults (optional, in no built-in profile; judged per
    /// fault, in the stage it ran in): fault end → reconnected, p99 over
    /// the clients it disconnected, ms (0 when it disconnected none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault_recovery_p99_ms: Option<f64>,
    /// Partition start → the first disconnect the clients detected, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault_detection_max_ms: Option<f64>,
    /// Messages lost in a fault's stage, after resume, count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault_lost_max: Option<u64>,
    /// Optional per-phase limits, e.g. `[phases.accept_wait] p99_ms = 5`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub phases: BTreeMap<String, PhaseLimit>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseLimit {
    pub p99_ms: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum ThresholdsError {
    #[error("cannot read thresholds file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("thresholds file {path} is invalid: {message}")]
    Parse { path: String, message: String },
    #[error("unknown profile `{0}`: use `financial` or `lenient`")]
    UnknownProfile(String),
    #[error("thresholds file {path}: {message}")]
    Invalid { path: String, message: String },
}

impl Thresholds {
    /// The admission standard for financial push services.
    pub fn financial() -> Thresholds {
        Thresholds {
            extends: None,
            e2e_p99_ms: Some(150.0),
            lost_max: Some(0),
            duplicate_rate_max_pct: Some(0.001),
            stability_min_pct: Some(99.999),
            cpu_peak_max_pct: Some(65.0),
            rss_growth_per_10k_max_pct: Some(15.0),
            fd_headroom_min_pct: Some(15.0),
            probe_drops_max: Some(0),
            connect_failure_max_pct: Some(0.001),
            observer_coverage_min_pct: Some(100.0),
            stall_max_ms: None,
            fault_recovery_p99_ms: None,
            fault_detection_max_ms: None,
            fault_lost_max: None,
            phases: BTreeMap::new(),
        }
    }

    /// Same criteria as `financial` with room for a shared 2-core demo host
    /// where the load generator competes with the target for CPU.
    pub fn lenient() -> Thresholds {
        Thresholds {
            e2e_p99_ms: Some(1000.0),
            cpu_peak_max_pct: Some(100.0),
            rss_growth_per_10k_max_pct: Some(100.0),
            stability_min_pct: Some(99.0),
            connect_failure_max_pct: Some(1.0),
            ..Thresholds::financial()
        }
    }

    pub fn profile(name: &str) -> Result<Thresholds, ThresholdsError> {
        match name {
            "financial" => Ok(Thresholds::financial()),
            "lenient" => Ok(Thresholds::lenient()),
            other => Err(ThresholdsError::UnknownProfile(other.to_string())),
        }
    }

    /// Parses a thresholds TOML text; `path` only names it in errors.
    pub fn parse(text: &str, path: &str) -> Result<Thresholds, ThresholdsError> {
        let own: Thresholds = toml::from_str(text).map_err(|e| ThresholdsError::Parse {
            path: path.to_string(),
            message: e.to_string(),
        })?;
        for name in own.phases.keys() {
            if !PHASES.contains(&name.as_str()) {
                return Err(ThresholdsError::Invalid {
                    path: path.to_string(),
                    message: format!(
                        "unknown phase `phases.{name}`: known phases are {}",
                        PHASES.join(", ")
                    ),
                });
            }
        }
        own.check_ranges(path)?;
        let merged = match &own.extends {
            Some(base) => own.clone().over(Thresholds::profile(base)?),
            None => own,
        };
        Ok(merged)
    }

    pub fn load(path: &Path) -> Result<Thresholds, ThresholdsError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ThresholdsError::Read {
            path: shown.clone(),
            source,
        })?;
        Thresholds::parse(&text, &shown)
    }

    fn check_ranges(&self, path: &str) -> Result<(), ThresholdsError> {
        let pct = [
            ("duplicate_rate_max_pct", self.duplicate_rate_max_pct),
            ("stability_min_pct", self.stability_min_pct),
            ("fd_headroom_min_pct", self.fd_headroom_min_pct),
            ("connect_failure_max_pct", self.connect_failure_max_pct),
            ("observer_coverage_min_pct", self.observer_coverage_min_pct),
        ];
        for (key, value) in pct {
            if let Some(v) = value {
                if !(0.0..=100.0).contains(&v) {
                    return Err(ThresholdsError::Invalid {
                        path: path.to_string(),
                        message: format!("`{key}` = {v} is not a percentage between 0 and 100"),
                    });
                }
            }
        }
        let non_negative = [
            ("e2e_p99_ms", self.e2e_p99_ms),
            ("cpu_peak_max_pct", self.cpu_peak_max_pct),
            ("stall_max_ms", self.stall_max_ms),
            ("fault_recovery_p99_ms", self.fault_recovery_p99_ms),
            ("fault_detection_max_ms", self.fault_detection_max_ms),
            (
                "rss_growth_per_10k_max_pct",
                self.rss_growth_per_10k_max_pct,
            ),
        ];
        for (key, value) in non_negative {
            if let Some(v) = value {
                if !(v >= 0.0 && v.is_finite()) {
                    return Err(ThresholdsError::Invalid {
                        path: path.to_string(),
                        message: format!("`{key}` = {v} must be ≥ 0"),
                    });
                }
            }
        }
        Ok(())
    }

    /// `self` where set, `base` elsewhere.
    fn over(self, base: Thresholds) -> Thresholds {
        let mut phases = base.phases;
        phases.extend(self.phases);
        Thresholds {
            extends: self.extends,
            e2e_p99_ms: self.e2e_p99_ms.or(base.e2e_p99_ms),
            lost_max: self.lost_max.or(base.lost_max),
            duplicate_rate_max_pct: self.duplicate_rate_max_pct.or(base.duplicate_rate_max_pct),
            stability_min_pct: self.stability_min_pct.or(base.stability_min_pct),
            cpu_peak_max_pct: self.cpu_peak_max_pct.or(base.cpu_peak_max_pct),
            rss_growth_per_10k_max_pct: self
                .rss_growth_per_10k_max_pct
                .or(base.rss_growth_per_10k_max_pct),
            fd_headroom_min_pct: self.fd_headroom_min_pct.or(base.fd_headroom_min_pct),
            probe_drops_max: self.probe_drops_max.or(base.probe_drops_max),
            connect_failure_max_pct: self
                .connect_failure_max_pct
                .or(base.connect_failure_max_pct),
            observer_coverage_min_pct: self
                .observer_coverage_min_pct
                .or(base.observer_coverage_min_pct),
            stall_max_ms: self.stall_max_ms.or(base.stall_max_ms),
            fault_recovery_p99_ms: self.fault_recovery_p99_ms.or(base.fault_recovery_p99_ms),
            fault_detection_max_ms: self.fault_detection_max_ms.or(base.fault_detection_max_ms),
            fault_lost_max: self.fault_lost_max.or(base.fault_lost_max),
            phases,
        }
    }
}

/// One stage's figures as the gate sees them. `None` = not measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StageFigures {
    pub e2e_p99_ms: Option<f64>,
    pub lost: Option<u64>,
    pub duplicate_rate_pct: Option<f64>,
    pub stability_pct: Option<f64>,
    /// Failed connection attempts ÷ attempts, percent.
    pub connect_failure_pct: Option<f64>,
    /// CPU peak as a share of the cores the target may use (`cpu_basis`).
    pub cpu_peak_pct: Option<f64>,
    pub rss_growth_per_10k_pct: Option<f64>,
    pub fd_headroom_pct: Option<f64>,
    pub probe_drops: Option<u64>,
    /// Observer-tracked ÷ target-accepted connections, percent.
    pub observer_coverage_pct: Option<f64>,
    /// Longest stall of the target in the stage (profile), ms.
    #[serde(default)]
    pub stall_max_ms: Option<f64>,
    /// Why a criterion's figure is what it is, by criterion name (e.g. the
    /// failed attempts by reason, the cores the CPU share was judged on).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<String, String>,
    /// Phase name → P99 in milliseconds.
    #[serde(default)]
    pub phase_p99_ms: BTreeMap<String, f64>,
}

/// The verdict on one criterion in one stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CriterionResult {
    pub name: String,
    /// Human form of the threshold, e.g. "<= 150 ms".
    pub threshold: String,
    /// The measured value, `None` when it could not be measured.
    pub value: Option<f64>,
    pub unit: String,
    pub pass: bool,
    /// What the figure is made of, when that helps to read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl CriterionResult {
    /// "412.0 ms > 150 ms" style explanation for failures.
    pub fn explain(&self) -> String {
        let base = match self.value {
            Some(v) => format!(
                "{} = {} {} (threshold {})",
                self.name,
                fmt_value(v),
                self.unit,
                self.threshold
            ),
            None => format!("{}: not measured (threshold {})", self.name, self.threshold),
        };
        match &self.detail {
            Some(d) => format!("{base}: {d}"),
            None => base,
        }
    }
}

pub fn fmt_value(v: f64) -> String {
    if v == v.trunc() && v.abs() < 1e15 {
        format!("{v:.0}")
    } else if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.4}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}

enum Bound {
    Max,
    Min,
}

fn judge(name: &str, unit: &str, bound: Bound, limit: f64, value: Option<f64>) -> CriterionResult {
    let (op, pass) = match bound {
        Bound::Max => ("<=", value.is_some_and(|v| v <= limit)),
        Bound::Min => (">=", value.is_some_and(|v| v >= limit)),
    };
    let unit_sfx = if unit.is_empty() {
        String::new()
    } else {
        format!(" {unit}")
    };
    CriterionResult {
        name: name.to_string(),
        threshold: format!("{op} {}{unit_sfx}", fmt_value(limit)),
        value: value.filter(|v| v.is_finite()),
        unit: unit.to_string(),
        pass,
        detail: None,
    }
}

/// Evaluates the fault thresholds that are set against one fault's
/// outcome; named `fault N (kind) …`. A fault that did not run, or whose
/// figure was not measured, fails.
pub fn evaluate_fault(t: &Thresholds, r: &loadgen::faults::FaultRecord) -> Vec<CriterionResult> {
    use loadgen::faults::FaultStatus;
    let o = &r.outcome;
    let ran = matches!(r.status, FaultStatus::Done);
    let name = |what: &str| format!("fault {} ({}) {what}", r.fault, r.kind);
    let mut out = Vec::new();
    let mut push = |mut c: CriterionResult| {
        if !ran {
            c.pass = false;
            c.detail = Some(format!(
                "the fault did not run as planned ({:?}{})",
                r.status,
                r.error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ));
        }
        out.push(c);
    };
    if let Some(l) = t.fault_recovery_p99_ms {
        // Nothing disconnected: nothing to recover from.
        let v = match (o.disconnected, o.recovery_p99_ms) {
            (Some(0), _) => Some(0.0),
            (_, p) => p,
        };
        let mut c = judge(&name("recovery_p99"), "ms", Bound::Max, l, v);
        if let (Some(d), Some(n)) = (o.disconnected, o.reconnected) {
            c.detail = Some(format!("{n} of {d} disconnected clients reconnected"));
            if n < d {
                c.pass = false;
            }
        }
        push(c);
    }
    if let (Some(l), "partition") = (t.fault_detection_max_ms, r.kind.as_str()) {
        push(judge(
            &name("detection"),
            "ms",
            Bound::Max,
            l,
            o.detection_ms,
        ));
    }
    if let Some(l) = t.fault_lost_max {
        push(judge(
            &name("loss"),
            "messages",
            Bound::Max,
            l as f64,
            o.lost.map(|n| n as f64),
        ));
    }
    out
}

/// Evaluates every threshold that is set against one stage's figures.
pub fn evaluate(t: &Thresholds, f: &StageFigures) -> Vec<CriterionResult> {
    let mut out = Vec::new();
    let as_f = |v: Option<u64>| v.map(|n| n as f64);
    if let Some(l) = t.e2e_p99_ms {
        out.push(judge("e2e_p99", "ms", Bound::Max, l, f.e2e_p99_ms));
    }
    if let Some(l) = t.lost_max {
        out.push(judge(
            "loss",
            "messages",
            Bound::Max,
            l as f64,
            as_f(f.lost),
        ));
    }
    if let Some(l) = t.duplicate_rate_max_pct {
        out.push(judge(
            "duplicate_rate",
            "%",
            Bound::Max,
            l,
            f.duplicate_rate_pct,
        ));
    }
    if let Some(l) = t.stability_min_pct {
        out.push(judge("stability", "%", Bound::Min, l, f.stability_pct));
    }
    if let Some(l) = t.connect_failure_max_pct {
        out.push(judge(
            "connect_failures",
            "%",
            Bound::Max,
            l,
            f.connect_failure_pct,
        ));
    }
    if let Some(l) = t.cpu_peak_max_pct {
        out.push(judge("cpu_peak", "%", Bound::Max, l, f.cpu_peak_pct));
    }
    if let Some(l) = t.rss_growth_per_10k_max_pct {
        out.push(judge(
            "rss_growth_per_10k",
            "%",
            Bound::Max,
            l,
            f.rss_growth_per_10k_pct,
        ));
    }
    if let Some(l) = t.fd_headroom_min_pct {
        out.push(judge("fd_headroom", "%", Bound::Min, l, f.fd_headroom_pct));
    }
    if let Some(l) = t.probe_drops_max {
        out.push(judge(
            "probe_drops",
            "events",
            Bound::Max,
            l as f64,
            as_f(f.probe_drops),
        ));
    }
    if let Some(l) = t.observer_coverage_min_pct {
        out.push(judge(
            "observer_coverage",
            "%",
            Bound::Min,
            l,
            f.observer_coverage_pct,
        ));
    }
    if let Some(l) = t.stall_max_ms {
        out.push(judge("stall_max", "ms", Bound::Max, l, f.stall_max_ms));
    }
    for (phase, limit) in &t.phases {
        let name = format!("{phase}_p99");
        out.push(judge(
            &name,
            "ms",
            Bound::Max,
            limit.p99_ms,
            f.phase_p99_ms.get(phase).copied(),
        ));
    }
    for c in &mut out {
        c.detail = f.details.get(&c.name).cloned();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> StageFigures {
        StageFigures {
            e2e_p99_ms: Some(12.0),
            lost: Some(0),
            duplicate_rate_pct: Some(0.0),
            stability_pct: Some(100.0),
            cpu_peak_pct: Some(30.0),
            rss_growth_per_10k_pct: Some(1.0),
            fd_headroom_pct: Some(80.0),
            probe_drops: Some(0),
            connect_failure_pct: Some(0.0),
            observer_coverage_pct: Some(100.0),
            stall_max_ms: Some(0.0),
            phase_p99_ms: [("accept_wait".to_string(), 0.5)].into(),
            details: BTreeMap::new(),
        }
    }

    #[test]
    fn financial_passes_good_figures_and_fails_each_bad_one() {
        let t = Thresholds::financial();
        assert!(evaluate(&t, &good()).iter().all(|c| c.pass));
        type Spoil = fn(&mut StageFigures);
        let cases: Vec<(&str, Spoil)> = vec![
            ("e2e_p99", |f| f.e2e_p99_ms = Some(150.1)),
            ("loss", |f| f.lost = Some(1)),
            ("duplicate_rate", |f| f.duplicate_rate_pct = Some(0.0011)),
            ("stability", |f| f.stability_pct = Some(99.998)),
            ("cpu_peak", |f| f.cpu_peak_pct = Some(65.5)),
            ("rss_growth_per_10k", |f| {
                f.rss_growth_per_10k_pct = Some(16.0)
            }),
            ("fd_headroom", |f| f.fd_headroom_pct = Some(14.0)),
            ("probe_drops", |f| f.probe_drops = Some(3)),
            ("connect_failures", |f| f.connect_failure_pct = Some(0.0011)),
            ("observer_coverage", |f| {
                f.observer_coverage_pct = Some(99.9)
            }),
        ];
        for (name, spoil) in cases {
            let mut f = good();
            spoil(&mut f);
            let failed: Vec<_> = evaluate(&t, &f)
                .into_iter()
                .filter(|c| !c.pass)
                .map(|c| c.name)
                .collect();
            assert_eq!(failed, vec![name.to_string()]);
        }
    }

    #[test]
    fn unmeasured_figures_fail_never_pass() {
        let res = evaluate(&Thresholds::financial(), &StageFigures::default());
        assert_eq!(res.len(), 10);
        assert!(res.iter().all(|c| !c.pass && c.value.is_none()));
        assert!(res[0].explain().contains("not measured"));
    }

    #[test]
    fn stall_limit_is_optional_and_judged_when_set() {
        let t =
            Thresholds::parse("extends = \"financial\"\nstall_max_ms = 200\n", "t.toml").unwrap();
        let mut f = good();
        f.stall_max_ms = Some(300.0);
        let failed: Vec<_> = evaluate(&t, &f)
            .into_iter()
            .filter(|c| !c.pass)
            .map(|c| c.name)
            .collect();
        assert_eq!(failed, vec!["stall_max".to_string()]);
        assert!(!evaluate(&Thresholds::financial(), &f)
            .iter()
            .any(|c| c.name == "stall_max"));
    }

    #[test]
    fn boundaries_are_inclusive() {
        let t = Thresholds::financial();
        let mut f = good();
        f.e2e_p99_ms = Some(150.0);
        f.stability_pct = Some(99.999);
        f.duplicate_rate_pct = Some(0.001);
        assert!(evaluate(&t, &f).iter().all(|c| c.pass));
    }

    #[test]
    fn file_extends_profile_and_overrides() {
        let t = Thresholds::parse(
            "extends = \"financial\"\ne2e_p99_ms = 0.001\n[phases.accept_wait]\np99_ms = 5\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(t.e2e_p99_ms, Some(0.001));
        assert_eq!(t.lost_max, Some(0));
        assert_eq!(t.phases["accept_wait"].p99_ms, 5.0);
        let res = evaluate(&t, &good());
        let failed: Vec<_> = res
            .iter()
            .filter(|c| !c.pass)
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(failed, vec!["e2e_p99"]);
        assert_eq!(res.len(), 11);
    }

    proptest::proptest! {
        /// Arbitrary text (and arbitrary values of known keys) never
        /// panics the parser: it parses or says why.
        #[test]
        fn arbitrary_thresholds_text_never_panics(
            text in ".{0,200}",
            key in proptest::sample::select(vec!["e2e_p99_ms", "lost_max", "stability_min_pct",
                "connect_failure_max_pct", "observer_coverage_min_pct", "extends", "[phases.accept_wait]\np99_ms"]),
            value in ".{0,20}",
        ) {
            let _ = Thresholds::parse(&text, "fuzz.toml");
            let _ = Thresholds::parse(&format!("{key} = {value}\n"), "fuzz.toml");
        }

        /// Any figures: evaluation never panics, one result per set
        /// threshold, and a missing figure never passes.
        #[test]
        fn evaluation_never_passes_missing_evidence(
            v in proptest::collection::vec(proptest::option::of(-1e9f64..1e9), 10),
        ) {
            let f = StageFigures {
                e2e_p99_ms: v[0],
                lost: v[1].map(|x| x.abs() as u64),
                duplicate_rate_pct: v[2],
                stability_pct: v[3],
                connect_failure_pct: v[4],
                cpu_peak_pct: v[5],
                rss_growth_per_10k_pct: v[6],
                fd_headroom_pct: v[7],
                probe_drops: v[8].map(|x| x.abs() as u64),
                observer_coverage_pct: v[9],
                ..Default::default()
            };
            let res = evaluate(&Thresholds::financial(), &f);
            proptest::prop_assert_eq!(res.len(), 10);
            for c in &res {
                if c.value.is_none() {
                    proptest::prop_assert!(!c.pass, "{c:?}");
                }
            }
        }
    }

    #[test]
    fn documented_example_parses() {
        let t = Thresholds::parse(
            include_str!("../../docs/thresholds.example.toml"),
            "example",
        )
        .unwrap();
        assert_eq!(t.e2e_p99_ms, Some(100.0));
        assert_eq!(t.probe_drops_max, Some(0));
        assert_eq!(t.phases["accept_wait"].p99_ms, 5.0);
    }

    #[test]
    fn mistyped_key_is_an_error_naming_key_and_line() {
        let err = Thresholds::parse("e2e_p99_ms = 150\ne2e_p99_msec = 100\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("e2e_p99_msec"), "{err}");
        assert!(err.contains("line 2"), "{err}");
        let err = Thresholds::parse("[phases.acept_wait]\np99_ms = 1\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("acept_wait"), "{err}");
        let err = Thresholds::parse("stability_min_pct = 150\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("stability_min_pct"), "{err}");
        let err = Thresholds::parse("extends = \"bank\"\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bank"), "{err}");
        let err = Thresholds::parse("lost_max = \"zero\"\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("lost_max"), "{err}");
    }
}
