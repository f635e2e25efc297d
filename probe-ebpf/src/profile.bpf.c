// SPDX-License-Identifier: GPL-2.0
/* The profiler's eBPF object (its own maps, loaded beside the observer by
 * probe-user/src/profile/): where the target's threads spend time.
 *
 *  - on-CPU: a perf_event program on the software CPU clock of every CPU
 *    counts (tgid, user stack, kernel stack) of the target's samples in
 *    `cpu_counts`: no ring traffic per sample.
 *  - off-CPU: raw tracepoint sched_switch stamps a target thread going off
 *    CPU blocked (time, user stack, what it waits on) and adds the blocked
 *    time to (tgid, stack, kind) in `off_counts` when it comes back on.
 *  - run-queue latency: sched_wakeup / sched_wakeup_new (or a preemption)
 *    to the thread's next switch-in, into the log-linear `rq_hist`.
 *  - stalls: intervals in which no thread of the target ran although one
 *    wanted to (runnable or stopped), at least `stall_ns` long, go to the
 *    small `stalls` ring (rare records).
 *  - sched_process_fork adds children of the target to `tgids`.
 *
 * Every hook turns an unrelated task away with one bit of a small bitmap
 * (by tgid, or by task_struct pointer) before any hash lookup. */
#include "vmlinux_min.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "profile.h"

#define PF_MAP_TYPE_PERCPU_ARRAY 6
#define PF_MAP_TYPE_STACK_TRACE 7
#define PF_F_USER_STACK (1ULL << 8)
#define PF_RB_NO_WAKEUP 1

/* prev->__state bits (include/linux/sched.h) */
#define PF_TASK_UNINTERRUPTIBLE 0x2
#define PF_TASK_STOPPED 0x4
#define PF_TASK_TRACED 0x8
#define PF_TASK_DEAD 0x80
#define PF_TASK_NOLOAD 0x400
#define PF_S_IFMT 0170000
#define PF_S_IFSOCK 0140000

/* x86-64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl) */
#define NR_read 0
#define NR_write 1
#define NR_poll 7
#define NR_readv 19
#define NR_writev 20
#define NR_select 23
#define NR_nanosleep 35
#define NR_connect 42
#define NR_accept 43
#define NR_sendto 44
#define NR_recvfrom 45
#define NR_sendmsg 46
#define NR_recvmsg 47
#define NR_futex 202
#define NR_clock_nanosleep 230
#define NR_epoll_wait 232
#define NR_pselect6 270
#define NR_ppoll 271
#define NR_epoll_pwait 281
#define NR_accept4 288
#define NR_recvmmsg 299
#define NR_sendmmsg 307
#define NR_epoll_pwait2 441
#define NR_futex_waitv 449

/* Kernel types read here (CO-RE: the ___pf suffix is ignored when
 * matching against the kernel's BTF). */
struct inode___pf {
	unsigned short i_mode;
} __attribute__((preserve_access_index));

struct file___pf {
	struct inode___pf *f_inode;
} __attribute__((preserve_access_index));

struct fdtable___pf {
	unsigned int max_fds;
	struct file___pf **fd;
} __attribute__((preserve_access_index));

struct files_struct___pf {
	struct fdtable___pf *fdt;
} __attribute__((preserve_access_index));

struct task_struct___pf {
	int pid;
	int tgid;
	struct files_struct___pf *files;
} __attribute__((preserve_access_index));

/* The user registers saved at syscall entry that the off-CPU probe needs,
 * read with one bpf_probe_read_kernel from &regs->bp (x86-64 struct
 * pt_regs is uapi: bp at 32 ... ip at 128). */
struct pf_regs {
	__u64 bp, bx, r11, r10, r9, r8, ax, cx, dx, si, di, orig_ax, ip;
};
#define PF_REGS_OFF 32

/* struct pf_thread (per target thread) is in profile.h (userspace reads it
 * for a stall still going on at a cut). */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pf_config);
} pf_config SEC(".maps");

struct {
	__uint(type, PF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PF_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} pf_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u32);
} tgids SEC(".maps");

/* Bitmaps in front of the hashes (PF_HINT_BITS bits, 8 KiB: an array of
 * 64 K u32 would take 512 KiB, as array elements are 8-byte aligned, and
 * miss the cache on every unrelated switch under load). A bit is set once
 * some tgid (`tgid_hint`) or target task_struct pointer (`task_hint`)
 * hashes there, never cleared: a stale bit only costs the hash lookup. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, PF_HINT_WORDS);
	__type(key, __u32);
	__type(value, __u64);
} tgid_hint SEC(".maps");

/* Target threads by task_struct pointer (the sched tracepoints hand over
 * pointers; reading a field costs a bpf_probe_read_kernel on every switch
 * and wakeup of every task, the pointer costs nothing). A thread is added
 * when it first goes off CPU (prev is current: its tgid is free to know)
 * or is created by the target (sched_wakeup_new), and removed when it
 * switches out dead, before its task_struct can be reused. */
struct pf_task {
	__u32 tgid;
	__u32 tid;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 32768);
	__type(key, __u64);
	__type(value, struct pf_task);
} tasks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, PF_HINT_WORDS);
	__type(key, __u32);
	__type(value, __u64);
} task_hint SEC(".maps");

struct {
	__uint(type, PF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, 16384);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, PF_STACK_DEPTH * sizeof(__u64));
} stacks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct pf_cpu_key);
	__type(value, __u64);
} cpu_counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct pf_off_key);
	__type(value, struct pf_off_val);
} off_counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 32768);
	__type(key, __u32);
	__type(value, struct pf_thread);
} threads SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pf_target);
} target SEC(".maps");

struct {
	__uint(type, PF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PF_RQ_BUCKETS);
	__type(key, __u32);
	__type(value, __u64);
} rq_hist SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 << 10);
} stalls SEC(".maps");

static __always_inline void pf_count(__u32 slot)
{
	__u64 *n = bpf_map_lookup_elem(&pf_counters, &slot);
	if (n)
		*n += 1;
}

static __always_inline bool pf_bit(void *bitmap, __u32 slot)
{
	__u32 w = slot >> 6;
	__u64 *h = bpf_map_lookup_elem(bitmap, &w);
	return h && (*h & (1ULL << (slot & 63)));
}

static __always_inline void pf_bit_set(void *bitmap, __u32 slot)
{
	__u32 w = slot >> 6;
	__u64 *h = bpf_map_lookup_elem(bitmap, &w);
	if (h && !(*h & (1ULL << (slot & 63))))
		__sync_fetch_and_or(h, 1ULL << (slot & 63));
}

static __always_inline bool pf_in_target(__u32 tgid)
{
	if (!pf_bit(&tgid_hint, tgid & PF_HINT_MASK))
		return false;
	return bpf_map_lookup_elem(&tgids, &tgid) != 0;
}

static __always_inline __u32 pf_ptr_slot(__u64 p)
{
	return (__u32)((p >> 8) ^ (p >> 24)) & PF_HINT_MASK;
}

static __always_inline struct pf_task *pf_task_of(__u64 p)
{
	if (!pf_bit(&task_hint, pf_ptr_slot(p)))
		return 0;
	return bpf_map_lookup_elem(&tasks, &p);
}

static __always_inline void pf_task_add(__u64 p, __u32 tgid, __u32 tid)
{
	struct pf_task t = {.tgid = tgid, .tid = tid};
	if (bpf_map_update_elem(&tasks, &p, &t, BPF_ANY)) {
		pf_count(PF_CNT_MAP_FULL);
		return;
	}
	pf_bit_set(&task_hint, pf_ptr_slot(p));
}

static __always_inline struct pf_thread *pf_thread_of(__u32 tid)
{
	struct pf_thread *th = bpf_map_lookup_elem(&threads, &tid);
	if (th)
		return th;
	struct pf_thread fresh = {.ustack = -1, .kstack = -1, .c_ustack = -1};
	bpf_map_update_elem(&threads, &tid, &fresh, BPF_NOEXIST);
	th = bpf_map_lookup_elem(&threads, &tid);
	if (!th)
		pf_count(PF_CNT_MAP_FULL);
	return th;
}

/* ---- on-CPU ------------------------------------------------------------ */

SEC("perf_event")
int pf_cpu_sample(void *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (!tgid || !pf_in_target(tgid))
		return 0;
	struct pf_cpu_key key = {.tgid = tgid};
	key.ustack = bpf_get_stackid(ctx, &stacks, PF_F_USER_STACK);
	if (key.ustack < 0)
		pf_count(PF_CNT_USTACK_ERR);
	key.kstack = bpf_get_stackid(ctx, &stacks, 0);
	if (key.kstack < 0 && key.kstack != -14 /* EFAULT: sample in user mode */)
		pf_count(PF_CNT_KSTACK_ERR);
	if (key.kstack < 0)
		key.kstack = -1;
	pf_count(PF_CNT_SAMPLES);
	__u64 *n = bpf_map_lookup_elem(&cpu_counts, &key);
	if (n) {
		__sync_fetch_and_add(n, 1);
		return 0;
	}
	__u64 one = 1;
	if (bpf_map_update_elem(&cpu_counts, &key, &one, BPF_NOEXIST)) {
		n = bpf_map_lookup_elem(&cpu_counts, &key);
		if (n)
			__sync_fetch_and_add(n, 1);
		else
			pf_count(PF_CNT_MAP_FULL);
	}
	return 0;
}

/* ---- off-CPU kinds ----------------------------------------------------- */

/* Is fd of the current task a socket? */
static __always_inline bool pf_fd_is_socket(__u64 fd)
{
	struct task_struct___pf *t = (void *)bpf_get_current_task();
	struct fdtable___pf *fdt = BPF_CORE_READ(t, files, fdt);
	if (!fdt || fd >= BPF_CORE_READ(fdt, max_fds))
		return false;
	struct file___pf **fds = BPF_CORE_READ(fdt, fd);
	struct file___pf *f = 0;
	bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]);
	if (!f)
		return false;
	unsigned short mode = BPF_CORE_READ(f, f_inode, i_mode);
	return (mode & PF_S_IFMT) == PF_S_IFSOCK;
}

/* What the current task (going off CPU in `state`) waits on: the kernel's
 * state first (uninterruptible, stopped), then the syscall in progress
 * (orig_ax of the registers saved at syscall entry). */
static __always_inline __u32 pf_kind(__u64 state, const struct pf_regs *r, bool have_regs)
{
	if (state & (PF_TASK_STOPPED | PF_TASK_TRACED))
		return PF_KIND_STOPPED;
	if ((state & PF_TASK_UNINTERRUPTIBLE) && !(state & PF_TASK_NOLOAD))
		return PF_KIND_IO;
	if (!have_regs)
		return PF_KIND_OTHER;
	switch ((long)r->orig_ax) {
	case NR_futex:
	case NR_futex_waitv:
		return PF_KIND_LOCK;
	case NR_epoll_wait:
	case NR_epoll_pwait:
	case NR_epoll_pwait2:
	case NR_poll:
	case NR_ppoll:
	case NR_select:
	case NR_pselect6:
		return PF_KIND_POLL;
	case NR_nanosleep:
	case NR_clock_nanosleep:
		return PF_KIND_SLEEP;
	case NR_connect:
	case NR_accept:
	case NR_accept4:
	case NR_sendto:
	case NR_recvfrom:
	case NR_sendmsg:
	case NR_recvmsg:
	case NR_recvmmsg:
	case NR_sendmmsg:
		return PF_KIND_SOCKET;
	case NR_read:
	case NR_write:
	case NR_readv:
	case NR_writev:
		return pf_fd_is_socket(r->di) ? PF_KIND_SOCKET : PF_KIND_OTHER;
	default:
		return PF_KIND_OTHER;
	}
}

static __always_inline void pf_add_off(__u32 tgid, struct pf_thread *th, __u64 delta)
{
	struct pf_off_key key = {
		.tgid = tgid, .ustack = th->ustack, .kstack = th->kstack, .kind = th->kind};
	struct pf_off_val *v = bpf_map_lookup_elem(&off_counts, &key);
	if (!v) {
		struct pf_off_val zero = {};
		bpf_map_update_elem(&off_counts, &key, &zero, BPF_NOEXIST);
		v = bpf_map_lookup_elem(&off_counts, &key);
		if (!v) {
			pf_count(PF_CNT_MAP_FULL);
			return;
		}
	}
	__sync_fetch_and_add(&v->ns, delta);
	__sync_fetch_and_add(&v->count, 1);
}

static __always_inline __u32 pf_log2(__u64 v)
{
	__u32 r = 0;
	if (v >> 32) {
		v >>= 32;
		r += 32;
	}
	if (v >> 16) {
		v >>= 16;
		r += 16;
	}
	if (v >> 8) {
		v >>= 8;
		r += 8;
	}
	if (v >> 4) {
		v >>= 4;
		r += 4;
	}
	if (v >> 2) {
		v >>= 2;
		r += 2;
	}
	if (v >> 1)
		r += 1;
	return r;
}

static __always_inline void pf_rq_record(__u64 delta)
{
	__u32 idx;
	if (delta < (1 << PF_RQ_SUB_BITS)) {
		idx = delta;
	} else {
		__u32 b = pf_log2(delta);
		idx = (b << PF_RQ_SUB_BITS) |
		      ((delta >> (b - PF_RQ_SUB_BITS)) & ((1 << PF_RQ_SUB_BITS) - 1));
	}
	if (idx >= PF_RQ_BUCKETS)
		idx = PF_RQ_BUCKETS - 1;
	__u64 *n = bpf_map_lookup_elem(&rq_hist, &idx);
	if (n)
		*n += 1;
}

/* ---- sched_switch ------------------------------------------------------ */

static __always_inline void pf_switch_out(void *ctx, __u64 task, __u32 tgid, __u32 tid,
					  bool preempt, __u64 state, __u64 now)
{
	pf_count(PF_CNT_SWITCHES);
	struct pf_thread *th = pf_thread_of(tid);
	if (!th)
		return;
	__u32 zero = 0;
	struct pf_target *tg = bpf_map_lookup_elem(&target, &zero);
	if (th->oncpu) {
		th->oncpu = 0;
		if (tg && __sync_fetch_and_add(&tg->running, -1) == 1)
			tg->idle_since = now;
	}
	if (state & PF_TASK_DEAD) {
		bpf_map_delete_elem(&threads, &tid);
		bpf_map_delete_elem(&tasks, &task);
		return;
	}
	if (!pf_task_of(task))
		pf_task_add(task, tgid, tid);
	if (preempt || state == 0) {
		/* still runnable: waits for a CPU, not for an event */
		th->off_ts = 0;
		th->rq_since = now;
		th->want_since = now;
		return;
	}
	void *regs = (void *)bpf_task_pt_regs(bpf_get_current_task_btf());
	struct pf_regs r = {};
	bool have_regs = regs && !bpf_probe_read_kernel(&r, sizeof(r), regs + PF_REGS_OFF);
	long nr = have_regs ? (long)r.orig_ax : -1;
	__u64 ip = r.ip, bp = r.bp, ret = 0;
	if (bp)
		bpf_probe_read_user(&ret, sizeof(ret), (void *)(bp + 8));
	__u32 kind = pf_kind(state, &r, have_regs);
	th->kind = kind;
	if (ip && th->c_ustack >= 0 && th->c_ip == ip && th->c_bp == bp && th->c_ret == ret &&
	    th->c_nr == nr) {
		th->ustack = th->c_ustack;
		pf_count(PF_CNT_STACK_REUSED);
	} else {
		th->ustack = bpf_get_stackid(ctx, &stacks, PF_F_USER_STACK);
		th->c_ustack = th->ustack;
		th->c_ip = ip;
		th->c_bp = bp;
		th->c_ret = ret;
		th->c_nr = nr;
	}
	th->kstack = kind == PF_KIND_IO ? bpf_get_stackid(ctx, &stacks, 0) : -1;
	if (th->kstack < 0)
		th->kstack = -1;
	th->off_ts = now;
	th->rq_since = 0;
	th->want_since = kind == PF_KIND_STOPPED ? now : 0;
}

static __always_inline void pf_switch_in(__u32 tgid, __u32 tid, __u64 now)
{
	pf_count(PF_CNT_SWITCHES);
	struct pf_thread *th = pf_thread_of(tid);
	if (!th)
		return;
	__u32 zero = 0;
	struct pf_target *tg = bpf_map_lookup_elem(&target, &zero);
	if (!th->oncpu) {
		th->oncpu = 1;
		if (tg && __sync_fetch_and_add(&tg->running, 1) == 0 && th->want_since &&
		    tg->idle_since) {
			__u64 start = tg->idle_since > th->want_since ? tg->idle_since : th->want_since;
			__u32 cz = 0;
			struct pf_config *cfg = bpf_map_lookup_elem(&pf_config, &cz);
			__u64 min = cfg ? cfg->stall_ns : 50000000ULL;
			if (now > start && now - start >= min) {
				struct pf_stall *s = bpf_ringbuf_reserve(&stalls, sizeof(*s), 0);
				if (s) {
					s->start_ns = start;
					s->dur_ns = now - start;
					s->tgid = tgid;
					s->tid = tid;
					bpf_ringbuf_submit(s, PF_RB_NO_WAKEUP);
				} else {
					pf_count(PF_CNT_RING_DROPS);
				}
			}
		}
	}
	if (th->off_ts) {
		if (now > th->off_ts)
			pf_add_off(tgid, th, now - th->off_ts);
		th->off_ts = 0;
	}
	if (th->rq_since) {
		if (now > th->rq_since)
			pf_rq_record(now - th->rq_since);
		th->rq_since = 0;
	}
	th->want_since = 0;
}

/* TP_PROTO(bool preempt, struct task_struct *prev, struct task_struct *next,
 *          unsigned int prev_state); prev is the current task. */
SEC("raw_tracepoint/sched_switch")
int pf_sched_switch(struct bpf_raw_tracepoint_args *ctx)
{
	__u64 pt = bpf_get_current_pid_tgid();
	__u32 prev_tgid = pt >> 32;
	bool prev_in = prev_tgid && pf_in_target(prev_tgid);
	struct pf_task *next = pf_task_of(ctx->args[2]);
	if (!prev_in && !next)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	if (prev_in)
		pf_switch_out(ctx, ctx->args[1], prev_tgid, (__u32)pt, ctx->args[0] & 1,
			      (__u32)ctx->args[3], now);
	if (next)
		pf_switch_in(next->tgid, next->tid, now);
	return 0;
}

/* TP_PROTO(struct task_struct *p): p was woken (in the waker's context). */
static __always_inline int pf_woken(__u32 tid)
{
	pf_count(PF_CNT_WAKEUPS);
	struct pf_thread *th = pf_thread_of(tid);
	if (!th)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	th->rq_since = now;
	/* a stopped thread continued by SIGCONT has wanted to run since it
	 * was stopped: keep that */
	if (!th->want_since)
		th->want_since = now;
	return 0;
}

SEC("raw_tracepoint/sched_wakeup")
int pf_sched_wakeup(struct bpf_raw_tracepoint_args *ctx)
{
	struct pf_task *t = pf_task_of(ctx->args[0]);
	if (!t)
		return 0;
	return pf_woken(t->tid);
}

/* A new thread or child process, woken for the first time by its creator
 * (current): one of the target's if the creator is. */
SEC("raw_tracepoint/sched_wakeup_new")
int pf_sched_wakeup_new(struct bpf_raw_tracepoint_args *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (!tgid || !pf_in_target(tgid))
		return 0;
	struct task_struct___pf *p = (void *)ctx->args[0];
	__u32 ctgid = BPF_CORE_READ(p, tgid);
	__u32 tid = BPF_CORE_READ(p, pid);
	if (!pf_in_target(ctgid))
		return 0;
	pf_task_add(ctx->args[0], ctgid, tid);
	return pf_woken(tid);
}

/* TP_PROTO(struct task_struct *parent, struct task_struct *child): a child
 * process of a target process joins the target (parent is current). */
SEC("raw_tracepoint/sched_process_fork")
int pf_fork(struct bpf_raw_tracepoint_args *ctx)
{
	__u32 ptgid = bpf_get_current_pid_tgid() >> 32;
	if (!pf_in_target(ptgid))
		return 0;
	struct task_struct___pf *child = (void *)ctx->args[1];
	__u32 ctgid = BPF_CORE_READ(child, tgid);
	if (ctgid == ptgid)
		return 0;
	__u32 one = 1;
	bpf_map_update_elem(&tgids, &ctgid, &one, BPF_ANY);
	pf_bit_set(&tgid_hint, ctgid & PF_HINT_MASK);
	return 0;
}

/* Does nothing: attached beside pf_sched_switch only to measure what
 * bpf_stats itself adds to a run (Profiler::attach_calibration). */
SEC("raw_tracepoint/sched_switch")
int pf_nop(struct bpf_raw_tracepoint_args *ctx)
{
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
