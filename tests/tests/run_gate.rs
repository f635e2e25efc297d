//! `pushscope run` end to end: real pusher (or the faulty server), real
//! load, real probes (root), the gate's verdict, exit codes and outputs.

use pushscope_tests::{
    faulty_server::{Faults, FaultyServer},
    heavy_lock,
    loadgen::{pushscope, LoadRun},
    pusher::Pusher,
    skip_unless_root,
};
use serde_json::Value;
use std::{path::Path, process::Command, time::Duration};

const STAGES: &[&str] = &[
    "--stages",
    "100:3s,200:3s",
    "--channels",
    "4",
    "--rate",
    "40",
    "--grace",
    "1s",
];

fn run_against_pusher(pusher: &Pusher, extra: &[&str], out: &Path) -> LoadRun {
    let pid = pusher.pid().to_string();
    let url = format!("ws://{}/ws", pusher.addr);
    let mut args = vec![
        "run",
        "--pid",
        &pid,
        "--url",
        &url,
        "--protocol",
        "pushscope",
    ];
    args.extend_from_slice(STAGES);
    args.extend_from_slice(extra);
    pushscope(&args, Some(out), Duration::from_secs(90)).unwrap()
}

fn criteria(summary: &Value, stage: usize) -> Vec<(String, bool)> {
    summary["stages"][stage]["criteria"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["pass"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[test]
fn run_admits_reference_pusher_with_lenient_profile_and_report_renders_needs_root() {
    if skip_unless_root(
        "run_admits_reference_pusher_with_lenient_profile_and_report_renders_needs_root",
    ) {
        return;
    }
    let _heavy = heavy_lock();
    let pusher = Pusher::start(&[]).unwrap();
    let out = tempfile::tempdir().unwrap();
    let run = run_against_pusher(&pusher, &["--profile", "lenient"], out.path());
    assert_eq!(
        run.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    let s = run.summary.as_ref().unwrap();
    assert_eq!(s["verdict"], "admitted");
    assert_eq!(s["complete"], true);
    assert_eq!(s["stages"].as_array().unwrap().len(), 2);
    for k in 0..2 {
        let c = criteria(s, k);
        assert_eq!(c.len(), 10, "{c:?}");
        assert!(c.iter().all(|(_, pass)| *pass), "{c:?}");
        let stage = &s["stages"][k];
        let target = [100, 200][k];
        // Exact accounting from the load side, server-side phases from the probes.
        assert_eq!(stage["load"]["messages"]["lost"], 0);
        assert_eq!(
            stage["load"]["connections"]["opened"].as_u64(),
            Some(target)
        );
        let accepted = stage["observer"]["phases_ms"]["accept_wait"]["count"]
            .as_u64()
            .unwrap();
        let new_conns = stage["load"]["new_connections"].as_u64().unwrap();
        assert!(
            accepted >= new_conns,
            "stage {k}: {accepted} accept_wait samples < {new_conns} new connections"
        );
        assert!(
            stage["observer"]["phases_ms"]["ws_upgrade"]["count"]
                .as_u64()
                .unwrap()
                >= new_conns
        );
        assert_eq!(stage["figures"]["probe_drops"], 0);
        // Every attempt connected, every accepted connection was tracked.
        assert_eq!(stage["figures"]["connect_failure_pct"], 0.0);
        assert_eq!(
            stage["load"]["connections"]["attempts"].as_u64(),
            Some(new_conns)
        );
        assert_eq!(stage["figures"]["observer_coverage_pct"], 100.0);
        // The target's profile of the stage, and its files.
        assert!(
            stage["profile"]["cpu"]["samples"].as_u64().unwrap() > 0,
            "{:#}",
            stage["profile"]
        );
        assert!(stage["profile"]["runqueue"]["count"].as_u64().unwrap() > 0);
        for f in ["cpu.pb.gz", "offcpu.pb.gz", "cpu.svg", "offcpu.svg"] {
            let path = out.path().join(format!("profile/stage{}-{f}", k + 1));
            assert!(path.exists(), "{}", path.display());
        }
        // And the message path of the stage, joined exactly.
        assert_eq!(stage["message_path"]["unjoined"], serde_json::json!({}));
        // What the connections cost each side, measured.
        let sc = &stage["scale"];
        assert_eq!(sc["connections_held"].as_u64(), Some(target));
        let loadgen_per_conn = sc["loadgen_rss_per_connection_bytes"].as_f64().unwrap();
        let target_per_conn = sc["target_rss_per_connection_bytes"].as_f64().unwrap();
        assert!(loadgen_per_conn > 1_000.0, "{sc:#}");
        assert!(target_per_conn > 100.0, "{sc:#}");
        // Both ends of every held loopback connection are TCP sockets in use.
        assert!(
            sc["kernel_tcp"]["tcp_inuse"].as_u64().unwrap() >= 2 * target,
            "{sc:#}"
        );
        let observer_cpu = sc["observer_cpu_pct"].as_f64().unwrap();
        assert!((0.0..50.0).contains(&observer_cpu), "{sc:#}");
        assert!(
            sc["observer_bpf_map_bytes"].as_u64().unwrap() > 1 << 20,
            "{sc:#}"
        );
        if k == 1 {
            assert!(
                sc["per_10k_more"]["loadgen_rss_bytes"].is_number(),
                "{sc:#}"
            );
        }
    }
    assert!(
        s["timeline"].as_array().unwrap().len() >= 5,
        "one timeline point per second"
    );
    for f in [
        "junit.xml",
        "report.html",
        "lifecycle.folded",
        "lifecycle.svg",
        "trace.json",
    ] {
        assert!(out.path().join(f).exists(), "{f} missing");
    }
    let junit = std::fs::read_to_string(out.path().join("junit.xml")).unwrap();
    assert_eq!(junit.matches("<testcase").count(), 20);
    assert_eq!(junit.matches("<failure").count(), 0);

    // The report renders in headless Chromium with its verdict and criteria.
    let report = out.path().join("report.html");
    let dom = chromium(&["--dump-dom"], &report);
    assert!(
        dom.contains("ADMITTED — every criterion of every stage passed"),
        "{}",
        &dom[..dom.len().min(2000)]
    );
    assert!(dom.contains("id=\"criteria\""));
    assert!(dom.contains("Where message latency goes") && dom.contains("on-CPU, self"));
    assert!(dom.contains("What the connections cost"));
    assert_eq!(dom.matches("<td class=\"pass\">").count(), 20);
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ci-artifacts");
    std::fs::create_dir_all(&shots).unwrap();
    let png = shots.join("report.png");
    chromium(
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1280,2400",
        ],
        &report,
    );
    let size = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 20_000,
        "screenshot {} is {size} bytes",
        png.display()
    );
}

/// Runs headless Chromium on a local file; returns stdout.
fn chromium(args: &[&str], file: &Path) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(format!("file://{}", file.display()))
        .output()
        .expect("chromium is installed (apt-get install -y chromium; cargo xtask test installs it as root)");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn run_rejects_impossible_thresholds_with_junit_failures_needs_root() {
    if skip_unless_root("run_rejects_impossible_thresholds_with_junit_failures_needs_root") {
        return;
    }
    let _heavy = heavy_lock();
    let pusher = Pusher::start(&[]).unwrap();
    let out = tempfile::tempdir().unwrap();
    let thresholds = out.path().join("impossible.toml");
    std::fs::write(&thresholds, "extends = \"lenient\"\ne2e_p99_ms = 0.001\n").unwrap();
    let run = run_against_pusher(
        &pusher,
        &["--thresholds", thresholds.to_str().unwrap()],
        out.path(),
    );
    assert_eq!(
        run.code,
        Some(1),
        "stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    let s = run.summary.as_ref().unwrap();
    assert_eq!(s["verdict"], "rejected");
    for k in 0..2 {
        let failed: Vec<String> = criteria(s, k)
            .into_iter()
            .filter(|c| !c.1)
            .map(|c| c.0)
            .collect();
        assert_eq!(failed, vec!["e2e_p99".to_string()]);
    }
    let junit = std::fs::read_to_string(out.path().join("junit.xml")).unwrap();
    assert_eq!(junit.matches("<failure").count(), 2, "{junit}");
    assert!(
        junit.contains("e2e_p99 [stage 1 (100 conns)]")
            && junit.contains("threshold &lt;= 0.001 ms"),
        "{junit}"
    );
    assert!(run.stdout.contains("verdict: REJECTED"), "{}", run.stdout);
}

#[test]
fn run_rejects_a_server_that_loses_a_message_and_names_it() {
    let _heavy = heavy_lock();
    let server = FaultyServer::start(Faults {
        drop_seqs: vec![20],
        ..Default::default()
    })
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    let url = server.ws_url();
    // No --pid: this test needs no root; the observer's criteria fail as not measured.
    let args = [
        "run",
        "--url",
        &url,
        "--stages",
        "1:3s",
        "--channels",
        "1",
        "--rate",
        "20",
        "--grace",
        "1s",
        "--profile",
        "lenient",
    ];
    let run = pushscope(&args, Some(out.path()), Duration::from_secs(60)).unwrap();
    assert_eq!(
        run.code,
        Some(1),
        "stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    let s = run.summary.as_ref().unwrap();
    let loss = s["stages"][0]["criteria"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "loss")
        .unwrap()
        .clone();
    assert_eq!(loss["pass"], false);
    assert_eq!(loss["value"], 1.0);
    assert_eq!(
        s["lost_ids"],
        serde_json::json!(["msg_id 20 (subscriber 0)"])
    );
    let html = std::fs::read_to_string(out.path().join("report.html")).unwrap();
    assert!(html.contains("<code>msg_id 20 (subscriber 0)</code>"));
    assert!(html.contains("loss = 1 messages (threshold &lt;= 0 messages)"));
    assert!(s["not_measured"][0].as_str().unwrap().contains("no --pid"));
}

#[test]
fn run_whose_target_is_killed_mid_stage_exits_3_with_partial_summary_needs_root() {
    if skip_unless_root(
        "run_whose_target_is_killed_mid_stage_exits_3_with_partial_summary_needs_root",
    ) {
        return;
    }
    let _heavy = heavy_lock();
    let pusher = Pusher::start(&[]).unwrap();
    let pid = pusher.pid() as i32;
    let out = tempfile::tempdir().unwrap();
    let addr = pusher.addr;
    let killer = std::thread::spawn(move || {
        // Kill mid stage 2, once stage 1 has been judged: all of stage 2's
        // connections are up and ~1 s of deliveries (far beyond the 200 ms
        // grace that judges stage 1) went out since.
        pushscope_tests::pusher::wait_until_flowing(
            addr,
            100,
            1000.0,
            Duration::from_secs(20),
            || false,
        );
        // SAFETY: kill(2) on the pusher child we started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    });
    let pid_s = pid.to_string();
    let url = format!("ws://{}/ws", pusher.addr);
    let args = [
        "run",
        "--pid",
        &pid_s,
        "--url",
        &url,
        "--stages",
        "50:2s,100:30s",
        "--channels",
        "2",
        "--rate",
        "20",
        "--grace",
        "200ms",
        "--profile",
        "lenient",
    ];
    let run = pushscope(&args, Some(out.path()), Duration::from_secs(30)).unwrap();
    killer.join().unwrap();
    assert_eq!(
        run.code,
        Some(3),
        "stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    assert!(
        run.stderr.contains("exited during the run"),
        "{}",
        run.stderr
    );
    let s = run.summary.as_ref().expect("a partial summary is written");
    assert_eq!(s["verdict"], "incomplete");
    assert_eq!(s["complete"], false);
    let stages = s["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 2, "both started stages are reported");
    assert_eq!(stages[0]["complete"], true);
    assert_eq!(
        stages[1]["complete"], false,
        "the stage cut short is marked"
    );
    assert_eq!(stages[1]["pass"], false);
    assert!(out.path().join("junit.xml").exists() && out.path().join("report.html").exists());
}

#[test]
fn run_bad_usage_exits_2_with_one_sentence() {
    let out = tempfile::tempdir().unwrap();
    let bad = out.path().join("t.toml");
    std::fs::write(&bad, "e2e_p99_msec = 10\n").unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["run", "--url", "ws://127.0.0.1:9/ws", "--profile", "bank"],
            "unknown profile `bank`",
        ),
        (
            vec![
                "run",
                "--url",
                "ws://127.0.0.1:9/ws",
                "--thresholds",
                bad.to_str().unwrap(),
            ],
            "e2e_p99_msec",
        ),
        (
            vec!["run", "--url", "ws://127.0.0.1:9/ws", "--stages", "ten:5s"],
            "`ten` is not a connection count",
        ),
    ];
    for (args, needle) in cases {
        let run = pushscope(&args, None, Duration::from_secs(20)).unwrap();
        assert_eq!(run.code, Some(2), "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(needle), "{args:?}: {}", run.stderr);
    }
}

#[test]
fn run_against_unreachable_target_exits_3_and_writes_incomplete_summary() {
    let out = tempfile::tempdir().unwrap();
    let port = pushscope_tests::free_port();
    let url = format!("ws://127.0.0.1:{port}/ws");
    let run = pushscope(
        &["run", "--url", &url, "--stages", "10:1s"],
        Some(out.path()),
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(run.code, Some(3), "{}", run.stderr);
    assert!(run.stderr.contains("unreachable"), "{}", run.stderr);
    let s = run
        .summary
        .as_ref()
        .expect("summary written even when nothing ran");
    assert_eq!(s["verdict"], "incomplete");
    assert!(s["incomplete_reason"]
        .as_str()
        .unwrap()
        .contains("unreachable"));
    let junit = std::fs::read_to_string(out.path().join("junit.xml")).unwrap();
    assert!(junit.contains("<error"), "{junit}");
}
