//! Pause and partition against NGINX + nchan through `pushscope run --pid
//! <master>` (root: the observer attaches to the master and its workers).
//!
//! * pause: SIGSTOP of the master and its workers for 2 s: the latency
//!   spike shows (messages due during the stop wait for the SIGCONT), the
//!   subscribers stay connected and nothing is lost (their connections
//!   never broke; the publisher's POSTs wait in the socket).
//! * partition: 5 s of dropped traffic on the load's emulated link: the
//!   heartbeats (1 s, 2 missed) detect it, every subscriber reconnects and
//!   resumes from its last message id; loss and duplicates after resume as
//!   measured.

use pushscope_tests::{
    heavy_lock,
    loadgen::{pushscope, LoadRun},
    nginx::{self, Nginx},
    skip_unless_root,
};
use serde_json::Value;
use std::{path::Path, time::Duration};

fn run(n: &Nginx, dir: &Path, body: &str) -> LoadRun {
    let sc = dir.join("scenario.toml");
    std::fs::write(
        &sc,
        format!(
            "url = \"{}\"\nprotocol = \"nchan\"\npublish_url = \"{}\"\nchannels = 4\nrate = 40.0\ngrace = \"2s\"\n{body}",
            n.sub_url(),
            n.pub_url()
        ),
    )
    .unwrap();
    let pid = n.guard.pid().to_string();
    pushscope(
        &[
            "run",
            "--pid",
            &pid,
            "--scenario",
            sc.to_str().unwrap(),
            "--profile",
            "lenient",
            "--no-profile",
        ],
        Some(&dir.join("o")),
        Duration::from_secs(120),
    )
    .unwrap()
}

fn nginx_or_skip(test: &str) -> Option<Nginx> {
    if skip_unless_root(test) {
        return None;
    }
    if !nginx::available() {
        eprintln!("skipped {test}: nginx + nchan not installed");
        return None;
    }
    Some(Nginx::start(1).unwrap())
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

fn state(pid: u32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s[s.rfind(')')? + 1..]
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

#[test]
fn pause_2s_of_nginx_nchan_shows_in_latency_with_no_loss_needs_root() {
    let _heavy = heavy_lock();
    let Some(ngx) =
        nginx_or_skip("pause_2s_of_nginx_nchan_shows_in_latency_with_no_loss_needs_root")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let r = run(
        &ngx,
        dir.path(),
        "stages = [\"100:7s\"]\n[[faults]]\nat = \"2s\"\nstage = 1\nkind = \"pause\"\nduration = \"2s\"\n",
    );
    let s = r.summary.as_ref().unwrap_or_else(|| panic!("{}", r.stderr));
    let f = &s["faults"][0];
    eprintln!("pause (nchan): {f:#}");
    assert_eq!(s["complete"], true, "{}", r.stderr);
    assert_eq!(f["status"], "done", "{f:#}");
    let held = n(&f["end_mono_ns"]) - n(&f["start_mono_ns"]);
    assert!(
        (1_700_000_000..2_600_000_000).contains(&held),
        "held {held} ns"
    );
    let o = &f["outcome"];
    // The master and its worker.
    assert_eq!(o["extra"]["processes_stopped"], 2, "{o:#}");
    // 40 messages/s: one is due within 25 ms of the stop and waits for the
    // SIGCONT, ~2 s later.
    let max = o["latency_max_ms"].as_f64().unwrap();
    assert!(max >= 1_900.0, "latency max {max} ms: {o:#}");
    // A stop-the-world pause breaks no connection: nothing to detect,
    // nothing lost, nothing twice.
    assert_eq!(o["disconnected"], 0, "{o:#}");
    assert_eq!(o["lost"], 0, "{o:#}");
    assert_eq!(o["duplicates"], 0, "{o:#}");
    let load = &s["stages"][0]["load"];
    assert_eq!(load["connections"]["unexpected_disconnects"], 0, "{load:#}");
    assert_eq!(
        load["messages"]["received"], load["messages"]["expected"],
        "{load:#}"
    );
    assert!(n(&load["messages"]["received"]) > 0);
    // The master and its worker run again.
    assert_ne!(state(ngx.guard.pid()), Some('T'));
    // The observer saw the subscribers on the worker.
    let accepted = n(&s["stages"][0]["observer"]["connections"]["accepted"]);
    assert!(accepted >= 100, "accepted {accepted}");
}

#[test]
fn partition_5s_of_nginx_nchan_is_detected_and_every_subscriber_resumes_needs_root() {
    let _heavy = heavy_lock();
    let Some(ngx) = nginx_or_skip(
        "partition_5s_of_nginx_nchan_is_detected_and_every_subscriber_resumes_needs_root",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let r = run(
        &ngx,
        dir.path(),
        "stages = [\"100:14s\"]\nheartbeat = \"1s\"\nmax_missed = 2\n\
         [[faults]]\nat = \"2s\"\nstage = 1\nkind = \"partition\"\nduration = \"5s\"\n",
    );
    let s = r.summary.as_ref().unwrap_or_else(|| panic!("{}", r.stderr));
    let f = &s["faults"][0];
    eprintln!("partition (nchan): {f:#}");
    eprintln!("stage: {:#}", s["stages"][0]["load"]);
    assert_eq!(s["complete"], true, "{}", r.stderr);
    assert_eq!(f["status"], "done", "{f:#}");
    let o = &f["outcome"];
    // Heartbeat 1 s, 2 missed: the first client notices within ~2-3 s.
    let detection = o["detection_ms"].as_f64().expect("detected");
    assert!((1_000.0..=3_500.0).contains(&detection), "{o:#}");
    assert_eq!(o["disconnected"], 100, "{o:#}");
    assert_eq!(o["reconnected"], 100, "{o:#}");
    assert!(o["recovery_p99_ms"].as_f64().unwrap() < 6_000.0, "{o:#}");
    assert!(n(&o["resumed_messages"]) > 0, "{o:#}");
    assert_eq!(o["lost"], 0, "{o:#}");
    assert_eq!(o["duplicates"], 0, "{o:#}");
}
