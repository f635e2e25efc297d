//! `--log-dir` operation logs, one line per event so `verify` (and a
//! person with grep) can read them:
//! `publish.log`: first `run <run_id>`, then
//! `p <msg_id> <channel> <pseq> <scheduled_mono_ns> <server_seq|->` (the
//! server was sent `X-Msg-Id: <run_id>-<msg_id>`);
//! `recv-<shard>-<lane>.log`: `r <subscriber> <msg_id> [<attempt>]` per received frame
//! of this run (attempt > 0: a copy the publisher re-posted),
//! `y <subscriber> <msg_id>` per replayed frame (scheduled before the
//! subscriber's first upgrade), `f <subscriber> <run_id> <msg_id>` per frame
//! of another run,
//! `a <subscriber> <seq>` per ACK sent, `R <subscriber> <upgrade_mono_ns>
//! <resume_point|->` per reconnect (the `last_seq` or last event id the
//! resumed session asked for, `-` when it asked for none), and at the end one
//! `s <subscriber> <channel> <baseline_pseq|-> <judged_up_to_pseq>` per subscriber.

use crate::accounting::SubAcct;
use std::{
    fs::File,
    io::{BufWriter, Write},
    path::Path,
};

pub struct LogWriter {
    out: BufWriter<File>,
}

impl LogWriter {
    pub fn create(path: &Path) -> std::io::Result<LogWriter> {
        Ok(LogWriter {
            out: BufWriter::with_capacity(64 * 1024, File::create(path)?),
        })
    }

    // Write errors surface at flush; a full disk must not stall the load.
    pub fn received(&mut self, sub: u64, msg_id: u64, attempt: u32) {
        let _ = if attempt == 0 {
            writeln!(self.out, "r {sub} {msg_id}")
        } else {
            writeln!(self.out, "r {sub} {msg_id} {attempt}")
        };
    }

    pub fn replayed(&mut self, sub: u64, msg_id: u64) {
        let _ = writeln!(self.out, "y {sub} {msg_id}");
    }

    pub fn foreign(&mut self, sub: u64, run: u32, msg_id: u64) {
        let _ = writeln!(self.out, "f {sub} {run} {msg_id}");
    }

    /// The first line of `publish.log`.
    pub fn run_header(&mut self, run: u32) {
        let _ = writeln!(self.out, "run {run}");
    }

    /// A reconnect's session began at `mono_ns`, resuming after `point`.
    pub fn resumed(&mut self, sub: u64, mono_ns: u64, point: Option<&str>) {
        let _ = writeln!(self.out, "R {sub} {mono_ns} {}", point.unwrap_or("-"));
    }

    pub fn acked(&mut self, sub: u64, seq: u64) {
        let _ = writeln!(self.out, "a {sub} {seq}");
    }

    pub fn published(
        &mut self,
        msg_id: u64,
        channel: u32,
        pseq: u64,
        sched_ns: u64,
        server_seq: Option<u64>,
    ) {
        let _ = match server_seq {
            Some(s) => writeln!(self.out, "p {msg_id} {channel} {pseq} {sched_ns} {s}"),
            None => writeln!(self.out, "p {msg_id} {channel} {pseq} {sched_ns} -"),
        };
    }

    pub fn subscriber(&mut self, sub: u64, acct: &SubAcct) {
        let base = acct.baseline().map_or("-".to_string(), |b| b.to_string());
        let _ = writeln!(
            self.out,
            "s {sub} {} {base} {}",
            acct.channel,
            acct.closed_hi()
        );
    }

    pub fn flush(&mut self) {
        if let Err(e) = self.out.flush() {
            log::warn!("writing the operation log failed: {e}");
        }
    }
}
