/* Maps and helpers shared by every concern of the observer object. One
 * object (src/pushscope.bpf.c) includes all concerns so they share maps
 * without pinning. */
#ifndef PUSHSCOPE_COMMON_H
#define PUSHSCOPE_COMMON_H

#include "vmlinux_min.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "pushscope.h"

#define PS_EMFILE 24
#define PS_ENFILE 23
#define PS_IPPROTO_TCP 6
#define PS_MAX_CONNS 131072

enum {
	PS_TCP_ESTABLISHED = 1,
	PS_TCP_SYN_SENT = 2,
	PS_TCP_SYN_RECV = 3,
	PS_TCP_FIN_WAIT1 = 4,
	PS_TCP_FIN_WAIT2 = 5,
	PS_TCP_TIME_WAIT = 6,
	PS_TCP_CLOSE = 7,
	PS_TCP_CLOSE_WAIT = 8,
	PS_TCP_LAST_ACK = 9,
	PS_TCP_LISTEN = 10,
	PS_TCP_CLOSING = 11,
};

/* Kernel-side state of one accepted connection in `fdtab`, found by
 * (tgid, fd) at close, and by sk (`socks` holds its index) for receives
 * and sends (never leaves the kernel except summarised in PS_EV_CLOSE_FD). */
struct ps_conn {
	__u64 sk;
	__u32 io_seq;   /* classified calls so far */
	__u32 max_wmem; /* max sk_wmem_queued, sampled after sends */
	__u64 hot;      /* 1 while counted in `hot_socks` (see ps_conn_cool) */
	__u64 bytes[2]; /* cumulative bytes received [PS_DIR_READ] and sent [PS_DIR_WRITE] */
	__u64 plain[2]; /* msgpath over OpenSSL: cumulative plaintext of SSL_read/SSL_write */
	__u32 trace_port; /* msgpath: the peer port when every call is marked, else 0 */
	__u32 _pad;
};

/* Per-sock state for events that only know the sock (retransmits,
 * receives, sends). */
struct ps_sock {
	__u32 retrans;
	__u32 idx1; /* fdtab index + 1 of the connection (0: fd not tracked) */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ps_config);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PS_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/* Accepted connections live in an array indexed by (slot, fd): a process
 * of the target gets a slot at its first accept, so finding the connection
 * of a close() is one small hash lookup (tgid -> slot) and one array
 * access, and an unrelated process is turned away by `tgid_hint`. The
 * table has `fds_per_slot` entries per slot, sized by userspace from the
 * target's RLIMIT_NOFILE at attach (max_entries set before load); fds
 * beyond it, or a process finding no free slot, are not tracked (counted
 * per reason). An exiting process returns its slot (ps_exit). */
#define PS_FDS_DEFAULT 32768 /* only until userspace sets max_entries */

/* tgid of the target and of its descendant processes -> slot (0: no
 * accept yet). Threads are not keys: they share their process's tgid. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u64);
} tgids SEC(".maps");

/* A filter in front of `tgids`: slot (tgid & PS_HINT_MASK) is non-zero
 * once some tgid of the target maps there (never cleared: a stale slot
 * only costs the hash lookup). An unrelated process is turned away by one
 * array access, which the verifier inlines, instead of a hash miss. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, PS_HINT_MASK + 1);
	__type(key, __u32);
	__type(value, __u32);
} tgid_hint SEC(".maps");

/* Free slots (2..PS_SLOTS, filled by userspace; slot 1 is the target's):
 * popped at a process's first accept, pushed back when it exits, so
 * respawned workers do not run out. */
struct {
	__uint(type, BPF_MAP_TYPE_QUEUE);
	__uint(max_entries, PS_SLOTS);
	__type(value, __u32);
} free_slots SEC(".maps");

/* Slot 0: `socks` entries of untracked fds alive (approximate, never
 * negative for long): close() resolves an untracked fd to its sock only
 * while some may exist. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __s64);
} untracked_live SEC(".maps");

/* Local TCP ports the target listens on (host order), filled by userspace. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u16);
	__type(value, __u32);
} listen_ports SEC(".maps");

/* ((slot - 1) * fds_per_slot + fd) -> accepted connection (sk 0: none). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, PS_SLOTS * PS_FDS_DEFAULT);
	__type(key, __u32);
	__type(value, struct ps_conn);
} fdtab SEC(".maps");

/* sk -> state of accepted socks (set at accept, deleted at close). LRU so a
 * lost close never fills it. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, PS_MAX_CONNS);
	__type(key, __u64);
	__type(value, struct ps_sock);
} socks SEC(".maps");

/* Outbound socks of the target (seen entering SYN_SENT in its context). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, __u32);
} outs SEC(".maps");

/* Which socks need more than the steady state's work on a receive or
 * send: a tracked connection is hot from its accept until its first
 * `io_events_per_conn` calls are classified, and for good when the message
 * path traces it (classify.inc.c). A call of a cold connection is turned
 * away without finding its connection (an LRU-hash lookup by sk, then its
 * fdtab entry: three cache misses each when a fan-out walks thousands of
 * sockets, ~475 ns per send measured at the reference pusher's
 * saturation). Two levels, so the common case reads only a line that
 * stays in every CPU's cache: `hot_total` (slot 0: hot connections
 * anywhere; 0 in a steady fan-out without the message path), then
 * `hot_socks`, counters indexed by a hash of the sock's address
 * (ps_hot_slot). A slot shared with a hot sock only sends a cold one down
 * the full path, which finds its entry cold and does what the fast path
 * would. */
#define PS_HOT_SLOTS 8192
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __s64);
} hot_total SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, PS_HOT_SLOTS);
	__type(key, __u32);
	__type(value, __u32);
} hot_socks SEC(".maps");

/* Per CPU: sends until the next send-queue sample (classify.inc.c). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} send_sample SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 16 << 20);
} events SEC(".maps");

static __always_inline void ps_count(__u32 slot)
{
	__u64 *n = bpf_map_lookup_elem(&counters, &slot);
	if (n)
		*n += 1;
}

static __always_inline __u32 ps_tgid(void)
{
	return bpf_get_current_pid_tgid() >> 32;
}

/* Might `tgid` be in the target? (false: certainly not) */
static __always_inline bool ps_hinted(__u32 tgid)
{
	__u32 k = tgid & PS_HINT_MASK;
	__u32 *h = bpf_map_lookup_elem(&tgid_hint, &k);
	return h && *h;
}

static __always_inline void ps_hint_set(__u32 tgid)
{
	__u32 k = tgid & PS_HINT_MASK;
	__u32 *h = bpf_map_lookup_elem(&tgid_hint, &k);
	if (h)
		*h = 1;
}

static __always_inline bool ps_in_target(__u32 tgid)
{
	return ps_hinted(tgid) && bpf_map_lookup_elem(&tgids, &tgid) != 0;
}

/* Slot of `sk` in `hot_socks`: socks are slab objects (low bits zero),
 * so a multiplicative hash of the address spreads them. */
static __always_inline __u32 ps_hot_slot(__u64 sk)
{
	return ((sk >> 6) * 0x9E3779B97F4A7C15ULL) >> 51; /* 13 bits: PS_HOT_SLOTS */
}

/* May `sk` be hot? (false: certainly cold) */
static __always_inline bool ps_hot_maybe(__u64 sk)
{
	__u32 zero = 0;
	__s64 *t = bpf_map_lookup_elem(&hot_total, &zero);
	if (!t || *t <= 0)
		return false;
	__u32 k = ps_hot_slot(sk);
	__u32 *n = bpf_map_lookup_elem(&hot_socks, &k);
	return n && *n;
}

/* Adds `d` (+1: made hot, before its fd reaches userspace; -1: left) to
 * the sock's slot and the total. Locked adds: a call that reads 0 after a
 * connection was made hot cannot be that connection's. */
static __always_inline void ps_hot_add(__u64 sk, __s32 d)
{
	__u32 k = ps_hot_slot(sk);
	__u32 *n = bpf_map_lookup_elem(&hot_socks, &k);
	if (n)
		__sync_fetch_and_add(n, d);
	__u32 zero = 0;
	__s64 *t = bpf_map_lookup_elem(&hot_total, &zero);
	if (t)
		__sync_fetch_and_add(t, (__s64)d);
}

/* Takes a hot connection out of `hot_socks` (once, whoever calls first:
 * its receive/send hooks on several threads, its close, its process's
 * exit). */
static __always_inline void ps_conn_cool(struct ps_conn *c, __u64 sk)
{
	if (c->hot && __sync_val_compare_and_swap(&c->hot, 1, 0) == 1) {
		ps_hot_add(sk, -1);
		ps_count(PS_CNT_HOT_LEFT);
	}
}

/* Reserves a zeroed event or counts the drop. */
static __always_inline struct ps_event *ps_reserve(__u32 kind, __u64 sk)
{
	struct ps_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		ps_count(PS_CNT_RINGBUF_DROPS);
		return 0;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_ns = bpf_ktime_get_ns();
	e->kind = kind;
	e->sk = sk;
	return e;
}

/* Wake the reader only when a batch is waiting. A wakeup is an irq_work
 * IPI charged to the target (a VM exit under a hypervisor: microseconds),
 * and with the default policy every event that finds the ring drained
 * wakes the reader: nearly every event at connection setup. The reader
 * also polls every PS_POLL_MS (userspace), so a lone event waits at most
 * that long. The wakeup fires when this record crosses the threshold. */
#define PS_REC_BYTES (sizeof(struct ps_event) + 8) /* with the ring's header */
#define PS_WAKE_BYTES (64 * PS_REC_BYTES)
/* uapi linux/bpf.h flags (not in the trimmed headers) */
#define PS_RB_NO_WAKEUP 1
#define PS_RB_FORCE_WAKEUP 2
#define PS_RB_AVAIL_DATA 0

static __always_inline void ps_submit(struct ps_event *e)
{
	__u64 avail = bpf_ringbuf_query(&events, PS_RB_AVAIL_DATA);
	bool crossing = avail >= PS_WAKE_BYTES && avail < PS_WAKE_BYTES + PS_REC_BYTES;
	bpf_ringbuf_submit(e, crossing ? PS_RB_FORCE_WAKEUP : PS_RB_NO_WAKEUP);
	ps_count(PS_CNT_EVENTS);
}

/* Why (tgid, fd) has no fdtab index. */
enum {
	PS_IDX_OK = 0,
	PS_IDX_NONE = 1,      /* not a process of the target, or no slot yet (no alloc) */
	PS_IDX_FD_BEYOND = 2, /* fd >= fds_per_slot */
	PS_IDX_NO_SLOT = 3,   /* every slot is taken */
};

/* fdtab index of (tgid, fd), or why there is none. With `alloc`, gives the
 * process a free slot if it has none yet. */
static __always_inline int ps_fd_idx(__u32 tgid, __u32 fd, bool alloc, __u32 *idx)
{
	__u32 zero = 0;
	struct ps_config *cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg)
		return PS_IDX_NONE;
	__u32 fds = cfg->fds_per_slot;
	if (fd >= fds)
		return PS_IDX_FD_BEYOND;
	/* Fast path: the target process itself always has slot 1 (set by
	 * userspace), no hash lookup. */
	if (tgid == cfg->target_tgid) {
		*idx = fd;
		return PS_IDX_OK;
	}
	if (!ps_hinted(tgid))
		return PS_IDX_NONE;
	/* 64-bit values: the BPF target has 64-bit atomics without -mcpu=v3 */
	__u64 *slot = bpf_map_lookup_elem(&tgids, &tgid);
	if (!slot)
		return PS_IDX_NONE;
	__u64 s = *slot;
	if (!s) {
		if (!alloc)
			return PS_IDX_NONE;
		__u32 fresh = 0;
		if (bpf_map_pop_elem(&free_slots, &fresh))
			return PS_IDX_NO_SLOT;
		/* another thread of the process may have won: use its slot */
		__u64 old = __sync_val_compare_and_swap(slot, 0, (__u64)fresh);
		if (old) {
			bpf_map_push_elem(&free_slots, &fresh, 0);
			s = old;
		} else {
			s = fresh;
		}
	}
	if (s < 1 || s > PS_SLOTS)
		return PS_IDX_NO_SLOT;
	*idx = (__u32)(s - 1) * fds + fd;
	return PS_IDX_OK;
}

/* The connection on (tgid, fd), or 0. */
static __always_inline struct ps_conn *ps_conn_of(__u32 tgid, __u32 fd, __u32 *idx)
{
	if (ps_fd_idx(tgid, fd, false, idx) != PS_IDX_OK)
		return 0;
	struct ps_conn *c = bpf_map_lookup_elem(&fdtab, idx);
	if (!c || !c->sk)
		return 0;
	return c;
}

/* The tracked connection of sock `sk` (its `socks` entry points into
 * fdtab), or 0 when the sock is not tracked. */
static __always_inline struct ps_conn *ps_conn_of_sk(__u64 sk)
{
	struct ps_sock *so = bpf_map_lookup_elem(&socks, &sk);
	if (!so || !so->idx1)
		return 0;
	__u32 idx = so->idx1 - 1;
	struct ps_conn *c = bpf_map_lookup_elem(&fdtab, &idx);
	if (!c || c->sk != sk)
		return 0;
	return c;
}

#endif
