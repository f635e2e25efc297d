//! System packages: installed with apt-get when root and missing, otherwise
//! the exact command to run is printed.

use anyhow::{bail, Result};
use std::process::Command;

/// (package, a file that proves it is installed)
pub type Pkg = (&'static str, &'static str);

/// Needed to build the eBPF probes.
pub const BUILD: &[Pkg] = &[
    ("clang-19", "/usr/bin/clang-19"),
    ("libbpf-dev", "/usr/include/bpf/bpf_helpers.h"),
];

/// Needed by the whole test suite (third-party servers, report rendering).
pub const ALL: &[Pkg] = &[
    ("clang-19", "/usr/bin/clang-19"),
    ("libbpf-dev", "/usr/include/bpf/bpf_helpers.h"),
    ("bpftool", "/usr/sbin/bpftool"),
    ("nginx", "/usr/sbin/nginx"),
    (
        "libnginx-mod-nchan",
        "/usr/lib/nginx/modules/ngx_nchan_module.so",
    ),
    ("openssl", "/usr/bin/openssl"),
    ("util-linux", "/usr/bin/prlimit"),
    ("procps", "/usr/bin/pgrep"),
    ("chromium", "/usr/bin/chromium"),
];

pub fn ensure(pkgs: &[Pkg]) -> Result<()> {
    let missing: Vec<&str> = pkgs
        .iter()
        .filter(|(_, probe)| !std::path::Path::new(probe).exists())
        .map(|(name, _)| *name)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc_geteuid() } == 0;
    if !root {
        bail!(
            "missing system packages: run `sudo apt-get update && sudo apt-get install -y {list}`"
        );
    }
    eprintln!("xtask: installing missing system packages: {list}");
    let ok = Command::new("apt-get").arg("update").status()?.success()
        && Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()?
            .success();
    if !ok {
        bail!("apt-get could not install {list}: install them by hand and retry");
    }
    Ok(())
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}
