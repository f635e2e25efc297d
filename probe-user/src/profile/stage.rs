//! One stage's profile: the kernel counts of the stage window turned into
//! symbolized stacks, top functions, run-queue quantiles, stalls and the
//! frame-pointer verdict ([`StageProfile`], serialized into summary.json),
//! and the files written per stage (pprof, flame graphs).

use super::abi;
use super::pprof;
use super::symbolize::Frame;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

/// A function's share of a profile.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FnShare {
    pub name: String,
    pub module: String,
    /// Samples (on-CPU) or milliseconds blocked (off-CPU).
    pub value: f64,
    /// `value` ÷ the profile's total, 0..=1.
    pub share: f64,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct CpuProfile {
    pub samples: u64,
    /// Functions by samples in which they were the leaf.
    pub top_self: Vec<FnShare>,
    /// Functions by samples in which they were anywhere on the stack.
    pub top_total: Vec<FnShare>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OffStack {
    pub kind: String,
    pub ms: f64,
    /// Blocked periods.
    pub count: u64,
    /// `function (module)`, root first.
    pub frames: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct OffCpuProfile {
    /// Thread-milliseconds blocked (summed over threads).
    pub blocked_ms: f64,
    /// By what the threads waited on: lock, poll, socket, sleep, io, stopped, other.
    pub by_kind_ms: BTreeMap<String, f64>,
    /// Leaf functions (kind pseudo-frame as root, so a stack without user
    /// frames shows as `[kind]`).
    pub top_self: Vec<FnShare>,
    pub top_total: Vec<FnShare>,
    /// Heaviest stacks with their wait kind.
    pub top_stacks: Vec<OffStack>,
}

#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct RunQueue {
    /// Wakeup or preemption → on CPU, events in the stage.
    pub count: u64,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub max_us: Option<f64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StallInterval {
    /// From the start of the stage window.
    pub start_ms: f64,
    /// CLOCK_MONOTONIC (bpf_ktime_get_ns) of the start.
    pub start_mono_ns: u64,
    pub duration_ms: f64,
    /// Thread whose getting a CPU ended the stall (or, when `ongoing`,
    /// the one that has wanted a CPU longest).
    pub tid: u32,
    /// Still going on at the cut: `duration_ms` runs to the cut. (When it
    /// ends, the next stage reports it whole, from its real start.)
    pub ongoing: bool,
}

#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct FramePointers {
    /// On-CPU samples whose user leaf is in the executable itself.
    pub user_stacks: u64,
    /// Share of them only 1–2 frames deep.
    pub shallow_share: f64,
    /// `ok`, `missing` (most stacks shallow) or `unknown` (fewer than 20
    /// samples in the executable's own code, or its frames could not be
    /// symbolized: the process exited before the cut).
    pub verdict: String,
    /// Language of the target's executable: `go`, `rust`, `c/c++`.
    pub language: String,
    /// What to rebuild with, when missing.
    pub advice: Option<String>,
    /// Shared libraries whose on-CPU stacks are mostly 1–2 frames deep
    /// (built without frame pointers, e.g. Debian's libc.so.6): stacks
    /// that enter them while on CPU (syscall wrappers) end there.
    #[serde(default)]
    pub libraries_without: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Default, PartialEq, Eq)]
pub struct ProfileCounters {
    pub user_stack_errors: u64,
    pub kernel_stack_errors: u64,
    pub map_full: u64,
    /// Stall records lost (ring full): 0 unless thousands of stalls.
    pub ring_drops: u64,
    pub switches: u64,
    pub wakeups: u64,
    /// Off-CPU blocks that reused the thread's last user stack (blocked
    /// again at the same syscall, user ip, frame pointer and return address).
    pub stacks_reused: u64,
}

/// One stage of the target's profile (summary.json `stages[].profile`).
#[derive(Debug, Clone, Serialize, Default)]
pub struct StageProfile {
    pub pid: u32,
    pub duration_s: f64,
    pub hz: u64,
    pub cpu: CpuProfile,
    pub offcpu: OffCpuProfile,
    pub runqueue: RunQueue,
    pub stalls: Vec<StallInterval>,
    /// Longest stall (0 when none): the gate figure.
    pub stall_max_ms: f64,
    pub frame_pointers: FramePointers,
    pub counters: ProfileCounters,
    /// Files written by [`StageProfile::write`] (relative to its dir).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
    /// Symbolized on-CPU stacks (root first) and their sample counts.
    #[serde(skip)]
    pub cpu_stacks: Vec<(Vec<Frame>, u64)>,
    /// Symbolized off-CPU stacks (root first: `[kind]` pseudo-frame), ns and periods.
    #[serde(skip)]
    pub off_stacks: Vec<(Vec<Frame>, String, u64, u64)>,
    /// The stage window, CLOCK_MONOTONIC ns (bpf_ktime_get_ns): from the
    /// previous cut (or attach) to this cut.
    pub start_mono_ns: u64,
    pub end_mono_ns: u64,
}

/// Top `n` by value, ties by name, shares of `total`.
fn top(values: HashMap<Frame, f64>, total: f64, n: usize) -> Vec<FnShare> {
    let mut v: Vec<(Frame, f64)> = values.into_iter().collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v.into_iter()
        .take(n)
        .map(|(f, value)| FnShare {
            name: f.name,
            module: f.module,
            value,
            share: if total > 0.0 { value / total } else { 0.0 },
        })
        .collect()
}

/// (top self, top total) of stacks (root first) with values.
pub fn tops<'a>(
    stacks: impl Iterator<Item = (&'a [Frame], f64)>,
    total: f64,
    n: usize,
) -> (Vec<FnShare>, Vec<FnShare>) {
    let mut selfs: HashMap<Frame, f64> = HashMap::new();
    let mut totals: HashMap<Frame, f64> = HashMap::new();
    for (frames, v) in stacks {
        if let Some(leaf) = frames.last() {
            *selfs.entry(leaf.clone()).or_default() += v;
        }
        let mut seen = HashSet::new();
        for f in frames {
            if seen.insert(f) {
                *totals.entry(f.clone()).or_default() += v;
            }
        }
    }
    (top(selfs, total, n), top(totals, total, n))
}

/// Lower bound and width (ns) of run-queue bucket `idx` (profile.h).
pub fn rq_bucket(idx: usize) -> (f64, f64) {
    let sub = 1usize << abi::RQ_SUB_BITS;
    if idx < sub {
        return (idx as f64, 1.0);
    }
    let b = (idx >> abi::RQ_SUB_BITS) as u32;
    let s = (idx & (sub - 1)) as f64;
    let width = 2f64.powi(b as i32 - abi::RQ_SUB_BITS as i32);
    (2f64.powi(b as i32) + s * width, width)
}

/// Quantile `q` (0..=1) of the histogram in µs (bucket midpoint).
pub fn rq_quantile(hist: &[u64], q: f64) -> Option<f64> {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (i, n) in hist.iter().enumerate() {
        seen += n;
        if seen >= rank {
            let (lo, w) = rq_bucket(i);
            return Some((lo + w / 2.0) / 1000.0);
        }
    }
    None
}

pub fn runqueue(hist: &[u64]) -> RunQueue {
    let max = hist.iter().rposition(|n| *n > 0).map(|i| {
        let (lo, w) = rq_bucket(i);
        (lo + w) / 1000.0
    });
    RunQueue {
        count: hist.iter().sum(),
        p50_us: rq_quantile(hist, 0.5),
        p99_us: rq_quantile(hist, 0.99),
        max_us: max,
    }
}

/// Language of an executable from bytes every toolchain leaves in it:
/// Go's build-info magic, rustc's library paths (panic locations).
pub fn language_of(exe: &[u8]) -> &'static str {
    let has = |needle: &[u8]| exe.windows(needle.len()).any(|w| w == needle);
    if has(b"\xff Go buildinf:") {
        "go"
    } else if has(b"/rustc/") || has(b"rust_panic") {
        "rust"
    } else {
        "c/c++"
    }
}

/// Libraries (module → (samples with the leaf there, of them 1–2 frames
/// deep)) whose stacks are mostly shallow, with at least 10 samples.
pub fn libraries_without_fp(libs: &HashMap<String, (u64, u64)>) -> Vec<String> {
    let mut v: Vec<String> = libs
        .iter()
        .filter(|(_, (n, shallow))| *n >= 10 && *shallow * 2 > *n)
        .map(|(m, _)| m.clone())
        .collect();
    v.sort();
    v
}

/// Frame-pointer verdict from the user-stack depths of on-CPU samples
/// whose leaf is in the executable's own code (depth, samples): stacks
/// walked without frame pointers stop after one or two frames. Samples
/// that end in a shared library say nothing about the executable (a libc
/// without frame pointers cuts every stack that enters it): see
/// [`libraries_without_fp`].
pub fn frame_pointers(depths: &[(usize, u64)], language: &str) -> FramePointers {
    let user_stacks: u64 = depths.iter().map(|(_, n)| n).sum();
    let shallow: u64 = depths.iter().filter(|(d, _)| *d <= 2).map(|(_, n)| n).sum();
    let shallow_share = if user_stacks > 0 {
        shallow as f64 / user_stacks as f64
    } else {
        0.0
    };
    let verdict = if user_stacks < 20 {
        "unknown"
    } else if shallow_share > 0.5 {
        "missing"
    } else {
        "ok"
    };
    let advice = (verdict == "missing").then(|| {
        let flag = match language {
            "rust" => "RUSTFLAGS=\"-C force-frame-pointers=yes\"",
            "go" => "a Go toolchain that keeps frame pointers (the default since Go 1.7; do not build with -gcflags=-d=framepointer=0)",
            _ => "-fno-omit-frame-pointer (CFLAGS/CXXFLAGS, and for the libraries on the hot path)",
        };
        format!(
            "{:.0} % of on-CPU user stacks are 1–2 frames deep: the target was likely built without frame pointers; rebuild it with {flag}",
            shallow_share * 100.0
        )
    });
    FramePointers {
        user_stacks,
        shallow_share,
        verdict: verdict.to_string(),
        language: language.to_string(),
        advice,
        libraries_without: Vec::new(),
    }
}

fn folded_line(frames: &[Frame]) -> String {
    frames
        .iter()
        .map(|f| f.name.replace([';', ' '], "_"))
        .collect::<Vec<_>>()
        .join(";")
}

fn flame(path: &Path, title: &str, unit: &str, lines: &[String]) -> std::io::Result<()> {
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = title.to_string();
    opts.count_name = unit.to_string();
    let svg = std::io::BufWriter::new(std::fs::File::create(path)?);
    if lines.is_empty() {
        return inferno::flamegraph::from_lines(&mut opts, ["no_samples 1"], svg)
            .map_err(std::io::Error::other);
    }
    inferno::flamegraph::from_lines(&mut opts, lines.iter().map(String::as_str), svg)
        .map_err(std::io::Error::other)
}

impl StageProfile {
    /// Writes `<stage>-cpu.pb.gz`, `<stage>-offcpu.pb.gz`,
    /// `<stage>-cpu.svg`, `<stage>-offcpu.svg` into `dir` (created) and
    /// records their names in `files`.
    pub fn write(&mut self, dir: &Path, stage: &str) -> Result<(), super::ProfileError> {
        let err = |path: PathBuf| move |source| super::ProfileError::Write { path, source };
        std::fs::create_dir_all(dir).map_err(err(dir.to_path_buf()))?;
        let period = (1e9 / self.hz.max(1) as f64) as i64;
        let duration_ns = (self.duration_s * 1e9) as i64;
        let cpu: Vec<_> = self
            .cpu_stacks
            .iter()
            .map(|(f, n)| (f.clone(), vec![*n as i64, *n as i64 * period], vec![]))
            .collect();
        let cpu_gz = pprof::encode(
            &pprof::Kind {
                sample_types: &[("samples", "count"), ("cpu", "nanoseconds")],
                period_type: ("cpu", "nanoseconds"),
                period,
            },
            &cpu,
            duration_ns,
            0,
        );
        let off: Vec<_> = self
            .off_stacks
            .iter()
            .map(|(f, kind, ns, count)| {
                (
                    f.clone(),
                    vec![*count as i64, *ns as i64],
                    vec![("kind", kind.clone())],
                )
            })
            .collect();
        let off_gz = pprof::encode(
            &pprof::Kind {
                sample_types: &[("blocked", "count"), ("offcpu", "nanoseconds")],
                period_type: ("offcpu", "nanoseconds"),
                period: 1,
            },
            &off,
            duration_ns,
            0,
        );
        let cpu_lines: Vec<String> = self
            .cpu_stacks
            .iter()
            .map(|(f, n)| format!("{} {n}", folded_line(f)))
            .collect();
        let off_lines: Vec<String> = self
            .off_stacks
            .iter()
            .map(|(f, _, ns, _)| format!("{} {}", folded_line(f), ns / 1000))
            .collect();
        let files = [
            (format!("{stage}-cpu.pb.gz"), Some(cpu_gz)),
            (format!("{stage}-offcpu.pb.gz"), Some(off_gz)),
            (format!("{stage}-cpu.svg"), None),
            (format!("{stage}-offcpu.svg"), None),
        ];
        self.files.clear();
        for (name, bytes) in files {
            let path = dir.join(&name);
            match bytes {
                Some(b) => std::fs::write(&path, b).map_err(err(path.clone()))?,
                None if name.ends_with("-cpu.svg") => flame(
                    &path,
                    &format!("on-CPU {stage} (PID {})", self.pid),
                    "samples",
                    &cpu_lines,
                )
                .map_err(err(path.clone()))?,
                None => flame(
                    &path,
                    &format!("off-CPU {stage} (PID {})", self.pid),
                    "µs",
                    &off_lines,
                )
                .map_err(err(path.clone()))?,
            }
            self.files.push(name);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(n: &str) -> Frame {
        Frame {
            name: n.into(),
            module: "m".into(),
        }
    }

    #[test]
    fn tops_count_self_and_total_once_per_stack() {
        let a = [f("main"), f("burn")];
        let b = [f("main"), f("rec"), f("rec")];
        let (s, t) = tops([(&a[..], 3.0), (&b[..], 1.0)].into_iter(), 4.0, 10);
        assert_eq!(s[0].name, "burn");
        assert_eq!(s[0].share, 0.75);
        assert_eq!(t[0].name, "main");
        assert_eq!(t[0].value, 4.0);
        let rec = t.iter().find(|x| x.name == "rec").unwrap();
        assert_eq!(rec.value, 1.0);
    }

    #[test]
    fn rq_buckets_are_log_linear() {
        assert_eq!(rq_bucket(5), (5.0, 1.0));
        // 8 * 10 + 4: 2^10 + 4 * 2^7
        assert_eq!(rq_bucket(84), (1024.0 + 512.0, 128.0));
        let mut h = vec![0u64; abi::RQ_BUCKETS as usize];
        h[84] = 99;
        h[8 * 20] = 1; // ~1 ms
        let rq = runqueue(&h);
        assert_eq!(rq.count, 100);
        assert_eq!(rq.p50_us, Some((1536.0 + 64.0) / 1000.0));
        assert!(rq.max_us.unwrap() > 1000.0);
    }

    #[test]
    fn frame_pointer_verdicts() {
        let fp = frame_pointers(&[(1, 80), (9, 20)], "rust");
        assert_eq!(fp.verdict, "missing");
        assert!(fp.advice.unwrap().contains("-C force-frame-pointers=yes"));
        let fp = frame_pointers(&[(2, 10), (9, 90)], "c/c++");
        assert_eq!(fp.verdict, "ok");
        assert_eq!(frame_pointers(&[(1, 3)], "go").verdict, "unknown");
        let c = frame_pointers(&[(1, 30)], "c/c++");
        assert!(c.advice.unwrap().contains("-fno-omit-frame-pointer"));
    }

    #[test]
    fn shallow_libraries_are_named() {
        let libs: HashMap<String, (u64, u64)> = [
            ("libc.so.6".to_string(), (100, 90)),
            ("libssl.so.3".to_string(), (100, 10)),
            ("libm.so.6".to_string(), (4, 4)),
        ]
        .into_iter()
        .collect();
        assert_eq!(libraries_without_fp(&libs), vec!["libc.so.6".to_string()]);
    }

    #[test]
    fn languages() {
        assert_eq!(language_of(b"xx\xff Go buildinf:yy"), "go");
        assert_eq!(language_of(b"/rustc/abc/library/core"), "rust");
        assert_eq!(language_of(b"\x7fELF plain"), "c/c++");
    }

    #[test]
    fn writes_all_four_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = StageProfile {
            hz: 99,
            duration_s: 1.0,
            cpu_stacks: vec![(vec![f("main"), f("burn")], 10)],
            ..Default::default()
        };
        p.write(dir.path(), "s1").unwrap();
        assert_eq!(p.files.len(), 4);
        for name in &p.files {
            assert!(std::fs::metadata(dir.path().join(name)).unwrap().len() > 0);
        }
    }
}
