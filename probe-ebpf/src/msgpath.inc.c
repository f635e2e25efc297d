/* Message path: every receive and send of a traced connection, with the
 * connection's cumulative byte count after it, so userspace can find the
 * call that carried a given byte of the stream (the load generator knows
 * the wire offset of every publish request and frame) without reading a
 * payload. A connection is traced when its peer port (the load
 * generator's local port) is in `trace_ports`, filled by userspace before
 * the client sends its first byte: the check runs once per connection, at
 * its first successful call, and costs nothing afterwards: a traced
 * connection stays hot (classify.inc.c), an untraced one leaves the hot
 * set once classified and is turned away before its connection is looked
 * up. Bytes are counted while a connection is hot, so a traced one's
 * count starts at its first call. Included by pushscope.bpf.c before
 * classify. */

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

/* Over TLS the socket carries ciphertext, whose offsets are not the
 * frames'. Where the target maps OpenSSL's libssl, uprobes on SSL_read and
 * SSL_write (attached by userspace only once the message path is on) mark
 * their plaintext with its own cumulative count. The SSL * is tied to its
 * socket by the receive/send the call makes on the same thread (a read
 * served from OpenSSL's buffer makes none: the tie from an earlier call
 * stands). */
struct ps_ssl_call {
	__u64 ssl;
	__u32 dir;
	__u32 _pad;
};

/* pid_tgid -> SSL_read/SSL_write call in flight. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct ps_ssl_call);
} ssl_io_calls SEC(".maps");

/* (SSL *, tgid) -> its socket. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ps_ssl_key);
	__type(value, __u64);
} ssl_io_socks SEC(".maps");

static __always_inline int ps_ssl_io_enter(struct pt_regs *ctx, __u32 dir)
{
	if (!ps_in_target(ps_tgid()))
		return 0;
	__u64 id = bpf_get_current_pid_tgid();
	struct ps_ssl_call call = {.ssl = ctx->di, .dir = dir};
	if (bpf_map_update_elem(&ssl_io_calls, &id, &call, BPF_ANY))
		ps_count(PS_CNT_MAP_FULL);
	return 0;
}

SEC("uprobe")
int ps_ssl_write_enter(struct pt_regs *ctx)
{
	return ps_ssl_io_enter(ctx, PS_DIR_WRITE);
}

SEC("uprobe")
int ps_ssl_read_enter(struct pt_regs *ctx)
{
	return ps_ssl_io_enter(ctx, PS_DIR_READ);
}

/* A socket call of the target while the message path is on: tie the
 * thread's SSL_read/SSL_write in flight, if any, to this socket, and so
 * the handshake's (tls.inc.c): with read-ahead (nginx) the handshake's
 * reads may already hold the first request, which SSL_read then returns
 * from OpenSSL's buffer without a socket call of its own. */
static __always_inline void ps_msgpath_ssl_note(__u64 sk)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct ps_ssl_call *call = bpf_map_lookup_elem(&ssl_io_calls, &id);
	if (call) {
		struct ps_ssl_key key = ps_ssl_key(call->ssl, id >> 32);
		bpf_map_update_elem(&ssl_io_socks, &key, &sk, BPF_ANY);
	}
	__u64 *hs = bpf_map_lookup_elem(&ssl_calls, &id);
	if (hs) {
		struct ps_ssl_key key = ps_ssl_key(*hs, id >> 32);
		bpf_map_update_elem(&ssl_io_socks, &key, &sk, BPF_ANY);
	}
}

SEC("uretprobe")
int ps_ssl_io_return(struct pt_regs *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct ps_ssl_call *callp = bpf_map_lookup_elem(&ssl_io_calls, &id);
	if (!callp)
		return 0;
	struct ps_ssl_call call = *callp;
	bpf_map_delete_elem(&ssl_io_calls, &id);
	long ret = (int)ctx->ax;
	if (ret <= 0)
		return 0;
	struct ps_ssl_key key = ps_ssl_key(call.ssl, id >> 32);
	__u64 *skp = bpf_map_lookup_elem(&ssl_io_socks, &key);
	if (!skp)
		return 0;
	__u64 sk = *skp;
	struct ps_conn *c = ps_conn_of_sk(sk);
	if (!c || !c->trace_port)
		return 0;
	__u64 cum = c->plain[call.dir & 1] + (__u64)ret;
	c->plain[call.dir & 1] = cum;
	struct ps_event *e = ps_reserve(PS_EV_IO_MARK, sk);
	if (!e)
		return 0;
	e->tgid = id >> 32;
	e->dir = call.dir;
	e->class_ = 1;
	e->ret = ret;
	e->dport = c->trace_port;
	e->bytes_in = cum;
	ps_submit(e);
	return 0;
}
