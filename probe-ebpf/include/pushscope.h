/* pushscope kernel/user ABI: the single source of truth for every struct
 * that crosses the ring buffer or a map. Fixed-width fields, explicit
 * padding, no bool. Keep in sync with probe-user/src/abi.rs (a test there
 * asserts sizes and offsets). */
#ifndef PUSHSCOPE_ABI_H
#define PUSHSCOPE_ABI_H

/* Per-CPU counters indexed by these slots (map `counters`). */
enum ps_counter {
	PS_CNT_EVENTS = 0,
	PS_CNT_RINGBUF_DROPS = 1,
	PS_CNT_MAX = 16,
};

/* Target configuration written by userspace before attach (map `config`). */
struct ps_config {
	__u32 target_tgid;
	__u32 _pad;
};

#endif
