//! `cargo xtask bench <what>`: the project's benchmarks. Each prints its
//! figures as a table and writes them to target/bench/<what>.json.

use anyhow::{bail, Result};

pub fn run(rest: &[String]) -> Result<()> {
    match rest.first().map(String::as_str) {
        Some(other) => bail!("unknown bench `{other}`: pusher | loadgen | observer"),
        None => bail!("usage: cargo xtask bench pusher | loadgen | observer"),
    }
}
