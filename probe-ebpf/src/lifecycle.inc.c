/* Connection lifecycle: sock:inet_sock_set_state (filtered by the target's
 * listening ports and known outbound socks, because server-side transitions
 * fire in softirq with a foreign pid), accept/accept4 exit (fd -> sk through
 * task->files->fdt->fd[fd]->private_data->sk), close() enter, RST and
 * retransmit tracepoints, and the target's fork (raw tracepoint, CO-RE
 * task reads) and exit to follow child processes and recycle their slots.
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

static __always_inline void ps_untracked_live(__s64 d)
{
	__u32 zero = 0;
	__s64 *n = bpf_map_lookup_elem(&untracked_live, &zero);
	if (n)
		__sync_fetch_and_add(n, d);
}

static __always_inline int ps_on_accept(struct tp_sys_exit *ctx)
{
	__u32 tgid = ps_tgid();
	if (!ps_in_target(tgid))
		return 0;
	long ret = ctx->ret;
	if (!ps_fd_result(ret))
		return 0;
	ps_count(PS_CNT_ACCEPTS);
	__u32 fd = ret;
	__u64 sk = ps_fd_to_sk(fd);
	if (!sk) {
		ps_count(PS_CNT_ACCEPT_NOSK);
		return 0;
	}
	__u32 idx = 0;
	/* hot until its first calls are classified (classify.inc.c) */
	struct ps_conn conn = {.sk = sk, .hot = 1};
	struct ps_sock sock = {};
	int why = ps_fd_idx(tgid, fd, true, &idx);
	bool tracked = false;
	if (why == PS_IDX_OK)
		sock.idx1 = idx + 1; /* receives and sends find the connection by sk */
	else
		ps_count(why == PS_IDX_FD_BEYOND ? PS_CNT_UNTRACKED_FD : PS_CNT_UNTRACKED_SLOT);
	/* An untracked fd keeps a `socks` entry too (retransmits and RSTs of
	 * its sock are counted); close() deletes it (ps_close_untracked). */
	if (bpf_map_update_elem(&socks, &sk, &sock, BPF_ANY)) {
		ps_count(PS_CNT_MAP_FULL);
		if (why == PS_IDX_OK)
			ps_count(PS_CNT_UNTRACKED_MAP_FULL);
	} else if (why != PS_IDX_OK) {
		ps_untracked_live(1);
	} else {
		/* An entry still there lost its close() (dup2, close_range):
		 * it leaves `hot_socks` before it is overwritten. */
		struct ps_conn *old = bpf_map_lookup_elem(&fdtab, &idx);
		if (old && old->sk)
			ps_conn_cool(old, old->sk);
		if (bpf_map_update_elem(&fdtab, &idx, &conn, BPF_ANY)) {
			ps_count(PS_CNT_MAP_FULL);
			ps_count(PS_CNT_UNTRACKED_MAP_FULL);
			bpf_map_delete_elem(&socks, &sk);
		} else {
			/* before the fd reaches userspace: no I/O yet */
			ps_hot_add(sk, 1);
			ps_count(PS_CNT_HOT_ENTERED);
			tracked = true;
		}
	}
	struct ps_event *e = ps_reserve(PS_EV_ACCEPT, sk);
	if (!e)
		return 0;
	e->tgid = tgid;
	e->fd = fd;
	/* Coverage is counted from these events, in their time order, so a
	 * stage's figure matches its window exactly (live counters run ahead
	 * of the events the reader has handled). */
	e->dir = tracked;
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

/* close() of an fd without an fdtab entry: if it is an untracked accepted
 * socket, its `socks` entry goes (else it would linger until LRU eviction
 * pushes out live ones). Resolving fd -> sk costs CO-RE reads, so only
 * while untracked entries may exist. */
static __always_inline void ps_close_untracked(__u32 tgid, __u32 fd)
{
	__u32 zero = 0;
	__s64 *n = bpf_map_lookup_elem(&untracked_live, &zero);
	if (!n || *n <= 0 || !ps_in_target(tgid))
		return;
	__u64 sk = ps_fd_to_sk(fd);
	if (!sk)
		return;
	struct ps_sock *so = bpf_map_lookup_elem(&socks, &sk);
	if (!so || so->idx1)
		return;
	bpf_map_delete_elem(&socks, &sk);
	ps_untracked_live(-1);
	ps_count(PS_CNT_UNTRACKED_CLOSED);
	ps_tls_forget(sk);
}

SEC("tracepoint/syscalls/sys_enter_close")
int ps_enter_close(struct tp_sys_enter *ctx)
{
	__u32 tgid = ps_tgid();
	__u32 fd = ctx->args[0];
	__u32 idx = 0;
	struct ps_conn *c = ps_conn_of(tgid, fd, &idx);
	if (!c) {
		ps_close_untracked(tgid, fd);
		return 0;
	}
	struct ps_conn conn = *c;
	__u64 sk = conn.sk;
	ps_conn_cool(c, sk);
	c->sk = 0;
	ps_count(PS_CNT_CLOSES);
	ps_tls_forget(sk);
	struct ps_sock *so = bpf_map_lookup_elem(&socks, &sk);
	if (!so)
		ps_count(PS_CNT_SOCKS_EVICTED); /* its receives/sends were lost since */
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

/* The raw tracepoint gives the task_structs (parent, child), read with
 * CO-RE: the formatted tracepoint's layout (comm as __data_loc or char[16])
 * changed across kernels. Runs in the parent's context. Threads need no
 * entry: they share their process's tgid. */
SEC("raw_tracepoint/sched_process_fork")
int ps_fork(struct bpf_raw_tracepoint_args *ctx)
{
	if (!ps_in_target(ps_tgid()))
		return 0;
	struct task_struct *child = (struct task_struct *)ctx->args[1];
	__u32 pid = BPF_CORE_READ(child, pid);
	__u32 tgid = BPF_CORE_READ(child, tgid);
	if (pid != tgid)
		return 0;
	__u64 none = 0;
	if (bpf_map_update_elem(&tgids, &tgid, &none, BPF_NOEXIST) == -17 /* EEXIST */)
		return 0;
	if (!bpf_map_lookup_elem(&tgids, &tgid)) {
		ps_count(PS_CNT_MAP_FULL);
		return 0;
	}
	ps_hint_set(tgid);
	ps_count(PS_CNT_FORKS);
	struct ps_event *e = ps_reserve(PS_EV_FORK, 0);
	if (!e)
		return 0;
	e->tgid = ps_tgid();
	e->fd = tgid;
	ps_submit(e);
	return 0;
}

struct ps_clear_ctx {
	__u32 base;
};

/* One fdtab entry of an exiting process: the kernel closes its fds without
 * close(), so its connections' state goes here. */
static long ps_clear_fd(__u64 i, void *arg)
{
	struct ps_clear_ctx *x = arg;
	__u32 idx = x->base + (__u32)i;
	struct ps_conn *c = bpf_map_lookup_elem(&fdtab, &idx);
	if (c && c->sk) {
		__u64 sk = c->sk;
		ps_conn_cool(c, sk);
		c->sk = 0;
		bpf_map_delete_elem(&socks, &sk);
	}
	return 0;
}

SEC("tracepoint/sched/sched_process_exit")
int ps_exit(void *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32, pid = id;
	if (pid != tgid || !ps_hinted(tgid))
		return 0; /* a thread exits, or not the target */
	__u64 *slot = bpf_map_lookup_elem(&tgids, &tgid);
	if (!slot)
		return 0;
	__u64 s = *slot;
	bpf_map_delete_elem(&tgids, &tgid);
	/* Slot 1 is the target's own (never in the free queue); it is
	 * cleared too when the target dies, so a restarted target followed
	 * into slot 1 (kill-restart fault) starts from an empty table. */
	__u32 zero = 0;
	struct ps_config *cfg = bpf_map_lookup_elem(&config, &zero);
	if (cfg && s >= 1 && s <= PS_SLOTS) {
		struct ps_clear_ctx x = {.base = (__u32)(s - 1) * cfg->fds_per_slot};
		bpf_loop(cfg->fds_per_slot, ps_clear_fd, &x, 0);
	}
	if (cfg && s >= 2 && s <= PS_SLOTS) {
		__u32 free = s;
		bpf_map_push_elem(&free_slots, &free, 0);
		ps_count(PS_CNT_SLOTS_RECYCLED);
	}
	struct ps_event *e = ps_reserve(PS_EV_EXIT, 0);
	if (!e)
		return 0;
	e->tgid = tgid;
	ps_submit(e);
	return 0;
}
