//! Test helper for the observer tests: a plain TCP server on 127.0.0.1:0
//! that prints its address, then accepts one connection every
//! `--accept-delay-ms` (so connections wait in the accept queue), answers
//! each with one line and either closes it or, with `--hold`, keeps it open
//! (to exhaust fds under `prlimit --nofile`). EMFILE/ENFILE from accept are
//! retried after 10 ms. With `--connect-to A,B` it also connects to each
//! of those addresses once per accepted connection (the outbound connects
//! of a server to its backends), closing them at once. With
//! `--raise-nofile-on-emfile` an EMFILE raises the soft RLIMIT_NOFILE to
//! the hard one (a server raising its limit after the observer attached);
//! with `--hold-until N` held connections are all closed once N are held.
//! With `--fork-per-trigger M` the server forks after attach on demand:
//! each connection it accepts itself is a trigger; it reads one byte,
//! forks a child that accepts M connections (answering each), closes them
//! and exits, reaps it and answers the trigger `done\n`. Exits after
//! `--max-secs` (bounded) or on SIGTERM.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
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

/// Accepts one connection from the non-blocking `listener` before `deadline`.
fn accept_one(listener: &TcpListener, deadline: Instant) -> Option<TcpStream> {
    while Instant::now() < deadline {
        match listener.accept() {
            Ok((s, _)) => return Some(s),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(_) => return None,
        }
    }
    None
}

/// One trigger of `--fork-per-trigger`: fork a child that accepts `m`
/// connections and exits, reap it, answer the trigger.
fn fork_child(listener: &TcpListener, mut trigger: TcpStream, m: u64) -> anyhow::Result<()> {
    let mut b = [0u8; 1];
    trigger.read_exact(&mut b)?;
    // SAFETY: this process is single-threaded; the child only accepts,
    // writes, closes and _exits.
    let pid = unsafe { libc::fork() };
    anyhow::ensure!(pid >= 0, "fork failed");
    if pid == 0 {
        let deadline = Instant::now() + Duration::from_secs(10);
        for _ in 0..m {
            let Some(mut s) = accept_one(listener, deadline) else {
                break;
            };
            let _ = s.write_all(b"hello\n");
            drop(s);
        }
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: reaps the child forked above.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    trigger.write_all(b"done\n")?;
    Ok(())
}

fn raise_nofile() {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer, then raising the soft limit to the hard one.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

fn main() -> anyhow::Result<()> {
    let delay = Duration::from_millis(arg("--accept-delay-ms", 0));
    let max = Duration::from_secs(arg("--max-secs", 60));
    let hold_until = arg("--hold-until", 0);
    let hold = hold_until > 0 || std::env::args().any(|a| a == "--hold");
    let raise = std::env::args().any(|a| a == "--raise-nofile-on-emfile");
    let fork_m = arg("--fork-per-trigger", 0);
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
            Ok((s, _)) if fork_m > 0 => {
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                fork_child(&listener, s, fork_m)?;
            }
            Ok((mut s, _)) => {
                for b in &backends {
                    // Refused or not, the attempt is what the observer sees.
                    let _ = std::net::TcpStream::connect_timeout(b, Duration::from_secs(2));
                }
                let _ = s.write_all(b"hello\n");
                if hold {
                    held.push(s);
                    if held.len() as u64 == hold_until {
                        held.clear();
                    }
                }
                if !delay.is_zero() {
                    std::thread::sleep(delay);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) => {
                if raise {
                    raise_nofile();
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
