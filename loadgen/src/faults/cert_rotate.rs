//! `cert-rotate`: TLS certificates change under load.
//!
//! * `client_cert` + `client_key`: from the fault's start, new connections
//!   of the subscribers present this client certificate (mTLS; e.g. one
//!   from a second CA the server trusts); connections already up keep
//!   theirs (`PoolCmd::ClientCert` through the run's [`Control`]).
//! * `reload_cmd`: a shell command run (`sh -c`, at most 30 s) at the
//!   fault's start, e.g. one that puts a new server certificate in place
//!   and runs `nginx -s reload`.
//!
//! The outcome counts connection attempts, failures by reason (e.g.
//! `tls: received fatal alert: …`, `tls: invalid peer certificate:
//! UnknownIssuer`) and unexpected disconnects during the fault (its start
//! to its end: the rotation window) and, once the stage is judged
//! ([`judge`]), after it (its end to the stage's end).

use super::{FaultEnv, FaultOutcome, Injector, Keys};
use crate::{
    accounting::ConnCounters,
    pool::{PoolCmd, PoolReply},
    report::StageReport,
    runner::Control,
};
use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, path::PathBuf, time::Duration};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spec {
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub reload_cmd: Option<String>,
}

impl Spec {
    pub fn parse(keys: &mut Keys) -> Result<Spec, String> {
        let cert = keys.take_str("client_cert")?.map(PathBuf::from);
        let key = keys.take_str("client_key")?.map(PathBuf::from);
        let reload_cmd = keys.take_str("reload_cmd")?;
        match (&cert, &key, &reload_cmd) {
            (Some(_), None, _) | (None, Some(_), _) => {
                Err("give `client_cert` and `client_key` together".into())
            }
            (None, None, None) => Err(
                "say what rotates: `client_cert` + `client_key` (mTLS) and/or `reload_cmd` (the server's certificate)"
                    .into(),
            ),
            _ => Ok(Spec {
                client_cert: cert,
                client_key: key,
                reload_cmd,
            }),
        }
    }
}

/// Connection figures of one window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Window {
    pub attempts: u64,
    pub failed: u64,
    pub failed_by_reason: BTreeMap<String, u64>,
    pub unexpected_disconnects: u64,
    pub disconnects_by_reason: BTreeMap<String, u64>,
}

impl From<ConnCounters> for Window {
    fn from(c: ConnCounters) -> Window {
        Window {
            attempts: c.attempts,
            failed: c.failed,
            failed_by_reason: c.failed_by_reason,
            unexpected_disconnects: c.unexpected_disconnects,
            disconnects_by_reason: c.disconnects_by_reason,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Reload {
    pub cmd: String,
    pub exit_code: Option<i32>,
    pub ms: f64,
    /// Last 2 KiB of its stderr.
    pub stderr: String,
}

/// `FaultOutcome::extra["cert_rotate"]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Rotated {
    pub client_cert: Option<PathBuf>,
    pub reload: Option<Reload>,
    /// Fault start → fault end.
    pub during: Window,
    /// Fault end → its stage's end (set by [`judge`]).
    pub after: Option<Window>,
    /// Internal: the stage's counters from its start to the fault's end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_to_end: Option<ConnCounters>,
}

const ANSWER_WITHIN: Duration = Duration::from_secs(10);
const RELOAD_MAX: Duration = Duration::from_secs(30);

pub struct CertRotate {
    spec: Spec,
    control: Control,
    at_start: Option<ConnCounters>,
    rotated: Rotated,
}

impl CertRotate {
    pub fn new(spec: Spec, index: usize, env: &FaultEnv) -> Result<CertRotate, String> {
        let control = env.control.clone().ok_or_else(|| {
            format!("fault {} (cert-rotate) needs the load generator's control, which this run has not set up", index + 1)
        })?;
        for p in [&spec.client_cert, &spec.client_key].into_iter().flatten() {
            std::fs::metadata(p).map_err(|e| {
                format!(
                    "fault {} (cert-rotate): cannot read {}: {e}",
                    index + 1,
                    p.display()
                )
            })?;
        }
        Ok(CertRotate {
            rotated: Rotated {
                client_cert: spec.client_cert.clone(),
                ..Default::default()
            },
            spec,
            control,
            at_start: None,
        })
    }

    /// (since the pools started, from the current stage's start to now)
    fn counters(&self) -> Result<(ConnCounters, ConnCounters), String> {
        let (mut now, mut stage) = (ConnCounters::default(), ConnCounters::default());
        for r in self.control.broadcast(PoolCmd::Counters, ANSWER_WITHIN)? {
            if let PoolReply::Counters {
                now: n,
                at_stage_begin,
            } = r
            {
                stage.merge(&n.since(&at_stage_begin));
                now.merge(&n);
            }
        }
        Ok((now, stage))
    }
}

impl Injector for CertRotate {
    fn start(&mut self) -> Result<(), String> {
        self.at_start = Some(self.counters()?.0);
        if let (Some(cert), Some(key)) = (&self.spec.client_cert, &self.spec.client_key) {
            self.control.broadcast(
                PoolCmd::ClientCert {
                    cert: cert.clone(),
                    key: key.clone(),
                },
                ANSWER_WITHIN,
            )?;
        }
        if let Some(cmd) = &self.spec.reload_cmd {
            let r = run_reload(cmd)?;
            let ok = r.exit_code == Some(0);
            let msg = format!(
                "reload_cmd exited with {:?}: {}",
                r.exit_code,
                r.stderr.trim()
            );
            self.rotated.reload = Some(r);
            if !ok {
                return Err(msg);
            }
        }
        Ok(())
    }

    fn end(&mut self) -> Result<(), String> {
        let Some(start) = self.at_start.take() else {
            return Ok(());
        };
        let (now, stage) = self.counters()?;
        self.rotated.during = now.since(&start).into();
        self.rotated.stage_to_end = Some(stage);
        Ok(())
    }

    fn outcome(&self, out: &mut FaultOutcome) {
        out.extra.insert(
            "cert_rotate".into(),
            serde_json::to_value(&self.rotated).unwrap_or_default(),
        );
    }
}

/// Runs `sh -c cmd`, bounded by 30 s (killed after).
fn run_reload(cmd: &str) -> Result<Reload, String> {
    use std::io::Read;
    let t = std::time::Instant::now();
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run reload_cmd: {e}"))?;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if t.elapsed() > RELOAD_MAX => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("waiting for reload_cmd: {e}")),
        }
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let tail = err.len().saturating_sub(2048);
    let tail = (tail..=err.len())
        .find(|i| err.is_char_boundary(*i))
        .unwrap_or(err.len());
    Ok(Reload {
        cmd: cmd.to_string(),
        exit_code: status.and_then(|s| s.code()),
        ms: t.elapsed().as_secs_f64() * 1e3,
        stderr: err[tail..].to_string(),
    })
}

/// Once the fault's stage is judged: its figures after the fault (the
/// stage's attempts, failures and disconnects minus those up to the
/// fault's end).
pub fn judge(out: &mut FaultOutcome, stage: &StageReport) {
    let Some(mut r) = out
        .extra
        .get("cert_rotate")
        .and_then(|v| serde_json::from_value::<Rotated>(v.clone()).ok())
    else {
        return;
    };
    let Some(before) = r.stage_to_end.take() else {
        return;
    };
    let total = ConnCounters {
        attempts: stage.connections.attempts,
        failed: stage.connections.failed,
        failed_by_reason: stage.failed_by_reason.clone(),
        unexpected_disconnects: stage.connections.unexpected_disconnects,
        disconnects_by_reason: stage.disconnects_by_reason.clone(),
        received: 0,
    };
    r.after = Some(total.since(&before).into());
    out.extra.insert(
        "cert_rotate".into(),
        serde_json::to_value(&r).unwrap_or_default(),
    );
}
