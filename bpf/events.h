/* What every sensor sends to userspace, defined once: the records, their kinds, the
 * verdicts they can carry, and the slots of the kernel config array userspace fills.
 *
 * Every record starts with `u64 ts_ns; u32 kind;` (enum nw_kind); the rest is the layout of
 * its kind: struct nw_exec_event (exec), struct nw_proc_event (fork, exit), struct
 * nw_conn_event (connect, accept, close, connect verdict), struct nw_file_event (file),
 * struct nw_priv_event (ptrace, setuid, memfd), struct nw_mount_event (mount), struct
 * nw_kern_event (setns, unshare, module, bpf), struct nw_udp_event (udp), struct
 * nw_dns_event (dns). The ring buffer gives each
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
    NW_FILE = 8,              /* a watched file opened, removed, renamed, ... (file.bpf.c) */
    NW_PTRACE = 9,            /* privilege.bpf.c: struct nw_priv_event */
    NW_SETUID = 10,
    NW_MEMFD = 11,
    NW_MOUNT = 12,            /* kernel.bpf.c: struct nw_mount_event */
    NW_SETNS = 13,            /* kernel.bpf.c: struct nw_kern_event */
    NW_UNSHARE = 14,
    NW_MODULE = 15,
    NW_BPF = 16,
    NW_UDP = 17,              /* a UDP destination (udp.bpf.c), struct nw_udp_event */
    NW_DNS = 18,              /* a DNS query to port 53 (udp.bpf.c), struct nw_dns_event */
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
    u32 count;          /* connect, accept: the calls this record stands for. tcp.bpf.c
                         * counts repeats of a (process, destination) in the kernel: 1, or
                         * 1 + the repeats since its last record; a flush record (asked
                         * by userspace once the window is over) carries the repeats
                         * alone, without the source port. 0 for the other kinds */
    u32 pad;
};

/* udp: a process sending UDP to a destination (connect, sendto, sendmsg, sendmmsg), sent
 * once per (process, destination) per window; `suppressed` counts the sends to it that the
 * window left unreported since the previous record. No source address: the socket may not
 * be bound yet when the call is made. */
struct nw_udp_event {
    u64 ts_ns;          /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
    u32 kind;           /* NW_UDP */
    u32 pid;            /* tgid of the sender */
    u32 uid;
    u32 fd;             /* the socket's descriptor in the sender */
    u32 suppressed;     /* sends (and connects) to it not reported since its last record */
    u16 family;         /* AF_INET 2, AF_INET6 10 */
    u16 dport;          /* host byte order */
    u8 daddr[NW_ADDR_LEN];   /* IPv4 in the first 4 bytes */
    char comm[NW_COMM_LEN];
};

/* dns: the first NW_DNS_LEN bytes of a datagram sent to port 53, once per (process, query
 * name) per window; userspace parses the name and type (agent/sources/dnswire.py). */
#define NW_DNS_LEN 512      /* enough for any query: 12 + 255 + 4 bytes, and EDNS */
struct nw_dns_event {
    u64 ts_ns;          /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
    u32 kind;           /* NW_DNS */
    u32 pid;
    u32 uid;
    u32 fd;
    u32 suppressed;     /* queries of this name not reported since its last record */
    u16 family;         /* the resolver's address */
    u16 dport;
    u8 daddr[NW_ADDR_LEN];
    char comm[NW_COMM_LEN];
    u32 len;            /* payload bytes taken (at most NW_DNS_LEN; the rest is undefined) */
    u32 sent;           /* the datagram's length as the caller gave it */
    u8 payload[NW_DNS_LEN];
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

/* The file record (bpf/file.bpf.c; agent/sources/file_sensor.py): a path-taking syscall
 * on a path the loaded rules watch (the watch maps, filled from the rules, decide in the
 * kernel). `op` is one of enum nw_file_op; the watch maps' values are bitmasks of
 * (1 << op). Paths are as the caller passed them: a relative one is resolved in
 * userspace against `dirfd` (or the caller's cwd for NW_AT_FDCWD). */
#define NW_FILE_PATH_LEN 256   /* a path's bytes read, NUL included (the LPM trie's limit) */
#define NW_FILE_NAME_LEN 32    /* a watched name's bytes, NUL included */
#define NW_FILE_FIRST_BITS 16  /* file_cfg's filter of the trie's first bytes: 2^16 bits */
#define NW_FILE_NAME_BITS 14   /* file_cfg's filter of the watched names: 2^14 bits */
#define NW_AT_FDCWD 4294967196 /* (u32)AT_FDCWD: relative to the caller's cwd */

enum nw_file_op {
    NW_FILE_READ = 0,       /* open for reading only (no O_CREAT/O_TRUNC) */
    NW_FILE_WRITE = 1,      /* open for writing (O_WRONLY/O_RDWR) without O_CREAT/O_TRUNC */
    NW_FILE_CREATE = 2,     /* open with O_CREAT (the file may have existed), creat() */
    NW_FILE_TRUNCATE = 3,   /* open with O_TRUNC for writing, truncate() */
    NW_FILE_UNLINK = 4,     /* unlink(), unlinkat() (AT_REMOVEDIR too: flags says) */
    NW_FILE_RENAME = 5,     /* rename*(): path the old name, dest the new */
    NW_FILE_CHMOD = 6,      /* chmod(), fchmodat(), fchmodat2() */
};

struct nw_file_event {
    u64 ts_ns;          /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
    u32 kind;           /* NW_FILE */
    u32 pid;
    u32 uid;
    u32 op;             /* enum nw_file_op */
    u32 flags;          /* open/openat2 flags; unlinkat, renameat2, fchmodat2 flags */
    u32 mode;           /* open with O_CREAT, creat, chmod: the mode */
    u32 dirfd;          /* the directory a relative path is relative to (NW_AT_FDCWD) */
    u32 dest_dirfd;     /* rename: the new path's */
    char comm[NW_COMM_LEN];
    char path[NW_FILE_PATH_LEN];
    char dest[NW_FILE_PATH_LEN];
};

/* struct nw_priv_event.call and nw_kern_event.call: which syscall of a family it was */
enum nw_call {
    NW_CALL_SETUID = 1,
    NW_CALL_SETREUID = 2,
    NW_CALL_SETRESUID = 3,
    NW_CALL_SETFSUID = 4,
    NW_CALL_SETGID = 5,
    NW_CALL_SETREGID = 6,
    NW_CALL_SETRESGID = 7,
    NW_CALL_SETFSGID = 8,
    NW_CALL_PTRACE = 9,
    NW_CALL_PROCESS_VM_WRITEV = 10,
    NW_CALL_INIT_MODULE = 11,
    NW_CALL_FINIT_MODULE = 12,
    NW_CALL_MOVE_MOUNT = 13,    /* a mount through the new API: fsopen, fsconfig, fsmount
                                 * (or open_tree), then move_mount */
};

#define NW_MEMFD_NAME_LEN 256   /* memfd_create's name: 249 bytes at most, and the NUL */

/* ptrace, setuid, memfd (bpf/privilege.bpf.c) */
struct nw_priv_event {
    u64 ts_ns;          /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
    u32 kind;           /* NW_PTRACE, NW_SETUID, NW_MEMFD */
    u32 pid;            /* tgid of the caller */
    u32 uid;            /* the caller's real uid */
    u32 call;           /* enum nw_call (ptrace: NW_CALL_PTRACE or PROCESS_VM_WRITEV) */
    u64 arg;            /* ptrace: the request; memfd: the MFD_* flags */
    u32 target;         /* ptrace: the target pid; setuid: the id asked for (0) */
    u32 pad;
    char comm[NW_COMM_LEN];
    char name[NW_MEMFD_NAME_LEN];   /* memfd: the name given */
};

#define NW_FSTYPE_LEN 32
#define NW_MOUNT_PATH_LEN 256

/* mount (bpf/kernel.bpf.c) */
struct nw_mount_event {
    u64 ts_ns;
    u32 kind;           /* NW_MOUNT */
    u32 pid;
    u32 uid;
    u32 call;           /* 0: mount(2); NW_CALL_MOVE_MOUNT: the new mount API */
    u64 flags;          /* MS_* (move_mount: fsmount's MOUNT_ATTR_RDONLY, NOSUID, NODEV,
                         * NOEXEC, the same bits) */
    char comm[NW_COMM_LEN];
    char fstype[NW_FSTYPE_LEN];
    char source[NW_MOUNT_PATH_LEN];
    char target[NW_MOUNT_PATH_LEN];
};

/* setns, unshare, module, bpf (bpf/kernel.bpf.c) */
struct nw_kern_event {
    u64 ts_ns;
    u32 kind;           /* NW_SETNS, NW_UNSHARE, NW_MODULE, NW_BPF */
    u32 pid;
    u32 uid;
    u32 call;           /* module: NW_CALL_INIT_MODULE or NW_CALL_FINIT_MODULE */
    u64 flags;          /* setns: nstype; unshare: its flags; bpf: the command */
    u32 fd;             /* setns, finit_module: the descriptor */
    u32 prog_type;      /* bpf: the program type (union bpf_attr's first u32) */
    char comm[NW_COMM_LEN];
    char name[NW_COMM_LEN];   /* bpf: prog_name (BPF_OBJ_NAME_LEN 16) */
};

#endif
