//! Bench helper (`cargo xtask bench observer`): an unrelated process that
//! makes the calls the observer hooks, `--count N` (default 500,000) times
//! each: a 1-byte send and receive over a UNIX socketpair (the probes'
//! raw tracepoints sock:sock_send_length / sock_recv_length fire for every
//! socket of every process) and an open + close of /dev/null (the
//! sys_exit_openat and sys_enter_close syscall tracepoints). Prints the
//! number of hooked calls and the wall time per call (ns).

use std::{
    fs::File,
    io::{Read, Write},
    os::unix::net::UnixStream,
    time::Instant,
};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let count: u64 = args
        .iter()
        .position(|a| a == "--count")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(500_000);
    let (mut a, mut b) = UnixStream::pair()?;
    let mut byte = [0u8; 1];
    let t0 = Instant::now();
    for _ in 0..count {
        a.write_all(b"x")?;
        b.read_exact(&mut byte)?;
    }
    let t1 = Instant::now();
    for _ in 0..count {
        drop(File::open("/dev/null")?);
    }
    let per = |d: std::time::Duration| d.as_nanos() as f64 / (2 * count) as f64;
    let (sock, file) = (per(t1 - t0), per(t1.elapsed()));
    println!(
        "calls={}\nns_per_call={:.1}\nns_per_sock_call={sock:.1}\nns_per_file_call={file:.1}",
        4 * count,
        (sock + file) / 2.0
    );
    Ok(())
}
