//! `cargo xtask bench pusher`.

use anyhow::{bail, Result};

pub fn run(_args: &[String]) -> Result<()> {
    bail!("bench pusher is not implemented yet")
}
