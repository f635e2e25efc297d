//! Running cargo and the workspace binaries from xtask.

use anyhow::{bail, Context, Result};
use std::{path::PathBuf, process::Command};

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("xtask: cargo {}", args.join(" "));
    let status = Command::new(&cargo)
        .args(args)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("`cargo {}` failed", args.join(" "));
    }
    Ok(())
}

pub fn release_bin(name: &str) -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join("target"));
    target.join("release").join(name)
}

/// Runs `pushscope run` with the user's arguments; returns its exit code.
pub fn run_demo(pass: &[String]) -> Result<i32> {
    let status = Command::new(release_bin("pushscope"))
        .arg("run")
        .args(pass)
        .status()
        .context("starting pushscope")?;
    Ok(status.code().unwrap_or(3))
}
