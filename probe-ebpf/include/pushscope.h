/* pushscope kernel/user ABI: the single source of truth for every struct
 * that crosses the ring buffer or a map. Fixed-width fields, explicit
 * padding, no bool. Keep in sync with probe-user/src/abi.rs (a test there
 * asserts sizes and offsets). */
#ifndef PUSHSCOPE_ABI_H
#define PUSHSCOPE_ABI_H

/* Per-CPU counters indexed by these slots (map `counters`). */
enum ps_counter {
	PS_CNT_EVENTS = 0,        /* ring-buffer events submitted */
	PS_CNT_RINGBUF_DROPS = 1, /* failed bpf_ringbuf_reserve */
	PS_CNT_FD_OK = 2,         /* fd-returning syscalls that succeeded */
	PS_CNT_EMFILE = 3,        /* ... that failed with EMFILE */
	PS_CNT_ENFILE = 4,        /* ... that failed with ENFILE */
	PS_CNT_RETRANS = 5,       /* tcp_retransmit_skb on observed sockets */
	PS_CNT_RST_SENT = 6,      /* tcp_send_reset on observed sockets */
	PS_CNT_RST_RECV = 7,      /* tcp_receive_reset on observed sockets */
	PS_CNT_ACCEPT_NOSK = 8,   /* accepted fd whose sock could not be read */
	PS_CNT_FORKS = 9,         /* tasks added to the target set */
	PS_CNT_MAP_FULL = 10,     /* map updates that failed (state lost) */
	PS_CNT_IO_CALLS = 11,     /* read/write family calls on observed sockets */
	PS_CNT_CLOSES = 12,       /* close() of observed sockets */
	/* Accepts and why some are not tracked (observer coverage). */
	PS_CNT_ACCEPTS = 13,            /* fds returned by accept/accept4 of the target */
	PS_CNT_UNTRACKED_FD = 14,       /* ... fd >= fds_per_slot (beyond the fd table) */
	PS_CNT_UNTRACKED_SLOT = 15,     /* ... process found no free slot */
	PS_CNT_UNTRACKED_MAP_FULL = 16, /* ... `socks` or `fdtab` update failed */
	PS_CNT_SOCKS_EVICTED = 17,      /* tracked connection whose `socks` entry was gone at close (LRU) */
	PS_CNT_SLOTS_RECYCLED = 18,     /* slots returned by exited processes */
	PS_CNT_UNTRACKED_CLOSED = 19,   /* `socks` entries of untracked fds deleted at close */
	PS_CNT_TLS_ABORTED = 20,        /* SSL_do_handshake begun, socket closed before success */
	PS_CNT_MSGPATH_TRACED = 21,     /* connections whose every call is marked (msgpath) */
	PS_CNT_SOCK_CALLS = 22,         /* receives and sends of the target on any socket */
	PS_CNT_SOCK_LOOKUPS = 23,       /* ... that looked their connection up (not turned away as cold) */
	PS_CNT_HOT_ENTERED = 24,        /* tracked connections made hot (at accept) */
	PS_CNT_HOT_LEFT = 25,           /* ... that left `hot_socks` (classified and untraced, closed, exited) */
	PS_CNT_MAX = 32,
};

/* Processes of the target that get an fd table slot (slot 1: the target
 * itself; slots of exited processes are recycled). */
#define PS_SLOTS 8

/* ps_config.msgpath bits: a peer port is in `trace_ports`; the OpenSSL
 * SSL_read/SSL_write uprobes are attached (plaintext marks). */
#define PS_MSGPATH_PORTS 1
#define PS_MSGPATH_SSL 2

/* Target configuration written by userspace before attach (map `config`). */
struct ps_config {
	__u32 target_tgid;
	__u32 io_events_per_conn; /* IO milestones sent per connection, then only counted */
	__u32 fds_per_slot;       /* fd table entries per slot: the target's RLIMIT_NOFILE at attach */
	__u32 msgpath;            /* PS_MSGPATH_* bits, set by userspace */
	__u32 trace_one_in;       /* bench: also trace 1 in N connections (by sk hash); 0 = off */
	__u32 _pad;
};

/* Map `tgid_hint` (filled by userspace at attach, by ps_fork after): slot
 * (tgid & PS_HINT_MASK) is non-zero when a tgid of the target maps there. */
#define PS_HINT_MASK 0xffff

enum ps_event_kind {
	PS_EV_STATE = 1,    /* inet_sock_set_state of a server-side or outbound sock */
	PS_EV_ACCEPT = 2,   /* accept/accept4 returned fd; sk resolved */
	PS_EV_CLOSE_FD = 3, /* close() of an accepted socket, with per-conn totals */
	PS_EV_IO = 4,       /* one read/write of an accepted socket (first N only) */
	PS_EV_RESET = 5,    /* RST sent (dir=1) or received (dir=0) on an observed sock */
	PS_EV_FORK = 6,     /* a process of the target forked a process (not a thread): fd = child pid */
	PS_EV_EXIT = 7,     /* a process of the target set exited: tgid */
	PS_EV_TLS_DONE = 8, /* OpenSSL SSL_do_handshake returned 1 (uprobes): ts_ns = return,
	                     * bytes_in = first entry time for that SSL *, sk = its socket (0 if unknown) */
	PS_EV_IO_MARK = 9,  /* msgpath: a receive/send of a traced connection: dir, ret,
	                     * dport = its peer port, bytes_in = the connection's cumulative
	                     * bytes in that direction after the call; class_ 1: plaintext
	                     * of an OpenSSL SSL_read/SSL_write (uprobes), 0: the socket's */
};

enum ps_dir {
	PS_DIR_READ = 0,
	PS_DIR_WRITE = 1,
};

/* What the first bytes of one read or send look like (a call whose
 * syscall buffer cannot be found is PS_CLASS_UNINSPECTED). Only this
 * class (and the TLS handshake type) leaves the kernel: never payload
 * bytes. */
enum ps_class {
	PS_CLASS_OTHER = 0,
	PS_CLASS_TLS_HANDSHAKE = 1, /* record type 0x16; detail = handshake type */
	PS_CLASS_TLS_CCS = 2,       /* 0x14 */
	PS_CLASS_TLS_ALERT = 3,     /* 0x15 */
	PS_CLASS_TLS_APPDATA = 4,   /* 0x17 */
	PS_CLASS_HTTP_GET = 5,      /* "GET " */
	PS_CLASS_HTTP_101 = 6,      /* "HTTP/1.1 101" */
	PS_CLASS_HTTP_OTHER = 7,    /* other "HTTP/1." status or method */
	PS_CLASS_WS_FRAME = 8,      /* plausible WebSocket frame header; detail = opcode */
	PS_CLASS_UNINSPECTED = 9,   /* not from a read/write-family syscall: io_uring, sendfile */
};

/* One ring-buffer record (all kinds share it; unused fields are zero). */
struct ps_event {
	__u64 ts_ns;     /* bpf_ktime_get_ns */
	__u64 sk;        /* struct sock * (connection key) */
	__u32 kind;      /* enum ps_event_kind */
	__u32 tgid;      /* process context tgid (0 in softirq-origin events) */
	__u32 fd;        /* ACCEPT/CLOSE_FD/IO: fd; FORK: child pid */
	__s32 ret;       /* IO: bytes read / sent */
	__u16 old_state; /* STATE */
	__u16 new_state; /* STATE */
	__u16 sport;     /* STATE: local port (host order) */
	__u16 dport;     /* STATE: remote port (host order) */
	__u16 family;    /* STATE: AF_INET/AF_INET6 */
	__u8 dir;        /* IO: enum ps_dir; RESET: 1 = sent; STATE: 1 = outbound; ACCEPT: 1 = tracked */
	__u8 class_;     /* IO: enum ps_class */
	__u8 detail;     /* IO: TLS handshake type or WS opcode */
	__u8 _pad1[3];
	__u32 io_seq;    /* IO: index of this call on the connection */
	__u32 _pad3;
	__u64 bytes_in;  /* CLOSE_FD: tcp_sock bytes_received */
	__u64 bytes_out; /* CLOSE_FD: tcp_sock bytes_acked */
	__u32 max_wmem;  /* CLOSE_FD: max sk_wmem_queued seen after sends */
	__u32 srtt_us;   /* CLOSE_FD: tcp_sock srtt (us) */
	__u32 retrans;   /* CLOSE_FD: retransmits seen on this sock */
	__u32 _pad2;
	__u8 daddr[16];  /* STATE: remote address (v4 in first 4 bytes) */
};

#endif
