//! The last step of `cargo xtask test`: `cargo xtask run` end to end, as a
//! user runs it, on the reference pusher: admitted with the lenient
//! profile (exit 0), rejected with thresholds it cannot meet (exit 1, the
//! failures listed in junit.xml). Needs root (the observer attaches).

use anyhow::{ensure, Context, Result};

const STAGES: &[&str] = &[
    "--stages",
    "300:4s,600:4s",
    "--channels",
    "6",
    "--rate",
    "60",
    "--grace",
    "1s",
];

pub fn run() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { geteuid() } != 0 {
        eprintln!(
            "xtask e2e: skipped `cargo xtask run` end to end: needs root (CI runs it as root)"
        );
        return Ok(());
    }
    let dir = std::env::temp_dir().join(format!("pushscope-e2e-{}", std::process::id()));
    let mut passed = 0;
    let mut failed = Vec::new();
    for (name, check) in [
        (
            "admitted_with_lenient_profile",
            admitted as fn(&std::path::Path) -> Result<()>,
        ),
        ("rejected_with_impossible_thresholds", rejected),
    ] {
        let out = dir.join(name);
        match check(&out) {
            Ok(()) => {
                passed += 1;
                eprintln!("xtask e2e: {name} ... ok");
            }
            Err(e) => {
                eprintln!("xtask e2e: {name} ... FAILED: {e:#}");
                failed.push(name);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("e2e: {passed} passed, {} failed", failed.len());
    ensure!(
        failed.is_empty(),
        "`cargo xtask run` end to end failed: {}",
        failed.join(", ")
    );
    Ok(())
}

fn args(out: &std::path::Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ["--out", out.to_str().unwrap()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.extend(STAGES.iter().chain(extra).map(|s| s.to_string()));
    v
}

fn admitted(out: &std::path::Path) -> Result<()> {
    let code = crate::build_and_run(true, &args(out, &["--profile", "lenient"]))?;
    ensure!(code == 0, "exit {code}, expected 0 (admitted)");
    let summary = std::fs::read_to_string(out.join("summary.json")).context("summary.json")?;
    ensure!(
        summary.contains("\"verdict\": \"admitted\""),
        "summary verdict is not admitted"
    );
    Ok(())
}

fn rejected(out: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(out)?;
    let t = out.join("impossible.toml");
    std::fs::write(&t, "extends = \"lenient\"\ne2e_p99_ms = 0.001\n")?;
    let code = crate::build_and_run(true, &args(out, &["--thresholds", t.to_str().unwrap()]))?;
    ensure!(code == 1, "exit {code}, expected 1 (rejected)");
    let junit = std::fs::read_to_string(out.join("junit.xml")).context("junit.xml")?;
    let failures = junit.matches("<failure").count();
    ensure!(
        failures == 2,
        "junit.xml lists {failures} failures, expected e2e_p99 in both stages"
    );
    ensure!(
        junit.contains("e2e_p99 [stage 1 (300 conns)]")
            && junit.contains("e2e_p99 [stage 2 (600 conns)]"),
        "junit.xml does not name e2e_p99 per stage"
    );
    Ok(())
}

extern "C" {
    fn geteuid() -> u32;
}
