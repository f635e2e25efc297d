/* The target's socket I/O on accepted sockets. Reads: the read family
 * (read/readv/recvfrom/recvmsg, enter + exit); for the first
 * `io_events_per_conn` calls at most 16 bytes are read at exit to classify
 * them (TLS record header, GET, WebSocket frame header; enter saves the
 * buffer pointer; exits return at once while no read is pending anywhere).
 * Sends: one raw tracepoint, sock:sock_send_length, which fires in
 * sock_sendmsg_nosec (process context) after every socket send, whatever
 * the syscall (write, writev, send, sendto, sendmsg). It gives the sock and
 * the result but no user buffer: for the first `io_events_per_conn` sends
 * the buffer is found from the user registers saved at syscall entry
 * (bpf_task_pt_regs: orig_ax says which syscall, si where its buffer or
 * iovec or msghdr is) and its first 16 bytes are classified like a read
 * (so `HTTP/1.1 101`, a refused upgrade's `HTTP/1.1 4xx` and the
 * ServerHello are exact). Sends made outside those four syscalls
 * (io_uring, sendfile, kernel TLS) stay PS_CLASS_SEND and userspace infers
 * them from their order (probe-user/src/phases.rs). A raw tracepoint
 * costs far less than the perf-event dispatch of four syscall tracepoints
 * on every write of every process. Only the class leaves the kernel,
 * never payload bytes. Later sends cost a tgid check, one sk-hash lookup
 * and an array access; every 16th send also samples sk_wmem_queued; bytes
 * in/out are read from tcp_sock at close, not summed per call. x86-64
 * syscall numbers and registers. Included by pushscope.bpf.c. */

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

/* Is this call still among the connection's first classified ones? */
static __always_inline bool ps_classifying(struct ps_conn *c)
{
	__u32 zero = 0;
	struct ps_config *cfg = bpf_map_lookup_elem(&config, &zero);
	return cfg && c->io_seq < cfg->io_events_per_conn;
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

/* Reads the first bytes at `buf` and sends the IO milestone. */
static __always_inline void ps_emit_io(__u64 sk, __u64 buf, long ret, __u32 dir, __u32 seq)
{
	__u8 b[PS_PEEK] = {};
	if (ret <= 0)
		return;
	/* unsigned clamp: the verifier needs 0 <= n <= PS_PEEK */
	__u64 n = (__u64)ret;
	if (n > PS_PEEK)
		n = PS_PEEK;
	if (bpf_probe_read_user(b, n, (void *)buf))
		return;
	struct ps_event *e = ps_reserve(PS_EV_IO, sk);
	if (!e)
		return;
	e->tgid = ps_tgid();
	e->dir = dir;
	e->ret = ret;
	e->io_seq = seq;
	e->class_ = ps_classify(b, n, &e->detail);
	ps_submit(e);
}

/* x86-64 syscall numbers of the sends whose buffer can be found. */
#define PS_NR_WRITE 1
#define PS_NR_WRITEV 20
#define PS_NR_SENDTO 44
#define PS_NR_SENDMSG 46

/* Classifies the send that just queued `ret` bytes from its syscall's user
 * buffer; PS_CLASS_SEND when the send did not come from write, writev,
 * sendto or sendmsg (or the buffer cannot be read). */
static __always_inline __u8 ps_send_class(long ret, __u8 *detail)
{
	struct task_struct *t = bpf_get_current_task_btf();
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(t);
	if (!regs)
		return PS_CLASS_SEND;
	unsigned long nr = BPF_CORE_READ(regs, orig_ax);
	__u64 arg = BPF_CORE_READ(regs, si);
	__u32 kind;
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
		return PS_CLASS_SEND;
	}
	__u64 buf = ps_first_buf(arg, kind);
	__u8 b[PS_PEEK] = {};
	__u64 n = (__u64)ret;
	if (n > PS_PEEK)
		n = PS_PEEK;
	if (!buf || n == 0 || bpf_probe_read_user(b, n, (void *)buf))
		return PS_CLASS_SEND;
	return ps_classify(b, n, detail);
}

/* A send on an accepted socket of the target: after sock->ops->sendmsg
 * returned `ret` (bytes queued, or -errno). The event's time is the end of
 * the send. Failed sends (ret <= 0) are no I/O milestone: they only
 * sample the send queue. */
SEC("raw_tracepoint/sock_send_length")
int ps_send_length(struct bpf_raw_tracepoint_args *ctx)
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
	struct ps_sock *so = bpf_map_lookup_elem(&socks, &sk);
	if (!so || !so->idx1)
		return 0;
	__u32 idx = so->idx1 - 1;
	struct ps_conn *c = bpf_map_lookup_elem(&fdtab, &idx);
	if (!c || c->sk != sk)
		return 0;
	/* Reading the sock is a probe_read_kernel: sample every 16th send
	 * (and those of the first calls). */
	__u64 w = c->writes++;
	if ((w & 15) == 0 || c->io_seq < 8) {
		int q = BPF_CORE_READ((struct sock *)sk, sk_wmem_queued);
		if (q > 0 && (__u32)q > c->max_wmem)
			c->max_wmem = q;
	}
	if (ret <= 0 || c->io_seq >= cfg->io_events_per_conn)
		return 0;
	ps_tls_note_fd(sk);
	__u32 seq = c->io_seq;
	c->io_seq = seq + 1;
	ps_count(PS_CNT_IO_CALLS);
	__u8 detail = 0;
	__u8 class_ = ps_send_class(ret, &detail);
	struct ps_event *e = ps_reserve(PS_EV_IO, sk);
	if (!e)
		return 0;
	e->tgid = tgid;
	e->dir = PS_DIR_WRITE;
	e->ret = ret;
	e->io_seq = seq;
	e->class_ = class_;
	e->detail = detail;
	ps_submit(e);
	return 0;
}

/* Reads: enter saves the buffer of the first calls, exit classifies. */
static __always_inline void ps_read_enter(__u32 fd, __u64 buf, __u32 kind)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 idx = 0;
	struct ps_conn *c = ps_conn_of(id >> 32, fd, &idx);
	if (!c || !buf || !ps_classifying(c))
		return;
	ps_tls_note_fd(c->sk);
	struct ps_pending_io p = {.sk = c->sk, .buf = ps_first_buf(buf, kind), .idx = idx};
	__u32 zero = 0;
	__s64 *n = bpf_map_lookup_elem(&pending_count, &zero);
	if (!n)
		return;
	if (bpf_map_update_elem(&pending, &id, &p, BPF_NOEXIST)) {
		/* one in flight already for this thread (or map full) */
		if (bpf_map_update_elem(&pending, &id, &p, BPF_EXIST))
			ps_count(PS_CNT_MAP_FULL);
		return;
	}
	__sync_fetch_and_add(n, 1);
}

static __always_inline void ps_read_exit(long ret)
{
	__u32 zero = 0;
	__s64 *n = bpf_map_lookup_elem(&pending_count, &zero);
	if (!n || *n <= 0)
		return;
	__u64 id = bpf_get_current_pid_tgid();
	struct ps_pending_io *p = bpf_map_lookup_elem(&pending, &id);
	if (!p)
		return;
	struct ps_pending_io io = *p;
	if (bpf_map_delete_elem(&pending, &id) == 0)
		__sync_fetch_and_add(n, -1);
	if (ret <= 0 || !io.buf)
		return;
	struct ps_conn *c = bpf_map_lookup_elem(&fdtab, &io.idx);
	if (!c || c->sk != io.sk)
		return;
	__u32 seq = c->io_seq;
	c->io_seq = seq + 1;
	ps_count(PS_CNT_IO_CALLS);
	ps_emit_io(io.sk, io.buf, ret, PS_DIR_READ, seq);
}

SEC("tracepoint/syscalls/sys_enter_read")
int ps_enter_read(struct tp_sys_enter *ctx)
{
	ps_read_enter(ctx->args[0], ctx->args[1], 0);
	return 0;
}

/* MSG_PEEK reads (nginx peeks 1 byte to tell TLS from plain) consume
 * nothing: they are neither bytes nor a turn. */
#define PS_MSG_PEEK 2

SEC("tracepoint/syscalls/sys_enter_recvfrom")
int ps_enter_recvfrom(struct tp_sys_enter *ctx)
{
	if (ctx->args[3] & PS_MSG_PEEK)
		return 0;
	ps_read_enter(ctx->args[0], ctx->args[1], 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_readv")
int ps_enter_readv(struct tp_sys_enter *ctx)
{
	ps_read_enter(ctx->args[0], ctx->args[1], 1);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_recvmsg")
int ps_enter_recvmsg(struct tp_sys_enter *ctx)
{
	if (ctx->args[2] & PS_MSG_PEEK)
		return 0;
	ps_read_enter(ctx->args[0], ctx->args[1], 2);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_read")
int ps_exit_read(struct tp_sys_exit *ctx) { ps_read_exit(ctx->ret); return 0; }

SEC("tracepoint/syscalls/sys_exit_recvfrom")
int ps_exit_recvfrom(struct tp_sys_exit *ctx) { ps_read_exit(ctx->ret); return 0; }

SEC("tracepoint/syscalls/sys_exit_readv")
int ps_exit_readv(struct tp_sys_exit *ctx) { ps_read_exit(ctx->ret); return 0; }

SEC("tracepoint/syscalls/sys_exit_recvmsg")
int ps_exit_recvmsg(struct tp_sys_exit *ctx) { ps_read_exit(ctx->ret); return 0; }
