//! The eBPF object compiled from `probe-ebpf/src/pushscope.bpf.c` by
//! build.rs, embedded in the binary so `pushscope` runs without the
//! sources, and the code that loads it, fills its config maps and attaches
//! every program. Dropping [`Probes`] detaches everything.

use crate::abi;
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, Queue, RingBuf},
    programs::{
        raw_trace_point::RawTracePointLinkId, trace_point::TracePointLinkId, RawTracePoint,
        TracePoint, UProbe,
    },
    Ebpf, EbpfLoader,
};
use std::time::Duration;

/// `probe-ebpf/src/pushscope.bpf.c` (all concerns in one object: shared maps).
pub static PUSHSCOPE_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pushscope.bpf.o"));

/// Every program of the object and the tracepoint it attaches to.
pub const ATTACH: &[(&str, &str, &str)] = &[
    ("ps_set_state", "sock", "inet_sock_set_state"),
    ("ps_exit_accept4", "syscalls", "sys_exit_accept4"),
    ("ps_exit_accept", "syscalls", "sys_exit_accept"),
    ("ps_enter_close", "syscalls", "sys_enter_close"),
    ("ps_send_reset", "tcp", "tcp_send_reset"),
    ("ps_receive_reset", "tcp", "tcp_receive_reset"),
    ("ps_retransmit", "tcp", "tcp_retransmit_skb"),
    ("ps_exit", "sched", "sched_process_exit"),
    ("ps_exit_socket", "syscalls", "sys_exit_socket"),
    ("ps_exit_openat", "syscalls", "sys_exit_openat"),
    ("ps_exit_open", "syscalls", "sys_exit_open"),
    ("ps_exit_dup", "syscalls", "sys_exit_dup"),
    ("ps_exit_dup3", "syscalls", "sys_exit_dup3"),
];

/// Programs attached to raw tracepoints (program, tracepoint). Socket I/O
/// is seen at `sock:sock_recv_length` and `sock:sock_send_length` (every
/// socket receive and send, whatever the syscall) instead of eight
/// read/write-family syscall tracepoints that every read and write of
/// every process would pay for.
/// `sched:sched_process_fork` is raw too: its task_struct arguments are
/// read with CO-RE instead of a formatted layout that changed across kernels.
pub const RAW_ATTACH: &[(&str, &str)] = &[
    ("ps_recv_length", "sock_recv_length"),
    ("ps_send_length", "sock_send_length"),
    ("ps_fork", "sched_process_fork"),
];

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("loading the eBPF object failed (does the kernel have BTF at /sys/kernel/btf/vmlinux?): {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("the eBPF object has no map or program `{0}`")]
    Missing(&'static str),
    #[error("map `{name}`: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("attaching {program} to tracepoint {category}:{name} failed: {source}")]
    Attach {
        program: String,
        category: String,
        name: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("tracefs is not mounted at /sys/kernel/tracing and mounting it failed: {0}")]
    Tracefs(std::io::Error),
}

/// Loaded and attached probes. Drop detaches everything (aya owns the links).
pub struct Probes {
    ebpf: Ebpf,
    counters: PerCpuArray<MapData, u64>,
    /// libssl files whose SSL_do_handshake carries the exact TLS uprobes.
    pub tls_libs: Vec<std::path::PathBuf>,
    /// Why the exact TLS layer is missing, if it is.
    pub tls_note: Option<String>,
    /// fd table entries per process slot (`ps_config.fds_per_slot`).
    pub fds_per_slot: u32,
    /// What `config` holds (rewritten when the message path is switched on).
    config: abi::Config,
    /// Why the OpenSSL plaintext marks could not be attached, if they could not.
    pub msgpath_tls_note: Option<String>,
    /// The tracepoint links while attached (empty while detached, see
    /// [`Probes::set_tracepoints_attached`]).
    tp_links: Vec<(&'static str, TracePointLinkId)>,
    raw_links: Vec<(&'static str, RawTracePointLinkId)>,
}

type TracepointLinks = (
    Vec<(&'static str, TracePointLinkId)>,
    Vec<(&'static str, RawTracePointLinkId)>,
);

fn attach_err(
    prog: &str,
    category: &str,
    name: &str,
) -> impl Fn(aya::programs::ProgramError) -> ProbeError {
    let (prog, category, name) = (prog.to_string(), category.to_string(), name.to_string());
    move |source| ProbeError::Attach {
        program: prog.clone(),
        category: category.clone(),
        name: name.clone(),
        source: Box::new(source),
    }
}

/// Attaches every program of [`ATTACH`] and [`RAW_ATTACH`], loading it
/// first if `load` (once per object; a re-attach after a detach does not).
fn attach_tracepoints(ebpf: &mut Ebpf, load: bool) -> Result<TracepointLinks, ProbeError> {
    let mut tp = Vec::new();
    for (prog, category, name) in ATTACH {
        let err = attach_err(prog, category, name);
        let p: &mut TracePoint = ebpf
            .program_mut(prog)
            .ok_or(ProbeError::Missing("program"))?
            .try_into()
            .map_err(&err)?;
        if load {
            p.load().map_err(&err)?;
        }
        tp.push((*prog, p.attach(category, name).map_err(&err)?));
    }
    let mut raw = Vec::new();
    for (prog, name) in RAW_ATTACH {
        let err = attach_err(prog, "raw", name);
        let p: &mut RawTracePoint = ebpf
            .program_mut(prog)
            .ok_or(ProbeError::Missing("program"))?
            .try_into()
            .map_err(&err)?;
        if load {
            p.load().map_err(&err)?;
        }
        raw.push((*prog, p.attach(name).map_err(&err)?));
    }
    Ok((tp, raw))
}

/// Largest fd table per slot: 8 slots × 2^18 × 48 B = 96 MiB of kernel
/// memory at most; fds beyond are counted as untracked.
pub const MAX_FDS_PER_SLOT: u32 = 1 << 18;

/// fd table entries per slot for processes whose soft RLIMIT_NOFILE are
/// `limits`: the largest (an fd is always below its process's limit),
/// clamped to [64, MAX_FDS_PER_SLOT].
pub fn fds_per_slot(limits: impl IntoIterator<Item = u64>) -> u32 {
    let max = limits.into_iter().max().unwrap_or(1024);
    max.clamp(64, u64::from(MAX_FDS_PER_SLOT)) as u32
}

/// libssl files mapped by any of `pids` (from /proc/PID/maps).
pub fn libssl_paths(pids: &[u32]) -> Vec<std::path::PathBuf> {
    let mut out: Vec<std::path::PathBuf> = Vec::new();
    for pid in pids {
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
        for line in maps.lines() {
            if let Some(path) = line.split_whitespace().nth(5) {
                let name = path.rsplit('/').next().unwrap_or("");
                if name.starts_with("libssl.so") {
                    // Through the process's root so containers resolve too.
                    let p = std::path::PathBuf::from(format!("/proc/{pid}/root{path}"));
                    if !out
                        .iter()
                        .any(|o| o.ends_with(path.trim_start_matches('/')))
                    {
                        out.push(p);
                    }
                }
            }
        }
    }
    out
}

/// Per-CPU counters summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    pub events: u64,
    pub ringbuf_drops: u64,
    pub fd_ok: u64,
    pub emfile: u64,
    pub enfile: u64,
    pub retransmits: u64,
    pub resets_sent: u64,
    pub resets_received: u64,
    pub accept_without_sock: u64,
    pub forks: u64,
    pub map_full: u64,
    pub io_calls: u64,
    pub closes: u64,
    /// Accepts of the target (every fd accept/accept4 returned).
    pub accepts: u64,
    /// Accepts not tracked because the fd was beyond the fd table.
    pub untracked_fd: u64,
    /// ... because the process found no free slot.
    pub untracked_slot: u64,
    /// ... because a map update failed.
    pub untracked_map_full: u64,
    /// Tracked connections whose `socks` entry was evicted (seen at close).
    pub socks_evicted: u64,
    pub slots_recycled: u64,
    pub untracked_closed: u64,
    /// OpenSSL handshakes begun whose socket closed before success.
    pub tls_aborted: u64,
    /// Receives and sends of the target on any socket.
    pub sock_calls: u64,
    /// ... that looked their connection up: calls of hot connections
    /// (first calls, traced), sampled sends, and cold ones sharing a
    /// `hot_socks` slot with a hot one. The rest were turned away as cold.
    pub sock_lookups: u64,
    /// Tracked connections made hot at accept, and those that left the
    /// hot set since (classified and untraced, closed, process exited):
    /// over the whole run, entered - left are hot now.
    pub hot_entered: u64,
    pub hot_left: u64,
}

impl Counters {
    /// Counts since `base` (saturating: counters only grow).
    pub fn since(&self, base: &Counters) -> Counters {
        let d = |a: u64, b: u64| a.saturating_sub(b);
        Counters {
            events: d(self.events, base.events),
            ringbuf_drops: d(self.ringbuf_drops, base.ringbuf_drops),
            fd_ok: d(self.fd_ok, base.fd_ok),
            emfile: d(self.emfile, base.emfile),
            enfile: d(self.enfile, base.enfile),
            retransmits: d(self.retransmits, base.retransmits),
            resets_sent: d(self.resets_sent, base.resets_sent),
            resets_received: d(self.resets_received, base.resets_received),
            accept_without_sock: d(self.accept_without_sock, base.accept_without_sock),
            forks: d(self.forks, base.forks),
            map_full: d(self.map_full, base.map_full),
            io_calls: d(self.io_calls, base.io_calls),
            closes: d(self.closes, base.closes),
            accepts: d(self.accepts, base.accepts),
            untracked_fd: d(self.untracked_fd, base.untracked_fd),
            untracked_slot: d(self.untracked_slot, base.untracked_slot),
            untracked_map_full: d(self.untracked_map_full, base.untracked_map_full),
            socks_evicted: d(self.socks_evicted, base.socks_evicted),
            slots_recycled: d(self.slots_recycled, base.slots_recycled),
            untracked_closed: d(self.untracked_closed, base.untracked_closed),
            tls_aborted: d(self.tls_aborted, base.tls_aborted),
            sock_calls: d(self.sock_calls, base.sock_calls),
            sock_lookups: d(self.sock_lookups, base.sock_lookups),
            hot_entered: d(self.hot_entered, base.hot_entered),
            hot_left: d(self.hot_left, base.hot_left),
        }
    }
}

/// Run time of one attached program (needs `kernel.bpf_stats_enabled=1`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProgStats {
    pub program: String,
    pub run_count: u64,
    pub run_time: Duration,
}

/// The optional exact TLS layer: uprobes on `SSL_do_handshake` of every
/// libssl the target maps. Never fatal: returns what is attached and why
/// not, if nothing is.
fn attach_tls(ebpf: &mut Ebpf, tgids: &[u32]) -> (Vec<std::path::PathBuf>, Option<String>) {
    let libs = libssl_paths(tgids);
    if libs.is_empty() {
        return (
            Vec::new(),
            Some("the target maps no libssl: TLS phases are inferred only".to_string()),
        );
    }
    let mut attached = Vec::new();
    let mut why = None;
    for prog in ["ps_ssl_hs_enter", "ps_ssl_hs_return"] {
        let Some(p) = ebpf.program_mut(prog) else {
            return (Vec::new(), Some(format!("no program {prog}")));
        };
        let p: &mut UProbe = match p.try_into() {
            Ok(p) => p,
            Err(e) => return (Vec::new(), Some(format!("{prog}: {e}"))),
        };
        if let Err(e) = p.load() {
            return (Vec::new(), Some(format!("loading {prog}: {e}")));
        }
        for lib in &libs {
            match p.attach(Some("SSL_do_handshake"), 0, lib, None) {
                Ok(_) => {
                    if !attached.contains(lib) {
                        attached.push(lib.clone());
                    }
                }
                Err(e) => why = Some(format!("uprobe on {}: {e}", lib.display())),
            }
        }
    }
    if attached.is_empty() {
        return (Vec::new(), why);
    }
    (attached, None)
}

/// The message path's plaintext marks: uprobes on SSL_write and SSL_read
/// entry and a uretprobe on both, in every libssl the target maps. Ok(false)
/// when it maps none.
fn attach_ssl_io(ebpf: &mut Ebpf, libs: &[std::path::PathBuf]) -> Result<bool, String> {
    if libs.is_empty() {
        return Ok(false);
    }
    for (prog, funcs) in [
        ("ps_ssl_write_enter", &["SSL_write"][..]),
        ("ps_ssl_read_enter", &["SSL_read"][..]),
        ("ps_ssl_io_return", &["SSL_write", "SSL_read"][..]),
    ] {
        let p: &mut UProbe = ebpf
            .program_mut(prog)
            .ok_or(format!("no program {prog}"))?
            .try_into()
            .map_err(|e| format!("{prog}: {e}"))?;
        p.load().map_err(|e| format!("loading {prog}: {e}"))?;
        for lib in libs {
            for f in funcs {
                p.attach(Some(f), 0, lib, None)
                    .map_err(|e| format!("uprobe {prog} on {f} in {}: {e}", lib.display()))?;
            }
        }
    }
    Ok(true)
}

/// Mounts tracefs if nothing is mounted where aya looks for it.
fn ensure_tracefs() -> Result<(), ProbeError> {
    let have = |p: &str| std::path::Path::new(p).join("events").exists();
    if have("/sys/kernel/tracing") || have("/sys/kernel/debug/tracing") {
        return Ok(());
    }
    let ok = std::process::Command::new("mount")
        .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
        .status()
        .map_err(ProbeError::Tracefs)?
        .success();
    if ok && have("/sys/kernel/tracing") {
        Ok(())
    } else {
        Err(ProbeError::Tracefs(std::io::Error::other(
            "mount -t tracefs failed",
        )))
    }
}

impl Probes {
    /// Loads the object with an fd table of `fds_per_slot` entries per
    /// process slot, writes the config, the target set and the listening
    /// ports, and attaches every program. On any error everything already
    /// attached is detached again (dropping the partially built `Ebpf`).
    pub fn attach(
        tgids: &[u32],
        ports: &[u16],
        io_events_per_conn: u32,
        fds_per_slot: u32,
        trace_one_in: u32,
    ) -> Result<Probes, ProbeError> {
        ensure_tracefs()?;
        let fds_per_slot = fds_per_slot.clamp(1, MAX_FDS_PER_SLOT);
        let mut ebpf = EbpfLoader::new()
            .set_max_entries("fdtab", abi::SLOTS * fds_per_slot)
            .load(PUSHSCOPE_OBJ)
            .map_err(|e| ProbeError::Load(Box::new(e)))?;
        let config = abi::Config {
            target_tgid: tgids.first().copied().unwrap_or(0),
            io_events_per_conn,
            fds_per_slot,
            msgpath: 0,
            trace_one_in,
            _pad: 0,
        };
        fill_array(&mut ebpf, "config", [(0, config)])?;
        {
            let mut set: HashMap<_, u32, u64> =
                HashMap::try_from(ebpf.map_mut("tgids").ok_or(ProbeError::Missing("tgids"))?)
                    .map_err(map_err("tgids"))?;
            // The target itself owns fd slot 1 (the probes' fast path);
            // other processes get a slot at their first accept.
            for (i, t) in tgids.iter().enumerate() {
                set.insert(t, u64::from(i == 0), 0)
                    .map_err(map_err("tgids"))?;
            }
        }
        // The filter in front of `tgids` (ps_common.h).
        fill_array(
            &mut ebpf,
            "tgid_hint",
            tgids.iter().map(|t| (t & abi::HINT_MASK, 1u32)),
        )?;
        {
            // Slot 1 is the target's; the others go to processes at their
            // first accept and come back when they exit.
            let mut free: Queue<_, u32> = Queue::try_from(
                ebpf.map_mut("free_slots")
                    .ok_or(ProbeError::Missing("free_slots"))?,
            )
            .map_err(map_err("free_slots"))?;
            for s in 2..=abi::SLOTS {
                free.push(s, 0).map_err(map_err("free_slots"))?;
            }
        }
        insert_listen_ports(&mut ebpf, ports)?;
        let (tp_links, raw_links) = attach_tracepoints(&mut ebpf, true)?;
        let (tls_libs, tls_note) = attach_tls(&mut ebpf, tgids);
        let counters = PerCpuArray::try_from(
            ebpf.take_map("counters")
                .ok_or(ProbeError::Missing("counters"))?,
        )
        .map_err(map_err("counters"))?;
        Ok(Probes {
            ebpf,
            counters,
            tls_libs,
            tls_note,
            fds_per_slot,
            config,
            msgpath_tls_note: None,
            tp_links,
            raw_links,
        })
    }

    /// Detaches (`false`) or attaches again (`true`) every tracepoint
    /// program, keeping the maps and what they hold. For the overhead
    /// bench only: it alternates windows with and without the probes in
    /// one run of the target, so the pairs share its conditions.
    pub fn set_tracepoints_attached(&mut self, on: bool) -> Result<(), ProbeError> {
        let attached = !self.tp_links.is_empty() || !self.raw_links.is_empty();
        if on == attached {
            return Ok(());
        }
        if on {
            let (tp, raw) = attach_tracepoints(&mut self.ebpf, false)?;
            self.tp_links = tp;
            self.raw_links = raw;
            return Ok(());
        }
        for (prog, id) in self.tp_links.drain(..) {
            if let Some(p) = self.ebpf.program_mut(prog) {
                let p: Result<&mut TracePoint, _> = p.try_into();
                if let Ok(p) = p {
                    if let Err(e) = p.detach(id) {
                        log::warn!("detaching {prog}: {e}");
                    }
                }
            }
        }
        for (prog, id) in self.raw_links.drain(..) {
            if let Some(p) = self.ebpf.program_mut(prog) {
                let p: Result<&mut RawTracePoint, _> = p.try_into();
                if let Ok(p) = p {
                    if let Err(e) = p.detach(id) {
                        log::warn!("detaching {prog}: {e}");
                    }
                }
            }
        }
        Ok(())
    }

    /// Takes the ring buffer (once) for a reader thread.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        let map = self
            .ebpf
            .take_map("events")
            .ok_or(ProbeError::Missing("events"))?;
        RingBuf::try_from(map).map_err(map_err("events"))
    }

    /// Reads the per-CPU counters, summed.
    pub fn counters(&self) -> Counters {
        let get = |slot: u32| -> u64 {
            self.counters
                .get(&slot, 0)
                .map(|v| v.iter().sum())
                .unwrap_or(0)
        };
        Counters {
            events: get(abi::CNT_EVENTS),
            ringbuf_drops: get(abi::CNT_RINGBUF_DROPS),
            fd_ok: get(abi::CNT_FD_OK),
            emfile: get(abi::CNT_EMFILE),
            enfile: get(abi::CNT_ENFILE),
            retransmits: get(abi::CNT_RETRANS),
            resets_sent: get(abi::CNT_RST_SENT),
            resets_received: get(abi::CNT_RST_RECV),
            accept_without_sock: get(abi::CNT_ACCEPT_NOSK),
            forks: get(abi::CNT_FORKS),
            map_full: get(abi::CNT_MAP_FULL),
            io_calls: get(abi::CNT_IO_CALLS),
            closes: get(abi::CNT_CLOSES),
            accepts: get(abi::CNT_ACCEPTS),
            untracked_fd: get(abi::CNT_UNTRACKED_FD),
            untracked_slot: get(abi::CNT_UNTRACKED_SLOT),
            untracked_map_full: get(abi::CNT_UNTRACKED_MAP_FULL),
            socks_evicted: get(abi::CNT_SOCKS_EVICTED),
            slots_recycled: get(abi::CNT_SLOTS_RECYCLED),
            untracked_closed: get(abi::CNT_UNTRACKED_CLOSED),
            tls_aborted: get(abi::CNT_TLS_ABORTED),
            sock_calls: get(abi::CNT_SOCK_CALLS),
            sock_lookups: get(abi::CNT_SOCK_LOOKUPS),
            hot_entered: get(abi::CNT_HOT_ENTERED),
            hot_left: get(abi::CNT_HOT_LEFT),
        }
    }

    /// Switches the message path on (once; before the load starts, so no
    /// connection waits for it): connections whose peer port gets into
    /// `trace_ports` are traced from then on. Over TLS only plaintext
    /// offsets match the client's: OpenSSL's reads and writes are marked
    /// where the target maps libssl (the uprobes cost a trap per call,
    /// hence only now).
    pub fn enable_msgpath(&mut self) -> Result<(), ProbeError> {
        if self.config.msgpath != 0 {
            return Ok(());
        }
        self.config.msgpath = abi::MSGPATH_PORTS;
        match attach_ssl_io(&mut self.ebpf, &self.tls_libs) {
            Ok(true) => self.config.msgpath |= abi::MSGPATH_SSL,
            Ok(false) => {}
            Err(why) => self.msgpath_tls_note = Some(why),
        }
        let config = self.config;
        fill_array(&mut self.ebpf, "config", [(0, config)])
    }

    /// Traces every call of the connection whose peer port is `port` (the
    /// load generator's local port), from its first byte: call before the
    /// client sends anything on it, after `enable_msgpath`.
    pub fn trace_port(&mut self, port: u16) -> Result<(), ProbeError> {
        let mut tp: HashMap<_, u16, u32> = HashMap::try_from(
            self.ebpf
                .map_mut("trace_ports")
                .ok_or(ProbeError::Missing("trace_ports"))?,
        )
        .map_err(map_err("trace_ports"))?;
        tp.insert(port, 1, 0).map_err(map_err("trace_ports"))
    }

    /// True when the target's OpenSSL reads and writes are marked in
    /// plaintext (message path over TLS).
    pub fn msgpath_plaintext(&self) -> bool {
        self.config.msgpath & abi::MSGPATH_SSL != 0
    }

    /// Follows a restarted target: `tgids[0]` becomes the target (fd slot
    /// 1, the fast path; the old target's entries of slot 1 were cleared
    /// by `ps_exit` when it died), the others join the target set, and
    /// `ports` join the listening-port filter.
    pub fn retarget(&mut self, tgids: &[u32], ports: &[u16]) -> Result<(), ProbeError> {
        let Some(&first) = tgids.first() else {
            return Ok(());
        };
        {
            let mut set: HashMap<_, u32, u64> = HashMap::try_from(
                self.ebpf
                    .map_mut("tgids")
                    .ok_or(ProbeError::Missing("tgids"))?,
            )
            .map_err(map_err("tgids"))?;
            for (i, t) in tgids.iter().enumerate() {
                set.insert(t, u64::from(i == 0), 0)
                    .map_err(map_err("tgids"))?;
            }
        }
        fill_array(
            &mut self.ebpf,
            "tgid_hint",
            tgids.iter().map(|t| (t & abi::HINT_MASK, 1u32)),
        )?;
        self.config.target_tgid = first;
        let config = self.config;
        fill_array(&mut self.ebpf, "config", [(0, config)])?;
        insert_listen_ports(&mut self.ebpf, ports)
    }

    /// Adds ports to the listening-port filter (a listener opened later).
    pub fn add_ports(&mut self, ports: &[u16]) -> Result<(), ProbeError> {
        insert_listen_ports(&mut self.ebpf, ports)
    }

    /// The programs' own run time and count (zero unless
    /// `kernel.bpf_stats_enabled` is 1).
    pub fn prog_stats(&self) -> Vec<ProgStats> {
        self.ebpf
            .programs()
            .filter_map(|(name, p)| {
                let info = p.info().ok()?;
                Some(ProgStats {
                    program: name.to_string(),
                    run_count: info.run_count(),
                    run_time: info.run_time(),
                })
            })
            .collect()
    }
}

/// `ProbeError::Map` for the map `name`.
fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> ProbeError {
    move |source| ProbeError::Map {
        name,
        source: Box::new(source),
    }
}

/// Sets (index, value) pairs in the array map `name`.
fn fill_array<V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    values: impl IntoIterator<Item = (u32, V)>,
) -> Result<(), ProbeError> {
    let mut a: Array<_, V> = Array::try_from(ebpf.map_mut(name).ok_or(ProbeError::Missing(name))?)
        .map_err(map_err(name))?;
    for (i, v) in values {
        a.set(i, v, 0).map_err(map_err(name))?;
    }
    Ok(())
}

/// Adds ports to the kernel's listening-port filter (`listen_ports`).
fn insert_listen_ports(ebpf: &mut Ebpf, ports: &[u16]) -> Result<(), ProbeError> {
    let mut lp: HashMap<_, u16, u32> = HashMap::try_from(
        ebpf.map_mut("listen_ports")
            .ok_or(ProbeError::Missing("listen_ports"))?,
    )
    .map_err(map_err("listen_ports"))?;
    for p in ports {
        lp.insert(p, 1, 0).map_err(map_err("listen_ports"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_table_follows_the_largest_soft_limit() {
        assert_eq!(fds_per_slot([64, 1024, 256]), 1024);
        assert_eq!(fds_per_slot([8]), 64);
        assert_eq!(fds_per_slot([1 << 30]), MAX_FDS_PER_SLOT);
        assert_eq!(fds_per_slot([]), 1024);
    }
}
