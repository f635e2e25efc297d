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

/* Kernel-side state of one accepted connection, keyed by (tgid, fd) so a
 * write costs one lookup (never leaves the kernel except summarised in
 * PS_EV_CLOSE_FD). */
struct ps_conn {
	__u64 sk;
	__u32 io_seq;   /* classified calls so far */
	__u32 max_wmem; /* max sk_wmem_queued as writes start */
};

/* Per-sock counters for events that only know the sock (retransmits). */
struct ps_sock {
	__u32 retrans;
	__u32 _pad;
};

/* A read in flight between sys_enter and sys_exit of one thread. */
struct ps_pending_io {
	__u64 sk;
	__u64 fd_key; /* (tgid << 32 | fd) of the connection */
	__u64 buf;    /* user pointer of the first bytes */
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

/* tgids (and tids: harmless) of the target and its descendants. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u32);
} tgids SEC(".maps");

/* Local TCP ports the target listens on (host order), filled by userspace. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u16);
	__type(value, __u32);
} listen_ports SEC(".maps");

/* (tgid << 32 | fd) -> accepted connection. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PS_MAX_CONNS);
	__type(key, __u64);
	__type(value, struct ps_conn);
} fds SEC(".maps");

/* sk -> counters of accepted socks. LRU so a lost close never fills it. */
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

/* pid_tgid -> read/write in flight. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct ps_pending_io);
} pending SEC(".maps");

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

static __always_inline bool ps_in_target(__u32 tgid)
{
	return bpf_map_lookup_elem(&tgids, &tgid) != 0;
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

static __always_inline void ps_submit(struct ps_event *e)
{
	bpf_ringbuf_submit(e, 0);
	ps_count(PS_CNT_EVENTS);
}

static __always_inline __u64 ps_fd_key(__u32 tgid, __u32 fd)
{
	return ((__u64)tgid << 32) | fd;
}

#endif
