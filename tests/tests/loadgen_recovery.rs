//! Recovery against the reference pusher: a server frozen (SIGSTOP) for
//! longer than 2 heartbeats, and a server killed (-9) and restarted on its
//! data dir. Clients must notice, reconnect, resume from their last seq,
//! and the run must report zero loss and exactly one unexpected disconnect
//! per connection.

use pushscope_tests::{
    bin_path, heavy_lock,
    loadgen::pushscope,
    loadgen::LoadRun,
    poll_until,
    pusher::{wait_until_flowing, Pusher},
    spawn_first_line,
};
use std::{net::SocketAddr, path::PathBuf, process::Command, thread, time::Duration};

const CONNS: u64 = 20;

/// Starts a 20-connection load run in the background.
fn load(url: String, out: PathBuf, hold: &'static str) -> thread::JoinHandle<LoadRun> {
    thread::spawn(move || {
        let stages = format!("{CONNS}:{hold}");
        pushscope(
            &[
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
            ],
            Some(&out),
            Duration::from_secs(60),
        )
        .unwrap()
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
    let flowing = wait_until_flowing(addr, CONNS, 100.0, Duration::from_secs(20), || {
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
