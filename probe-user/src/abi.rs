//! Rust mirror of `probe-ebpf/include/pushscope.h`. Keep in sync: the tests
//! below assert sizes and offsets.

/// Per-CPU counter slots (enum ps_counter).
pub const CNT_EVENTS: u32 = 0;
pub const CNT_RINGBUF_DROPS: u32 = 1;
pub const CNT_MAX: u32 = 16;

/// struct ps_config
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Config {
    pub target_tgid: u32,
    pub _pad: u32,
}

// SAFETY: repr(C), fixed-width fields, explicit padding.
unsafe impl aya::Pod for Config {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn config_layout_matches_header() {
        assert_eq!(size_of::<Config>(), 8);
        assert_eq!(offset_of!(Config, target_tgid), 0);
    }
}
