/* ABI of the profiler object (src/profile.bpf.c): map keys and values read
 * by userspace. Keep in sync with probe-user/src/profile/abi.rs (its tests
 * assert every size and offset). Fixed-width fields, explicit padding. */
#ifndef PUSHSCOPE_PROFILE_H
#define PUSHSCOPE_PROFILE_H

/* Filter bitmaps: 64 K bits in 1024 u64 words. */
#define PF_HINT_MASK 0xffff
#define PF_HINT_WORDS ((PF_HINT_MASK + 1) / 64)
/* Run-queue latency histogram: log-linear, 8 sub-buckets per power of two
 * of nanoseconds (index = 8 * floor(log2 v) + next 3 bits; v < 8: v). */
#define PF_RQ_SUB_BITS 3
#define PF_RQ_BUCKETS (64 << PF_RQ_SUB_BITS)
/* Stack frames kept per stack (PERF_MAX_STACK_DEPTH). */
#define PF_STACK_DEPTH 127

/* What a blocked thread waited on (off-CPU kinds). */
enum {
	PF_KIND_LOCK = 1,    /* futex: mutexes, condvars, Go runtime parking */
	PF_KIND_POLL = 2,    /* epoll_wait/epoll_pwait/poll/ppoll/select */
	PF_KIND_SOCKET = 3,  /* read/recv/write/send family on a socket, accept, connect */
	PF_KIND_SLEEP = 4,   /* nanosleep/clock_nanosleep */
	PF_KIND_IO = 5,      /* uninterruptible (D): disk, page faults, kernel locks */
	PF_KIND_STOPPED = 6, /* SIGSTOP / ptrace stop */
	PF_KIND_OTHER = 7,
};

/* Per-CPU counter slots. */
enum {
	PF_CNT_SAMPLES = 0,      /* on-CPU samples of the target */
	PF_CNT_USTACK_ERR = 1,   /* bpf_get_stackid failed (user) */
	PF_CNT_KSTACK_ERR = 2,   /* bpf_get_stackid failed (kernel) */
	PF_CNT_MAP_FULL = 3,     /* a count or thread entry could not be inserted */
	PF_CNT_RING_DROPS = 4,   /* stall records lost (ring full) */
	PF_CNT_SWITCHES = 5,     /* context switches of target threads (either side) */
	PF_CNT_WAKEUPS = 6,      /* wakeups of target threads */
	PF_CNT_STACK_REUSED = 7, /* off-CPU blocks that reused the thread's last stack */
	PF_CNT_MAX = 8,
};

struct pf_config {
	__u64 stall_ns; /* report intervals at least this long */
};

/* On-CPU sample counts. Stack ids < 0: none (error or no stack). */
struct pf_cpu_key {
	__u32 tgid;
	__s32 ustack;
	__s32 kstack;
	__u32 _pad;
};

struct pf_off_key {
	__u32 tgid;
	__s32 ustack;
	__s32 kstack; /* only for PF_KIND_IO; else -1 */
	__u32 kind;
};

struct pf_off_val {
	__u64 ns;    /* blocked time, switch-out to switch-in */
	__u64 count; /* blocked periods */
};

/* Per target thread (map `threads`, by tid). */
struct pf_thread {
	__u64 off_ts;     /* went off CPU blocked at (0: not blocked) */
	__u64 want_since; /* runnable or stopped since (0: not wanting) */
	__u64 rq_since;   /* runnable since (wakeup or preemption) */
	__s32 ustack;
	__s32 kstack;
	__u32 kind;
	__u32 oncpu; /* counted in pf_target.running */
	/* The last user stack walked at a block, and where it blocked: the
	 * syscall, the user ip and frame pointer at syscall entry and the
	 * return address in that frame. A thread blocking again at the same
	 * (nr, ip, bp, *(bp + 8)) reuses the stack instead of walking it
	 * again (a walk costs microseconds on these VMs). */
	__u64 c_ip;
	__u64 c_bp;
	__u64 c_ret;
	__s64 c_nr;
	__s32 c_ustack;
	__u32 _pad;
};

/* Whole-target state (array slot 0). */
struct pf_target {
	__s64 running;    /* target threads on a CPU now (counted since attach) */
	__u64 idle_since; /* when `running` last dropped to 0 */
};

/* One stall: no target thread ran in [start_ns, start_ns + dur_ns] while
 * at least one of them wanted to (runnable, or stopped). */
struct pf_stall {
	__u64 start_ns; /* bpf_ktime_get_ns (CLOCK_MONOTONIC) */
	__u64 dur_ns;
	__u32 tgid;
	__u32 tid; /* the thread whose switch-in ended it */
};

#endif
