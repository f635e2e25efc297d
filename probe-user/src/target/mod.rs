//! The target process seen through /proc: its process tree (master +
//! workers), the TCP ports it listens on (LISTEN sockets from `sock_diag`
//! whose inodes are among /proc/PID/fd — the fd table is read only when a
//! listener not seen before appears, so the 1 Hz cost does not grow with
//! the target's connections), and a 1 Hz
//! sample of CPU %, RSS, threads, open fds vs RLIMIT_NOFILE and the accept
//! queue depth of each listener; and the cores it may really use (CPU
//! affinity of its tasks, cgroup v2 `cpu.max`).

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    fs,
    path::{Path, PathBuf},
    time::Instant,
};

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
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// CPU ticks (utime + stime) of one thread of this process.
pub fn own_thread_cpu_ticks(tid: i32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    parse_stat(&text).map(|(_, ticks, ..)| ticks)
}

/// (ppid, utime+stime ticks, threads, rss pages) of a `stat` file's text.
fn parse_stat(s: &str) -> Option<(u32, u64, u64, u64)> {
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

/// LISTEN sockets held by any process of the target's tree (one look;
/// `ListenerFinder` for repeated looks).
pub fn listeners(pids: &[u32]) -> Vec<Listener> {
    ListenerFinder::default().find(pids)
}

/// The LISTEN sockets of the network namespace `pid` lives in: from
/// `sock_diag` when that is ours (cost independent of the number of
/// connections), else from /proc/PID/net/tcp{,6}.
fn namespace_listeners(pid: u32) -> Vec<Listener> {
    let ns = |p: &str| fs::read_link(p).ok();
    if ns("/proc/self/ns/net").is_some()
        && ns("/proc/self/ns/net") == ns(&format!("/proc/{pid}/ns/net"))
    {
        match loadgen::sockdiag::listen_sockets() {
            Ok(l) => {
                return l
                    .iter()
                    .map(|s| Listener {
                        port: s.local.port(),
                        inode: u64::from(s.inode),
                        queue: u64::from(s.recv_q),
                    })
                    .collect()
            }
            Err(e) => log::debug!("sock_diag failed ({e}); reading /proc/{pid}/net/tcp"),
        }
    }
    let mut out = Vec::new();
    for f in ["tcp", "tcp6"] {
        let text = fs::read_to_string(format!("/proc/{pid}/net/{f}")).unwrap_or_default();
        out.extend(parse_listen_rows(&text));
    }
    out
}

/// Finds the target's LISTEN sockets again and again, remembering which
/// listening inodes belong to the target: its fd tables are read only when
/// a listener not seen before appears in the namespace, and at most every
/// `RESCAN_EVERY` — or, when a look is long (a readlink per target fd:
/// ~0.4 s at 100k fds), every `SCAN_COST_FACTOR` times its length, which
/// keeps the looks under 1 % of a core while other processes' listeners
/// come and go (a load generator's metrics endpoint, its shards).
#[derive(Debug, Default)]
pub struct ListenerFinder {
    owned: HashMap<u64, bool>,
    next_scan: Option<Instant>,
}

/// How often new listeners of the namespace are checked against the
/// target's fds: a listener the target opens later joins within this.
const RESCAN_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
/// The pause after a look, in multiples of its own length.
const SCAN_COST_FACTOR: u32 = 100;

impl ListenerFinder {
    pub fn find(&mut self, pids: &[u32]) -> Vec<Listener> {
        let Some(first) = pids.first() else {
            return Vec::new();
        };
        let all = namespace_listeners(*first);
        let due = self.next_scan.is_none_or(|t| Instant::now() >= t);
        if due && all.iter().any(|l| !self.owned.contains_key(&l.inode)) {
            let started = Instant::now();
            let mut inodes = HashSet::new();
            for p in pids {
                inodes.extend(socket_inodes(*p));
            }
            for l in &all {
                self.owned.insert(l.inode, inodes.contains(&l.inode));
            }
            let took = started.elapsed();
            self.next_scan = Some(Instant::now() + RESCAN_EVERY.max(took * SCAN_COST_FACTOR));
        }
        self.owned
            .retain(|inode, _| all.iter().any(|l| l.inode == *inode));
        let mut out: Vec<Listener> = Vec::new();
        for l in all {
            if self.owned.get(&l.inode) == Some(&true) && !out.iter().any(|o| o.inode == l.inode) {
                out.push(l);
            }
        }
        out
    }
}

/// The kernel's TCP socket totals (`/proc/net/sockstat`, this namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct SockStat {
    /// TCP sockets in use (all processes of the namespace).
    pub tcp_inuse: u64,
    /// Memory of TCP socket buffers, bytes (`mem` pages × page size).
    pub tcp_mem_bytes: u64,
}

/// Parses `/proc/net/sockstat` text.
pub fn parse_sockstat(text: &str, page: u64) -> Option<SockStat> {
    let line = text.lines().find_map(|l| l.strip_prefix("TCP:"))?;
    let f: Vec<&str> = line.split_whitespace().collect();
    let field = |k: &str| -> Option<u64> {
        let i = f.iter().position(|x| *x == k)?;
        f.get(i + 1)?.parse().ok()
    };
    Some(SockStat {
        tcp_inuse: field("inuse")?,
        tcp_mem_bytes: field("mem")? * page,
    })
}

/// The kernel's TCP socket totals now.
pub fn sockstat() -> Option<SockStat> {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    parse_sockstat(&fs::read_to_string("/proc/net/sockstat").ok()?, page)
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

/// Open fds of a process: the size Linux ≥ 6.2 reports for /proc/PID/fd
/// (no directory walk: the walk cost grows with the fds, ~50 ms a second
/// at 100k), else the directory's entries.
fn open_fds(pid: u32) -> u64 {
    let dir = format!("/proc/{pid}/fd");
    match fs::metadata(&dir).map(|m| m.len()) {
        Ok(n) if n > 0 => n,
        _ => fs::read_dir(&dir).map(|d| d.count() as u64).unwrap_or(0),
    }
}

/// CPU ids of a list like `0-3,6` (`Cpus_allowed_list`, `cpuset.cpus`).
pub fn parse_cpu_list(s: &str) -> Option<BTreeSet<u32>> {
    let mut out = BTreeSet::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse().ok()?, b.trim().parse().ok()?),
            None => {
                let v: u32 = part.trim().parse().ok()?;
                (v, v)
            }
        };
        if b < a || b - a > 65_536 {
            return None;
        }
        out.extend(a..=b);
    }
    Some(out)
}

/// (quota, period) of a cgroup v2 `cpu.max` (`150000 100000`); None for
/// `max` (no quota) or anything unparsable.
pub fn parse_cpu_max(s: &str) -> Option<(u64, u64)> {
    let mut f = s.split_whitespace();
    let quota = f.next()?.parse().ok()?;
    let period: u64 = f.next()?.parse().ok()?;
    (period > 0).then_some((quota, period))
}

/// The cgroup v2 path (`0::/a/b`) of a /proc/PID/cgroup text.
pub fn parse_cgroup_v2(s: &str) -> Option<&str> {
    s.lines().find_map(|l| l.strip_prefix("0::"))
}

/// Where cgroup2 is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified on
/// hybrid hosts), from a /proc/self/mountinfo text.
pub fn parse_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        if post.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        pre.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// Cores the target may really use.
#[derive(Debug, Clone, PartialEq)]
pub struct UsableCores {
    pub cores: f64,
    /// "affinity 1 of 2 cpus", "cgroup cpu.max 150000/100000" or "machine".
    pub source: String,
    pub machine: u32,
}

/// The smallest cpu.max quota (in cores) of `cgroup` and its ancestors
/// under `mount`, with its text.
fn cgroup_quota(mount: &Path, cgroup: &str) -> Option<(f64, String)> {
    let mut best: Option<(f64, String)> = None;
    let mut dir = mount.join(cgroup.trim_start_matches('/'));
    // Bounded: a path has finitely many components, stop at the mount.
    for _ in 0..64 {
        if let Some((q, p)) = fs::read_to_string(dir.join("cpu.max"))
            .ok()
            .and_then(|t| parse_cpu_max(&t))
        {
            let cores = q as f64 / p as f64;
            if best.as_ref().is_none_or(|(b, _)| cores < *b) {
                best = Some((cores, format!("cgroup cpu.max {q}/{p}")));
            }
        }
        if dir == mount || !dir.pop() || !dir.starts_with(mount) {
            break;
        }
    }
    best
}

/// Online CPUs of the machine.
pub fn machine_cpus() -> u32 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n > 0 {
        n as u32
    } else {
        1
    }
}

/// Cores `pids` may use: the union of their tasks' CPU affinity
/// (`Cpus_allowed_list`), bounded by the largest cgroup v2 cpu.max quota
/// among the processes (each bounded by its ancestors').
pub fn usable_cores(pids: &[u32]) -> UsableCores {
    let machine = machine_cpus();
    let mut allowed = BTreeSet::new();
    for pid in pids {
        let tasks: Vec<PathBuf> = fs::read_dir(format!("/proc/{pid}/task"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        for t in tasks {
            let status = fs::read_to_string(t.join("status")).unwrap_or_default();
            if let Some(set) = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .and_then(parse_cpu_list)
            {
                allowed.extend(set);
            }
        }
    }
    let affinity = if allowed.is_empty() {
        machine
    } else {
        (allowed.len() as u32).min(machine)
    };
    let mount = fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|m| parse_cgroup2_mount(&m));
    let mut quota: Option<(f64, String)> = None;
    if let Some(mount) = &mount {
        for pid in pids {
            let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            let Some(cg) = parse_cgroup_v2(&text) else {
                continue;
            };
            match cgroup_quota(mount, cg) {
                // A process without a quota can use every allowed core.
                None => {
                    quota = None;
                    break;
                }
                Some(q) if quota.as_ref().is_none_or(|(b, _)| q.0 > *b) => quota = Some(q),
                Some(_) => {}
            }
        }
    }
    match quota {
        Some((q, text)) if q < f64::from(affinity) => UsableCores {
            cores: q,
            source: text,
            machine,
        },
        _ if affinity < machine => UsableCores {
            cores: f64::from(affinity),
            source: format!("affinity {affinity} of {machine} cpus"),
            machine,
        },
        _ => UsableCores {
            cores: f64::from(machine),
            source: "machine".to_string(),
            machine,
        },
    }
}

/// One 1 Hz sample of the target's tree.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    /// % of one core since the previous sample (0 in the first sample,
    /// which has no previous: see `cpu_sampled`).
    pub cpu_pct: f64,
    /// False in the first sample: `cpu_pct` is not a measurement.
    pub cpu_sampled: bool,
    pub rss_bytes: u64,
    pub threads: u64,
    /// Open fds and limit of the process closest to its limit.
    pub open_fds: u64,
    pub fd_limit: u64,
    pub listen_queue: u64,
    /// The target's LISTEN sockets at this sample.
    pub listeners: Vec<Listener>,
}

/// Samples CPU as the delta of utime+stime over wall time.
pub struct Sampler {
    pid: u32,
    prev: Option<(Instant, u64)>,
    clk_tck: f64,
    page: u64,
    listeners: ListenerFinder,
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
            listeners: ListenerFinder::default(),
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
                s.cpu_sampled = true;
            }
        }
        self.prev = Some((now, ticks));
        s.listeners = self.listeners.find(&pids);
        s.listen_queue = s.listeners.iter().map(|l| l.queue).max().unwrap_or(0);
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
    fn parses_sockstat() {
        let text =
            "sockets: used 25\nTCP: inuse 3 orphan 1 tw 628 alloc 7 mem 48\nUDP: inuse 0 mem 84\n";
        assert_eq!(
            parse_sockstat(text, 4096),
            Some(SockStat {
                tcp_inuse: 3,
                tcp_mem_bytes: 48 * 4096
            })
        );
        assert_eq!(parse_sockstat("UDP: inuse 0 mem 84\n", 4096), None);
        assert!(sockstat().is_some());
    }

    #[test]
    fn finds_own_listeners_only_and_forgets_closed_ones() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let mut mine = ListenerFinder::default();
        let found = mine.find(&[std::process::id()]);
        let inode = found
            .iter()
            .find(|x| x.port == port)
            .map(|x| x.inode)
            .unwrap();
        assert_eq!(mine.owned.get(&inode), Some(&true));
        let mut theirs = ListenerFinder::default();
        assert!(!theirs.find(&[child.id()]).iter().any(|x| x.port == port));
        drop(l);
        assert!(!mine
            .find(&[std::process::id()])
            .iter()
            .any(|x| x.port == port));
        assert!(
            !mine.owned.contains_key(&inode),
            "a closed listener is forgotten"
        );
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn parses_cpu_lists_quotas_and_cgroups() {
        let n = |s: &str| parse_cpu_list(s).map(|c| c.len());
        assert_eq!(n("0"), Some(1));
        assert_eq!(n("0-1"), Some(2));
        assert_eq!(n("0-3,6,8-9\n"), Some(7));
        assert_eq!(n("2-1"), None);
        assert_eq!(n("x"), None);
        assert_eq!(parse_cpu_max("150000 100000\n"), Some((150_000, 100_000)));
        assert_eq!(parse_cpu_max("max 100000"), None);
        assert_eq!(parse_cpu_max("50000 0"), None);
        assert_eq!(
            parse_cgroup_v2("1:cpu:/\n0::/system.slice/x.service\n"),
            Some("/system.slice/x.service")
        );
        assert_eq!(parse_cgroup_v2("4:memory:/a\n"), None);
        let mi = "25 20 0:22 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw\n\
                  30 25 0:26 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_cgroup2_mount(mi),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            parse_cgroup2_mount("1 0 0:1 / / rw - ext4 /dev/sda rw\n"),
            None
        );
    }

    #[test]
    fn usable_cores_of_this_process_are_within_the_machine() {
        let u = usable_cores(&[std::process::id()]);
        assert!(u.cores > 0.0 && u.cores <= f64::from(u.machine), "{u:?}");
        assert!(!u.source.is_empty());
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
        // The count (the directory's size) agrees with its entries (less
        // the fd that lists them); other tests of this process open fds
        // concurrently, so a few tries.
        let _files: Vec<_> = (0..100)
            .map(|_| fs::File::open("/dev/null").unwrap())
            .collect();
        let agree = (0..20).any(|_| {
            let size = open_fds(me);
            let listed = fs::read_dir("/proc/self/fd").unwrap().count() as u64 - 1;
            size == listed && size >= 103
        });
        assert!(agree, "open_fds {} vs listing", open_fds(me));
    }
}
