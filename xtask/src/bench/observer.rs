//! `cargo xtask bench observer`.

use anyhow::{bail, Result};

pub fn run(_args: &[String]) -> Result<()> {
    bail!("bench observer is not implemented yet")
}
