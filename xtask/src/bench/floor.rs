//! The floor of `kernel.bpf_stats_enabled` run times: an empty raw
//! tracepoint program (`r0 = 0; exit`, named `bench_floor`) attached to
//! `sock:sock_send_length` and `sock:sock_recv_length`, the observer's two
//! per-call hooks, so it runs on exactly the calls they run on. Its run
//! time per run is what any program there is charged for running at all:
//! the two `sched_clock()` reads of the statistics themselves (tens of ns
//! under a hypervisor) and the JIT's entry and exit. Loaded with raw
//! `bpf(2)` calls (xtask has no BPF library); detached on drop.

use anyhow::{bail, Result};
use std::io::Error;

const NR_BPF: i64 = 321; // x86-64
const BPF_PROG_LOAD: i64 = 5;
const BPF_OBJ_GET_INFO_BY_FD: i64 = 15;
const BPF_RAW_TRACEPOINT_OPEN: i64 = 17;
const BPF_PROG_TYPE_RAW_TRACEPOINT: u32 = 17;
pub const NAME: &str = "bench_floor";

extern "C" {
    fn syscall(num: i64, ...) -> i64;
    fn close(fd: i32) -> i32;
}

fn bpf(cmd: i64, attr: &mut [u8; 128]) -> std::io::Result<i32> {
    // SAFETY: `attr` is a valid, writable bpf_attr-sized buffer for the
    // kernel; every pointer inside it outlives the call.
    let r = unsafe { syscall(NR_BPF, cmd, attr.as_mut_ptr(), attr.len() as u32) };
    if r < 0 {
        return Err(Error::last_os_error());
    }
    Ok(r as i32)
}

/// The attached empty program; its id for `bpftool prog show`.
pub struct Floor {
    fds: Vec<i32>,
    pub id: u64,
}

impl Drop for Floor {
    fn drop(&mut self) {
        for &fd in self.fds.iter().rev() {
            // SAFETY: fds this struct opened and owns.
            unsafe { close(fd) };
        }
    }
}

pub fn attach() -> Result<Floor> {
    // r0 = 0; exit
    let insns: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];
    let license = b"GPL\0";
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&BPF_PROG_TYPE_RAW_TRACEPOINT.to_le_bytes());
    attr[4..8].copy_from_slice(&(insns.len() as u32).to_le_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_le_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_le_bytes());
    attr[48..48 + NAME.len()].copy_from_slice(NAME.as_bytes());
    let prog = match bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => fd,
        Err(e) => bail!("loading the empty floor program: {e}"),
    };
    let mut floor = Floor {
        fds: vec![prog],
        id: 0,
    };
    for tp in [&b"sock_send_length\0"[..], &b"sock_recv_length\0"[..]] {
        let mut attr = [0u8; 128];
        attr[0..8].copy_from_slice(&(tp.as_ptr() as u64).to_le_bytes());
        attr[8..12].copy_from_slice(&(prog as u32).to_le_bytes());
        match bpf(BPF_RAW_TRACEPOINT_OPEN, &mut attr) {
            Ok(fd) => floor.fds.push(fd),
            Err(e) => bail!("attaching the floor program: {e}"),
        }
    }
    // struct bpf_prog_info starts with `__u32 type; __u32 id;`.
    let mut info = [0u8; 64];
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&(prog as u32).to_le_bytes());
    attr[4..8].copy_from_slice(&(info.len() as u32).to_le_bytes());
    attr[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_le_bytes());
    if let Err(e) = bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) {
        bail!("reading the floor program's id: {e}");
    }
    floor.id = u64::from(u32::from_le_bytes(info[4..8].try_into().unwrap()));
    Ok(floor)
}
