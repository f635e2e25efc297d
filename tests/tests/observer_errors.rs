//! `pushscope observe` refuses clearly, with exit 2 and nothing attached,
//! when it cannot do its job: not privileged, no such PID, PID not listening
//! on TCP; and it stops by itself, saying so, when the target exits.

use pushscope_tests::{
    bin_path, heavy_lock,
    observer::{num, Observe},
    skip_unless_root, spawn_first_line,
};
use std::{
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

fn observe(args: &[&str]) -> Output {
    let out = tempfile::tempdir().unwrap();
    Command::new(bin_path("pushscope"))
        .arg("observe")
        .args(args)
        .arg("--out")
        .arg(out.path())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Programs of the object that are loaded right now (bpftool).
fn loaded_ps_programs() -> usize {
    let out = Command::new("bpftool")
        .args(["prog", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    out.lines().filter(|l| l.contains("name ps_")).count()
}

#[test]
fn observer_refuses_a_missing_pid_and_a_pid_not_listening() {
    if skip_unless_root("observer_refuses_a_missing_pid_and_a_pid_not_listening") {
        return;
    }
    // Serialised: the first test counts the loaded programs.
    let _l = heavy_lock();
    // Programs of an observer from an earlier test are freed asynchronously
    // after it exits; let them go before counting.
    let settle = Instant::now();
    while loaded_ps_programs() > 0 && settle.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = loaded_ps_programs();
    // PIDs above pid_max never exist.
    let o = observe(&["--pid", "4194304999"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no process with PID"), "{err}");

    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    let o = observe(&["--pid", &sleeper.id().to_string()]);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("is not listening on TCP"), "{err}");
    // Refusals must not add programs (one freed late may only lower the count).
    let after = loaded_ps_programs();
    assert!(
        after <= before,
        "nothing may stay attached: {before} -> {after}"
    );
}

#[test]
fn observer_refuses_without_privileges() {
    if skip_unless_root("observer_refuses_without_privileges") {
        return;
    }
    // Serialised: the first test counts the loaded programs.
    let _l = heavy_lock();
    // Drop to nobody with no capabilities, running a copy of the binary
    // from a 0755 directory nobody can reach (the build dir may not be).
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("pushscope");
    std::fs::copy(bin_path("pushscope"), &bin).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(&bin)
        .args([
            "observe",
            "--pid",
            "1",
            "--out",
            "/tmp/pushscope-observe-nobody",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("pushscope observe needs CAP_BPF and CAP_PERFMON: run as root"),
        "{err}"
    );
}

#[test]
fn observer_stops_when_the_target_exits_and_says_so() {
    if skip_unless_root("observer_stops_when_the_target_exits_and_says_so") {
        return;
    }
    // Serialised: the first test counts the loaded programs.
    let _l = heavy_lock();
    let mut cmd = Command::new(bin_path("slow_accept_server"));
    cmd.args(["--max-secs", "3"]);
    let (srv, _addr) = spawn_first_line(cmd, Duration::from_secs(10)).unwrap();
    let mut obs = Observe::start(srv.pid(), &[]).unwrap();
    let t0 = Instant::now();
    let status = obs
        .guard
        .wait_timeout(Duration::from_secs(15))
        .expect("observe must stop by itself when the target exits");
    assert!(status.success(), "{status}");
    assert!(t0.elapsed() < Duration::from_secs(10));
    let text = std::fs::read_to_string(obs.out.join("summary.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["observe"]["target_exited"], true, "{v:#}");
    assert!(v["observe"]["notes"].to_string().contains("target exited"));
    assert_eq!(num(&v["observer"], "connections.accepted"), 0.0);
    drop(srv);
}
