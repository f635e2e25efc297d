//! The workspace's binaries exist and speak the documented exit codes.

use pushscope_tests::bin_path;
use std::process::Command;

#[test]
fn pushscope_without_subcommand_is_usage_error() {
    let out = Command::new(bin_path("pushscope")).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "clap usage errors exit 2");
}
