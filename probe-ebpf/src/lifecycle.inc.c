/* Connection lifecycle: sock:inet_sock_set_state (filtered by the target's
 * listening ports and known outbound socks, because server-side transitions
 * fire in softirq with a foreign pid), accept/accept4 exit (fd -> sk through
 * task->files->fdt->fd[fd]->private_data->sk), close() enter, RST and
 * retransmit tracepoints, and the target's fork/exit to follow children.
 * Included by pushscope.bpf.c. */

SEC("tracepoint/sock/inet_sock_set_state")
int ps_set_state(struct tp_inet_sock_set_state *ctx)
{
	if (ctx->protocol != PS_IPPROTO_TCP)
		return 0;
	__u16 sport = ctx->sport;
	int ns = ctx->newstate, os = ctx->oldstate;
	__u64 sk = (__u64)ctx->skaddr;
	bool server = bpf_map_lookup_elem(&listen_ports, &sport) != 0;
	if (server) {
		/* the listener itself, and states that carry no phase */
		if (ns == PS_TCP_LISTEN || os == PS_TCP_LISTEN)
			return 0;
		if (ns != PS_TCP_ESTABLISHED && ns != PS_TCP_FIN_WAIT1 &&
		    ns != PS_TCP_CLOSE_WAIT && ns != PS_TCP_CLOSE)
			return 0;
	} else if (ns == PS_TCP_SYN_SENT) {
		/* connect() runs in the target's own context */
		if (!ps_in_target(ps_tgid()))
			return 0;
		__u32 one = 1;
		if (bpf_map_update_elem(&outs, &sk, &one, BPF_ANY))
			ps_count(PS_CNT_MAP_FULL);
	} else {
		if (!bpf_map_lookup_elem(&outs, &sk))
			return 0;
		if (ns == PS_TCP_CLOSE)
			bpf_map_delete_elem(&outs, &sk);
		else if (ns != PS_TCP_ESTABLISHED)
			return 0;
	}
	struct ps_event *e = ps_reserve(PS_EV_STATE, sk);
	if (!e)
		return 0;
	e->old_state = os;
	e->new_state = ns;
	e->sport = sport;
	e->dport = ctx->dport;
	e->family = ctx->family;
	if (ctx->family == 2)
		__builtin_memcpy(e->daddr, ctx->daddr, 4);
	else
		__builtin_memcpy(e->daddr, ctx->daddr_v6, 16);
	if (!server) {
		e->tgid = ps_tgid();
		e->dir = 1; /* outbound */
	}
	ps_submit(e);
	return 0;
}

static __always_inline __u64 ps_fd_to_sk(__u32 fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	if (!fdt)
		return 0;
	unsigned int max = BPF_CORE_READ(fdt, max_fds);
	if (fd >= max)
		return 0;
	struct file **fdarr = BPF_CORE_READ(fdt, fd);
	struct file *file = 0;
	if (bpf_probe_read_kernel(&file, sizeof(file), &fdarr[fd]) || !file)
		return 0;
	struct socket *sock = BPF_CORE_READ(file, private_data);
	if (!sock)
		return 0;
	return (__u64)BPF_CORE_READ(sock, sk);
}

/* Counts the fd-returning result of a target syscall; true if it is an fd. */
static __always_inline bool ps_fd_result(long ret)
{
	if (ret >= 0) {
		ps_count(PS_CNT_FD_OK);
		return true;
	}
	if (ret == -PS_EMFILE)
		ps_count(PS_CNT_EMFILE);
	else if (ret == -PS_ENFILE)
		ps_count(PS_CNT_ENFILE);
	return false;
}

static __always_inline int ps_on_accept(struct tp_sys_exit *ctx)
{
	__u32 tgid = ps_tgid();
	if (!ps_in_target(tgid))
		return 0;
	long ret = ctx->ret;
	if (!ps_fd_result(ret))
		return 0;
	__u32 fd = ret;
	__u64 sk = ps_fd_to_sk(fd);
	if (!sk) {
		ps_count(PS_CNT_ACCEPT_NOSK);
		return 0;
	}
	__u32 idx = 0;
	struct ps_conn conn = {.sk = sk};
	struct ps_sock sock = {};
	if (!ps_fd_idx(tgid, fd, true, &idx))
		ps_count(PS_CNT_FD_UNTRACKED);
	else if (bpf_map_update_elem(&fdtab, &idx, &conn, BPF_ANY))
		ps_count(PS_CNT_MAP_FULL);
	else
		sock.idx1 = idx + 1; /* receives and sends find the connection by sk */
	if (bpf_map_update_elem(&socks, &sk, &sock, BPF_ANY))
		ps_count(PS_CNT_MAP_FULL);
	struct ps_event *e = ps_reserve(PS_EV_ACCEPT, sk);
	if (!e)
		return 0;
	e->tgid = tgid;
	e->fd = fd;
	ps_submit(e);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int ps_exit_accept4(struct tp_sys_exit *ctx)
{
	return ps_on_accept(ctx);
}

SEC("tracepoint/syscalls/sys_exit_accept")
int ps_exit_accept(struct tp_sys_exit *ctx)
{
	return ps_on_accept(ctx);
}

SEC("tracepoint/syscalls/sys_enter_close")
int ps_enter_close(struct tp_sys_enter *ctx)
{
	__u32 tgid = ps_tgid();
	__u32 fd = ctx->args[0];
	__u32 idx = 0;
	struct ps_conn *c = ps_conn_of(tgid, fd, &idx);
	if (!c)
		return 0;
	struct ps_conn conn = *c;
	c->sk = 0;
	__u64 sk = conn.sk;
	ps_count(PS_CNT_CLOSES);
	struct ps_sock *so = bpf_map_lookup_elem(&socks, &sk);
	struct ps_event *e = ps_reserve(PS_EV_CLOSE_FD, sk);
	if (e) {
		e->tgid = tgid;
		e->fd = fd;
		struct tcp_sock *tp = (struct tcp_sock *)sk;
		e->bytes_in = BPF_CORE_READ(tp, bytes_received);
		e->bytes_out = BPF_CORE_READ(tp, bytes_acked);
		e->srtt_us = BPF_CORE_READ(tp, srtt_us) >> 3;
		e->max_wmem = conn.max_wmem;
		e->io_seq = conn.io_seq;
		if (so)
			e->retrans = so->retrans;
		ps_submit(e);
	}
	if (so)
		bpf_map_delete_elem(&socks, &sk);
	return 0;
}

static __always_inline void ps_reset(__u64 sk, __u8 sent)
{
	if (!sk)
		return;
	if (!bpf_map_lookup_elem(&socks, &sk) && !bpf_map_lookup_elem(&outs, &sk))
		return;
	ps_count(sent ? PS_CNT_RST_SENT : PS_CNT_RST_RECV);
	struct ps_event *e = ps_reserve(PS_EV_RESET, sk);
	if (!e)
		return;
	e->dir = sent;
	ps_submit(e);
}

SEC("tracepoint/tcp/tcp_send_reset")
int ps_send_reset(struct tp_tcp_send_reset *ctx)
{
	ps_reset((__u64)ctx->skaddr, 1);
	return 0;
}

SEC("tracepoint/tcp/tcp_receive_reset")
int ps_receive_reset(struct tp_tcp_receive_reset *ctx)
{
	ps_reset((__u64)ctx->skaddr, 0);
	return 0;
}

SEC("tracepoint/tcp/tcp_retransmit_skb")
int ps_retransmit(struct tp_tcp_retransmit_skb *ctx)
{
	__u64 sk = (__u64)ctx->skaddr;
	struct ps_sock *c = bpf_map_lookup_elem(&socks, &sk);
	if (c) {
		__sync_fetch_and_add(&c->retrans, 1);
		ps_count(PS_CNT_RETRANS);
	} else if (bpf_map_lookup_elem(&outs, &sk)) {
		ps_count(PS_CNT_RETRANS);
	}
	return 0;
}

SEC("tracepoint/sched/sched_process_fork")
int ps_fork(struct tp_sched_process_fork *ctx)
{
	if (!ps_in_target(ps_tgid()))
		return 0;
	__u32 child = ctx->child_pid;
	__u64 none = 0;
	if (bpf_map_update_elem(&tgids, &child, &none, BPF_NOEXIST) == -17 /* EEXIST */)
		return 0;
	if (!bpf_map_lookup_elem(&tgids, &child)) {
		ps_count(PS_CNT_MAP_FULL);
		return 0;
	}
	ps_hint_set(child);
	ps_count(PS_CNT_FORKS);
	struct ps_event *e = ps_reserve(PS_EV_FORK, 0);
	if (!e)
		return 0;
	e->tgid = ps_tgid();
	e->fd = child;
	ps_submit(e);
	return 0;
}

SEC("tracepoint/sched/sched_process_exit")
int ps_exit(void *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32, pid = id;
	if (!ps_in_target(pid))
		return 0;
	bpf_map_delete_elem(&tgids, &pid);
	if (pid != tgid)
		return 0; /* a thread: its tid entry is gone, the process lives */
	struct ps_event *e = ps_reserve(PS_EV_EXIT, 0);
	if (!e)
		return 0;
	e->tgid = tgid;
	ps_submit(e);
	return 0;
}
