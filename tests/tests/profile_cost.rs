//! What the profiler costs a process that is not the target (root): its
//! sched_switch program's own run time per context switch of an unrelated
//! pair of threads ping-ponging over a UNIX socketpair (`kernel.bpf_stats_enabled`),
//! and that it counted nothing of theirs.

use probe_user::profile::{ProfileOptions, Profiler};
use pushscope_tests::{heavy_lock, skip_unless_root, ChildGuard};
use std::io::{Read, Write};
use std::process::Command;
use std::process::Stdio;

const FLAG: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Restores kernel.bpf_stats_enabled when dropped.
struct StatsOn(String);

impl Drop for StatsOn {
    fn drop(&mut self) {
        let _ = std::fs::write(FLAG, self.0.trim());
    }
}

/// `n` round trips between two threads of this (unrelated) process.
fn ping_pong(n: usize) {
    let (mut a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
    let t = std::thread::spawn(move || {
        let mut buf = [0u8; 1];
        for _ in 0..n {
            a.read_exact(&mut buf).unwrap();
            a.write_all(&buf).unwrap();
        }
    });
    let mut buf = [7u8; 1];
    for _ in 0..n {
        b.write_all(&buf).unwrap();
        b.read_exact(&mut buf).unwrap();
    }
    t.join().unwrap();
}

#[test]
fn profile_cost_per_unrelated_context_switch_root() {
    if skip_unless_root("profile_cost_per_unrelated_context_switch_root") {
        return;
    }
    let _heavy = heavy_lock();
    // An idle target: a sleeping process.
    let target = ChildGuard {
        child: Command::new("sleep")
            .arg("600")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
        name: "sleep".into(),
    };
    let mut p = Profiler::attach(target.pid(), ProfileOptions::default()).expect("attach");
    p.attach_calibration().expect("attach pf_nop");
    let _restore = StatsOn(std::fs::read_to_string(FLAG).unwrap_or_else(|_| "0".into()));
    std::fs::write(FLAG, "1").expect("enabling kernel.bpf_stats_enabled");
    let runs = |p: &Profiler, name: &str| {
        p.prog_stats()
            .into_iter()
            .find(|s| s.program == name)
            .map(|s| (s.run_count, s.run_time_ns))
            .unwrap()
    };
    let (c0, t0) = runs(&p, "pf_sched_switch");
    let (w0, wt0) = runs(&p, "pf_sched_wakeup");
    let (n0, nt0) = runs(&p, "pf_nop");
    ping_pong(50_000);
    let (c1, t1) = runs(&p, "pf_sched_switch");
    let (w1, wt1) = runs(&p, "pf_sched_wakeup");
    let (n1, nt1) = runs(&p, "pf_nop");
    let nop_ns = (nt1 - nt0) as f64 / (n1 - n0).max(1) as f64;
    let switches = c1 - c0;
    let ns = (t1 - t0) as f64 / switches as f64;
    let wake_ns = (wt1 - wt0) as f64 / (w1 - w0).max(1) as f64;
    eprintln!(
        "unrelated context switch: {ns:.1} ns per run of pf_sched_switch ({switches} runs), \
         {:.1} ns net of the empty program's {nop_ns:.1} ns (bpf_stats' own cost); \
         {wake_ns:.1} ns per run of pf_sched_wakeup ({} runs)",
        ns - nop_ns,
        w1 - w0
    );
    assert!(switches >= 50_000, "only {switches} switches seen");
    assert!(
        ns - nop_ns <= 100.0,
        "{:.1} ns per unrelated context switch (net)",
        ns - nop_ns
    );
    assert!(
        ns <= 200.0,
        "{ns:.1} ns per unrelated context switch (gross)"
    );
    assert!(
        wake_ns - nop_ns <= 100.0,
        "{wake_ns:.1} ns per unrelated wakeup"
    );
    let stage = p.cut_stage();
    assert_eq!(stage.cpu.samples, 0, "{:?}", stage.cpu.top_self);
    assert!(stage.counters.switches < 100, "{:?}", stage.counters);
}

/// Two threads of one process ping-ponging a byte over pipes, `n` round
/// trips after a line on stdin; prints `ready`, then `done`.
const PING_PONG_C: &str = r#"
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
static int a[2], b[2];
static void *peer(void *x) {
	char c;
	while (read(a[0], &c, 1) == 1)
		if (write(b[1], &c, 1) != 1)
			break;
	return x;
}
int main(int argc, char **argv) {
	int n = atoi(argv[1]);
	if (pipe(a) || pipe(b))
		return 1;
	pthread_t t;
	pthread_create(&t, 0, peer, 0);
	printf("ready\n");
	fflush(stdout);
	if (getchar() == EOF)
		return 1;
	char c = 'x';
	for (int i = 0; i < n; i++)
		if (write(a[1], &c, 1) != 1 || read(b[0], &c, 1) != 1)
			return 1;
	printf("done\n");
	fflush(stdout);
	return 0;
}
"#;

#[test]
fn profile_cost_per_target_context_switch_root() {
    if skip_unless_root("profile_cost_per_target_context_switch_root") {
        return;
    }
    let _heavy = heavy_lock();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("pp.c");
    std::fs::write(&src, PING_PONG_C).unwrap();
    let bin = dir.path().join("pingpong");
    assert!(Command::new("cc")
        .args(["-O1", "-fno-omit-frame-pointer", "-pthread", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .expect("running cc")
        .success());
    let mut child = Command::new(&bin)
        .arg("50000")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut stdin = child.stdin.take().unwrap();
    let mut target = ChildGuard {
        child,
        name: "pingpong".into(),
    };
    let mut line = String::new();
    use std::io::BufRead;
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let mut p = Profiler::attach(target.pid(), ProfileOptions::default()).expect("attach");
    let _restore = StatsOn(std::fs::read_to_string(FLAG).unwrap_or_else(|_| "0".into()));
    std::fs::write(FLAG, "1").expect("enabling kernel.bpf_stats_enabled");
    let runs = |p: &Profiler, name: &str| {
        p.prog_stats()
            .into_iter()
            .find(|s| s.program == name)
            .map(|s| (s.run_count, s.run_time_ns))
            .unwrap()
    };
    let (c0, t0) = runs(&p, "pf_sched_switch");
    let (w0, wt0) = runs(&p, "pf_sched_wakeup");
    stdin.write_all(b"go\n").unwrap();
    stdin.flush().unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "done");
    let (c1, t1) = runs(&p, "pf_sched_switch");
    let (w1, wt1) = runs(&p, "pf_sched_wakeup");
    let _ = target.wait_timeout(std::time::Duration::from_secs(5));
    let stage = p.cut_stage();
    let ns = (t1 - t0) as f64 / (c1 - c0) as f64;
    let wake_ns = (wt1 - wt0) as f64 / (w1 - w0).max(1) as f64;
    let blocks: u64 = stage.off_stacks.iter().map(|s| s.3).sum();
    eprintln!(
        "target context switch: {ns:.0} ns per run of pf_sched_switch ({} runs, {} of the target's), \
         {wake_ns:.0} ns per run of pf_sched_wakeup; {} of {} blocks reused the thread's last stack",
        c1 - c0,
        stage.counters.switches,
        stage.counters.stacks_reused,
        blocks
    );
    assert!(stage.counters.switches >= 100_000, "{:?}", stage.counters);
    // A user stack walk per block would cost microseconds each.
    assert!(ns <= 2500.0, "{ns:.0} ns per target context switch");
    // Both threads block at one place each: the walk is done once per thread.
    assert!(
        stage.counters.stacks_reused as f64 >= 0.9 * blocks as f64,
        "{} of {blocks} blocks reused a stack",
        stage.counters.stacks_reused
    );
}
