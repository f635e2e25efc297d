//! How a pushscope command ends, and the exit code for it. Only `main`
//! turns these into a process exit code:
//! 0 completed/admitted, 1 rejected (by the gate or by `verify`),
//! 2 bad usage or config, 3 runtime failure.

use std::fmt;

/// A command that ran to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Completed; for `run`, admitted by the gate.
    Completed,
    /// Completed, and the verdict is negative (gate rejection, verify mismatch).
    Rejected,
}

/// Marks an error as the user's to fix (exit 2) rather than a runtime failure (exit 3).
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// A usage/config error: one sentence that says what to do.
pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg.into()))
}

pub const EXIT_OK: u8 = 0;
pub const EXIT_REJECTED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_RUNTIME: u8 = 3;

pub fn exit_code_for(result: &anyhow::Result<Outcome>) -> u8 {
    match result {
        Ok(Outcome::Completed) => EXIT_OK,
        Ok(Outcome::Rejected) => EXIT_REJECTED,
        Err(e) if e.chain().any(|c| c.is::<UsageError>()) => EXIT_USAGE,
        Err(_) => EXIT_RUNTIME,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_errors_exit_2_even_with_context() {
        let e: anyhow::Result<Outcome> = Err(usage("bad flag")).map_err(|e| e.context("parsing"));
        assert_eq!(exit_code_for(&e), EXIT_USAGE);
        let e: anyhow::Result<Outcome> = Err(anyhow::anyhow!("target died"));
        assert_eq!(exit_code_for(&e), EXIT_RUNTIME);
        assert_eq!(exit_code_for(&Ok(Outcome::Rejected)), EXIT_REJECTED);
    }
}
