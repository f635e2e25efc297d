// SPDX-License-Identifier: GPL-2.0
/* The observer's one eBPF object. Concerns live in src/<concern>.inc.c and
 * are included here so they share maps (include/ps_common.h) without
 * pinning: lifecycle (states, accept, close, RST, retransmits, fork/exit),
 * classify (receives and sends at sock_recv_length / sock_send_length:
 * first-bytes class, send queue), fd (fd-returning syscalls,
 * EMFILE/ENFILE), tls (OpenSSL uprobes, optional), msgpath (every call of
 * traced connections with its cumulative byte count). */
#include "ps_common.h"
/* tls first: lifecycle's close() forgets a socket's unfinished handshake */
#include "tls.inc.c"
#include "lifecycle.inc.c"
#include "msgpath.inc.c"
#include "classify.inc.c"
#include "fd.inc.c"

char LICENSE[] SEC("license") = "GPL";
