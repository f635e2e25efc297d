/* The target's socket I/O on accepted sockets, at two raw tracepoints
 * that fire in process context after every socket receive and send,
 * whatever the syscall: sock:sock_recv_length (sock_recvmsg_nosec: read,
 * readv, recv, recvfrom, recvmsg) and sock:sock_send_length
 * (sock_sendmsg_nosec: write, writev, send, sendto, sendmsg). They give
 * the sock, the result and the flags, but no user buffer: for a
 * connection's first `io_events_per_conn` calls the buffer is found from
 * the user registers saved at syscall entry (bpf_task_pt_regs: orig_ax
 * says which syscall, si where its buffer, iovec or msghdr is) and its
 * first 16 bytes are classified (TLS record header, `GET `, `HTTP/1.1
 * 101` or another status, WebSocket frame header). A call made outside
 * those syscalls (io_uring, sendfile) is
 * PS_CLASS_UNINSPECTED. Raw tracepoints on socket calls replace eight
 * read/write-family syscall tracepoints whose perf-event dispatch cost
 * every read and write of every process on the machine (pipes and files
 * included) ~70 ns. Only the class leaves the kernel, never payload bytes.
 * Past the first calls (ps_sock_io: a cold connection) an I/O costs a
 * tgid check and the read of `hot_total`; about 1 in 64 sends, at random
 * intervals, also samples sk_wmem_queued; bytes in/out are read from
 * tcp_sock at close, not summed per call. x86-64 syscall numbers and
 * registers. Included by pushscope.bpf.c. */

#define PS_PEEK 16

/* The user pointer of the first bytes of a call (kind 0: buf; 1: struct
 * iovec *; 2: struct user_msghdr *). */
static __always_inline __u64 ps_first_buf(__u64 buf, __u32 kind)
{
	if (kind == 2) {
		struct user_msghdr *m = (struct user_msghdr *)buf;
		struct iovec *iov = 0;
		bpf_probe_read_user(&iov, sizeof(iov), &m->msg_iov);
		buf = (__u64)iov;
		kind = 1;
	}
	if (kind == 1 && buf) {
		struct iovec *iov = (struct iovec *)buf;
		void *base = 0;
		bpf_probe_read_user(&base, sizeof(base), &iov->iov_base);
		buf = (__u64)base;
	}
	return buf;
}

static __always_inline bool ps_is(const __u8 *b, const char *lit, int n)
{
	for (int i = 0; i < n; i++)
		if (b[i] != (__u8)lit[i])
			return false;
	return true;
}

static __always_inline __u8 ps_classify(const __u8 *b, long n, __u8 *detail)
{
	if (n >= 5 && b[1] == 0x03 && b[2] <= 0x04) {
		switch (b[0]) {
		case 0x16:
			*detail = n > 5 ? b[5] : 0;
			return PS_CLASS_TLS_HANDSHAKE;
		case 0x14:
			return PS_CLASS_TLS_CCS;
		case 0x15:
			return PS_CLASS_TLS_ALERT;
		case 0x17:
			return PS_CLASS_TLS_APPDATA;
		}
	}
	if (n >= 4 && ps_is(b, "GET ", 4))
		return PS_CLASS_HTTP_GET;
	if (n >= 12 && ps_is(b, "HTTP/1.1 101", 12))
		return PS_CLASS_HTTP_101;
	if (n >= 7 && ps_is(b, "HTTP/1.", 7))
		return PS_CLASS_HTTP_OTHER;
	if (n >= 5 && (ps_is(b, "POST ", 5) || ps_is(b, "PUT ", 4) || ps_is(b, "HEAD ", 5)))
		return PS_CLASS_HTTP_OTHER;
	if (n >= 2 && (b[0] & 0x70) == 0) {
		__u8 op = b[0] & 0x0f;
		if (op <= 2 || (op >= 8 && op <= 10)) {
			*detail = op;
			return PS_CLASS_WS_FRAME;
		}
	}
	return PS_CLASS_OTHER;
}

/* x86-64 numbers of the syscalls whose buffer can be found. */
#define PS_NR_READ 0
#define PS_NR_WRITE 1
#define PS_NR_READV 19
#define PS_NR_WRITEV 20
#define PS_NR_SENDTO 44
#define PS_NR_RECVFROM 45
#define PS_NR_SENDMSG 46
#define PS_NR_RECVMSG 47

/* MSG_PEEK receives (nginx peeks 1 byte to tell TLS from plain) consume
 * nothing: they are neither bytes nor a turn. */
#define PS_MSG_PEEK 2

/* Classifies the call that just moved `ret` bytes in direction `dir`
 * from its syscall's user buffer; PS_CLASS_UNINSPECTED when the call did
 * not come from one of the eight syscalls above (or the buffer cannot be
 * read). */
static __always_inline __u8 ps_io_class(__u32 dir, long ret, __u8 *detail)
{
	struct task_struct *t = bpf_get_current_task_btf();
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(t);
	if (!regs)
		return PS_CLASS_UNINSPECTED;
	unsigned long nr = BPF_CORE_READ(regs, orig_ax);
	__u64 arg = BPF_CORE_READ(regs, si);
	__u32 kind;
	if (dir == PS_DIR_READ) {
		switch (nr) {
		case PS_NR_READ:
		case PS_NR_RECVFROM:
			kind = 0;
			break;
		case PS_NR_READV:
			kind = 1;
			break;
		case PS_NR_RECVMSG:
			kind = 2;
			break;
		default:
			return PS_CLASS_UNINSPECTED;
		}
	} else {
		switch (nr) {
		case PS_NR_WRITE:
		case PS_NR_SENDTO:
			kind = 0;
			break;
		case PS_NR_WRITEV:
			kind = 1;
			break;
		case PS_NR_SENDMSG:
			kind = 2;
			break;
		default:
			return PS_CLASS_UNINSPECTED;
		}
	}
	__u64 buf = ps_first_buf(arg, kind);
	__u8 b[PS_PEEK] = {};
	/* unsigned clamp: the verifier needs 0 < n <= PS_PEEK */
	__u64 n = (__u64)ret;
	if (n > PS_PEEK)
		n = PS_PEEK;
	if (!buf || n == 0 || bpf_probe_read_user(b, n, (void *)buf))
		return PS_CLASS_UNINSPECTED;
	return ps_classify(b, n, detail);
}

/* Is this send one of about 1 in 64 whose send queue is sampled? A per-CPU
 * countdown reloaded with a random interval of 1..127 sends (mean 64): a
 * fixed stride would alias with a fan-out that walks its sockets in a
 * fixed order and sample some of them never; drawing a random number per
 * send would cost every send a helper call. A sampled send that finds a
 * queue costs ~600 ns (its connection's fdtab entry is a cache miss):
 * 1 in 16 made ps_send_length 158 ns per run at fan-out saturation,
 * 1 in 64 129 ns (bpf_stats; 76 ns of either is bpf_stats' own). */
static __always_inline bool ps_sample_send(void)
{
	__u32 zero = 0;
	__u32 *left = bpf_map_lookup_elem(&send_sample, &zero);
	if (!left)
		return false;
	if (*left > 1) {
		*left -= 1;
		return false;
	}
	*left = 1 + bpf_get_prandom_u32() % 127;
	return true;
}

/* The tracked connection of this call. fdtab is indexed by fd, and the
 * fd is in the syscall's saved registers (di: the first argument of the
 * eight socket syscalls): no hash lookup. Calls made otherwise (io_uring,
 * sendfile), or whose fd's entry holds another sock, are found by sk. */
static __always_inline struct ps_conn *ps_conn_of_call(__u64 sk, __u32 tgid)
{
	struct task_struct *t = bpf_get_current_task_btf();
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(t);
	if (regs) {
		unsigned long nr = regs->orig_ax;
		if (nr == PS_NR_READ || nr == PS_NR_WRITE || nr == PS_NR_READV ||
		    nr == PS_NR_WRITEV || (nr >= PS_NR_SENDTO && nr <= PS_NR_RECVMSG)) {
			__u32 idx = 0;
			struct ps_conn *c = ps_conn_of(tgid, (__u32)regs->di, &idx);
			if (c && c->sk == sk)
				return c;
		}
	}
	return ps_conn_of_sk(sk);
}

/* A receive or send on an accepted socket of the target: after
 * sock->ops->recvmsg/sendmsg returned `ret` (bytes, or -errno). The
 * event's time is the end of the call. Failed calls (ret <= 0: EAGAIN,
 * EOF) are no I/O milestone; a failed send still samples the send queue.
 *
 * Steady state (a cold connection: past its classified calls, not traced
 * by the message path) costs a tgid check, a per-CPU counter, the read of
 * `hot_total` (and of its `hot_socks` slot while some connection is hot)
 * and, on a send, a per-CPU countdown: about 1 in 64 sends (ps_sample_send)
 * finds its connection and samples sk_wmem_queued. Only a hot connection
 * does the work below. */
static __always_inline int ps_sock_io(struct bpf_raw_tracepoint_args *ctx, __u32 dir)
{
	__u32 tgid = ps_tgid();
	__u32 zero = 0;
	struct ps_config *cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg)
		return 0;
	/* fast path: the target itself; else one small-hash lookup */
	if (tgid != cfg->target_tgid && !ps_in_target(tgid))
		return 0;
	__u64 sk = ctx->args[0];
	long ret = (int)ctx->args[1];
	if (dir == PS_DIR_READ && (ctx->args[2] & PS_MSG_PEEK))
		return 0;
	ps_count(PS_CNT_SOCK_CALLS);
	/* Reading the sock is a probe_read_kernel (its line is in cache:
	 * the send just wrote it): every send of a hot connection, about 1
	 * in 16 of a cold one's; an empty queue raises no maximum, so then
	 * the connection is not looked up for it. */
	int q = 0;
	bool sample_q = dir == PS_DIR_WRITE && ps_sample_send();
	if (sample_q) {
		q = BPF_CORE_READ((struct sock *)sk, sk_wmem_queued);
		sample_q = q > 0;
	}
	if (!sample_q && !ps_hot_maybe(sk))
		return 0;
	ps_count(PS_CNT_SOCK_LOOKUPS);
	struct ps_conn *c = ps_conn_of_call(sk, tgid);
	if (!c)
		return 0;
	bool hot = c->hot;
	if (dir == PS_DIR_WRITE && (hot || sample_q)) {
		if (!sample_q)
			q = BPF_CORE_READ((struct sock *)sk, sk_wmem_queued);
		if (q > 0 && (__u32)q > c->max_wmem)
			c->max_wmem = q;
	}
	if (!hot)
		return 0;
	if (ret > 0) {
		if (c->io_seq == 0 && (cfg->msgpath || cfg->trace_one_in))
			ps_msgpath_check(c, sk, cfg->trace_one_in);
		ps_msgpath_io(c, sk, tgid, dir, ret);
	}
	if (cfg->msgpath & PS_MSGPATH_SSL)
		ps_msgpath_ssl_note(sk);
	if (c->io_seq >= cfg->io_events_per_conn) {
		/* classified: nothing more to do unless the message path
		 * marks its every call */
		if (!c->trace_port)
			ps_conn_cool(c, sk);
		return 0;
	}
	/* an OpenSSL handshake in flight learns its socket, even from EAGAIN */
	ps_tls_note_fd(sk);
	if (ret <= 0)
		return 0;
	__u32 seq = c->io_seq;
	c->io_seq = seq + 1;
	ps_count(PS_CNT_IO_CALLS);
	__u8 detail = 0;
	__u8 class_ = ps_io_class(dir, ret, &detail);
	/* The first data frame written is the first push: nothing later
	 * changes a connection's phases, so it cools at its next call rather
	 * than after io_events_per_conn calls (at 100k subscribers those were
	 * ~20 more events each, mostly heartbeats, read by the observer). */
	if (dir == PS_DIR_WRITE && class_ == PS_CLASS_WS_FRAME && detail <= 2)
		c->io_seq = cfg->io_events_per_conn;
	struct ps_event *e = ps_reserve(PS_EV_IO, sk);
	if (!e)
		return 0;
	e->tgid = tgid;
	e->dir = dir;
	e->ret = ret;
	e->io_seq = seq;
	e->class_ = class_;
	e->detail = detail;
	ps_submit(e);
	return 0;
}

SEC("raw_tracepoint/sock_recv_length")
int ps_recv_length(struct bpf_raw_tracepoint_args *ctx)
{
	return ps_sock_io(ctx, PS_DIR_READ);
}

SEC("raw_tracepoint/sock_send_length")
int ps_send_length(struct bpf_raw_tracepoint_args *ctx)
{
	return ps_sock_io(ctx, PS_DIR_WRITE);
}
