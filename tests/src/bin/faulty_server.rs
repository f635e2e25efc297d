//! The faulty push server (`pushscope_tests::faulty_server`) as a real
//! process, so `pushscope run --pid` tests can observe it:
//!
//! ```text
//! faulty_server [--listen 127.0.0.1:0] [--drop 20,21] [--repeat 30]
//!     [--reorder 40] [--push-before-answer 200ms] [--refuse-first-upgrades 3]
//!     [--replay-history] [--ids-file PATH]
//! ```
//!
//! Prints `listening <addr>` as its first stdout line. On SIGTERM (or
//! SIGINT) it writes the ids it accepted to `--ids-file` (one per line, for
//! `pushscope verify --server-ids`) and exits 0.

use anyhow::Context;
use pushscope_tests::faulty_server::{Faults, FaultyServer};
use std::io::Write;

fn value<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn seqs(args: &[String], name: &str) -> anyhow::Result<Vec<u64>> {
    value(args, name).map_or(Ok(Vec::new()), |v| {
        v.split(',')
            .map(|s| {
                s.trim()
                    .parse()
                    .with_context(|| format!("{name} {v}: `{s}` is not a seq"))
            })
            .collect()
    })
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let replay_history = args.iter().any(|a| a == "--replay-history");
    let args: Vec<String> = args
        .into_iter()
        .filter(|a| a != "--replay-history")
        .collect();
    const KNOWN: [&str; 7] = [
        "--listen",
        "--drop",
        "--repeat",
        "--reorder",
        "--push-before-answer",
        "--refuse-first-upgrades",
        "--ids-file",
    ];
    for a in args.iter().step_by(2) {
        anyhow::ensure!(
            KNOWN.contains(&a.as_str()),
            "unknown flag {a}: use {KNOWN:?}"
        );
    }
    let faults = Faults {
        drop_seqs: seqs(&args, "--drop")?,
        repeat_seqs: seqs(&args, "--repeat")?,
        reorder_seqs: seqs(&args, "--reorder")?,
        push_before_answer: value(&args, "--push-before-answer")
            .map(loadgen::duration::parse_duration)
            .transpose()
            .map_err(|e| anyhow::anyhow!("--push-before-answer: {e}"))?,
        refuse_first_upgrades: value(&args, "--refuse-first-upgrades")
            .map(str::parse)
            .transpose()
            .context("--refuse-first-upgrades takes a count")?
            .unwrap_or(0),
        replay_history,
    };
    // Block the signals before any thread starts, so only sigwait sees them.
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(nix::sys::signal::Signal::SIGTERM);
    set.add(nix::sys::signal::Signal::SIGINT);
    set.thread_block()?;
    let listen = value(&args, "--listen").unwrap_or("127.0.0.1:0");
    let server = FaultyServer::start_on(listen, faults)?;
    let mut out = std::io::stdout();
    writeln!(out, "listening {}", server.addr)?;
    out.flush()?;
    set.wait()?;
    if let Some(path) = value(&args, "--ids-file") {
        std::fs::write(path, server.accepted_ids().join("\n") + "\n")
            .with_context(|| format!("writing {path}"))?;
    }
    drop(server);
    Ok(())
}
