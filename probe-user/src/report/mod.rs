//! The run's evidence: the `summary.json` model of `pushscope run` and the
//! writers of every output file (summary.json, junit.xml, report.html).

pub mod html;
pub mod junit;
pub mod svg;

use crate::gate::{CriterionResult, StageFigures, Thresholds};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Bumped whenever a field of `RunSummary` changes meaning or goes away.
/// 2: CPU judged on the target's usable cores, unmeasured figures are
/// null, connect_failures and observer_coverage criteria, message_path.
pub const SCHEMA_VERSION: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Every criterion of every stage passed.
    Admitted,
    /// At least one criterion failed.
    Rejected,
    /// The run could not finish (target died, load could not connect…):
    /// the figures are partial and not admissible evidence.
    Incomplete,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TargetInfo {
    pub pid: Option<u32>,
    pub url: String,
    pub protocol: String,
    /// The target's command line, read from /proc at attach.
    pub command: Option<String>,
}

/// One point of the run's timeline (one per sampling interval).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TimelinePoint {
    /// Seconds since the run started.
    pub t_s: f64,
    pub stage: usize,
    pub connections: Option<f64>,
    pub msgs_per_s: Option<f64>,
    /// The load's end-to-end latency p99 of the current stage so far.
    pub e2e_p99_ms: Option<f64>,
    pub cpu_pct: Option<f64>,
    pub rss_bytes: Option<f64>,
    pub fds_open: Option<f64>,
    pub fd_limit: Option<f64>,
    /// Seconds since the run started at which cpu/rss/fds were read from
    /// /proc (the observer samples at 1 Hz: up to a second before `t_s`).
    #[serde(default)]
    pub sampled_t_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageSummary {
    pub index: usize,
    pub name: String,
    /// Target concurrency of the stage.
    pub connections: u64,
    pub start_s: f64,
    pub end_s: f64,
    /// False when the stage was cut short (run incomplete).
    pub complete: bool,
    pub pass: bool,
    pub figures: StageFigures,
    pub criteria: Vec<CriterionResult>,
    /// The load generator's stage report (loadgen's summary shape).
    pub load: serde_json::Value,
    /// The observer's report for the stage window.
    pub observer: serde_json::Value,
    /// Where the stage's message latency goes, leg by leg (sampled
    /// connections); absent when the message path was not traced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_path: Option<crate::msgpath::MessagePath>,
    /// The target's on-CPU / off-CPU profile of the stage.
    #[serde(default, skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub profile: Option<crate::profile::StageProfile>,
    /// What holding the stage's connections cost each side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<crate::run::scale::StageScale>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSummary {
    pub schema_version: u32,
    pub tool: String,
    pub verdict: Verdict,
    pub complete: bool,
    pub incomplete_reason: Option<String>,
    pub started_unix_ms: u64,
    pub duration_s: f64,
    pub target: TargetInfo,
    pub profile: String,
    pub thresholds: Thresholds,
    pub stages: Vec<StageSummary>,
    pub timeline: Vec<TimelinePoint>,
    /// What this run could not measure, in plain words.
    pub not_measured: Vec<String>,
    /// msg_ids lost / duplicated (first ones, for the report).
    pub lost_ids: Vec<String>,
    pub duplicate_ids: Vec<String>,
    /// The observer's slowest connections (timelines), for the report.
    pub slowest_connections: serde_json::Value,
    /// Scheduled faults as they happened, with their measured outcome.
    #[serde(default)]
    pub faults: Vec<loadgen::faults::FaultRecord>,
    /// The emulated link (`--network`): asked, mechanism, measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<loadgen::link::NetworkReport>,
}

impl RunSummary {
    /// Verdict from the stages: incomplete wins, then any failure.
    pub fn decide(&mut self) {
        for s in &mut self.stages {
            s.pass = s.complete && !s.criteria.is_empty() && s.criteria.iter().all(|c| c.pass);
        }
        self.verdict = if !self.complete {
            Verdict::Incomplete
        } else if !self.stages.is_empty() && self.stages.iter().all(|s| s.pass) {
            Verdict::Admitted
        } else {
            Verdict::Rejected
        };
    }

    /// Every failed criterion as "stage: explanation".
    pub fn failures(&self) -> Vec<String> {
        self.stages
            .iter()
            .flat_map(|s| {
                s.criteria
                    .iter()
                    .filter(|c| !c.pass)
                    .map(move |c| format!("{}: {}", s.name, c.explain()))
            })
            .collect()
    }

    /// Writes summary.json, junit.xml and report.html into `dir`
    /// (lifecycle.svg there, if the observer wrote one, is embedded).
    pub fn write_all(&self, dir: &Path) -> anyhow::Result<()> {
        use anyhow::Context;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let json = serde_json::to_string_pretty(self)?;
        std::fs::write(dir.join("summary.json"), json)
            .with_context(|| format!("writing {}/summary.json", dir.display()))?;
        std::fs::write(dir.join("junit.xml"), junit::render(self)?)
            .with_context(|| format!("writing {}/junit.xml", dir.display()))?;
        let flame = std::fs::read_to_string(dir.join("lifecycle.svg")).ok();
        std::fs::write(
            dir.join("report.html"),
            html::render(self, flame.as_deref()),
        )
        .with_context(|| format!("writing {}/report.html", dir.display()))?;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;
    use crate::gate::{evaluate, Thresholds};

    /// A two-stage summary, the second stage failing on loss.
    pub fn summary() -> RunSummary {
        let t = Thresholds::financial();
        let good = StageFigures {
            e2e_p99_ms: Some(4.2),
            lost: Some(0),
            duplicate_rate_pct: Some(0.0),
            stability_pct: Some(100.0),
            cpu_peak_pct: Some(20.0),
            rss_growth_per_10k_pct: Some(0.5),
            fd_headroom_pct: Some(90.0),
            probe_drops: Some(0),
            connect_failure_pct: Some(0.0),
            observer_coverage_pct: Some(100.0),
            stall_max_ms: Some(0.0),
            phase_p99_ms: Default::default(),
            details: Default::default(),
        };
        let bad = StageFigures {
            lost: Some(1),
            ..good.clone()
        };
        let stage = |i: usize, f: StageFigures| StageSummary {
            index: i,
            name: format!("stage {} ({} conns)", i + 1, (i + 1) * 100),
            connections: (i as u64 + 1) * 100,
            start_s: i as f64 * 10.0,
            end_s: (i + 1) as f64 * 10.0,
            complete: true,
            pass: false,
            criteria: evaluate(&t, &f),
            figures: f,
            load: serde_json::json!({}),
            observer: serde_json::json!({}),
            message_path: None,
            scale: None,
            profile: None,
        };
        let mut s = RunSummary {
            schema_version: SCHEMA_VERSION,
            tool: "pushscope test".into(),
            verdict: Verdict::Incomplete,
            complete: true,
            incomplete_reason: None,
            started_unix_ms: 0,
            duration_s: 20.0,
            target: TargetInfo {
                pid: Some(42),
                url: "ws://127.0.0.1:1/ws".into(),
                protocol: "pushscope".into(),
                command: None,
            },
            profile: "financial".into(),
            thresholds: t.clone(),
            network: None,
            stages: vec![stage(0, good), stage(1, bad)],
            timeline: (0..20)
                .map(|i| TimelinePoint {
                    t_s: i as f64,
                    stage: i / 10,
                    connections: Some(if i < 10 { 100.0 } else { 200.0 }),
                    msgs_per_s: Some(1000.0),
                    e2e_p99_ms: Some(4.0 + i as f64 * 0.1),
                    cpu_pct: Some(10.0),
                    rss_bytes: Some(1e7),
                    fds_open: Some(120.0),
                    fd_limit: Some(20000.0),
                    sampled_t_s: Some(i as f64 - 0.5),
                })
                .collect(),
            not_measured: vec!["tls_handshake: the target serves plain ws://".into()],
            lost_ids: vec!["m-17".into()],
            duplicate_ids: vec![],
            slowest_connections: serde_json::json!([]),
            faults: Vec::new(),
        };
        s.decide();
        s
    }

    #[test]
    fn decide_rejects_on_any_failure_and_names_it() {
        let s = summary();
        assert_eq!(s.verdict, Verdict::Rejected);
        assert!(s.stages[0].pass && !s.stages[1].pass);
        assert_eq!(
            s.failures(),
            vec!["stage 2 (200 conns): loss = 1 messages (threshold <= 0 messages)".to_string()]
        );
    }

    #[test]
    fn incomplete_run_is_never_admitted() {
        let mut s = summary();
        s.stages.truncate(1);
        s.complete = false;
        s.decide();
        assert_eq!(s.verdict, Verdict::Incomplete);
    }
}
