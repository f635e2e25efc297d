//! `cargo xtask bench <what>`: the project's benchmarks. Each prints its
//! figures as a table and writes them to target/bench/<what>.json.

mod floor;
mod loadgen;
mod observer;
mod pusher;
mod scale;

use anyhow::{bail, Result};

pub fn run(rest: &[String]) -> Result<()> {
    let args = rest.get(1..).unwrap_or_default();
    match rest.first().map(String::as_str) {
        Some("pusher") => pusher::run(args),
        Some("loadgen") => loadgen::run(args),
        Some("observer") => observer::run(args),
        Some("scale") => scale::run(args),
        Some(other) => bail!("unknown bench `{other}`: pusher | loadgen | observer | scale"),
        None => bail!("usage: cargo xtask bench pusher | loadgen | observer | scale"),
    }
}
