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

/// What the logs say an in-memory pusher's restart must cost each
/// subscriber. The restarted pusher is a new history and numbers every
/// channel from seq 1 again; a subscriber's first session on it resumes
/// with `last_seq = L` (its `R` line in recv-*.log), the highest seq it got
/// from the old pusher, and the old pusher's history id, so the new pusher
/// replays everything it retains. Hence (1) old messages above L
/// (accepted, never delivered, not persisted) are gone, and nothing else:
/// every message the new pusher accepted arrives; (2) a message the old
/// pusher committed and pushed to some subscribers just before SIGKILL, but
/// never answered, was re-posted by the publisher and accepted by the new
/// pusher (publish.log holds only that answer, a new seq): the subscribers
/// that got it from the old pusher get it twice, the others once.
///
/// L can exceed the highest old seq publish.log shows the subscriber got,
/// by exactly the number of those re-accepted messages it got before
/// resuming (it got old seqs up to L without gaps): the model checks that.
#[derive(Debug)]
struct Predicted {
    undelivered: u64,
    /// Messages received twice: (subscriber, msg id) pairs.
    duplicated: u64,
    per_subscriber: Vec<u64>,
    /// Subscribers that resumed above the old seqs publish.log shows
    /// them: they got a message the old pusher never answered.
    resumed_past_answered: u64,
    /// As summary.json `lost_ids` writes them.
    ids: std::collections::BTreeSet<String>,
}

/// `Err` names a loss, a duplicate or a resume point the logs do not explain.
fn predicted_loss(logs: &Path, killed_at_ns: u64) -> Result<Predicted, String> {
    use std::collections::{BTreeMap, BTreeSet, HashMap};
    // msg_id -> (channel, server seq, which pusher: 0 old, 1 restarted)
    let mut published: BTreeMap<u64, (u64, u64, u32)> = BTreeMap::new();
    let mut last: HashMap<u64, (u64, u32)> = HashMap::new();
    for line in std::fs::read_to_string(logs.join("publish.log"))
        .unwrap()
        .lines()
    {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.first() != Some(&"p") {
            continue;
        }
        let (id, ch): (u64, u64) = (f[1].parse().unwrap(), f[2].parse().unwrap());
        let seq: u64 = f[5].parse().expect("the pusher answers with a seq");
        let e = last.entry(ch).or_insert((0, 0));
        if seq <= e.0 {
            e.1 += 1; // numbering restarted: the new pusher
        }
        e.0 = seq;
        published.insert(id, (ch, seq, e.1));
    }
    assert!(
        last.values().all(|(_, era)| *era == 1),
        "every channel's numbering restarted once: {last:?}"
    );
    /// One subscriber's receive log, in its order.
    #[derive(Default)]
    struct Sub {
        /// msg id -> times received.
        got: BTreeMap<u64, u64>,
        /// Received before its first resume after the kill (old pusher).
        before_resume: Vec<u64>,
        /// `last_seq` of its first resume after the kill.
        resume: Option<u64>,
        channel: Option<u64>,
    }
    let mut subs: BTreeMap<u64, Sub> = BTreeMap::new();
    for e in std::fs::read_dir(logs).unwrap() {
        let path = e.unwrap().path();
        if !path
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("recv-")
        {
            continue;
        }
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let Some(sub) = f.get(1).and_then(|v| v.parse::<u64>().ok()) else {
                continue;
            };
            let s = subs.entry(sub).or_default();
            match f[0] {
                "r" => {
                    let id = f[2].parse().unwrap();
                    *s.got.entry(id).or_default() += 1;
                    if s.resume.is_none() {
                        s.before_resume.push(id);
                    }
                }
                "R" if s.resume.is_none() && f[2].parse::<u64>().unwrap() >= killed_at_ns => {
                    s.resume = Some(f[3].parse().expect("a pushscope resume names a last_seq"));
                }
                "s" => s.channel = Some(f[2].parse().unwrap()),
                _ => {}
            }
        }
    }
    let mut p = Predicted {
        undelivered: 0,
        duplicated: 0,
        per_subscriber: Vec::new(),
        resumed_past_answered: 0,
        ids: BTreeSet::new(),
    };
    for (sub, s) in &subs {
        let ch = s.channel.expect("every subscriber's summary line");
        let resume_at = s
            .resume
            .ok_or(format!("subscriber {sub} never resumed after the kill"))?;
        // What publish.log says it got from the old pusher.
        let old = s
            .before_resume
            .iter()
            .filter_map(|id| Some((*id, published.get(id)?)));
        let answered_max = old
            .clone()
            .filter(|(_, (_, _, era))| *era == 0)
            .map(|(_, (_, seq, _))| *seq)
            .max()
            .unwrap_or(0);
        let reaccepted: BTreeSet<u64> = old
            .filter(|(_, (_, _, era))| *era == 1)
            .map(|(id, _)| id)
            .collect();
        if resume_at != answered_max + reaccepted.len() as u64 {
            return Err(format!(
                "subscriber {sub} resumed with last_seq {resume_at}: the old pusher's answers show \
                 {answered_max}, plus {} messages it got that the new pusher accepted",
                reaccepted.len()
            ));
        }
        p.resumed_past_answered += u64::from(!reaccepted.is_empty());
        // Received twice: exactly the re-accepted ones it had already.
        let twice: BTreeSet<u64> = s
            .got
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(id, _)| *id)
            .collect();
        if twice != reaccepted {
            return Err(format!(
                "subscriber {sub} got msg_ids {twice:?} twice, the new pusher re-accepted {reaccepted:?} it had"
            ));
        }
        p.duplicated += twice.len() as u64;
        let mut n = 0;
        for (id, (c, seq, era)) in &published {
            if *c != ch || s.got.contains_key(id) {
                continue;
            }
            if *era != 0 || *seq <= resume_at {
                return Err(format!(
                    "subscriber {sub} lost msg_id {id} (seq {seq}, pusher {era}), which no resume explains"
                ));
            }
            p.undelivered += 1;
            n += 1;
            p.ids.insert(format!("msg_id {id} (subscriber {sub})"));
        }
        p.per_subscriber.push(n);
    }
    Ok(p)
}

/// The model on logs shaped like a failing run's: the old pusher answered
/// msgs 1-3 (its seqs 1-3) and pushed msg 4 (its seq 4) to subscriber 0
/// only before it was killed, unanswered; the publisher re-posted msg 4 and
/// the new pusher gave it seq 1 (msgs 5, 6: seqs 2, 3). Subscriber 0
/// resumed with last_seq 4 (one past its last answered seq) and got the
/// new history replayed: msg 4 twice. Subscriber 1 (a reconnect to the old
/// pusher before the kill, then last_seq 2) never got old seq 3: lost.
#[test]
fn the_loss_model_follows_a_resume_past_the_last_answered_seq() {
    let logs = tempfile::tempdir().unwrap();
    let d = logs.path();
    std::fs::write(
        d.join("publish.log"),
        "run 7\np 1 0 1 100 1\np 2 0 2 200 2\np 3 0 3 300 3\np 4 0 4 400 1\np 5 0 5 500 2\np 6 0 6 600 3\n",
    )
    .unwrap();
    let recv = |resume_0: u64, sub1_after: &str| {
        format!(
            "r 0 1\nr 1 1\nR 1 500 1\nr 0 2\nr 1 2\nr 0 3\nr 0 4\nR 0 1000 {resume_0}\nR 1 1001 2\n\
             a 0 3\nr 0 4 1\nr 0 5\nr 0 6\n{sub1_after}s 0 0 1 6\ns 1 0 1 6\n"
        )
    };
    let all = "r 1 4 1\nr 1 5\nr 1 6\n";
    std::fs::write(d.join("recv-0-0.log"), recv(4, all)).unwrap();
    let p = predicted_loss(d, 900).unwrap();
    assert_eq!(
        (p.undelivered, p.duplicated, p.resumed_past_answered),
        (1, 1, 1)
    );
    assert_eq!(p.per_subscriber, vec![0, 1]);
    let ids: Vec<&str> = p.ids.iter().map(String::as_str).collect();
    assert_eq!(ids, ["msg_id 3 (subscriber 1)"]);
    // A resume point the logs cannot explain is a failure, not a fit.
    std::fs::write(d.join("recv-0-0.log"), recv(5, all)).unwrap();
    let why = predicted_loss(d, 900).unwrap_err();
    assert!(why.contains("resumed with last_seq 5"), "{why}");
    // ...and so is one below what the subscriber got (seq 4 of msg 4).
    std::fs::write(d.join("recv-0-0.log"), recv(3, all)).unwrap();
    let why = predicted_loss(d, 900).unwrap_err();
    assert!(why.contains("resumed with last_seq 3"), "{why}");
    // A message of the new pusher missing (skipped by a resume) is no fit.
    std::fs::write(d.join("recv-0-0.log"), recv(4, "r 1 5\nr 1 6\n")).unwrap();
    let why = predicted_loss(d, 900).unwrap_err();
    assert!(why.contains("lost msg_id 4 (seq 1, pusher 1)"), "{why}");
    // Nor is a duplicate no re-post explains.
    std::fs::write(
        d.join("recv-0-0.log"),
        recv(4, "r 1 4 1\nr 1 5\nr 1 5\nr 1 6\n"),
    )
    .unwrap();
    let why = predicted_loss(d, 900).unwrap_err();
    assert!(why.contains("subscriber 1 got msg_ids {5} twice"), "{why}");
}
