//! Scheduled faults end to end through `pushscope run --pid` against the
//! reference pusher (root: the observer attaches): pause (SIGSTOP/SIGCONT
//! of the target, also continued when pushscope is interrupted) and
//! kill-restart (SIGKILL, `--restart-cmd`, the observer follows the new
//! PID, zero loss with persistence; without `--data-dir` the restarted
//! pusher is a new history, resumes naming the old one are replayed
//! everything, and the loss — only what the old pusher never delivered —
//! is named message by message and matched against the run's
//! publish/receive logs), partition (heartbeat detection, reconnect, resume).

use pushscope_tests::{
    bin_path, heavy_lock,
    loadgen::{pushscope, LoadRun},
    pusher::{metric_in, Pusher},
    restart_model::predicted_loss,
    scrape_metrics, skip_unless_root,
};
use serde_json::Value;
use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

fn state(pid: u32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s[s.rfind(')')? + 1..]
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

fn write_scenario(dir: &Path, faults: &str) -> String {
    let p = dir.join("scenario.toml");
    std::fs::write(&p, faults).unwrap();
    p.display().to_string()
}

fn run(pusher_pid: u32, url: &str, scenario: &str, extra: &[&str], out: &Path) -> LoadRun {
    let pid = pusher_pid.to_string();
    let mut args = vec![
        "run",
        "--pid",
        &pid,
        "--url",
        url,
        "--protocol",
        "pushscope",
        "--scenario",
        scenario,
        "--channels",
        "4",
        "--rate",
        "40",
        "--grace",
        "2s",
        "--no-profile",
    ];
    if !extra.contains(&"--thresholds") {
        args.extend_from_slice(&["--profile", "lenient"]);
    }
    args.extend_from_slice(extra);
    pushscope(&args, Some(out), Duration::from_secs(120)).unwrap()
}

fn fault(run: &LoadRun, k: usize) -> &Value {
    &run.summary.as_ref().expect("summary.json")["faults"][k]
}

#[test]
fn pause_2s_of_the_pusher_shows_in_latency_with_no_loss_needs_root() {
    if skip_unless_root("pause_2s_of_the_pusher_shows_in_latency_with_no_loss_needs_root") {
        return;
    }
    let _heavy = heavy_lock();
    let pusher = Pusher::start(&[]).unwrap();
    let out = tempfile::tempdir().unwrap();
    let sc = write_scenario(
        out.path(),
        "stages = [\"100:7s\"]\n[[faults]]\nat = \"2s\"\nstage = 1\nkind = \"pause\"\nduration = \"2s\"\n",
    );
    let url = format!("ws://{}/ws", pusher.addr);
    let r = run(pusher.pid(), &url, &sc, &[], &out.path().join("o"));
    let s = r.summary.as_ref().unwrap_or_else(|| panic!("{}", r.stderr));
    assert_eq!(s["complete"], true, "{}", r.stderr);
    let f = fault(&r, 0);
    assert_eq!(f["kind"], "pause");
    assert_eq!(f["status"], "done", "{f:#}");
    // Held until its planned end (planned start + 2 s), where SIGCONT is sent.
    let held = f["end_mono_ns"].as_u64().unwrap() - f["start_mono_ns"].as_u64().unwrap();
    assert!(
        f["end_mono_ns"].as_u64() >= f["planned_end_mono_ns"].as_u64(),
        "{f:#}"
    );
    assert!(
        (1_700_000_000..2_600_000_000).contains(&held),
        "held {held} ns"
    );
    // Planned from the stage's actual start, fired on time (busy machine: < 300 ms late).
    assert!(f["start_lag_ms"].as_f64().unwrap() < 300.0, "{f:#}");
    let o = &f["outcome"];
    assert_eq!(o["extra"]["processes_stopped"], 1, "the pusher: {o:#}");
    // A message due just after the SIGSTOP waits for the SIGCONT: the
    // publish schedule is 40/s, so one is due within 25 ms of the stop.
    let max = o["latency_max_ms"].as_f64().unwrap();
    assert!(max >= 1_900.0, "latency max {max} ms: {o:#}");
    assert_eq!(o["lost"], 0, "{o:#}");
    assert_eq!(o["duplicates"], 0, "{o:#}");
    assert_eq!(s["stages"][0]["load"]["messages"]["lost"], 0);
    assert!(
        s["stages"][0]["load"]["latency_ms"]["max"]
            .as_f64()
            .unwrap()
            >= 1_900.0
    );
    // The pusher runs again.
    assert_ne!(state(pusher.pid()), Some('T'));
    eprintln!("pause fault: {f:#}");
    let html = std::fs::read_to_string(out.path().join("o/report.html")).unwrap();
    assert!(
        html.contains("class=\"fault\""),
        "a band on the time charts"
    );
    assert!(html.contains("<h2>Faults</h2>"));
}

#[test]
fn pause_is_lifted_when_pushscope_is_interrupted_needs_root() {
    if skip_unless_root("pause_is_lifted_when_pushscope_is_interrupted_needs_root") {
        return;
    }
    let _heavy = heavy_lock();
    let pusher = Pusher::start(&[]).unwrap();
    let out = tempfile::tempdir().unwrap();
    let sc = write_scenario(
        out.path(),
        "stages = [\"50:30s\"]\n[[faults]]\nat = \"1s\"\nstage = 1\nkind = \"pause\"\nduration = \"25s\"\n",
    );
    let url = format!("ws://{}/ws", pusher.addr);
    let pid = pusher.pid().to_string();
    let o = out.path().join("o");
    let mut child = pushscope_tests::ChildGuard {
        child: Command::new(bin_path("pushscope"))
            .args([
                "run",
                "--pid",
                &pid,
                "--url",
                &url,
                "--scenario",
                &sc,
                "--rate",
                "10",
                "--no-profile",
                "--out",
            ])
            .arg(&o)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        name: "pushscope".into(),
    };
    let t0 = Instant::now();
    while state(pusher.pid()) != Some('T') {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the pause never stopped the pusher"
        );
        assert!(
            child.child.try_wait().unwrap().is_none(),
            "pushscope exited"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.signal(libc::SIGINT);
    let status = child
        .wait_timeout(Duration::from_secs(10))
        .expect("pushscope ends on SIGINT");
    assert!(!status.success());
    let t1 = Instant::now();
    while state(pusher.pid()) == Some('T') {
        assert!(
            t1.elapsed() < Duration::from_secs(2),
            "the pusher was left stopped"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn kill_restart_with_persistence_loses_nothing_and_the_observer_follows_needs_root() {
    if skip_unless_root(
        "kill_restart_with_persistence_loses_nothing_and_the_observer_follows_needs_root",
    ) {
        return;
    }
    let _heavy = heavy_lock();
    let data = tempfile::tempdir().unwrap();
    let pusher = Pusher::start_in(data.path(), &["--fsync", "always"]).unwrap();
    let listen = pusher.addr.to_string();
    let restart = format!(
        "exec {} --listen {listen} --data-dir {} --fsync always",
        bin_path("pushscope-pusher").display(),
        data.path().display()
    );
    let out = tempfile::tempdir().unwrap();
    let sc = write_scenario(
        out.path(),
        &format!(
            "stages = [\"100:9s\"]\nheartbeat = \"1s\"\nrestart_cmd = {restart:?}\n\
             [[faults]]\nat = \"2s\"\nstage = 1\nkind = \"kill-restart\"\nduration = \"500ms\"\n"
        ),
    );
    let url = format!("ws://{listen}/ws");
    let r = run(pusher.pid(), &url, &sc, &[], &out.path().join("o"));
    let s = r.summary.as_ref().unwrap_or_else(|| panic!("{}", r.stderr));
    let f = fault(&r, 0);
    let new_pid = f["outcome"]["new_pid"].as_u64().map(|p| p as u32);
    // The restarted pusher is ours to stop whatever the assertions say.
    struct Kill(Option<u32>);
    impl Drop for Kill {
        fn drop(&mut self) {
            if let Some(p) = self.0 {
                // SAFETY: kill(2) of the process the test started through pushscope.
                unsafe { libc::kill(p as i32, libc::SIGKILL) };
            }
        }
    }
    let _kill = Kill(
        new_pid.or(f["outcome"]["extra"]["restart_shell_pid"]
            .as_u64()
            .map(|p| p as u32)),
    );
    eprintln!("kill-restart fault: {f:#}");
    assert_eq!(s["complete"], true, "{}\n{f:#}", r.stderr);
    assert_eq!(f["status"], "done", "{f:#}");
    let o = &f["outcome"];
    let new_pid = new_pid.expect("new pid");
    assert_ne!(new_pid, pusher.pid());
    assert_eq!(o["observer_reattached"], true, "{o:#}");
    assert_eq!(s["target"]["pid"], pusher.pid());
    // Every subscriber lost its connection and came back.
    assert_eq!(o["disconnected"], 100, "{o:#}");
    assert_eq!(o["reconnected"], 100, "{o:#}");
    // With persistence (fsync always) and resume: nothing lost, no duplicate.
    assert_eq!(o["lost"], 0, "{o:#}");
    assert_eq!(o["duplicates"], 0, "{o:#}");
    assert!(o["resumed_messages"].as_u64().is_some(), "{o:#}");
    // The observer counted the reconnects on the new process: 100 before
    // the kill, 100 after (plus publisher connections).
    let accepted = s["stages"][0]["observer"]["connections"]["accepted"]
        .as_u64()
        .unwrap();
    assert!(accepted >= 200, "accepted {accepted}");
    assert!(
        std::fs::metadata(out.path().join("o/restart-1.log")).is_ok(),
        "restart log"
    );
    // The data dir kept the history: every resume named it and continued.
    let m = scrape_metrics(pusher.addr).unwrap();
    assert!(
        metric_in(&m, "pusher_resumes_total").is_some_and(|n| n >= 100.0),
        "{m}"
    );
    assert_eq!(
        metric_in(&m, "pusher_history_mismatches_total"),
        Some(0.0),
        "{m}"
    );
}

#[test]
fn partition_5s_is_detected_by_heartbeats_and_every_client_resumes_needs_root() {
    if skip_unless_root(
        "partition_5s_is_detected_by_heartbeats_and_every_client_resumes_needs_root",
    ) {
        return;
    }
    let _heavy = heavy_lock();
    // The load generator reaches the pusher through the (transparent)
    // emulated link the run sets up for the partition.
    let pusher = Pusher::start(&["--fsync", "always"]).unwrap();
    let out = tempfile::tempdir().unwrap();
    let sc = write_scenario(
        out.path(),
        "stages = [\"100:14s\"]\nheartbeat = \"1s\"\nmax_missed = 2\n\
         [[faults]]\nat = \"2s\"\nstage = 1\nkind = \"partition\"\nduration = \"5s\"\n",
    );
    let url = format!("ws://{}/ws", pusher.addr);
    let r = run(
        pusher.pid(),
        &url,
        &sc,
        &["--thresholds", &thresholds(out.path())],
        &out.path().join("o"),
    );
    let s = r.summary.as_ref().unwrap_or_else(|| panic!("{}", r.stderr));
    let f = fault(&r, 0);
    eprintln!("partition fault: {f:#}");
    assert_eq!(s["complete"], true, "{}", r.stderr);
    assert_eq!(f["status"], "done", "{f:#}");
    let o = &f["outcome"];
    // Heartbeat 1 s, 2 missed: the first client notices within ~2-3 s.
    let detection = o["detection_ms"].as_f64().expect("detected");
    assert!((1_000.0..=3_500.0).contains(&detection), "{o:#}");
    assert_eq!(o["disconnected"], 100, "{o:#}");
    assert_eq!(o["reconnected"], 100, "{o:#}");
    assert!(o["recovery_p99_ms"].as_f64().unwrap() < 6_000.0, "{o:#}");
    assert!(o["resumed_messages"].as_u64().unwrap() > 0, "{o:#}");
    assert_eq!(o["lost"], 0, "{o:#}");
    assert_eq!(o["duplicates"], 0, "{o:#}");
    // The fault criteria were judged in the stage.
    let crit: Vec<&Value> = s["stages"][0]["criteria"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| {
            c["name"]
                .as_str()
                .unwrap()
                .starts_with("fault 1 (partition)")
        })
        .collect();
    assert_eq!(crit.len(), 3, "{crit:?}");
    assert!(crit.iter().all(|c| c["pass"] == true), "{crit:?}");
}

fn thresholds(dir: &Path) -> String {
    let p = dir.join("thresholds.toml");
    std::fs::write(
        &p,
        "extends = \"lenient\"\nfault_recovery_p99_ms = 6000\nfault_detection_max_ms = 3500\nfault_lost_max = 0\n",
    )
    .unwrap();
    p.display().to_string()
}

#[test]
fn kill_restart_without_persistence_names_the_loss_needs_root() {
    if skip_unless_root("kill_restart_without_persistence_names_the_loss_needs_root") {
        return;
    }
    let _heavy = heavy_lock();
    let pusher = Pusher::start_in_memory(&[]).unwrap();
    let listen = pusher.addr.to_string();
    let restart = format!(
        "exec {} --listen {listen}",
        bin_path("pushscope-pusher").display(),
    );
    let out = tempfile::tempdir().unwrap();
    let sc = write_scenario(
        out.path(),
        &format!(
            "stages = [\"100:9s\"]\nheartbeat = \"1s\"\nrestart_cmd = {restart:?}\n\
             [[faults]]\nat = \"2s\"\nstage = 1\nkind = \"kill-restart\"\nduration = \"500ms\"\n"
        ),
    );
    let url = format!("ws://{listen}/ws");
    let r = run(pusher.pid(), &url, &sc, &[], &out.path().join("o"));
    let s = r.summary.as_ref().unwrap_or_else(|| panic!("{}", r.stderr));
    let f = fault(&r, 0);
    struct Kill(Option<u32>);
    impl Drop for Kill {
        fn drop(&mut self) {
            if let Some(p) = self.0 {
                // SAFETY: kill(2) of the process the test started through pushscope.
                unsafe { libc::kill(p as i32, libc::SIGKILL) };
            }
        }
    }
    // The restart shell is the pusher (`exec`), also when the fault did
    // not find it listening.
    let restarted = f["outcome"]["new_pid"]
        .as_u64()
        .or(f["outcome"]["extra"]["restart_shell_pid"].as_u64());
    let _kill = Kill(restarted.map(|p| p as u32));
    eprintln!("kill-restart (in memory) fault: {f:#}");
    assert_eq!(s["complete"], true, "{}\n{f:#}", r.stderr);
    assert_eq!(f["status"], "done", "{f:#}");
    let o = &f["outcome"];
    assert_eq!(o["observer_reattached"], true, "{o:#}");
    assert_eq!(o["disconnected"], 100, "{o:#}");
    assert_eq!(o["reconnected"], 100, "{o:#}");
    let load = &s["stages"][0]["load"];
    // The publisher retried what the dead pusher refused: every message
    // was accepted by one pusher or the other.
    assert_eq!(load["loadgen"]["publish_failed"], 0, "{load:#}");
    let lost = o["lost"].as_u64().unwrap();
    assert_eq!(load["messages"]["lost"], lost);
    let duplicates = o["duplicates"].as_u64().unwrap();
    assert_eq!(load["messages"]["duplicates"], duplicates);
    // The restarted pusher is a new history: each subscriber's first
    // resume on it named the old one and was replayed everything retained.
    let m = scrape_metrics(pusher.addr).unwrap();
    assert_eq!(
        metric_in(&m, "pusher_history_mismatches_total"),
        Some(100.0),
        "{m}"
    );
    // The loss, named from the logs the run wrote (logs/publish.log: the
    // server seq each message got; recv-*.log: what each subscriber got).
    let killed_at = f["start_mono_ns"].as_u64().expect("the kill's time");
    let predicted =
        predicted_loss(&out.path().join("o/logs"), killed_at).unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "lost {lost}: {} messages the old pusher never delivered (per subscriber: {:?} ...); {duplicates} duplicates: {} subscribers resumed past the old pusher's last answered seq, {} got such a message again",
        predicted.undelivered, &predicted.per_subscriber[..4], predicted.resumed_past_answered, predicted.duplicated
    );
    assert_eq!(predicted.per_subscriber.len(), 100, "{predicted:?}");
    // Nothing the new pusher accepted is skipped: the loss is exactly what
    // the old one accepted and never delivered (none when it was killed
    // with every subscriber caught up).
    assert_eq!(predicted.undelivered, lost, "{predicted:?}");
    // A message the old pusher pushed but never answered was re-posted and
    // accepted again: the subscribers that had it get it twice, no others.
    assert_eq!(predicted.duplicated, duplicates, "{predicted:?}");
    // ...and the run named exactly those: summary.json lost_ids.
    assert_eq!(s["lost_ids"].as_array().unwrap().len() as u64, lost);
    let named: std::collections::BTreeSet<String> = s["lost_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(named, predicted.ids, "lost ids");
    // `verify` reads the same logs (their R lines too) to the same loss.
    let logs = out.path().join("o/logs");
    let v = pushscope(
        &["verify", "--log-dir", logs.to_str().unwrap()],
        None,
        Duration::from_secs(20),
    )
    .unwrap();
    assert_eq!(
        v.code,
        Some(if lost + duplicates > 0 { 1 } else { 0 }),
        "{}\n{}",
        v.stdout,
        v.stderr
    );
    for part in [
        ", 100 reconnects".to_string(),
        format!("({lost} lost, {duplicates} duplicated"),
    ] {
        assert!(v.stdout.contains(&part), "{part}: {}", v.stdout);
    }
}
