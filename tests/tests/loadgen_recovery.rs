//! Recovery against the reference pusher: a server frozen (SIGSTOP) for
//! longer than 2 heartbeats, and a server killed (-9) and restarted on its
//! data dir. Clients must notice, reconnect, resume from their last seq,
//! and the run must report zero loss and exactly one unexpected disconnect
//! per connection. Restarted without a data dir, the pusher is a new
//! history: every resume naming the old one is replayed from its start, and
//! a later resume on the new history continues from its own seqs.

use pushscope_tests::{
    bin_path, heavy_lock,
    loadgen::pushscope,
    loadgen::LoadRun,
    poll_until,
    pusher::{metric_in, wait_until_flowing, Pusher},
    restart_model::predicted_loss,
    scrape_metrics, spawn_first_line, ChildGuard,
};
use std::{net::SocketAddr, path::PathBuf, process::Command, thread, time::Duration};

const CONNS: u64 = 20;

/// Starts a 20-connection load run in the background.
fn load(url: String, out: PathBuf, hold: &'static str) -> thread::JoinHandle<LoadRun> {
    load_logged(url, out, hold, &[])
}

/// [`load`] with extra arguments (e.g. `--log-dir`).
fn load_logged(
    url: String,
    out: PathBuf,
    hold: &'static str,
    extra: &[&str],
) -> thread::JoinHandle<LoadRun> {
    let extra: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
    thread::spawn(move || {
        let stages = format!("{CONNS}:{hold}");
        let mut args = vec![
            "load",
            "--url",
            &url,
            "--stages",
            &stages,
            "--channels",
            "2",
            "--rate",
            "100",
            "--heartbeat",
            "500ms",
            "--max-missed",
            "2",
            "--grace",
            "3s",
            "--progress-interval",
            "1s",
        ];
        args.extend(extra.iter().map(String::as_str));
        pushscope(&args, Some(&out), Duration::from_secs(60)).unwrap()
    })
}

/// Polls the pusher's `/metrics` until all `CONNS` subscribers are
/// connected and deliveries flow to them (100 more since all were
/// connected: every subscriber has messages to resume after). Panics with
/// the run's stderr if it ended first.
fn wait_all_receiving(
    addr: SocketAddr,
    run: thread::JoinHandle<LoadRun>,
) -> thread::JoinHandle<LoadRun> {
    wait_all_received(addr, run, 100.0)
}

/// [`wait_all_receiving`] for `more` deliveries.
fn wait_all_received(
    addr: SocketAddr,
    run: thread::JoinHandle<LoadRun>,
    more: f64,
) -> thread::JoinHandle<LoadRun> {
    let flowing = wait_until_flowing(addr, CONNS, more, Duration::from_secs(20), || {
        run.is_finished()
    });
    if !flowing {
        let run = run.join().unwrap();
        panic!(
            "the load run ended before all {CONNS} subscribers were receiving; stderr:\n{}",
            run.stderr
        );
    }
    run
}

fn assert_recovered(run: &LoadRun, reason: &[&str]) {
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    let s = run.stage(0);
    let m = |f| run.stage_u64(0, "messages", f);
    assert_eq!(m("lost"), 0, "{s}");
    assert_eq!(m("duplicates"), 0, "{s}");
    assert_eq!(m("received"), m("expected"), "{s}");
    assert!(m("published") >= 500, "{s}");
    let c = |f| run.stage_u64(0, "connections", f);
    assert_eq!(c("unexpected_disconnects"), CONNS, "{s}");
    assert_eq!(c("reconnects"), CONNS, "{s}");
    let by_reason: u64 = reason
        .iter()
        .filter_map(|r| s["disconnects_by_reason"][r].as_u64())
        .sum();
    assert_eq!(by_reason, CONNS, "{s}");
    let stability = s["connections"]["stability"].as_f64().unwrap();
    assert!(stability < 1.0, "{s}");
}

#[test]
fn sigstop_longer_than_two_heartbeats_reconnects_and_resumes_without_loss() {
    let _heavy = heavy_lock();
    let p = Pusher::start(&["--heartbeat-ms", "1000"]).unwrap();
    let out = tempfile::tempdir().unwrap();
    let run = load(format!("ws://{}/ws", p.addr), out.path().into(), "9s");
    let run = wait_all_receiving(p.addr, run);
    p.guard.signal(libc::SIGSTOP);
    // The injected freeze (not a wait for anything): 2 missed pongs at
    // 500 ms take 1.5 s; stay frozen well past it.
    thread::sleep(Duration::from_millis(2500));
    p.guard.signal(libc::SIGCONT);
    let run = run.join().unwrap();
    assert_recovered(&run, &["heartbeat lost"]);
}

#[test]
fn kill_9_and_restart_on_same_data_dir_loses_nothing() {
    let _heavy = heavy_lock();
    let dir = tempfile::tempdir().unwrap();
    let mut p = Pusher::start_in(dir.path(), &[]).unwrap();
    let addr = p.addr;
    let out = tempfile::tempdir().unwrap();
    let run = load(format!("ws://{addr}/ws"), out.path().into(), "8s");
    let run = wait_all_receiving(addr, run);
    // SIGKILL and reap: once kill() returns the process is gone and its
    // listening socket closed.
    p.guard.kill();
    // Restart on the same address. The pusher binds with SO_REUSEADDR, so
    // the old connections' TIME_WAIT does not block it; should the address
    // still be taken, the new pusher exits without printing it and we retry.
    let (_restarted, line) = poll_until(
        "the restarted pusher to listen on the old address",
        Duration::from_secs(10),
        || {
            let mut cmd = Command::new(bin_path("pushscope-pusher"));
            cmd.arg("--listen")
                .arg(addr.to_string())
                .arg("--data-dir")
                .arg(dir.path());
            spawn_first_line(cmd, Duration::from_secs(10)).map_err(|e| e.to_string())
        },
    );
    assert_eq!(line, addr.to_string());
    let run = run.join().unwrap();
    assert_recovered(&run, &["eof", "connection reset"]);
}

/// Restarts a pusher on `addr` (retrying while the address is still taken).
fn restart_on(addr: SocketAddr, args: &[&str]) -> ChildGuard {
    let (guard, line) = poll_until(
        "the restarted pusher to listen on the old address",
        Duration::from_secs(10),
        || {
            let mut cmd = Command::new(bin_path("pushscope-pusher"));
            cmd.arg("--listen").arg(addr.to_string()).args(args);
            spawn_first_line(cmd, Duration::from_secs(10)).map_err(|e| e.to_string())
        },
    );
    assert_eq!(line, addr.to_string());
    guard
}

fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// In memory, kill -9 and restart: a new history. Every subscriber resumes
/// naming the old history and is replayed the new one from its start (none
/// of its seqs 1..=last_seq skipped); then a SIGSTOP past 2 heartbeats
/// makes every subscriber resume again, now on the new history from its
/// own last seq (which the old history's higher `last_seq` must not
/// shadow: the old pusher got ~100 messages to each subscriber, the new
/// one only a few before the freeze). The loss is only what the old pusher accepted and never
/// delivered, each duplicate a message it pushed unanswered and the
/// publisher re-posted: the logs explain both, id by id.
#[test]
fn kill_9_and_restart_in_memory_resumes_the_new_history_from_its_start() {
    let _heavy = heavy_lock();
    let mut p = Pusher::start_in_memory(&["--heartbeat-ms", "1000"]).unwrap();
    let addr = p.addr;
    let out = tempfile::tempdir().unwrap();
    let logs = out.path().join("logs");
    let run = load_logged(
        format!("ws://{addr}/ws"),
        out.path().into(),
        "12s",
        &["--log-dir", logs.to_str().unwrap()],
    );
    // ~100 messages per subscriber from the old pusher.
    let run = wait_all_received(addr, run, 2000.0);
    let killed_at = mono_ns();
    p.guard.kill();
    let restarted = restart_on(addr, &["--heartbeat-ms", "1000"]);
    // Every subscriber back on the new pusher and receiving from it.
    let run = wait_all_receiving(addr, run);
    restarted.signal(libc::SIGSTOP);
    // The injected freeze: 2 missed pongs at 500 ms take 1.5 s.
    thread::sleep(Duration::from_millis(2500));
    restarted.signal(libc::SIGCONT);
    let run = run.join().unwrap();
    let s = run.stage(0);
    let m = |f| run.stage_u64(0, "messages", f);
    let c = |f| run.stage_u64(0, "connections", f);
    assert_eq!(c("unexpected_disconnects"), 2 * CONNS, "{s}");
    assert_eq!(c("reconnects"), 2 * CONNS, "{s}");
    let metrics = scrape_metrics(addr).unwrap();
    let got = |name| metric_in(&metrics, name);
    // The first resumes named the old history, the second ones this one.
    assert_eq!(
        got("pusher_resumes_total"),
        Some(2.0 * CONNS as f64),
        "{metrics}"
    );
    assert_eq!(
        got("pusher_history_mismatches_total"),
        Some(CONNS as f64),
        "{metrics}"
    );
    let predicted = predicted_loss(&logs, killed_at).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{predicted:?}");
    assert_eq!(predicted.per_subscriber.len() as u64, CONNS);
    assert_eq!(m("lost"), predicted.undelivered, "{s}\n{predicted:?}");
    assert_eq!(m("duplicates"), predicted.duplicated, "{s}\n{predicted:?}");
    assert!(m("published") >= 800, "{s}");
}
