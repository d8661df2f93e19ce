/* What every sensor sends to userspace, defined once: the records, their kinds, the
 * verdicts they can carry, and the slots of the kernel config array userspace fills.
 *
 * Every record starts with `u64 ts_ns; u32 kind;` (enum nw_kind); the rest is the layout of
 * its kind: struct nw_exec_event (exec), struct nw_proc_event (fork, exit), struct
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

/* a record's kind; each is an agent.model.EventKind (CONNECT_VERDICT is a connect) */
enum nw_kind {
    NW_EXEC = 1,
    NW_FORK = 2,
    NW_EXIT = 3,
    NW_CONNECT = 4,
    NW_ACCEPT = 5,
    NW_CLOSE = 6,
    NW_CONNECT_VERDICT = 7,   /* an in-kernel connect rule matched (connect_guard.bpf.c) */
};

/* the verdict of a record an in-kernel rule matched (exec: verdict; connect verdict: state) */
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

/* The exec record (bpf/exec.bpf.c; agent/sources/execrecord.py decodes it): what the exec
 * ran with, taken in the kernel at sys_enter_execve(at) from the caller's argv and envp, so
 * a process gone before userspace looks still has its command line and workspace. Only
 * `NW_EXEC_FIXED + args_len` bytes are sent: args is as long as the command line. */
#define NW_ARGS_LEN 4096          /* argv bytes kept (a power of two); the rest is cut */
#define NW_ARGV_MAX 128           /* arguments read; more are cut */
#define NW_ENV_MAX 256            /* environment entries scanned for the markers */
#define NW_MARKERS_MAX 4          /* workspace marker names the kernel looks for */
#define NW_MARKER_NAME_MAX 56     /* bytes of a marker name the kernel compares */
#define NW_MARKER_VALUE_LEN 256   /* a workspace id: 253 bytes and the NUL, padded */

/* struct nw_exec_event.flags */
enum nw_exec_flag {
    NW_EXEC_ARGS = 1,           /* args holds argv as read at the exec */
    NW_EXEC_ARGS_CUT = 2,       /* argv was longer than NW_ARGS_LEN / NW_ARGV_MAX */
    NW_EXEC_ARGS_FAULT = 4,     /* argv could not be read whole (a page not resident) */
    NW_EXEC_ENV = 8,            /* the whole environment was scanned for the markers of
                                 * marker_set: `marker` is the answer (empty: none) */
    NW_EXEC_MARKER_MORE = 16,   /* another configured marker was set too */
    NW_EXEC_TASK = 32,          /* start_ns, ppid, euid and netns were read from the task
                                 * (at offsets the running kernel's BTF gave) */
};

struct nw_exec_event {
    u64 ts_ns;          /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
    u32 kind;           /* NW_EXEC */
    u32 pid;            /* tgid after the exec */
    u32 uid;
    u32 slot;           /* with a verdict: the kernel rule slot */
    u16 verdict;        /* enum nw_verdict; 0: no in-kernel rule matched */
    u16 flags;          /* enum nw_exec_flag */
    u32 marker_set;     /* the id of the marker names scanned for (NW_EXEC_ENV) */
    u64 cgroup_id;      /* bpf_get_current_cgroup_id(): the cgroup v2 id */
    u64 start_ns;       /* NW_EXEC_TASK: when the process started, ns since boot */
    u32 ppid;           /* NW_EXEC_TASK: the parent's tgid */
    u32 euid;           /* NW_EXEC_TASK: the effective uid */
    u64 netns;          /* NW_EXEC_TASK: the network namespace's inode number */
    u32 argc;           /* arguments in args */
    u32 args_len;       /* bytes of args sent: each argument NUL-terminated */
    u32 args_cut;       /* argv bytes left out, at least (NW_EXEC_ARGS_CUT) */
    u16 marker_idx;     /* which configured marker was found (marker_len > 0) */
    u16 marker_len;     /* bytes of its value in marker */
    char comm[NW_COMM_LEN];
    char filename[NW_FILENAME_LEN];
    char marker[NW_MARKER_VALUE_LEN];
    char args[NW_ARGS_LEN];
};
#define NW_EXEC_FIXED 608   /* offsetof(struct nw_exec_event, args) */

#endif
