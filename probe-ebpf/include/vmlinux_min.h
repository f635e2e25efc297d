/* Trimmed kernel types for CO-RE. Only what the probes read; every struct is
 * marked preserve_access_index so field offsets are relocated against the
 * running kernel's BTF (/sys/kernel/btf/vmlinux) at load time. Regenerate a
 * full reference with `bpftool btf dump file /sys/kernel/btf/vmlinux format c`. */
#ifndef PUSHSCOPE_VMLINUX_MIN_H
#define PUSHSCOPE_VMLINUX_MIN_H

typedef unsigned char __u8;
typedef signed char __s8;
typedef unsigned short __u16;
typedef short __s16;
typedef unsigned int __u32;
typedef int __s32;
typedef unsigned long long __u64;
typedef long long __s64;
typedef __u8 u8;
typedef __u16 u16;
typedef __u32 u32;
typedef __u64 u64;
typedef __s32 s32;
typedef __s64 s64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;
typedef _Bool bool;
#define true 1
#define false 0

enum bpf_map_type {
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_ARRAY = 2,
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
	BPF_MAP_TYPE_LRU_HASH = 9,
	BPF_MAP_TYPE_QUEUE = 22,
	BPF_MAP_TYPE_RINGBUF = 27,
};

enum {
	BPF_ANY = 0,
	BPF_NOEXIST = 1,
	BPF_EXIST = 2,
};

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

struct file {
	void *private_data;
};

struct fdtable {
	unsigned int max_fds;
	struct file **fd;
};

struct files_struct {
	struct fdtable *fdt;
};

struct task_struct {
	int pid;
	int tgid;
	struct files_struct *files;
};

/* skc_dport sits in an anonymous struct of a union in the kernel's
 * sock_common: CO-RE finds it by name through anonymous members. */
struct sock_common {
	__be16 skc_dport;
};

struct sock {
	struct sock_common __sk_common;
	int sk_wmem_queued;
};

struct socket {
	struct sock *sk;
};

struct tcp_sock {
	u32 srtt_us;
	u32 total_retrans;
	u64 bytes_received;
	u64 bytes_acked;
};

struct iovec {
	void *iov_base;
	unsigned long iov_len;
};

/* x86-64 user registers at a uprobe (ctx of uprobe programs). */
struct pt_regs {
	unsigned long r15;
	unsigned long r14;
	unsigned long r13;
	unsigned long r12;
	unsigned long bp;
	unsigned long bx;
	unsigned long r11;
	unsigned long r10;
	unsigned long r9;
	unsigned long r8;
	unsigned long ax;
	unsigned long cx;
	unsigned long dx;
	unsigned long si;
	unsigned long di;
	unsigned long orig_ax;
	unsigned long ip;
	unsigned long cs;
	unsigned long flags;
	unsigned long sp;
	unsigned long ss;
};

struct user_msghdr {
	void *msg_name;
	int msg_namelen;
	struct iovec *msg_iov;
};

#pragma clang attribute pop

/* Tracepoint contexts (layouts from /sys/kernel/tracing/events/<cat>/<name>/format).
 * These are fixed ABI of the trace events, not kernel structs: no CO-RE. */
struct tp_sys_enter {
	__u64 common;
	__s64 id;
	__u64 args[6];
};

struct tp_sys_exit {
	__u64 common;
	__s64 id;
	__s64 ret;
};

struct tp_inet_sock_set_state {
	__u64 common;
	const void *skaddr;
	int oldstate;
	int newstate;
	__u16 sport;
	__u16 dport;
	__u16 family;
	__u16 protocol;
	__u8 saddr[4];
	__u8 daddr[4];
	__u8 saddr_v6[16];
	__u8 daddr_v6[16];
};

struct tp_tcp_retransmit_skb {
	__u64 common;
	const void *skbaddr;
	const void *skaddr;
	int state;
	__u16 sport;
	__u16 dport;
};

struct tp_tcp_send_reset {
	__u64 common;
	const void *skbaddr;
	const void *skaddr;
};

struct tp_tcp_receive_reset {
	__u64 common;
	const void *skaddr;
};

/* Raw tracepoint context: the tracepoint's own arguments, unformatted
 * (sock:sock_send_length: struct sock *sk, int ret, int flags;
 * sched:sched_process_fork: struct task_struct *parent, *child). */
struct bpf_raw_tracepoint_args {
	__u64 args[0];
};

#endif
