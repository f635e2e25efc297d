//! `pushscope run --pid` against the faulty server as a real process: the
//! run finds exactly the faults injected (drops, duplicates, reorders,
//! refused upgrades), REJECTs under the financial profile naming the
//! criteria that failed, and its observer covers every connection; a
//! server that pushes before it answers the publish is neither a crash
//! nor loss, and its message path still joins exactly. Needs root.

use pushscope_tests::{
    bin_path, heavy_lock, loadgen::pushscope, skip_unless_root, spawn_first_line, ChildGuard,
};
use serde_json::Value;
use std::{path::Path, process::Command, time::Duration};

fn faulty(args: &[&str]) -> (ChildGuard, String) {
    let mut cmd = Command::new(bin_path("faulty_server"));
    cmd.args(args);
    let (guard, line) = spawn_first_line(cmd, Duration::from_secs(10)).unwrap();
    let addr = line
        .strip_prefix("listening ")
        .unwrap_or_else(|| panic!("first line: {line}"))
        .to_string();
    (guard, addr)
}

fn run(pid: u32, addr: &str, subs: &str, out: &Path) -> pushscope_tests::loadgen::LoadRun {
    let pid = pid.to_string();
    let url = format!("ws://{addr}/ws");
    let args = [
        "run",
        "--pid",
        &pid,
        "--url",
        &url,
        "--stages",
        subs,
        "--channels",
        "1",
        "--rate",
        "50",
        "--grace",
        "1s",
    ];
    pushscope(&args, Some(out), Duration::from_secs(90)).unwrap()
}

fn criterion<'a>(stage: &'a Value, name: &str) -> &'a Value {
    stage["criteria"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no criterion {name}: {stage:#}"))
}

#[test]
fn run_finds_exactly_the_injected_faults_and_rejects_needs_root() {
    if skip_unless_root("run_finds_exactly_the_injected_faults_and_rejects_needs_root") {
        return;
    }
    let _heavy = heavy_lock();
    // Seqs 30 and 31 never pushed, 40 pushed twice, 50 and 51 swapped; the
    // first 3 upgrade attempts answered 503 (the load generator's reachability
    // probe meets the first one, before stage 1).
    let (srv, addr) = faulty(&[
        "--drop",
        "30,31",
        "--repeat",
        "40",
        "--reorder",
        "50",
        "--refuse-first-upgrades",
        "3",
    ]);
    let out = tempfile::tempdir().unwrap();
    let r = run(srv.pid(), &addr, "10:4s", out.path());
    assert_eq!(r.code, Some(1), "{}\n{}", r.stdout, r.stderr);
    let s = r.summary.as_ref().unwrap();
    assert_eq!(s["verdict"], "rejected");
    let st = &s["stages"][0];
    let load = &st["load"];
    assert_eq!(load["messages"]["lost"], 20, "{load:#}"); // 2 seqs × 10 subscribers
    assert_eq!(load["messages"]["duplicates"], 10, "{load:#}");
    assert_eq!(load["messages"]["out_of_order"], 10, "{load:#}");
    assert_eq!(load["connections"]["failed"], 2, "{load:#}");
    assert_eq!(load["failed_by_reason"]["http_503"], 2, "{load:#}");
    assert_eq!(load["connections"]["attempts"], 12, "{load:#}");
    for failing in ["loss", "duplicate_rate", "connect_failures"] {
        assert_eq!(criterion(st, failing)["pass"], false, "{failing}");
    }
    let cf = criterion(st, "connect_failures");
    assert!((cf["value"].as_f64().unwrap() - 2.0 / 12.0 * 100.0).abs() < 1e-6);
    assert_eq!(cf["detail"], "2 of 12 attempts failed (http_503 2)");
    for passing in ["observer_coverage", "probe_drops", "fd_headroom"] {
        assert_eq!(criterion(st, passing)["pass"], true, "{passing}: {st:#}");
    }
    assert_eq!(st["observer"]["coverage"]["pct"], 100.0);
    assert_eq!(s["lost_ids"].as_array().unwrap().len(), 20);
    let junit = std::fs::read_to_string(out.path().join("junit.xml")).unwrap();
    assert!(
        junit.contains("2 of 12 attempts failed (http_503 2)"),
        "{junit}"
    );
}

#[test]
fn a_server_that_pushes_before_it_answers_is_no_crash_and_no_loss_needs_root() {
    if skip_unless_root("a_server_that_pushes_before_it_answers_is_no_crash_and_no_loss_needs_root")
    {
        return;
    }
    let _heavy = heavy_lock();
    let (srv, addr) = faulty(&["--push-before-answer", "100ms"]);
    let out = tempfile::tempdir().unwrap();
    let r = run(srv.pid(), &addr, "10:3s,20:3s", out.path());
    assert!(matches!(r.code, Some(0 | 1)), "{}\n{}", r.stdout, r.stderr);
    let s = r.summary.as_ref().expect("summary.json");
    assert_eq!(s["complete"], true);
    for k in 0..2 {
        let st = &s["stages"][k];
        assert_eq!(st["load"]["messages"]["lost"], 0, "{st:#}");
        assert_eq!(st["load"]["messages"]["duplicates"], 0, "{st:#}");
        let mp = &st["message_path"];
        assert_eq!(mp["unjoined"], serde_json::json!({}), "{mp:#}");
        // Frames go out before the answer: the server leg stays short while
        // the publisher waits ~100 ms per answer before its next publish.
        assert!(
            mp["legs"]["server"]["p50"].as_f64().unwrap() < 50.0,
            "{mp:#}"
        );
    }
}
