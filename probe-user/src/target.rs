//! The target process seen through /proc: its process tree (master +
//! workers), the TCP ports it listens on (LISTEN sockets of
//! /proc/PID/net/tcp{,6} whose inodes are among /proc/PID/fd), and a 1 Hz
//! sample of CPU %, RSS, threads, open fds vs RLIMIT_NOFILE and the accept
//! queue depth of each listener.

use std::{collections::HashSet, fs, time::Instant};

/// A LISTEN socket of the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub port: u16,
    pub inode: u64,
    /// Connections waiting in the accept queue (rx_queue of a LISTEN socket).
    pub queue: u64,
}

/// True if /proc/PID exists.
pub fn exists(pid: u32) -> bool {
    fs::metadata(format!("/proc/{pid}/stat")).is_ok()
}

/// (ppid, utime+stime ticks, threads, rss pages) from /proc/PID/stat.
fn stat(pid: u32) -> Option<(u32, u64, u64, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may contain spaces and parens: fields start after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] = state (field 3); field n is f[n - 3].
    let ppid = f.get(1)?.parse().ok()?;
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let threads = f.get(17)?.parse().ok()?;
    let rss = f.get(21)?.parse().ok()?;
    Some((ppid, ticks, threads, rss))
}

/// The target and all its descendants.
pub fn tree(pid: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for e in dir.flatten() {
            if let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) {
                if let Some((ppid, ..)) = stat(p) {
                    parent_of.push((p, ppid));
                }
            }
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let cur = out[i];
        for (p, pp) in &parent_of {
            if *pp == cur && !out.contains(p) {
                out.push(*p);
            }
        }
        i += 1;
    }
    out
}

/// Socket inodes among a process's fds.
fn socket_inodes(pid: u32) -> HashSet<u64> {
    let mut out = HashSet::new();
    if let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in dir.flatten() {
            if let Ok(l) = fs::read_link(e.path()) {
                let l = l.to_string_lossy();
                if let Some(n) = l.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                    if let Ok(i) = n.parse() {
                        out.insert(i);
                    }
                }
            }
        }
    }
    out
}

/// Parses /proc/net/tcp{,6} text: LISTEN rows as (port, inode, rx_queue).
pub fn parse_listen_rows(text: &str) -> Vec<Listener> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || f[3] != "0A" {
            continue;
        }
        let port = f[1]
            .rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok());
        let queue = f[4]
            .split(':')
            .nth(1)
            .and_then(|q| u64::from_str_radix(q, 16).ok());
        let inode = f[9].parse().ok();
        if let (Some(port), Some(queue), Some(inode)) = (port, queue, inode) {
            out.push(Listener { port, inode, queue });
        }
    }
    out
}

/// LISTEN sockets held by any process of the target's tree.
pub fn listeners(pids: &[u32]) -> Vec<Listener> {
    let mut inodes = HashSet::new();
    for p in pids {
        inodes.extend(socket_inodes(*p));
    }
    let Some(first) = pids.first() else {
        return Vec::new();
    };
    let mut out: Vec<Listener> = Vec::new();
    for f in ["tcp", "tcp6"] {
        let text = fs::read_to_string(format!("/proc/{first}/net/{f}")).unwrap_or_default();
        for l in parse_listen_rows(&text) {
            if inodes.contains(&l.inode) && !out.iter().any(|o| o.inode == l.inode) {
                out.push(l);
            }
        }
    }
    out
}

/// Soft RLIMIT_NOFILE from /proc/PID/limits.
pub fn fd_limit(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = s.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn open_fds(pid: u32) -> u64 {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0)
}

/// One 1 Hz sample of the target's tree.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    pub cpu_pct: f64,
    pub rss_bytes: u64,
    pub threads: u64,
    /// Open fds and limit of the process closest to its limit.
    pub open_fds: u64,
    pub fd_limit: u64,
    pub listen_queue: u64,
}

/// Samples CPU as the delta of utime+stime over wall time.
pub struct Sampler {
    pid: u32,
    prev: Option<(Instant, u64)>,
    clk_tck: f64,
    page: u64,
}

impl Sampler {
    pub fn new(pid: u32) -> Sampler {
        // SAFETY: sysconf has no preconditions.
        let (tck, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        Sampler {
            pid,
            prev: None,
            clk_tck: if tck > 0 { tck as f64 } else { 100.0 },
            page: if page > 0 { page as u64 } else { 4096 },
        }
    }

    /// None once the target is gone.
    pub fn sample(&mut self) -> Option<Sample> {
        if !exists(self.pid) {
            return None;
        }
        let pids = tree(self.pid);
        let mut s = Sample::default();
        let mut ticks = 0;
        let mut worst = -1.0f64;
        for p in &pids {
            let Some((_, t, th, rss)) = stat(*p) else {
                continue;
            };
            ticks += t;
            s.threads += th;
            s.rss_bytes += rss * self.page;
            let open = open_fds(*p);
            let limit = fd_limit(*p).unwrap_or(0);
            let ratio = if limit > 0 {
                open as f64 / limit as f64
            } else {
                0.0
            };
            if ratio > worst {
                worst = ratio;
                s.open_fds = open;
                s.fd_limit = limit;
            }
        }
        let now = Instant::now();
        if let Some((then, prev)) = self.prev {
            let wall = now.duration_since(then).as_secs_f64();
            if wall > 0.0 {
                s.cpu_pct = ticks.saturating_sub(prev) as f64 / self.clk_tck / wall * 100.0;
            }
        }
        self.prev = Some((now, ticks));
        s.listen_queue = listeners(&pids).iter().map(|l| l.queue).max().unwrap_or(0);
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listen_rows_of_proc_net_tcp() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000003 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:1F90 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 12346 1 0000000000000000 20 4 30 10 -1\n";
        let l = parse_listen_rows(text);
        assert_eq!(
            l,
            vec![Listener {
                port: 8080,
                inode: 12345,
                queue: 3
            }]
        );
    }

    #[test]
    fn samples_this_process() {
        let me = std::process::id();
        let mut s = Sampler::new(me);
        let a = s.sample().unwrap();
        assert!(a.rss_bytes > 0);
        assert!(a.threads >= 1);
        assert!(a.open_fds >= 3);
        assert!(a.fd_limit >= a.open_fds);
        assert!(fd_limit(me).is_some());
        assert!(tree(me).contains(&me));
    }
}
