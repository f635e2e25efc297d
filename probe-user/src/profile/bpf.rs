//! Loads `profile.bpf.o` (its own `aya::Ebpf`, its own maps), fills the
//! target set, attaches the perf_event program to the software CPU clock
//! of every online CPU and the sched raw tracepoints, and reads the
//! cumulative kernel counts as a [`Snapshot`]. Dropping [`Attached`]
//! detaches everything.

use super::abi;
use aya::{
    maps::{
        stack_trace::StackTraceMap, Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf,
    },
    programs::{
        perf_event::{perf_sw_ids, PerfEventScope, PerfTypeId, SamplePolicy},
        PerfEvent, RawTracePoint,
    },
    Ebpf, EbpfLoader,
};
use std::collections::HashMap;

/// `probe-ebpf/src/profile.bpf.c`, compiled by build.rs.
pub static PROFILE_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/profile.bpf.o"));

/// Raw tracepoints of the object (program, tracepoint).
pub const RAW_ATTACH: &[(&str, &str)] = &[
    ("pf_sched_switch", "sched_switch"),
    ("pf_sched_wakeup", "sched_wakeup"),
    ("pf_sched_wakeup_new", "sched_wakeup_new"),
    ("pf_fork", "sched_process_fork"),
];

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("loading the profiler's eBPF object failed (does the kernel have BTF at /sys/kernel/btf/vmlinux?): {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("the profiler's eBPF object has no map or program `{0}`")]
    Missing(&'static str),
    #[error("profiler map `{name}`: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("attaching {program} to {hook} failed: {source}")]
    Attach {
        program: &'static str,
        hook: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("listing online CPUs: {0}")]
    Cpus(String),
    #[error("process {0} does not exist")]
    NoProcess(u32),
    #[error("writing profile outputs to {path}: {source}")]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> ProfileError {
    move |e| ProfileError::Map {
        name,
        source: Box::new(e),
    }
}

/// Cumulative kernel figures at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub cpu: HashMap<abi::CpuKey, u64>,
    pub off: HashMap<abi::OffKey, abi::OffVal>,
    /// Run-queue latency histogram (summed over CPUs).
    pub rq: Vec<u64>,
    /// Counter slots (summed over CPUs).
    pub counters: Vec<u64>,
}

impl Snapshot {
    /// What happened between `earlier` and `self` (both cumulative).
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        let cpu = self
            .cpu
            .iter()
            .filter_map(|(k, v)| {
                let d = v.saturating_sub(earlier.cpu.get(k).copied().unwrap_or(0));
                (d > 0).then_some((*k, d))
            })
            .collect();
        let off = self
            .off
            .iter()
            .filter_map(|(k, v)| {
                let e = earlier.off.get(k).copied().unwrap_or_default();
                let d = abi::OffVal {
                    ns: v.ns.saturating_sub(e.ns),
                    count: v.count.saturating_sub(e.count),
                };
                (d.ns > 0 || d.count > 0).then_some((*k, d))
            })
            .collect();
        let sub = |a: &[u64], b: &[u64]| -> Vec<u64> {
            a.iter()
                .enumerate()
                .map(|(i, v)| v.saturating_sub(b.get(i).copied().unwrap_or(0)))
                .collect()
        };
        Snapshot {
            cpu,
            off,
            rq: sub(&self.rq, &earlier.rq),
            counters: sub(&self.counters, &earlier.counters),
        }
    }

    pub fn counter(&self, slot: u32) -> u64 {
        self.counters.get(slot as usize).copied().unwrap_or(0)
    }
}

/// The loaded and attached profiler object.
pub struct Attached {
    // Owns the programs and their links: dropping it detaches.
    ebpf: Ebpf,
    stacks: StackTraceMap<MapData>,
    cpu: BpfHashMap<MapData, abi::CpuKey, u64>,
    off: BpfHashMap<MapData, abi::OffKey, abi::OffVal>,
    rq: PerCpuArray<MapData, u64>,
    counters: PerCpuArray<MapData, u64>,
    stalls: RingBuf<MapData>,
    threads: BpfHashMap<MapData, u32, abi::Thread>,
    target: Array<MapData, abi::Target>,
}

impl Attached {
    /// Loads the object for the target set `tgids`, samples every online
    /// CPU's software clock at `hz` and attaches the sched hooks.
    pub fn attach(tgids: &[u32], hz: u64, stall_ns: u64) -> Result<Attached, ProfileError> {
        let mut ebpf = EbpfLoader::new()
            .load(PROFILE_OBJ)
            .map_err(|e| ProfileError::Load(Box::new(e)))?;
        {
            let mut cfg: Array<_, abi::Config> = Array::try_from(
                ebpf.map_mut("pf_config")
                    .ok_or(ProfileError::Missing("pf_config"))?,
            )
            .map_err(map_err("pf_config"))?;
            cfg.set(0, abi::Config { stall_ns }, 0)
                .map_err(map_err("pf_config"))?;
        }
        {
            let mut set: BpfHashMap<_, u32, u32> = BpfHashMap::try_from(
                ebpf.map_mut("tgids")
                    .ok_or(ProfileError::Missing("tgids"))?,
            )
            .map_err(map_err("tgids"))?;
            for t in tgids {
                set.insert(t, 1, 0).map_err(map_err("tgids"))?;
            }
        }
        {
            let mut hint: Array<_, u64> = Array::try_from(
                ebpf.map_mut("tgid_hint")
                    .ok_or(ProfileError::Missing("tgid_hint"))?,
            )
            .map_err(map_err("tgid_hint"))?;
            for t in tgids {
                let (word, bit) = abi::hint_bit(*t);
                let old = hint.get(&word, 0).map_err(map_err("tgid_hint"))?;
                hint.set(word, old | bit, 0).map_err(map_err("tgid_hint"))?;
            }
        }
        {
            // Nothing of the target is counted as running yet: it is
            // taken as idle from now (a stall cannot start before attach).
            let mut tg: Array<_, abi::Target> = Array::try_from(
                ebpf.map_mut("target")
                    .ok_or(ProfileError::Missing("target"))?,
            )
            .map_err(map_err("target"))?;
            tg.set(
                0,
                abi::Target {
                    running: 0,
                    idle_since: super::monotonic_ns(),
                },
                0,
            )
            .map_err(map_err("target"))?;
        }
        for (prog, tp) in RAW_ATTACH {
            let attach_err = |source| ProfileError::Attach {
                program: prog,
                hook: format!("raw tracepoint {tp}"),
                source: Box::new(source),
            };
            let p: &mut RawTracePoint = ebpf
                .program_mut(prog)
                .ok_or(ProfileError::Missing(prog))?
                .try_into()
                .map_err(attach_err)?;
            p.load().map_err(attach_err)?;
            p.attach(tp).map_err(attach_err)?;
        }
        let cpus = aya::util::online_cpus()
            .map_err(|(what, e)| ProfileError::Cpus(format!("{what}: {e}")))?;
        {
            let attach_err = |source| ProfileError::Attach {
                program: "pf_cpu_sample",
                hook: "perf_event software cpu-clock".into(),
                source: Box::new(source),
            };
            let p: &mut PerfEvent = ebpf
                .program_mut("pf_cpu_sample")
                .ok_or(ProfileError::Missing("pf_cpu_sample"))?
                .try_into()
                .map_err(attach_err)?;
            p.load().map_err(attach_err)?;
            for cpu in cpus {
                p.attach(
                    PerfTypeId::Software,
                    perf_sw_ids::PERF_COUNT_SW_CPU_CLOCK as u64,
                    PerfEventScope::AllProcessesOneCpu { cpu },
                    SamplePolicy::Frequency(hz),
                    false,
                )
                .map_err(attach_err)?;
            }
        }
        let stacks = StackTraceMap::try_from(
            ebpf.take_map("stacks")
                .ok_or(ProfileError::Missing("stacks"))?,
        )
        .map_err(map_err("stacks"))?;
        let cpu = BpfHashMap::try_from(
            ebpf.take_map("cpu_counts")
                .ok_or(ProfileError::Missing("cpu_counts"))?,
        )
        .map_err(map_err("cpu_counts"))?;
        let off = BpfHashMap::try_from(
            ebpf.take_map("off_counts")
                .ok_or(ProfileError::Missing("off_counts"))?,
        )
        .map_err(map_err("off_counts"))?;
        let rq = PerCpuArray::try_from(
            ebpf.take_map("rq_hist")
                .ok_or(ProfileError::Missing("rq_hist"))?,
        )
        .map_err(map_err("rq_hist"))?;
        let counters = PerCpuArray::try_from(
            ebpf.take_map("pf_counters")
                .ok_or(ProfileError::Missing("pf_counters"))?,
        )
        .map_err(map_err("pf_counters"))?;
        let stalls = RingBuf::try_from(
            ebpf.take_map("stalls")
                .ok_or(ProfileError::Missing("stalls"))?,
        )
        .map_err(map_err("stalls"))?;
        let threads = BpfHashMap::try_from(
            ebpf.take_map("threads")
                .ok_or(ProfileError::Missing("threads"))?,
        )
        .map_err(map_err("threads"))?;
        let target = Array::try_from(
            ebpf.take_map("target")
                .ok_or(ProfileError::Missing("target"))?,
        )
        .map_err(map_err("target"))?;
        Ok(Attached {
            threads,
            target,
            ebpf,
            stacks,
            cpu,
            off,
            rq,
            counters,
            stalls,
        })
    }

    /// The cumulative counts now.
    pub fn snapshot(&self) -> Snapshot {
        let cpu = self.cpu.iter().filter_map(Result::ok).collect();
        let off = self.off.iter().filter_map(Result::ok).collect();
        let sum_cpus = |m: &PerCpuArray<MapData, u64>, n: u32| -> Vec<u64> {
            (0..n)
                .map(|i| m.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0))
                .collect()
        };
        Snapshot {
            cpu,
            off,
            rq: sum_cpus(&self.rq, abi::RQ_BUCKETS),
            counters: sum_cpus(&self.counters, abi::CNT_MAX),
        }
    }

    /// A stall going on now, as (start, tid): no target thread is counted
    /// on a CPU and some wants one (runnable or stopped) since `start`
    /// (the later of "the last one left the CPU" and the earliest want).
    pub fn ongoing_stall(&self) -> Option<(u64, u32)> {
        let t = self.target.get(&0, 0).ok()?;
        if t.running > 0 || t.idle_since == 0 {
            return None;
        }
        let (want, tid) = self
            .threads
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, th)| th.want_since > 0 && th.oncpu == 0)
            .map(|(tid, th)| (th.want_since, tid))
            .min()?;
        Some((want.max(t.idle_since), tid))
    }

    /// Stalls recorded since the last call.
    pub fn drain_stalls(&mut self) -> Vec<abi::Stall> {
        let mut out = Vec::new();
        // Bounded: the ring holds at most 256 KiB / 32 B records.
        for _ in 0..(256 << 10) / 32 {
            let Some(item) = self.stalls.next() else {
                break;
            };
            if item.len() >= std::mem::size_of::<abi::Stall>() {
                // SAFETY: the record is a `struct pf_stall` (checked length);
                // read unaligned as the ring only guarantees 8-byte alignment.
                out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<abi::Stall>()) });
            }
        }
        out
    }

    /// Attaches `pf_nop` (an empty program) to sched_switch: its run time
    /// per run is what bpf_stats adds to any program, the baseline to
    /// subtract from `pf_sched_switch`'s.
    pub fn attach_calibration(&mut self) -> Result<(), ProfileError> {
        let attach_err = |source| ProfileError::Attach {
            program: "pf_nop",
            hook: "raw tracepoint sched_switch".into(),
            source: Box::new(source),
        };
        let p: &mut RawTracePoint = self
            .ebpf
            .program_mut("pf_nop")
            .ok_or(ProfileError::Missing("pf_nop"))?
            .try_into()
            .map_err(attach_err)?;
        p.load().map_err(attach_err)?;
        p.attach("sched_switch").map_err(attach_err)?;
        Ok(())
    }

    /// (program, runs, run time) of every program (zero unless
    /// `kernel.bpf_stats_enabled` is 1).
    pub fn prog_stats(&self) -> Vec<(String, u64, std::time::Duration)> {
        self.ebpf
            .programs()
            .filter_map(|(name, p)| {
                let info = p.info().ok()?;
                Some((name.to_string(), info.run_count(), info.run_time()))
            })
            .collect()
    }

    /// Instruction pointers of a stack (leaf first); empty if unknown.
    pub fn stack(&self, id: i32) -> Vec<u64> {
        if id < 0 {
            return Vec::new();
        }
        self.stacks
            .get(&(id as u32), 0)
            .map(|s| s.frames().iter().map(|f| f.ip).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_since_keeps_only_what_grew() {
        let k = |u| abi::CpuKey {
            tgid: 1,
            ustack: u,
            kstack: -1,
            pad: 0,
        };
        let o = abi::OffKey {
            tgid: 1,
            ustack: 3,
            kstack: -1,
            kind: abi::KIND_LOCK,
        };
        let a = Snapshot {
            cpu: [(k(1), 5), (k(2), 7)].into_iter().collect(),
            off: [(o, abi::OffVal { ns: 100, count: 1 })]
                .into_iter()
                .collect(),
            rq: vec![1, 2],
            counters: vec![3],
        };
        let b = Snapshot {
            cpu: [(k(1), 5), (k(2), 9), (k(3), 1)].into_iter().collect(),
            off: [(o, abi::OffVal { ns: 350, count: 3 })]
                .into_iter()
                .collect(),
            rq: vec![1, 5],
            counters: vec![4],
        };
        let d = b.since(&a);
        assert_eq!(d.cpu.len(), 2);
        assert_eq!(d.cpu[&k(2)], 2);
        assert_eq!(d.cpu[&k(3)], 1);
        assert_eq!(d.off[&o], abi::OffVal { ns: 250, count: 2 });
        assert_eq!(d.rq, vec![0, 3]);
        assert_eq!(d.counter(0), 1);
        assert_eq!(d.counter(7), 0);
    }
}
