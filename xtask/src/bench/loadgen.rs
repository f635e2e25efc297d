//! `cargo xtask bench loadgen`.

use anyhow::{bail, Result};

pub fn run(_args: &[String]) -> Result<()> {
    bail!("bench loadgen is not implemented yet")
}
