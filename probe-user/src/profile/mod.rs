//! Profiles of the target by PID, per stage: attaches `profile.bpf.c` (its
//! own object and maps) to a perf_event on the software CPU clock of every
//! CPU and to the raw tracepoints `sched_switch`, `sched_wakeup`,
//! `sched_wakeup_new` and `sched_process_fork`; produces per stage a
//! [`StageProfile`] (top functions on and off CPU, blocked time by wait
//! kind, run-queue p50/p99, stalls, frame-pointer verdict) and, with
//! [`StageProfile::write`], `<stage>-{cpu,offcpu}.pb.gz` (pprof) and
//! `<stage>-{cpu,offcpu}.svg` (flame graphs).
//!
//! **Stall** (definition): an interval during which no thread of the target
//! was on a CPU although at least one of them wanted to run — it was
//! runnable (woken, or preempted) or stopped (SIGSTOP, ptrace) — lasting at
//! least `stall_threshold`. It starts at the later of "the last target
//! thread left the CPU" and "the thread that ends it began wanting to run"
//! and ends when that thread gets a CPU. A target that merely sleeps
//! (blocked on epoll, futex, sleep, I/O) has no stall; a stopped one, a
//! starved one (all CPUs busy elsewhere) or one frozen by its host has.
//! When several threads wait, the start is that of the one that runs
//! first (a lower bound). A stall still going on at a cut is reported with
//! `ongoing: true`, up to the cut (a target frozen at the end of a stage).
//!
//! ```no_run
//! # fn main() -> Result<(), probe_user::profile::ProfileError> {
//! use probe_user::profile::{ProfileOptions, Profiler};
//! let mut p = Profiler::attach(4242, ProfileOptions::default())?;
//! // ... stage runs ...
//! let mut stage = p.cut_stage();
//! stage.write(std::path::Path::new("out/profile"), "stage1")?;
//! # Ok(()) }
//! ```

pub mod abi;
pub mod bpf;
pub mod pprof;
pub mod stage;
pub mod symbolize;

pub use bpf::ProfileError;
pub use stage::{
    CpuProfile, FnShare, FramePointers, OffCpuProfile, OffStack, ProfileCounters, RunQueue,
    StageProfile, StallInterval,
};

use std::collections::HashMap;
use std::time::{Duration, Instant};
use symbolize::{Frame, Symbols};

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns` (one clock for
/// the whole tool: the load generator's).
pub use loadgen::clock::mono_ns as monotonic_ns;

/// Run time of one profiler program (bpf_stats).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProgStats {
    pub program: String,
    pub run_count: u64,
    pub run_time_ns: u64,
}

#[derive(Debug, Clone)]
pub struct ProfileOptions {
    /// On-CPU samples per second per CPU (software CPU clock).
    pub hz: u64,
    /// Shortest interval reported as a stall.
    pub stall_threshold: Duration,
    /// Entries in the top lists.
    pub top: usize,
}

impl Default for ProfileOptions {
    fn default() -> Self {
        ProfileOptions {
            hz: 99,
            stall_threshold: Duration::from_millis(50),
            top: 20,
        }
    }
}

/// An attached profiler; dropping it detaches.
pub struct Profiler {
    pid: u32,
    opts: ProfileOptions,
    bpf: bpf::Attached,
    symbols: Symbols,
    last: bpf::Snapshot,
    last_cut: Instant,
    last_cut_mono_ns: u64,
    language: String,
    /// Basename of the target's executable (frames of its own code).
    exe_name: String,
}

impl Profiler {
    /// Attaches to `pid` and every process of its tree (children forked
    /// later join in the kernel). The first stage starts now.
    pub fn attach(pid: u32, opts: ProfileOptions) -> Result<Profiler, ProfileError> {
        if !crate::target::exists(pid) {
            return Err(ProfileError::NoProcess(pid));
        }
        let mut tgids = crate::target::tree(pid);
        if !tgids.contains(&pid) {
            tgids.insert(0, pid);
        }
        let stall_ns = opts.stall_threshold.as_nanos() as u64;
        let bpf = bpf::Attached::attach(&tgids, opts.hz.max(1), stall_ns)?;
        let exe = std::fs::read(format!("/proc/{pid}/exe")).unwrap_or_default();
        let language = stage::language_of(&exe).to_string();
        let exe_name = std::fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()))
            .unwrap_or_default();
        let last = bpf.snapshot();
        Ok(Profiler {
            pid,
            opts,
            bpf,
            symbols: Symbols::default(),
            last,
            last_cut: Instant::now(),
            last_cut_mono_ns: monotonic_ns(),
            language,
            exe_name,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Attaches an empty program beside `pf_sched_switch` whose run time
    /// per run (see [`Profiler::prog_stats`], program `pf_nop`) is the
    /// bpf_stats measurement's own cost, for benchmarks.
    pub fn attach_calibration(&mut self) -> Result<(), ProfileError> {
        self.bpf.attach_calibration()
    }

    /// The profiler programs' own runs and run time, by program name
    /// (zero unless `kernel.bpf_stats_enabled` is 1).
    pub fn prog_stats(&self) -> Vec<ProgStats> {
        self.bpf
            .prog_stats()
            .into_iter()
            .map(|(program, run_count, run_time)| ProgStats {
                program,
                run_count,
                run_time_ns: run_time.as_nanos() as u64,
            })
            .collect()
    }

    /// Ends the current stage and starts the next: everything counted since
    /// the last cut (or attach), symbolized (needs the target alive for
    /// user symbols; dead processes give `0x…` frames).
    pub fn cut_stage(&mut self) -> StageProfile {
        let now = self.bpf.snapshot();
        let end_mono = monotonic_ns();
        let duration = self.last_cut.elapsed();
        self.last_cut = Instant::now();
        let start_mono = std::mem::replace(&mut self.last_cut_mono_ns, end_mono);
        let d = now.since(&self.last);
        self.last = now;
        let stalls = self.bpf.drain_stalls();
        let ongoing = self.bpf.ongoing_stall();
        let mut stage = self.build(&d, stalls, duration, start_mono);
        stage.end_mono_ns = end_mono;
        if let Some((start, tid)) = ongoing {
            let start = start.max(start_mono);
            let min = self.opts.stall_threshold.as_nanos() as u64;
            if end_mono.saturating_sub(start) >= min {
                stage.stalls.push(StallInterval {
                    start_ms: (start - start_mono) as f64 / 1e6,
                    start_mono_ns: start,
                    duration_ms: (end_mono - start) as f64 / 1e6,
                    tid,
                    ongoing: true,
                });
                stage.stall_max_ms = stage
                    .stalls
                    .iter()
                    .map(|s| s.duration_ms)
                    .fold(0.0, f64::max);
            }
        }
        stage
    }

    /// Resolves every stack counted so far into the symbol cache while the
    /// target is alive, so a later [`Profiler::cut_stage`] still names the
    /// frames of a process that exited or crashed in between (user symbols
    /// need the live process's /proc/PID/maps). Only new addresses are
    /// looked up, but the target's files are parsed again on each call
    /// (~0.1–0.3 s for the pusher): call it every few seconds, not per tick.
    pub fn refresh_symbols(&mut self) {
        let snap = self.bpf.snapshot();
        let bpf = &self.bpf;
        let mut sym = self.symbols.session();
        let mut seen = std::collections::HashSet::new();
        let stacks = snap
            .cpu
            .keys()
            .map(|k| (k.tgid, k.ustack, k.kstack))
            .chain(snap.off.keys().map(|k| (k.tgid, k.ustack, k.kstack)));
        for (tgid, u, k) in stacks {
            if seen.insert((tgid, u)) {
                Self::user_frames(bpf, &mut sym, tgid, u);
            }
            if seen.insert((0, k)) {
                Self::kernel_frames(bpf, &mut sym, k);
            }
        }
    }

    fn user_frames(
        bpf: &bpf::Attached,
        s: &mut symbolize::Session<'_>,
        tgid: u32,
        id: i32,
    ) -> Vec<Frame> {
        let ips = bpf.stack(id);
        // leaf first from the kernel; root first here
        let mut f: Vec<Frame> = s
            .user(tgid, &ips)
            .into_iter()
            .map(|f| (*f).clone())
            .collect();
        f.reverse();
        f
    }

    fn kernel_frames(bpf: &bpf::Attached, s: &mut symbolize::Session<'_>, id: i32) -> Vec<Frame> {
        let ips = bpf.stack(id);
        let mut f: Vec<Frame> = s.kernel(&ips).into_iter().map(|f| (*f).clone()).collect();
        f.reverse();
        f
    }

    fn build(
        &mut self,
        d: &bpf::Snapshot,
        stalls: Vec<abi::Stall>,
        duration: Duration,
        start_mono: u64,
    ) -> StageProfile {
        let n = self.opts.top;
        let bpf = &self.bpf;
        let mut sym = self.symbols.session();
        // on-CPU: user frames (root first), then kernel frames
        // user-stack depth of samples whose leaf is in the executable
        // itself, and of those whose leaf is in a library (module)
        let mut depths: HashMap<usize, u64> = HashMap::new();
        let mut lib_depths: HashMap<String, (u64, u64)> = HashMap::new();
        let mut merged: HashMap<Vec<Frame>, u64> = HashMap::new();
        let mut keys: Vec<(abi::CpuKey, u64)> = d.cpu.iter().map(|(k, v)| (*k, *v)).collect();
        keys.sort_by_key(|(k, _)| (k.tgid, k.ustack, k.kstack));
        for (k, count) in keys {
            let mut frames = Self::user_frames(bpf, &mut sym, k.tgid, k.ustack);
            if let Some(leaf) = frames.last() {
                if leaf.module == self.exe_name {
                    *depths.entry(frames.len()).or_default() += count;
                } else if leaf.module != "[unknown]" {
                    let e = lib_depths.entry(leaf.module.clone()).or_default();
                    e.0 += count;
                    if frames.len() <= 2 {
                        e.1 += count;
                    }
                }
            }
            frames.extend(Self::kernel_frames(bpf, &mut sym, k.kstack));
            if frames.is_empty() {
                frames.push(Frame::pseudo("[unknown]"));
            }
            *merged.entry(frames).or_default() += count;
        }
        let mut cpu_stacks: Vec<(Vec<Frame>, u64)> = merged.into_iter().collect();
        cpu_stacks.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let samples: u64 = cpu_stacks.iter().map(|(_, c)| c).sum();
        let (top_self, top_total) = stage::tops(
            cpu_stacks.iter().map(|(f, c)| (&f[..], *c as f64)),
            samples as f64,
            n,
        );

        // off-CPU: [kind] root, user frames, kernel frames (I/O only)
        let mut merged: HashMap<(Vec<Frame>, String), (u64, u64)> = HashMap::new();
        let mut keys: Vec<(abi::OffKey, abi::OffVal)> =
            d.off.iter().map(|(k, v)| (*k, *v)).collect();
        keys.sort_by_key(|(k, _)| (k.tgid, k.ustack, k.kstack, k.kind));
        let mut by_kind: std::collections::BTreeMap<String, f64> = Default::default();
        for (k, v) in keys {
            let kind = abi::kind_name(k.kind).to_string();
            let mut frames = vec![Frame::pseudo(&format!("[{kind}]"))];
            frames.extend(Self::user_frames(bpf, &mut sym, k.tgid, k.ustack));
            frames.extend(Self::kernel_frames(bpf, &mut sym, k.kstack));
            *by_kind.entry(kind.clone()).or_default() += v.ns as f64 / 1e6;
            let e = merged.entry((frames, kind)).or_default();
            e.0 += v.ns;
            e.1 += v.count;
        }
        let mut off_stacks: Vec<(Vec<Frame>, String, u64, u64)> = merged
            .into_iter()
            .map(|((f, k), (ns, c))| (f, k, ns, c))
            .collect();
        off_stacks.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
        let blocked_ns: u64 = off_stacks.iter().map(|s| s.2).sum();
        let (off_self, off_total) = stage::tops(
            off_stacks
                .iter()
                .map(|(f, _, ns, _)| (&f[..], *ns as f64 / 1e6)),
            blocked_ns as f64 / 1e6,
            n,
        );
        let top_stacks = off_stacks
            .iter()
            .take(n)
            .map(|(f, kind, ns, count)| OffStack {
                kind: kind.clone(),
                ms: *ns as f64 / 1e6,
                count: *count,
                frames: f
                    .iter()
                    .map(|f| {
                        if f.module.is_empty() {
                            f.name.clone()
                        } else {
                            format!("{} ({})", f.name, f.module)
                        }
                    })
                    .collect(),
            })
            .collect();

        let mut stall_list: Vec<StallInterval> = stalls
            .iter()
            .map(|s| StallInterval {
                start_ms: (s.start_ns as f64 - start_mono as f64) / 1e6,
                start_mono_ns: s.start_ns,
                duration_ms: s.dur_ns as f64 / 1e6,
                tid: s.tid,
                ongoing: false,
            })
            .collect();
        stall_list.sort_by_key(|s| s.start_mono_ns);
        let stall_max_ms = stall_list.iter().map(|s| s.duration_ms).fold(0.0, f64::max);
        let mut depth_list: Vec<(usize, u64)> = depths.into_iter().collect();
        depth_list.sort();
        StageProfile {
            pid: self.pid,
            duration_s: duration.as_secs_f64(),
            hz: self.opts.hz,
            cpu: CpuProfile {
                samples,
                top_self,
                top_total,
            },
            offcpu: OffCpuProfile {
                blocked_ms: blocked_ns as f64 / 1e6,
                by_kind_ms: by_kind,
                top_self: off_self,
                top_total: off_total,
                top_stacks,
            },
            runqueue: stage::runqueue(&d.rq),
            stalls: stall_list,
            stall_max_ms,
            frame_pointers: {
                let mut fp = stage::frame_pointers(&depth_list, &self.language);
                fp.libraries_without = stage::libraries_without_fp(&lib_depths);
                fp
            },
            counters: ProfileCounters {
                user_stack_errors: d.counter(abi::CNT_USTACK_ERR),
                kernel_stack_errors: d.counter(abi::CNT_KSTACK_ERR),
                map_full: d.counter(abi::CNT_MAP_FULL),
                ring_drops: d.counter(abi::CNT_RING_DROPS),
                switches: d.counter(abi::CNT_SWITCHES),
                wakeups: d.counter(abi::CNT_WAKEUPS),
                stacks_reused: d.counter(abi::CNT_STACK_REUSED),
            },
            files: Vec::new(),
            cpu_stacks,
            off_stacks,
            start_mono_ns: start_mono,
            end_mono_ns: 0,
        }
    }
}

/// `pushscope profile`: profile a running process for a while.
#[derive(Debug, clap::Args)]
pub struct ProfileArgs {
    /// PID of the process to profile (its threads and children too).
    #[arg(long)]
    pub pid: u32,
    /// How long to profile, e.g. 30s, 500ms, 2m.
    #[arg(long, default_value = "30s", value_parser = loadgen::duration::parse_duration)]
    pub duration: Duration,
    /// Output directory (profile/ files and profile.json are written there).
    #[arg(long, default_value = "target/pushscope/profile")]
    pub out: std::path::PathBuf,
    /// On-CPU samples per second per CPU.
    #[arg(long, default_value_t = 99)]
    pub profile_hz: u64,
    /// Shortest interval reported as a stall, in ms.
    #[arg(long, default_value_t = 50)]
    pub stall_ms: u64,
}

pub fn run(args: ProfileArgs) -> crate::CmdResult {
    use anyhow::Context;
    use loadgen::outcome::Outcome;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(loadgen::outcome::usage(
            "pushscope profile needs CAP_BPF and CAP_PERFMON: run as root",
        ));
    }
    let opts = ProfileOptions {
        hz: args.profile_hz,
        stall_threshold: Duration::from_millis(args.stall_ms),
        ..Default::default()
    };
    let mut p =
        Profiler::attach(args.pid, opts).with_context(|| format!("profiling PID {}", args.pid))?;
    // First line: attached (benchmarks and scripts wait for it).
    println!(
        "profiling PID {} for {:?} at {} Hz",
        args.pid, args.duration, args.profile_hz
    );
    {
        use std::io::Write;
        let _ = std::io::stdout().flush();
    }
    let deadline = Instant::now() + args.duration;
    // Bounded: ends at the deadline or when the target exits.
    while Instant::now() < deadline && crate::target::exists(args.pid) {
        std::thread::sleep((deadline - Instant::now()).min(Duration::from_millis(200)));
    }
    let mut stage = p.cut_stage();
    let dir = args.out.join("profile");
    stage.write(&dir, "profile")?;
    let json = args.out.join("profile.json");
    std::fs::write(&json, serde_json::to_vec_pretty(&stage)?)
        .with_context(|| format!("writing {}", json.display()))?;
    println!(
        "on-CPU: {} samples, top {}; off-CPU: {:.0} ms blocked; run queue p50 {} µs p99 {} µs; stalls {} (max {:.0} ms); frame pointers {}",
        stage.cpu.samples,
        stage
            .cpu
            .top_self
            .first()
            .map(|f| format!("{} {:.0} %", f.name, f.share * 100.0))
            .unwrap_or_else(|| "-".into()),
        stage.offcpu.blocked_ms,
        stage.runqueue.p50_us.map(|v| format!("{v:.0}")).unwrap_or_else(|| "-".into()),
        stage.runqueue.p99_us.map(|v| format!("{v:.0}")).unwrap_or_else(|| "-".into()),
        stage.stalls.len(),
        stage.stall_max_ms,
        stage.frame_pointers.verdict,
    );
    if let Some(a) = &stage.frame_pointers.advice {
        println!("{a}");
    }
    if !stage.frame_pointers.libraries_without.is_empty() {
        println!(
            "on-CPU stacks that enter {} end there (no frame pointers in those libraries)",
            stage.frame_pointers.libraries_without.join(", ")
        );
    }
    println!("written: {} and {}", dir.display(), json.display());
    Ok(Outcome::Completed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiler_can_move_to_another_thread() {
        fn send<T: Send>() {}
        send::<Profiler>();
        send::<StageProfile>();
    }
}
