/* Message path: every receive and send of a traced connection, with the
 * connection's cumulative byte count after it, so userspace can find the
 * call that carried a given byte of the stream (the load generator knows
 * the wire offset of every publish request and frame) without reading a
 * payload. A connection is traced when its peer port (the load
 * generator's local port) is in `trace_ports`, filled by userspace before
 * the client sends its first byte: the check runs once per connection, at
 * its first successful call, and costs nothing afterwards (the per-call
 * work on an untraced connection is two additions to the fdtab entry
 * already at hand). Included by pushscope.bpf.c before classify. */

#include <bpf/bpf_endian.h>

/* Peer ports (host order) of the connections to trace. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u16);
	__type(value, __u32);
} trace_ports SEC(".maps");

/* The connection's first successful call: trace it if its peer port was
 * registered (or, for the observer bench, 1 in `one_in` connections by a
 * hash of the sock's address, to measure the cost of sampling without a
 * load generator that registers ports). */
static __always_inline void ps_msgpath_check(struct ps_conn *c, __u64 sk, __u32 one_in)
{
	__u16 port = bpf_ntohs(BPF_CORE_READ((struct sock *)sk, __sk_common.skc_dport));
	bool sampled = one_in && ((sk >> 8) * 0x9E3779B97F4A7C15ULL >> 40) % one_in == 0;
	if (sampled || bpf_map_lookup_elem(&trace_ports, &port)) {
		c->trace_port = port;
		ps_count(PS_CNT_MSGPATH_TRACED);
	}
}

/* Counts `ret` bytes in direction `dir` and marks the call when traced. */
static __always_inline void ps_msgpath_io(struct ps_conn *c, __u64 sk, __u32 tgid, __u32 dir,
					  long ret)
{
	__u64 cum = c->bytes[dir & 1] + (__u64)ret;
	c->bytes[dir & 1] = cum;
	if (!c->trace_port)
		return;
	struct ps_event *e = ps_reserve(PS_EV_IO_MARK, sk);
	if (!e)
		return;
	e->tgid = tgid;
	e->dir = dir;
	e->ret = ret;
	e->dport = c->trace_port;
	e->bytes_in = cum;
	ps_submit(e);
}
