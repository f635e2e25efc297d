//! Compiles every `probe-ebpf/src/*.bpf.c` with clang into OUT_DIR; the
//! objects are embedded by `src/probes/mod.rs` with `include_bytes_aligned!`.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

const CLANG_CANDIDATES: &[&str] = &["clang-19", "clang"];

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let ebpf = manifest.join("../probe-ebpf");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let include = ebpf.join("include");
    println!("cargo:rerun-if-env-changed=PUSHSCOPE_CLANG");
    println!("cargo:rerun-if-changed={}", include.display());

    let clang = find_clang();
    let mut sources: Vec<PathBuf> = std::fs::read_dir(ebpf.join("src"))
        .expect("probe-ebpf/src must exist")
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".bpf.c"))
        .collect();
    sources.sort();
    for header in std::fs::read_dir(&include).unwrap() {
        println!(
            "cargo:rerun-if-changed={}",
            header.unwrap().path().display()
        );
    }
    // Concern files (`*.inc.c`) are #included by the .bpf.c objects.
    for f in std::fs::read_dir(ebpf.join("src")).unwrap() {
        println!("cargo:rerun-if-changed={}", f.unwrap().path().display());
    }
    for src in &sources {
        println!("cargo:rerun-if-changed={}", src.display());
        compile(&clang, src, &include, &out);
    }
}

fn find_clang() -> String {
    if let Ok(c) = env::var("PUSHSCOPE_CLANG") {
        return c;
    }
    for c in CLANG_CANDIDATES {
        if Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return (*c).to_string();
        }
    }
    panic!(
        "\n\npushscope needs clang to build its eBPF probes: run `apt-get install -y clang-19 libbpf-dev` \
         (or `cargo xtask run`/`cargo xtask test` as root, which installs them)\n\n"
    );
}

fn compile(clang: &str, src: &Path, include: &Path, out: &Path) {
    let name = src
        .file_name()
        .unwrap()
        .to_string_lossy()
        .replace(".bpf.c", ".bpf.o");
    let obj = out.join(name);
    let status = Command::new(clang)
        .args([
            "-g",
            "-O2",
            "-target",
            "bpf",
            "-D__TARGET_ARCH_x86",
            "-Wall",
            "-Werror",
        ])
        .arg("-I")
        .arg(include)
        .arg("-c")
        .arg(src)
        .arg("-o")
        .arg(&obj)
        .status()
        .unwrap_or_else(|e| panic!("running {clang}: {e}"));
    if !status.success() {
        if !Path::new("/usr/include/bpf/bpf_helpers.h").exists() {
            panic!("\n\nbpf/bpf_helpers.h is missing: run `apt-get install -y libbpf-dev`\n\n");
        }
        panic!("clang failed to compile {}", src.display());
    }
}
