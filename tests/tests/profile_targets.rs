//! The profiler (`probe_user::profile`) against targets of known behaviour
//! (root): a C program built with frame pointers (a CPU burner, a mutex
//! held while sleeping, two threads waiting for it), a Go program, and a
//! ticker stopped with SIGSTOP for 300 ms. Every `.pb.gz` is read back with
//! `go tool pprof -top`.

use probe_user::profile::{ProfileOptions, Profiler, StageProfile};
use pushscope_tests::{heavy_lock, skip_unless_root, ChildGuard};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

/// The C target. `mix`: burner (≈ 80 % busy in `burn_cpu`), holder (holds
/// the mutex while sleeping 50 ms, 1 ms gaps), two waiters (`waiter` →
/// pthread_mutex_lock) printing every wait longer than 1 ms as
/// `wait <t0> <t1>` (CLOCK_MONOTONIC ns). `tick`: one thread printing
/// `tick <t>` every 5 ms (`tick0`: pinned to CPU 0). `hog MS`: a
/// SCHED_FIFO busy loop on CPU 0 for MS ms, printing `hog <t0> <t1>`. `fork`: forks a child burning in `burn_cpu`
/// when a line arrives on stdin.
const TARGET_C: &str = r#"
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t out = PTHREAD_MUTEX_INITIALIZER;
static volatile unsigned long sink;
static unsigned long now_ns(void) {
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000000000UL + t.tv_nsec;
}
static void msleep(long ms) {
	struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
	nanosleep(&t, 0);
}
__attribute__((noinline)) void burn_cpu(unsigned long ns) {
	unsigned long end = now_ns() + ns;
	while (now_ns() < end)
		for (int i = 0; i < 200000; i++)
			sink += i;
}
__attribute__((noinline)) void *burner(void *a) {
	for (;;) {
		burn_cpu(8000000);
		msleep(2);
	}
	return a;
}
__attribute__((noinline)) void hold_and_sleep(void) {
	pthread_mutex_lock(&m);
	msleep(50);
	pthread_mutex_unlock(&m);
}
__attribute__((noinline)) void *holder(void *a) {
	for (;;) {
		hold_and_sleep();
		msleep(1);
	}
	return a;
}
__attribute__((noinline)) void wait_for_lock(void) {
	unsigned long t0 = now_ns();
	pthread_mutex_lock(&m);
	unsigned long t1 = now_ns();
	pthread_mutex_unlock(&m);
	if (t1 - t0 > 1000000) {
		pthread_mutex_lock(&out);
		printf("wait %lu %lu\n", t0, t1);
		fflush(stdout);
		pthread_mutex_unlock(&out);
	}
}
/* Without frame pointers in libc the caller of pthread_mutex_lock
 * (wait_for_lock) is skipped by the unwinder: its caller shows. */
__attribute__((noinline)) void *waiter(void *a) {
	for (;;)
		wait_for_lock();
	return a;
}
int main(int argc, char **argv) {
	if (argc > 1 && !strcmp(argv[1], "fork")) {
		/* waits for a line on stdin, then forks a child that burns */
		printf("ready\n");
		fflush(stdout);
		char line[16];
		if (!fgets(line, sizeof line, stdin))
			return 1;
		pid_t child = fork();
		if (child == 0) {
			printf("child %d\n", getpid());
			fflush(stdout);
			for (;;)
				burn_cpu(8000000);
		}
		waitpid(child, 0, 0);
		return 0;
	}
	if (argc > 2 && !strcmp(argv[1], "hog")) {
		/* SCHED_FIFO busy loop on CPU 0 for argv[2] ms */
		cpu_set_t set;
		CPU_ZERO(&set);
		CPU_SET(0, &set);
		struct sched_param prio = {.sched_priority = 10};
		if (sched_setaffinity(0, sizeof set, &set) ||
		    sched_setscheduler(0, SCHED_FIFO, &prio))
			return 1;
		unsigned long t0 = now_ns(), end = t0 + atol(argv[2]) * 1000000UL;
		while (now_ns() < end)
			sink++;
		printf("hog %lu %lu\n", t0, now_ns());
		return 0;
	}
	if (argc > 1 && !strcmp(argv[1], "tick0")) {
		cpu_set_t set;
		CPU_ZERO(&set);
		CPU_SET(0, &set);
		if (sched_setaffinity(0, sizeof set, &set))
			return 1;
		argv[1] = "tick";
	}
	if (argc > 1 && !strcmp(argv[1], "tick")) {
		printf("ready\n");
		fflush(stdout);
		for (;;) {
			msleep(5);
			printf("tick %lu\n", now_ns());
			fflush(stdout);
		}
	}
	pthread_t a, b, c, d;
	pthread_create(&a, 0, burner, 0);
	pthread_create(&b, 0, holder, 0);
	pthread_create(&c, 0, waiter, 0);
	pthread_create(&d, 0, waiter, 0);
	printf("ready\n");
	fflush(stdout);
	pthread_join(a, 0);
	return 0;
}
"#;

const TARGET_GO: &str = r#"package main

import (
	"fmt"
	"time"
)

var sink uint64

//go:noinline
func burn(d time.Duration) {
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		for i := 0; i < 100000; i++ {
			sink += uint64(i)
		}
	}
}

func main() {
	go func() {
		for {
			burn(8 * time.Millisecond)
			time.Sleep(2 * time.Millisecond)
		}
	}()
	fmt.Println("ready")
	select {}
}
"#;

fn monotonic_ns() -> u64 {
    probe_user::profile::monotonic_ns()
}

/// A target process and its stdout lines.
struct Target {
    guard: ChildGuard,
    lines: Receiver<String>,
}

impl Target {
    fn start(mut cmd: Command) -> Target {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawning target");
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let t = Target {
            guard: ChildGuard {
                child,
                name: "profile target".into(),
            },
            lines,
        };
        assert_eq!(
            t.next_line(Duration::from_secs(20)).as_deref(),
            Some("ready")
        );
        t
    }

    fn pid(&self) -> u32 {
        self.guard.pid()
    }

    fn next_line(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// Every line printed so far.
    fn drain(&self) -> Vec<String> {
        self.lines.try_iter().collect()
    }
}

fn build_c(dir: &Path) -> PathBuf {
    let src = dir.join("target.c");
    std::fs::write(&src, TARGET_C).unwrap();
    let bin = dir.join("ctarget");
    let ok = Command::new("cc")
        .args(["-O1", "-fno-omit-frame-pointer", "-pthread", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .expect("running cc")
        .success();
    assert!(ok, "cc failed");
    bin
}

fn go_env(cmd: &mut Command, dir: &Path) {
    cmd.env("HOME", dir)
        .env("GOCACHE", dir.join("gocache"))
        .env("GOPATH", dir.join("gopath"))
        .env("GO111MODULE", "off")
        .env("GOFLAGS", "")
        .env("GOTOOLCHAIN", "local");
}

fn go_available() -> bool {
    Command::new("go")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The top entry (flat) of `go tool pprof -top` of a profile.
fn pprof_top(file: &Path, dir: &Path) -> String {
    let mut cmd = Command::new("go");
    cmd.args(["tool", "pprof", "-top", "-symbolize=none"])
        .arg(file);
    go_env(&mut cmd, dir);
    let out = cmd.output().expect("running go tool pprof");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "go tool pprof failed on {}: {}{}",
        file.display(),
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut after_header = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("flat"));
    after_header.next();
    let first = after_header
        .next()
        .unwrap_or_else(|| panic!("no rows in:\n{text}"));
    first
        .split_whitespace()
        .skip(5)
        .collect::<Vec<_>>()
        .join(" ")
}

fn check_pprof(stage: &StageProfile, dir: &Path, out: &Path) {
    let cpu = pprof_top(&out.join("s1-cpu.pb.gz"), dir);
    assert_eq!(
        cpu, stage.cpu.top_self[0].name,
        "cpu.pb.gz top vs StageProfile"
    );
    let off = pprof_top(&out.join("s1-offcpu.pb.gz"), dir);
    assert_eq!(
        off, stage.offcpu.top_self[0].name,
        "offcpu.pb.gz top vs StageProfile"
    );
}

fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn profile_c_target_burner_and_mutex_wait_root() {
    if skip_unless_root("profile_c_target_burner_and_mutex_wait_root") {
        return;
    }
    let _heavy = heavy_lock();
    let dir = tempfile::tempdir().unwrap();
    let bin = build_c(dir.path());
    let target = Target::start(Command::new(&bin));
    let mut p = Profiler::attach(target.pid(), ProfileOptions::default()).expect("attach");
    let window_start = monotonic_ns();
    let _ = target.drain();
    // The behaviour under test runs for 3 s (the window), then is cut.
    std::thread::sleep(Duration::from_secs(3));
    let window_end = monotonic_ns();
    let mut stage = p.cut_stage();
    let out = dir.path().join("profile");
    stage.write(&out, "s1").unwrap();
    // Waits the target measured itself, entirely inside the window.
    let mut expected_ns = 0u64;
    for l in target.drain() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() == 3 && f[0] == "wait" {
            let (t0, t1): (u64, u64) = (f[1].parse().unwrap(), f[2].parse().unwrap());
            if t0 >= window_start && t1 <= window_end {
                expected_ns += t1 - t0;
            }
        }
    }
    eprintln!("{}", serde_json::to_string_pretty(&stage).unwrap());

    // on-CPU: the burner dominates.
    let top = &stage.cpu.top_self[0];
    assert_eq!(top.name, "burn_cpu", "on-CPU top: {:?}", stage.cpu.top_self);
    assert!(top.share >= 0.70, "burn_cpu share {:.2}", top.share);
    // ~80 % of one CPU at 99 Hz for 3 s is ~240; a busy machine gives less.
    assert!(stage.cpu.samples >= 50, "samples {}", stage.cpu.samples);
    assert_eq!(stage.frame_pointers.verdict, "ok");
    assert_eq!(stage.frame_pointers.language, "c/c++");

    // off-CPU: the top stack is the waiters' mutex wait, of the right length.
    let s = &stage.offcpu.top_stacks[0];
    assert_eq!(s.kind, "lock", "top off-CPU stack: {s:?}");
    assert!(
        s.frames.iter().any(|f| f.starts_with("waiter ")),
        "top off-CPU stack without waiter: {s:?}"
    );
    let measured_ns: f64 = stage
        .offcpu
        .top_stacks
        .iter()
        .filter(|s| s.kind == "lock" && s.frames.iter().any(|f| f.starts_with("waiter ")))
        .map(|s| s.ms * 1e6)
        .sum();
    let ratio = measured_ns / expected_ns as f64;
    eprintln!(
        "mutex wait: profiler {:.0} ms, target's own clock {:.0} ms (ratio {ratio:.3})",
        measured_ns / 1e6,
        expected_ns as f64 / 1e6
    );
    assert!(
        expected_ns > 4_000_000_000,
        "waiters waited {expected_ns} ns"
    );
    assert!(
        (0.9..=1.1).contains(&ratio),
        "blocked-time ratio {ratio:.3}"
    );
    assert!(stage.offcpu.by_kind_ms["sleep"] > 2000.0);
    let rq = &stage.runqueue;
    assert!(rq.count > 100 && rq.p50_us.is_some() && rq.p99_us >= rq.p50_us);
    assert_eq!(stage.counters.ring_drops, 0);
    assert_eq!(stage.files.len(), 4);
    if go_available() {
        check_pprof(&stage, dir.path(), &out);
    }
}

#[test]
fn profile_go_target_symbolized_root() {
    if skip_unless_root("profile_go_target_symbolized_root") {
        return;
    }
    if !go_available() {
        assert!(
            std::env::var("PUSHSCOPE_REQUIRE_ROOT").is_err(),
            "golang-go is missing (.ci/run installs it)"
        );
        eprintln!("skipped: no go toolchain (apt-get install golang-go)");
        return;
    }
    let _heavy = heavy_lock();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("main.go"), TARGET_GO).unwrap();
    let bin = dir.path().join("gotarget");
    let mut build = Command::new("go");
    build
        .args(["build", "-o"])
        .arg(&bin)
        .arg("main.go")
        .current_dir(dir.path());
    go_env(&mut build, dir.path());
    let out = build.output().expect("running go build");
    assert!(
        out.status.success(),
        "go build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let target = Target::start(Command::new(&bin));
    let mut p = Profiler::attach(target.pid(), ProfileOptions::default()).expect("attach");
    std::thread::sleep(Duration::from_secs(2));
    let mut stage = p.cut_stage();
    let out = dir.path().join("profile");
    stage.write(&out, "s1").unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&stage).unwrap());
    assert_eq!(stage.frame_pointers.language, "go");
    assert_eq!(stage.frame_pointers.verdict, "ok");
    let burn = stage
        .cpu
        .top_total
        .iter()
        .find(|f| f.name == "main.burn")
        .unwrap_or_else(|| panic!("main.burn not in {:?}", stage.cpu.top_total));
    assert!(burn.share > 0.5, "main.burn share {:.2}", burn.share);
    assert!(stage
        .cpu
        .top_total
        .iter()
        .any(|f| f.name == "main.main.func1"));
    check_pprof(&stage, dir.path(), &out);
}

#[test]
fn profile_stall_of_a_stopped_target_root() {
    if skip_unless_root("profile_stall_of_a_stopped_target_root") {
        return;
    }
    let _heavy = heavy_lock();
    let dir = tempfile::tempdir().unwrap();
    let bin = build_c(dir.path());
    let mut cmd = Command::new(&bin);
    cmd.arg("tick");
    let target = Target::start(cmd);
    let mut p = Profiler::attach(target.pid(), ProfileOptions::default()).expect("attach");

    // A quiet target: no stall.
    // Quiet for 40 ticks (~200 ms or more).
    let mut ticks = 0;
    wait_until("40 ticks", Duration::from_secs(10), || {
        ticks += target.drain().len();
        ticks >= 40
    });
    let quiet = p.cut_stage();
    assert!(quiet.stalls.is_empty(), "quiet stalls: {:?}", quiet.stalls);
    assert_eq!(quiet.stall_max_ms, 0.0);

    // Stopped for 300 ms: one stall of 300 ms, starting when it stopped.
    let stop_at = monotonic_ns();
    target.guard.signal(libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(300));
    let cont_at = monotonic_ns();
    target.guard.signal(libc::SIGCONT);
    let _ = target.drain();
    // It ran again once it ticks.
    assert!(target.next_line(Duration::from_secs(5)).is_some());
    let stopped = p.cut_stage();
    eprintln!("stalls: {:?}", stopped.stalls);
    assert_eq!(stopped.stalls.len(), 1, "stalls: {:?}", stopped.stalls);
    let s = &stopped.stalls[0];
    let want_ms = (cont_at - stop_at) as f64 / 1e6;
    assert!(
        (s.duration_ms - want_ms).abs() <= 20.0,
        "stall {:.1} ms, stopped {want_ms:.1} ms",
        s.duration_ms
    );
    let start_err_ms = (s.start_mono_ns as f64 - stop_at as f64) / 1e6;
    assert!(
        start_err_ms.abs() <= 20.0,
        "stall starts {start_err_ms:.1} ms off"
    );
    assert!((stopped.stall_max_ms - s.duration_ms).abs() < 1e-9);
    assert!(
        stopped
            .offcpu
            .by_kind_ms
            .get("stopped")
            .copied()
            .unwrap_or(0.0)
            >= 250.0
    );
    assert!(!s.ongoing);

    // Still stopped at the cut: reported as ongoing, up to the cut.
    let stop_at = monotonic_ns();
    target.guard.signal(libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(200));
    let frozen = p.cut_stage();
    let cut_at = monotonic_ns();
    target.guard.signal(libc::SIGCONT);
    eprintln!("frozen at the cut: {:?}", frozen.stalls);
    assert_eq!(frozen.stalls.len(), 1, "{:?}", frozen.stalls);
    let f = &frozen.stalls[0];
    assert!(f.ongoing);
    let want_ms = (cut_at - stop_at) as f64 / 1e6;
    assert!(
        f.duration_ms <= want_ms + 1.0 && f.duration_ms >= want_ms - 30.0,
        "ongoing stall {:.1} ms, stopped {want_ms:.1} ms before the cut",
        f.duration_ms
    );
    let _ = target.drain();
    assert!(target.next_line(Duration::from_secs(5)).is_some());
    // The next stage has it whole, from when it really began.
    let after = p.cut_stage();
    assert_eq!(after.stalls.len(), 1, "{:?}", after.stalls);
    assert!(!after.stalls[0].ongoing);
    assert!(after.stalls[0].start_ms < 0.0);
    assert!(after.stalls[0].duration_ms >= f.duration_ms);
}

#[test]
fn profile_cli_writes_pprof_flames_and_json_root() {
    if skip_unless_root("profile_cli_writes_pprof_flames_and_json_root") {
        return;
    }
    let _heavy = heavy_lock();
    let dir = tempfile::tempdir().unwrap();
    let bin = build_c(dir.path());
    let target = Target::start(Command::new(&bin));
    let out_dir = dir.path().join("out");
    let out = Command::new(pushscope_tests::bin_path("pushscope"))
        .args(["profile", "--pid", &target.pid().to_string()])
        .args(["--duration", "1500ms", "--profile-hz", "199", "--out"])
        .arg(&out_dir)
        .output()
        .expect("running pushscope profile");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("profiling PID "), "{stdout}");
    for f in [
        "profile-cpu.pb.gz",
        "profile-offcpu.pb.gz",
        "profile-cpu.svg",
        "profile-offcpu.svg",
    ] {
        let len = std::fs::metadata(out_dir.join("profile").join(f))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(len > 100, "{f}: {len} bytes");
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("profile.json")).unwrap()).unwrap();
    assert_eq!(json["hz"], 199);
    assert_eq!(json["cpu"]["top_self"][0]["name"], "burn_cpu");
    assert!(json["offcpu"]["by_kind_ms"]["lock"].as_f64().unwrap() > 500.0);
    assert!(json["runqueue"]["p99_us"].as_f64().is_some());
    assert!(json["stall_max_ms"].as_f64().is_some());
    if go_available() {
        for (file, section) in [
            ("profile-cpu.pb.gz", "cpu"),
            ("profile-offcpu.pb.gz", "offcpu"),
        ] {
            let top = pprof_top(&out_dir.join("profile").join(file), dir.path());
            assert_eq!(json[section]["top_self"][0]["name"], top.as_str(), "{file}");
        }
    }
}

#[test]
fn profile_follows_a_child_forked_after_attach_root() {
    if skip_unless_root("profile_follows_a_child_forked_after_attach_root") {
        return;
    }
    let _heavy = heavy_lock();
    let dir = tempfile::tempdir().unwrap();
    let bin = build_c(dir.path());
    let mut cmd = Command::new(&bin);
    cmd.arg("fork");
    let mut target = Target::start(cmd);
    let mut p = Profiler::attach(target.pid(), ProfileOptions::default()).expect("attach");
    {
        use std::io::Write;
        let stdin = target.guard.child.stdin.as_mut().expect("piped stdin");
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
    }
    let line = target
        .next_line(Duration::from_secs(10))
        .expect("the child reports");
    let child: i32 = line
        .strip_prefix("child ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected line {line}"));
    // The child burns for 1.5 s (the behaviour under test), then dies
    // before the cut: symbols resolved while it lived still name its frames.
    std::thread::sleep(Duration::from_millis(1500));
    p.refresh_symbols();
    // SAFETY: kill(2) on the child process the target forked for this test.
    unsafe {
        libc::kill(child, libc::SIGKILL);
    }
    let _ = target.guard.wait_timeout(Duration::from_secs(5));
    assert!(!std::path::Path::new(&format!("/proc/{child}/maps")).exists());
    let stage = p.cut_stage();
    let top = &stage.cpu.top_self[0];
    assert_eq!(top.name, "burn_cpu", "{:?}", stage.cpu.top_self);
    assert!(top.share >= 0.7, "burn_cpu share {:.2}", top.share);
    assert!(stage.cpu.samples >= 30, "samples {}", stage.cpu.samples);
}

#[test]
fn profile_stall_of_a_cpu_starved_target_root() {
    if skip_unless_root("profile_stall_of_a_cpu_starved_target_root") {
        return;
    }
    let _heavy = heavy_lock();
    let dir = tempfile::tempdir().unwrap();
    let bin = build_c(dir.path());
    let mut cmd = Command::new(&bin);
    cmd.arg("tick0");
    let target = Target::start(cmd);
    let mut p = Profiler::attach(target.pid(), ProfileOptions::default()).expect("attach");
    let mut ticks = 0;
    wait_until("20 ticks", Duration::from_secs(10), || {
        ticks += target.drain().len();
        ticks >= 20
    });
    let _ = p.cut_stage();
    // A real-time busy loop takes CPU 0, the target's only CPU, for 150 ms:
    // the target is woken by its timer but cannot run.
    let out = Command::new(&bin)
        .args(["hog", "150"])
        .output()
        .expect("running the hog");
    let text = String::from_utf8_lossy(&out.stdout);
    let f: Vec<u64> = text
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    assert!(out.status.success() && f.len() == 2, "hog: {text}");
    let (hog_start, hog_end) = (f[0], f[1]);
    let _ = target.drain();
    assert!(target.next_line(Duration::from_secs(5)).is_some());
    let stage = p.cut_stage();
    eprintln!("stalls: {:?}", stage.stalls);
    let s = stage
        .stalls
        .iter()
        .find(|s| s.start_mono_ns + 30_000_000 >= hog_start && s.start_mono_ns <= hog_end)
        .unwrap_or_else(|| panic!("no stall during the hog: {:?}", stage.stalls));
    let hog_ms = (hog_end - hog_start) as f64 / 1e6;
    // The target's timer wakes it at most 5 ms into the hog: the stall runs
    // from that wakeup to the end of the hog.
    assert!(
        s.duration_ms >= hog_ms - 25.0 && s.duration_ms <= hog_ms + 20.0,
        "stall {:.1} ms, hog {hog_ms:.1} ms",
        s.duration_ms
    );
    assert!(stage.stall_max_ms >= s.duration_ms);
}
