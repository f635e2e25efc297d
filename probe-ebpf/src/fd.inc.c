/* fd allocation: counts the target's fd-returning syscalls and their
 * EMFILE/ENFILE failures (accept/accept4 are counted in lifecycle).
 * Included by pushscope.bpf.c. */

static __always_inline int ps_on_fd_exit(struct tp_sys_exit *ctx)
{
	if (!ps_in_target(ps_tgid()))
		return 0;
	ps_fd_result(ctx->ret);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_socket")
int ps_exit_socket(struct tp_sys_exit *ctx) { return ps_on_fd_exit(ctx); }

SEC("tracepoint/syscalls/sys_exit_openat")
int ps_exit_openat(struct tp_sys_exit *ctx) { return ps_on_fd_exit(ctx); }

SEC("tracepoint/syscalls/sys_exit_open")
int ps_exit_open(struct tp_sys_exit *ctx) { return ps_on_fd_exit(ctx); }

SEC("tracepoint/syscalls/sys_exit_dup")
int ps_exit_dup(struct tp_sys_exit *ctx) { return ps_on_fd_exit(ctx); }

SEC("tracepoint/syscalls/sys_exit_dup3")
int ps_exit_dup3(struct tp_sys_exit *ctx) { return ps_on_fd_exit(ctx); }
