//! Test helper for the observer tests: a plain TCP server on 127.0.0.1:0
//! that prints its address, then accepts one connection every
//! `--accept-delay-ms` (so connections wait in the accept queue), answers
//! each with one line and either closes it or, with `--hold`, keeps it open
//! (to exhaust fds under `prlimit --nofile`). EMFILE/ENFILE from accept are
//! retried after 10 ms. With `--connect-to A,B` it also connects to each
//! of those addresses once per accepted connection (the outbound connects
//! of a server to its backends), closing them at once. Exits after
//! `--max-secs` (bounded) or on SIGTERM.

use std::{
    io::Write,
    net::TcpListener,
    time::{Duration, Instant},
};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    let delay = Duration::from_millis(arg("--accept-delay-ms", 0));
    let max = Duration::from_secs(arg("--max-secs", 60));
    let hold = std::env::args().any(|a| a == "--hold");
    let args: Vec<String> = std::env::args().collect();
    let backends: Vec<std::net::SocketAddr> = args
        .iter()
        .position(|a| a == "--connect-to")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.split(',').filter_map(|a| a.parse().ok()).collect())
        .unwrap_or_default();
    let listener = TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    println!("{}", listener.local_addr()?);
    std::io::stdout().flush()?;
    let started = Instant::now();
    let mut held = Vec::new();
    while started.elapsed() < max {
        match listener.accept() {
            Ok((mut s, _)) => {
                for b in &backends {
                    // Refused or not, the attempt is what the observer sees.
                    let _ = std::net::TcpStream::connect_timeout(b, Duration::from_secs(2));
                }
                let _ = s.write_all(b"hello\n");
                if hold {
                    held.push(s);
                }
                if !delay.is_zero() {
                    std::thread::sleep(delay);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
