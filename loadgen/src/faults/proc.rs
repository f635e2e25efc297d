//! What the faults read from /proc: a process's state, its descendants
//! (the target's workers), and which process listens on a TCP port.

use std::collections::{HashMap, HashSet};

/// (state letter, ppid) of a process from /proc/PID/stat.
fn stat(pid: u32) -> Option<(char, u32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: parse after the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    Some((state, ppid))
}

/// The process's state letter (`R`, `S`, `T` stopped, `Z` zombie, …).
pub fn state(pid: u32) -> Option<char> {
    stat(pid).map(|s| s.0)
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// `pid` and every descendant, parents before children.
pub fn tree(pid: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for p in all_pids() {
        if let Some((_, ppid)) = stat(p) {
            children.entry(ppid).or_default().push(p);
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    // Bounded: each pid is visited once (a pid is one process's child).
    while i < out.len() && out.len() < 100_000 {
        if let Some(c) = children.get(&out[i]) {
            out.extend(c.iter().copied().filter(|c| *c != pid));
        }
        i += 1;
    }
    out
}

/// Socket inodes in LISTEN state on `port` (IPv4 and IPv6): through
/// sock_diag, which reads only the kernel's listening table; /proc/net/tcp
/// (every socket of the namespace, TIME_WAIT included) if that fails.
fn listen_inodes(port: u16) -> HashSet<u64> {
    match crate::sockdiag::listening_inodes(port) {
        Ok(inodes) => inodes.into_iter().collect(),
        Err(e) => {
            log::debug!("sock_diag of the listeners failed ({e}): reading /proc/net/tcp");
            listen_inodes_procfs(port)
        }
    }
}

fn listen_inodes_procfs(port: u16) -> HashSet<u64> {
    let mut out = HashSet::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            let local_port = f[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) {
                if let Ok(inode) = f[9].parse::<u64>() {
                    out.insert(inode);
                }
            }
        }
    }
    out
}

/// What one look for the listener of a port found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListenScan {
    /// Inodes of the sockets in LISTEN state on the port.
    pub inodes: Vec<u64>,
    /// Processes holding one of them, in /proc order.
    pub holders: Vec<u32>,
    /// The topmost holder (whose parent holds none).
    pub listener: Option<u32>,
    /// How long the look took.
    pub took: std::time::Duration,
}

impl std::fmt::Display for ListenScan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.inodes.is_empty(), self.holders.is_empty()) {
            (true, _) => write!(f, "no socket listened on the port")?,
            (false, true) => write!(
                f,
                "socket inode(s) {:?} listened on the port, held by no process pushscope can see",
                self.inodes
            )?,
            (false, false) => write!(
                f,
                "socket inode(s) {:?} listened on the port, held by PID(s) {:?}",
                self.inodes, self.holders
            )?,
        }
        write!(
            f,
            " (the look took {:.0} ms)",
            self.took.as_secs_f64() * 1e3
        )
    }
}

/// The process that listens on `port`: of every process holding a
/// listening socket there, the topmost (whose parent holds none: NGINX's
/// master, not its workers). `None` when nothing listens.
pub fn listener(port: u16) -> Option<u32> {
    scan_listeners(port).listener
}

/// [`listener`], with what the look saw.
pub fn scan_listeners(port: u16) -> ListenScan {
    let t = std::time::Instant::now();
    let inodes = listen_inodes(port);
    let mut scan = ListenScan {
        inodes: inodes.iter().copied().collect(),
        ..Default::default()
    };
    scan.inodes.sort_unstable();
    if inodes.is_empty() {
        scan.took = t.elapsed();
        return scan;
    }
    let mut owners = Vec::new();
    for pid in all_pids() {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        let holds = fds.filter_map(|e| e.ok()).any(|e| {
            std::fs::read_link(e.path())
                .ok()
                .and_then(|l| {
                    l.to_str()?
                        .strip_prefix("socket:[")?
                        .strip_suffix(']')?
                        .parse::<u64>()
                        .ok()
                })
                .is_some_and(|i| inodes.contains(&i))
        });
        if holds {
            owners.push(pid);
        }
    }
    let set: HashSet<u32> = owners.iter().copied().collect();
    scan.listener = owners
        .iter()
        .copied()
        .find(|p| stat(*p).is_none_or(|(_, pp)| !set.contains(&pp)));
    scan.holders = owners;
    scan.took = t.elapsed();
    scan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_own_listener_and_tree() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert_eq!(listener(port), Some(std::process::id()));
        // Both ways of finding the listening socket agree.
        assert_eq!(listen_inodes(port), listen_inodes_procfs(port));
        let scan = scan_listeners(port);
        assert_eq!(scan.holders, vec![std::process::id()]);
        assert_eq!(scan.inodes.len(), 1);
        assert!(scan.to_string().contains("held by PID(s)"), "{scan}");
        drop(l);
        assert_eq!(listener(port), None);
        assert!(scan_listeners(port)
            .to_string()
            .starts_with("no socket listened on the port"));
        let mut c = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let t = tree(std::process::id());
        assert_eq!(t[0], std::process::id());
        assert!(t.contains(&c.id()));
        assert!(matches!(state(c.id()), Some('S' | 'R')));
        let _ = c.kill();
        let _ = c.wait();
    }
}
