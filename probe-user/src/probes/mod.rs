//! The eBPF objects compiled from `probe-ebpf/src/*.bpf.c` by build.rs,
//! embedded in the binary so `pushscope` runs without the sources.

/// `probe-ebpf/src/lifecycle.bpf.c`
pub static LIFECYCLE_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lifecycle.bpf.o"));
