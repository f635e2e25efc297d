//! Coordinated omission: a target that stops answering for 2 s mid-stage
//! must show it in that stage's latency. The load generator measures from
//! each message's *scheduled* send time, so messages due while the target
//! was stopped carry the pause; a tool that measured from the actual send
//! would report a quiet stage.

use pushscope_tests::{
    heavy_lock,
    loadgen::pushscope,
    pusher::{wait_until_flowing, Pusher},
};
use std::time::Duration;

#[test]
fn a_two_second_pause_mid_stage_shows_in_max_and_p99() {
    let _heavy = heavy_lock();
    let p = Pusher::start(&[]).unwrap();
    let out = tempfile::tempdir().unwrap();
    let url = format!("ws://{}/ws", p.addr);
    let out_path = out.path().to_path_buf();
    let load = std::thread::spawn(move || {
        pushscope(
            &[
                "load",
                "--url",
                &url,
                "--stages",
                "20:10s",
                "--channels",
                "2",
                "--rate",
                "200",
                "--connect-rate",
                "500/s",
                "--grace",
                "3s",
            ],
            Some(&out_path),
            Duration::from_secs(60),
        )
    });
    // Pause once messages are flowing to every subscriber (polled, not slept).
    assert!(
        wait_until_flowing(p.addr, 20, 1000.0, Duration::from_secs(20), || {
            load.is_finished()
        }),
        "the load ended before it reached the pusher"
    );
    p.guard.signal(libc::SIGSTOP);
    std::thread::sleep(Duration::from_secs(2)); // the injected pause itself
    p.guard.signal(libc::SIGCONT);

    let run = load.join().unwrap().unwrap();
    let s = run.stage(0);
    assert_eq!(run.stage_u64(0, "messages", "lost"), 0, "{s:#}");
    let max = s["latency_ms"]["max"].as_f64().unwrap();
    let p99 = s["latency_ms"]["p99"].as_f64().unwrap();
    // The message due when the pause began waited the whole 2 s.
    assert!(max >= 2000.0, "max {max} ms: {s:#}");
    // ~2 s of a ~10 s stage were paused: the slowest 1 % of messages were
    // due in the pause's first ~1.9 s and waited ≥ 1.9 − their offset.
    assert!(p99 >= 1500.0, "p99 {p99} ms must reflect the pause: {s:#}");
    assert_eq!(
        run.stage_u64(0, "messages", "received"),
        run.stage_u64(0, "messages", "expected"),
        "{s:#}"
    );
}
