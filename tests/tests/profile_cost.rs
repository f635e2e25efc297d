//! What the profiler costs a process that is not the target (root): its
//! sched_switch program's own run time per context switch of an unrelated
//! pair of threads ping-ponging over a UNIX socketpair (`kernel.bpf_stats_enabled`),
//! and that it counted nothing of theirs.

use probe_user::profile::{ProfileOptions, Profiler};
use pushscope_tests::{heavy_lock, skip_unless_root, ChildGuard};
use std::io::{Read, Write};
use std::process::{Command, Stdio};

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
