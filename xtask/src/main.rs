//! `cargo xtask …`: set-up, build, run, test and bench orchestration.
//! Compilation of the probes lives in probe-user/build.rs, not here.

mod bench;
mod deps;
mod e2e;
mod util;

use anyhow::{bail, Result};

const USAGE: &str = "\
usage: cargo xtask <command>

  run [--dev] [-- ARGS]
                     build, start the reference pusher, run the demo admission
                     run against it (ARGS go to `pushscope run`; with --pid and
                     --url they target your server instead)
  test               the whole suite: fmt, clippy -D warnings, unit and
                     integration tests (root tests when root)
  bench <what>       benchmarks: pusher | loadgen | observer
  deps               install the system packages pushscope needs (root)";

fn main() {
    if let Err(e) = real_main() {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = match args.split_first() {
        Some((c, r)) => (c.as_str(), r),
        None => {
            println!("{USAGE}");
            return Ok(());
        }
    };
    match cmd {
        "run" => run(rest),
        "test" => test(rest),
        "bench" => bench::run(rest),
        "deps" => deps::ensure(deps::ALL),
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown command `{other}`\n{USAGE}"),
    }
}

/// The main job: build, start the reference pusher, run `pushscope run`.
/// `--dev` uses the debug build (faster to build, slower to run).
fn run(rest: &[String]) -> Result<()> {
    deps::ensure(deps::BUILD)?;
    let (own, pass) = match rest.iter().position(|a| a == "--") {
        Some(i) => (&rest[..i], rest[i + 1..].to_vec()),
        None => (rest, Vec::new()),
    };
    let dev = own.iter().any(|a| a == "--dev");
    if let Some(bad) = own.iter().find(|a| *a != "--dev") {
        bail!("unknown `cargo xtask run` option `{bad}`: pass pushscope's options after `--`\n{USAGE}");
    }
    let code = build_and_run(dev, &pass)?;
    std::process::exit(code);
}

fn build_and_run(dev: bool, pass: &[String]) -> Result<i32> {
    let mut build = vec!["build", "-p", "probe-user", "-p", "pusher", "--bins"];
    if !dev {
        build.push("--release");
    }
    util::cargo(&build)?;
    util::run_demo(if dev { "debug" } else { "release" }, pass)
}

/// The whole suite, as CI runs it.
fn test(rest: &[String]) -> Result<()> {
    deps::ensure(deps::ALL)?;
    util::cargo(&["fmt", "--all", "--check"])?;
    util::cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    util::cargo(&["build", "--workspace", "--bins"])?;
    let mut args = vec!["test", "--workspace", "--no-fail-fast"];
    args.extend(rest.iter().map(String::as_str));
    util::cargo(&args)?;
    e2e::run()
}
