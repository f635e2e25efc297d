// SPDX-License-Identifier: GPL-2.0
/* Connection lifecycle: counts the target's accept4 returns. First probe of
 * the pipeline; the observer grows the lifecycle state machine from here. */
#include "vmlinux_min.h"
#include <bpf/bpf_helpers.h>
#include "pushscope.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ps_config);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PS_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

SEC("tracepoint/syscalls/sys_exit_accept4")
int ps_exit_accept4(void *ctx)
{
	__u32 zero = 0;
	struct ps_config *cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg || (bpf_get_current_pid_tgid() >> 32) != cfg->target_tgid)
		return 0;
	__u32 slot = PS_CNT_EVENTS;
	__u64 *n = bpf_map_lookup_elem(&counters, &slot);
	if (n)
		*n += 1;
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
