/* What every sensor sends to userspace, defined once: the records, their kinds, the
 * verdicts they can carry, and the slots of the kernel config array userspace fills.
 *
 * Every record starts with `u64 ts_ns; u32 kind;` (enum nw_kind); the rest is the layout of
 * its kind: struct nw_event (exec), struct nw_proc_event (fork, exit), struct
 * nw_conn_event (connect, accept, close, connect verdict). The ring buffer gives each
 * record's size, so a record is as long as its kind needs (a TCP record carries no file
 * name).
 *
 * agent/sources/kevents.py mirrors this file (RecordKind, Verdict, KcfgSlot, COMM_LEN,
 * FILENAME_LEN, LAYOUTS); tests/unit/test_bpf_contract.py parses it and fails when the two
 * differ. Only tracepoint fields and UAPI values go in a record, so no kernel struct
 * layout is ever read. */
#ifndef NODEWARDEN_EVENTS_H
#define NODEWARDEN_EVENTS_H

/* struct nw_event.kind; each is an agent.model.EventKind (CONNECT_VERDICT is a connect) */
enum nw_kind {
    NW_EXEC = 1,
    NW_FORK = 2,
    NW_EXIT = 3,
    NW_CONNECT = 4,
    NW_ACCEPT = 5,
    NW_CLOSE = 6,
    NW_CONNECT_VERDICT = 7,   /* an in-kernel connect rule matched (connect_guard.bpf.c) */
};

/* struct nw_event.state of a record an in-kernel rule matched */
enum nw_verdict {
    NW_VERDICT_WOULD_KILL = 1,
    NW_VERDICT_KILLED = 2,
};

/* The kcfg array: one u64 bitmask of kernel rule slots each. */
enum nw_kcfg_slot {
    NW_KCFG_EXEC_ENFORCE = 0,     /* exec rule slots in enforce mode (others: would_kill) */
    NW_KCFG_CONNECT_ENFORCE = 1,  /* connect rule slots in enforce mode */
    NW_KCFG_CONNECT_NET = 2,      /* connect slots that need a destination network match */
    NW_KCFG_CONNECT_PORT = 3,     /* connect slots that need a destination port match */
    NW_KCFG_CONNECT_ALL = 4,      /* every connect slot (0: skip the lookups) */
    NW_KCFG_SKIP_KINDS = 5,       /* bit (1 << enum nw_kind) set: no record of that kind is
                                   * sent (connect, accept, close only; no loaded rule and
                                   * no recording wants it). 0, the default: all are sent */
    NW_KCFG_SLOTS = 6,
};

#define NW_COMM_LEN 16
#define NW_FILENAME_LEN 256
#define NW_ADDR_LEN 16

/* exec */
struct nw_event {
    u64 ts_ns;          /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
    u32 kind;           /* enum nw_kind */
    u32 pid;            /* tgid of the process concerned (the child for fork) */
    u32 ppid;           /* fork: the parent's tgid; otherwise 0 */
    u32 uid;
    u32 fd;             /* accept: the returned fd; with a verdict: the kernel rule slot */
    u16 family;         /* AF_INET 2, AF_INET6 10 */
    u16 sport;          /* host byte order */
    u16 dport;
    u16 state;          /* close: TCP state left; connect: state entered; exec and
                         * connect verdict: enum nw_verdict */
    u8 saddr[NW_ADDR_LEN];   /* IPv4 in the first 4 bytes */
    u8 daddr[NW_ADDR_LEN];
    char comm[NW_COMM_LEN];
    char filename[NW_FILENAME_LEN];   /* exec only */
};

/* fork, exit */
struct nw_proc_event {
    u64 ts_ns;          /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
    u32 kind;           /* enum nw_kind */
    u32 pid;            /* tgid of the process concerned (the child for fork) */
    u32 ppid;           /* fork: the parent's tgid; otherwise 0 */
    u32 uid;
    char comm[NW_COMM_LEN];
};

/* connect, accept, close, connect verdict */
struct nw_conn_event {
    u64 ts_ns;          /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
    u32 kind;           /* enum nw_kind */
    u32 pid;            /* tgid of the process that owns the socket (0: unknown, softirq) */
    u32 uid;
    u32 fd;             /* accept: the returned fd; connect verdict: the kernel rule slot */
    u16 family;         /* AF_INET 2, AF_INET6 10 */
    u16 sport;          /* host byte order */
    u16 dport;
    u16 state;          /* close: TCP state left; connect: state entered; connect verdict:
                         * enum nw_verdict */
    u8 saddr[NW_ADDR_LEN];   /* IPv4 in the first 4 bytes */
    u8 daddr[NW_ADDR_LEN];
    char comm[NW_COMM_LEN];
};

#endif
