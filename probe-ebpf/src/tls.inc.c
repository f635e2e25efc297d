/* Exact TLS handshake time where the target maps OpenSSL's libssl: a uprobe
 * on SSL_do_handshake entry (first entry per SSL * starts the handshake)
 * and a uretprobe (a return of 1 ends it; non-blocking servers return
 * WANT_READ many times before). The SSL * is tied to its socket by the
 * read/send the handshake does on the same thread (classify.inc.c calls
 * ps_tls_note_fd while a handshake call is in flight); close() of that
 * socket before success counts the handshake as aborted and drops its
 * state (ps_tls_forget). Costs ~2 uprobe
 * traps per handshake call; nothing on the data path. Included by
 * pushscope.bpf.c. */

struct ps_ssl {
	__u64 first_ns; /* first SSL_do_handshake entry */
	__u64 sk;       /* socket the handshake read/wrote, 0 until seen */
};

/* An SSL * of one process: forked workers (nginx) share their heap
 * layout, so the same address is a different SSL in each of them. */
struct ps_ssl_key {
	__u64 ssl;
	__u32 tgid;
	__u32 _pad;
};

static __always_inline struct ps_ssl_key ps_ssl_key(__u64 ssl, __u32 tgid)
{
	struct ps_ssl_key k = {.ssl = ssl, .tgid = tgid};
	return k;
}

/* (SSL *, tgid) -> handshake state. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ps_ssl_key);
	__type(value, struct ps_ssl);
} ssls SEC(".maps");

/* sk -> (SSL *, tgid) whose handshake touched it and has not succeeded
 * yet: close() forgets that handshake (ps_tls_forget), so a failed one
 * neither lingers nor lends its start time to a later SSL * at the same
 * address. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct ps_ssl_key);
} ssl_socks SEC(".maps");

/* pid_tgid -> SSL * of the SSL_do_handshake call in flight. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u64);
} ssl_calls SEC(".maps");

/* Calls in flight (slot 0): the read/write hooks only look while > 0. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __s64);
} ssl_inflight SEC(".maps");

SEC("uprobe")
int ps_ssl_hs_enter(struct pt_regs *ctx)
{
	if (!ps_in_target(ps_tgid()))
		return 0;
	__u64 ssl = ctx->di;
	__u64 id = bpf_get_current_pid_tgid();
	struct ps_ssl fresh = {.first_ns = bpf_ktime_get_ns()};
	struct ps_ssl_key key = ps_ssl_key(ssl, id >> 32);
	/* only the first entry per SSL * starts the handshake */
	bpf_map_update_elem(&ssls, &key, &fresh, BPF_NOEXIST);
	if (bpf_map_update_elem(&ssl_calls, &id, &ssl, BPF_ANY)) {
		ps_count(PS_CNT_MAP_FULL);
		return 0;
	}
	__u32 zero = 0;
	__s64 *n = bpf_map_lookup_elem(&ssl_inflight, &zero);
	if (n)
		__sync_fetch_and_add(n, 1);
	return 0;
}

SEC("uretprobe")
int ps_ssl_hs_return(struct pt_regs *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u64 *sslp = bpf_map_lookup_elem(&ssl_calls, &id);
	if (!sslp)
		return 0;
	__u64 ssl = *sslp;
	bpf_map_delete_elem(&ssl_calls, &id);
	__u32 zero = 0;
	__s64 *n = bpf_map_lookup_elem(&ssl_inflight, &zero);
	if (n)
		__sync_fetch_and_add(n, -1);
	if ((int)ctx->ax != 1)
		return 0;
	struct ps_ssl_key key = ps_ssl_key(ssl, id >> 32);
	struct ps_ssl *st = bpf_map_lookup_elem(&ssls, &key);
	if (!st)
		return 0;
	struct ps_ssl done = *st;
	bpf_map_delete_elem(&ssls, &key);
	if (done.sk)
		bpf_map_delete_elem(&ssl_socks, &done.sk);
	struct ps_event *e = ps_reserve(PS_EV_TLS_DONE, done.sk);
	if (!e)
		return 0;
	e->tgid = id >> 32;
	e->bytes_in = done.first_ns;
	ps_submit(e);
	return 0;
}

/* Called by the read/send hooks of an accepted socket's first calls. */
static __always_inline void ps_tls_note_fd(__u64 sk)
{
	__u32 zero = 0;
	__s64 *n = bpf_map_lookup_elem(&ssl_inflight, &zero);
	if (!n || *n <= 0)
		return;
	__u64 id = bpf_get_current_pid_tgid();
	__u64 *sslp = bpf_map_lookup_elem(&ssl_calls, &id);
	if (!sslp)
		return;
	struct ps_ssl_key key = ps_ssl_key(*sslp, id >> 32);
	struct ps_ssl *st = bpf_map_lookup_elem(&ssls, &key);
	if (!st || st->sk == sk)
		return;
	st->sk = sk;
	bpf_map_update_elem(&ssl_socks, &sk, &key, BPF_ANY);
}

/* close() of socket `sk`: an OpenSSL handshake on it that never succeeded
 * was aborted (counted); its state goes. */
static __always_inline void ps_tls_forget(__u64 sk)
{
	struct ps_ssl_key *kp = bpf_map_lookup_elem(&ssl_socks, &sk);
	if (!kp)
		return;
	struct ps_ssl_key key = *kp;
	bpf_map_delete_elem(&ssl_socks, &sk);
	struct ps_ssl *st = bpf_map_lookup_elem(&ssls, &key);
	if (st && st->sk == sk) {
		bpf_map_delete_elem(&ssls, &key);
		ps_count(PS_CNT_TLS_ABORTED);
	}
}
