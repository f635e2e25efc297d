//! Mirror of `probe-ebpf/include/profile.h` (keep in sync: the tests below
//! assert every size and offset).

/// `PF_HINT_MASK`: filter bitmap slots.
pub const HINT_MASK: u32 = 0xffff;

/// (word, bit mask) of a filter bitmap slot.
pub fn hint_bit(slot: u32) -> (u32, u64) {
    let slot = slot & HINT_MASK;
    (slot >> 6, 1u64 << (slot & 63))
}
/// `PF_RQ_SUB_BITS`
pub const RQ_SUB_BITS: u32 = 3;
/// `PF_RQ_BUCKETS`
pub const RQ_BUCKETS: u32 = 64 << RQ_SUB_BITS;

pub const KIND_LOCK: u32 = 1;
pub const KIND_POLL: u32 = 2;
pub const KIND_SOCKET: u32 = 3;
pub const KIND_SLEEP: u32 = 4;
pub const KIND_IO: u32 = 5;
pub const KIND_STOPPED: u32 = 6;
pub const KIND_OTHER: u32 = 7;

pub const CNT_SAMPLES: u32 = 0;
pub const CNT_USTACK_ERR: u32 = 1;
pub const CNT_KSTACK_ERR: u32 = 2;
pub const CNT_MAP_FULL: u32 = 3;
pub const CNT_RING_DROPS: u32 = 4;
pub const CNT_SWITCHES: u32 = 5;
pub const CNT_WAKEUPS: u32 = 6;
pub const CNT_STACK_REUSED: u32 = 7;
pub const CNT_MAX: u32 = 8;

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Config {
    pub stall_ns: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct CpuKey {
    pub tgid: u32,
    pub ustack: i32,
    pub kstack: i32,
    pub pad: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct OffKey {
    pub tgid: u32,
    pub ustack: i32,
    pub kstack: i32,
    pub kind: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OffVal {
    pub ns: u64,
    pub count: u64,
}

/// `struct pf_thread`: per target thread (map `threads`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Thread {
    pub off_ts: u64,
    pub want_since: u64,
    pub rq_since: u64,
    pub ustack: i32,
    pub kstack: i32,
    pub kind: u32,
    pub oncpu: u32,
    pub c_ip: u64,
    pub c_bp: u64,
    pub c_ret: u64,
    pub c_nr: i64,
    pub c_ustack: i32,
    pub pad: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Target {
    pub running: i64,
    pub idle_since: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Stall {
    pub start_ns: u64,
    pub dur_ns: u64,
    pub tgid: u32,
    pub tid: u32,
}

// SAFETY: plain #[repr(C)] integers with no implicit padding.
unsafe impl aya::Pod for Config {}
// SAFETY: as above.
unsafe impl aya::Pod for CpuKey {}
// SAFETY: as above.
unsafe impl aya::Pod for OffKey {}
// SAFETY: as above.
unsafe impl aya::Pod for OffVal {}
// SAFETY: as above.
unsafe impl aya::Pod for Target {}
// SAFETY: as above.
unsafe impl aya::Pod for Thread {}

/// The wait kind's name in outputs.
pub fn kind_name(kind: u32) -> &'static str {
    match kind {
        KIND_LOCK => "lock",
        KIND_POLL => "poll",
        KIND_SOCKET => "socket",
        KIND_SLEEP => "sleep",
        KIND_IO => "io",
        KIND_STOPPED => "stopped",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn layouts_match_profile_h() {
        assert_eq!(size_of::<Config>(), 8);
        assert_eq!(size_of::<CpuKey>(), 16);
        assert_eq!(offset_of!(CpuKey, ustack), 4);
        assert_eq!(offset_of!(CpuKey, kstack), 8);
        assert_eq!(size_of::<OffKey>(), 16);
        assert_eq!(offset_of!(OffKey, kind), 12);
        assert_eq!(size_of::<OffVal>(), 16);
        assert_eq!(offset_of!(OffVal, count), 8);
        assert_eq!(size_of::<Thread>(), 80);
        assert_eq!(offset_of!(Thread, want_since), 8);
        assert_eq!(offset_of!(Thread, oncpu), 36);
        assert_eq!(offset_of!(Thread, c_ip), 40);
        assert_eq!(offset_of!(Thread, c_ustack), 72);
        assert_eq!(size_of::<Target>(), 16);
        assert_eq!(offset_of!(Target, idle_since), 8);
        assert_eq!(size_of::<Stall>(), 24);
        assert_eq!(offset_of!(Stall, dur_ns), 8);
        assert_eq!(offset_of!(Stall, tid), 20);
    }

    #[test]
    fn hint_bits() {
        assert_eq!(hint_bit(0), (0, 1));
        assert_eq!(hint_bit(65), (1, 2));
        assert_eq!(hint_bit(0x1_0000 + 63), (0, 1 << 63));
    }

    #[test]
    fn kind_names() {
        assert_eq!(kind_name(KIND_LOCK), "lock");
        assert_eq!(kind_name(KIND_STOPPED), "stopped");
        assert_eq!(kind_name(99), "other");
    }
}
