/* The `exec` sensor: process lifecycle (exec, fork of a process, exit), and the in-kernel
 * exec rules: an executable name (the comm set at exec) or full path -> a bitmask of kernel
 * rule slots, filled by agent/sources/exec_sensor.py. A slot whose bit is in
 * kcfg[NW_KCFG_EXEC_ENFORCE] is killed here, before the new image runs an instruction;
 * the others are reported would_kill. */
#include "sensor.h"

#define CLONE_THREAD 0x00010000

struct comm_key {
    char comm[NW_COMM_LEN];
};
struct path_key {
    char path[NW_FILENAME_LEN];
};
BPF_HASH(kexec_names, struct comm_key, u64, 4096);
BPF_HASH(kexec_paths, struct path_key, u64, 1024);

/* The workspace markers to look for in an exec's environment (userspace fills it from
 * `workspace_markers`; count 0: none, and the environment is not read). Each name is
 * compared as eight masked words: word[i] ^ the entry's bytes, under mask[i], must be 0. */
struct nw_marker {
    u64 word[8];
    u64 mask[8];
    u32 len;            /* 1..NW_MARKER_NAME_MAX */
    u32 pad;
};
struct nw_markers {
    u32 count;
    u32 set_id;         /* copied to the record: which names were looked for */
    struct nw_marker m[NW_MARKERS_MAX];
};
BPF_ARRAY(kmarkers, struct nw_markers, 1);

/* argv and the marker of an exec in flight, by the thread that called execve: taken at
 * sys_enter_execve(at), sent at sched_process_exec (old_pid is that thread), dropped at a
 * failed exec's sys_exit. LRU: an entry whose exit was never seen is evicted, not kept. */
BPF_TABLE("lru_hash", u32, struct nw_exec_event, exec_pending, 512);

/* The per-CPU place an exec's arguments are gathered in before they go to exec_pending:
 * `slack` lets each argument be read with the bytes left as its bound (the verifier needs
 * offset + size within the buffer); `entry` holds one environment entry's head, `value`
 * a marker value before it is known to be the one kept. */
struct exec_build {
    struct nw_exec_event e;
    char slack[NW_ARGS_LEN];
    u64 entry[8];
    char value[NW_MARKER_VALUE_LEN];
    u32 seen;           /* take_marker: markers whose first entry was met */
    u32 best;           /* the index of the marker kept so far (NW_MARKERS_MAX: none) */
    u32 more;           /* another marker was set too */
};
BPF_PERCPU_ARRAY(exec_build, struct exec_build, 1);
#ifndef NW_PERF
/* Wake-ups of the lifecycle records (fork, exec, exit), adaptive. Each wake-up costs the
 * consumer 20-40 us of CPU on a VM whatever it reads, about as much as the record.
 * - An exec record wakes the consumer at once when no exec record woke it in the last
 *   NW_EXEC_WAKE_GAP_NS (1.5 ms): a sparse exec, and the first of a burst, is read within
 *   microseconds. One with an in-kernel verdict always wakes at once.
 * - Execs that come faster, and fork and exit records sent within NW_WAKE_GAP_NS (1 ms)
 *   of another lifecycle record, go with BPF_RB_NO_WAKEUP: they ride on a wake-up that
 *   came before them, or on the consumer's linger.
 * The bound: every record sent is read (by induction on the order they are sent: a record
 * sent without a wake-up follows one sent, and so read, less than 1.5 ms before it). The
 * consumer, while it has read a record in the last LINGER_MS (2 ms, agent/sources/bpf.py,
 * timed after the read), polls with a timeout of at most LINGER_MS; so a record sent
 * without a wake-up is read at most LINGER_MS after it was sent. At 1,000 execs/s this is
 * about one wake-up per two execs instead of one or more per exec.
 * lifecycle_wake[0]: when an exec record last woke the consumer; [1]: when the last
 * lifecycle record was sent (fork and exit look only at that: a fork's wake-up, just
 * before its exec, must not make the exec wait). */
#define NW_EXEC_WAKE_GAP_NS 1500000ULL
BPF_ARRAY(lifecycle_wake, u64, 2);

static __always_inline u64 exec_wakeup(u16 verdict)
{
    int woke = 0, sent = 1;
    u64 now = bpf_ktime_get_ns();
    u64 *any = lifecycle_wake.lookup(&sent);
    if (any)
        *any = now;
    u64 *last = lifecycle_wake.lookup(&woke);
    if (last && !verdict && now - *last < NW_EXEC_WAKE_GAP_NS)
        return BPF_RB_NO_WAKEUP;
    if (last)
        *last = now;   /* two CPUs racing here wake it twice: harmless */
    return BPF_RB_FORCE_WAKEUP;
}

/* a fork or exit record's wake-up: none when a lifecycle record went less than
 * NW_WAKE_GAP_NS before it */
static __always_inline u64 proc_wakeup(void)
{
    int sent = 1;
    u64 *any = lifecycle_wake.lookup(&sent);
    if (!any)
        return BPF_RB_FORCE_WAKEUP;
    u64 now = bpf_ktime_get_ns();
    u64 before = *any;
    *any = now;
    return now - before < NW_WAKE_GAP_NS ? BPF_RB_NO_WAKEUP : BPF_RB_FORCE_WAKEUP;
}
#endif

/* send a fork or exit record */
static __always_inline void send_proc(void *ctx, struct nw_proc_event *e)
{
#ifdef NW_PERF
    submit_proc(ctx, e);
#else
    events.ringbuf_submit(e, proc_wakeup());
#endif
}

/* the record of an exec whose arguments were not taken (the agent attached mid-exec) */
BPF_PERCPU_ARRAY(exec_scratch, struct nw_exec_event, 1);

/* argv into b->e.args, each argument NUL-terminated, cut at NW_ARGS_LEN / NW_ARGV_MAX.
 * What the loops carry lives in the map (b->e.args_len, args_cut, flags), not in
 * registers: the verifier then sees no new state per iteration and prunes. */
static __always_inline void take_argv(struct exec_build *b, const char *const *argv)
{
    int i;
    for (i = 0; i < NW_ARGV_MAX; i++) {
        const char *p = 0;
        if (bpf_probe_read_user(&p, sizeof(p), (void *)&argv[i]) < 0) {
            b->e.flags |= NW_EXEC_ARGS_FAULT;
            return;
        }
        if (!p)
            return;
        u32 off = b->e.args_len;
        if (off >= NW_ARGS_LEN) {
            /* no room: count what is left out (each at most a buffer: a lower bound) */
            long n = bpf_probe_read_user_str(b->slack, NW_ARGS_LEN, p);
            b->e.flags |= NW_EXEC_ARGS_CUT;
            b->e.args_cut += n > 0 ? n : 1;
            continue;
        }
        u32 room = NW_ARGS_LEN - off;
        long n = bpf_probe_read_user_str(&b->e.args[off], room, p);
        if (n < 0) {
            b->e.flags |= NW_EXEC_ARGS_FAULT;
            return;
        }
        if ((u32)n >= room) {
            /* filled the buffer: this argument may go on */
            long more = bpf_probe_read_user_str(b->slack, NW_ARGS_LEN, p + n - 1);
            if (more > 1) {
                b->e.flags |= NW_EXEC_ARGS_CUT;
                b->e.args_cut += more - 1;
            }
        }
        b->e.args_len = off + (u32)n;
        b->e.argc++;
    }
    const char *p = 0;
    if (bpf_probe_read_user(&p, sizeof(p), (void *)&argv[NW_ARGV_MAX]) < 0 || p) {
        b->e.flags |= NW_EXEC_ARGS_CUT;
        b->e.args_cut += 1;
    }
}

/* whether env entry b->entry (n bytes read, its NUL included) sets marker k */
static __always_inline int is_marker(struct exec_build *b, struct nw_marker *k, long n)
{
    u32 len = k->len;
    /* "NAME=" and the NUL at least */
    if (len > NW_MARKER_NAME_MAX || n < len + 2 || ((char *)b->entry)[len & 63] != '=')
        return 0;
    u64 diff = 0;
#pragma unroll
    for (int w = 0; w < 8; w++)
        diff |= (b->entry[w] ^ k->word[w]) & k->mask[w];
    return diff == 0;
}

/* one environment entry: does it set a marker, and a better one than found so far? */
static __always_inline void check_entry(struct exec_build *b, struct nw_markers *mk,
                                        const char *p, long n)
{
#pragma unroll
    for (u32 m = 0; m < NW_MARKERS_MAX; m++) {
        if (m >= mk->count)
            return;
        struct nw_marker *k = &mk->m[m];
        if (!is_marker(b, k, n))
            continue;
        if (b->seen & (1U << m))
            return;   /* a later entry of a name already seen */
        b->seen |= 1U << m;
        u32 len = k->len & 63;
        if (m < b->best) {
            /* zeroed first: what a worse marker's longer value left must not go out */
            __builtin_memset(b->value, 0, NW_MARKER_VALUE_LEN);
            long v = bpf_probe_read_user_str(b->value, NW_MARKER_VALUE_LEN - 2, p + len + 1);
            if (v > 1) {
                if (b->best < NW_MARKERS_MAX)
                    b->more = 1;
                b->best = m;
                __builtin_memcpy(b->e.marker, b->value, NW_MARKER_VALUE_LEN);
                b->e.marker_idx = m;
                b->e.marker_len = v - 1;
            }
        } else if (n > len + 2) {
            b->more = 1;
        }
        return;
    }
}

/* the value of the first configured marker set in envp (markers in configuration order;
 * the first entry of each name counts; an empty value marks nothing). No other value of
 * the environment is read: only each entry's first 64 bytes, to compare its name. */
static __always_inline void take_marker(struct exec_build *b, const char *const *envp)
{
    int zero = 0;
    struct nw_markers *mk = kmarkers.lookup(&zero);
    if (!mk || !mk->count)
        return;
    b->seen = 0;
    b->best = NW_MARKERS_MAX;
    b->more = 0;
    for (int i = 0; i < NW_ENV_MAX; i++) {
        const char *p = 0;
        if (bpf_probe_read_user(&p, sizeof(p), (void *)&envp[i]) < 0)
            return;   /* not scanned whole: userspace reads the environment */
        if (!p) {
            b->e.flags |= NW_EXEC_ENV | (b->more ? NW_EXEC_MARKER_MORE : 0);
            b->e.marker_set = mk->set_id;
            return;
        }
        long n = bpf_probe_read_user_str(b->entry, sizeof(b->entry), p);
        if (n < 0)
            return;
        check_entry(b, mk, p, n);
    }
    /* more entries than scanned: userspace reads the environment */
}

/* argv and the marker of one exec into b->e (the fields before them are the caller's) */
static __always_inline void take_exec(struct exec_build *b, const char *const *argv,
                                      const char *const *envp)
{
    b->e.flags = NW_EXEC_ARGS;
    b->e.argc = 0;
    b->e.args_len = 0;
    b->e.args_cut = 0;
    b->e.marker_set = 0;
    b->e.marker_idx = 0;
    b->e.marker_len = 0;
    __builtin_memset(b->e.marker, 0, NW_MARKER_VALUE_LEN);
    __builtin_memset(b->value, 0, NW_MARKER_VALUE_LEN);
    take_argv(b, argv);
    take_marker(b, envp);
}

static __always_inline int exec_enter(const char *const *argv, const char *const *envp)
{
    int zero = 0;
    struct exec_build *b = exec_build.lookup(&zero);
    if (!b)
        return 0;
    take_exec(b, argv, envp);
    u32 tid = (u32)bpf_get_current_pid_tgid();
    exec_pending.update(&tid, &b->e);
    return 0;
}

#if defined(CONFIG_DEBUG_INFO_BTF) && LINUX_VERSION_CODE >= KERNEL_VERSION(5, 15, 0)
#define NW_EXEC_STACK 1
#endif

#ifdef NW_EXEC_STACK
/* What the caller's memory could not give at sys_enter (a page of a forked child that its
 * page table does not map yet: string literals of the parent's binary, read without
 * faulting) is read again from the new image's initial stack, which the kernel has just
 * written: argc, then argv[], NULL, envp[], NULL (the ELF ABI), from the stack pointer the
 * exec set in the task's registers. These are the very strings /proc/PID/cmdline and
 * environ serve. Kernels with BTF (bpf_get_current_task_btf, bpf_task_pt_regs: 5.15). */
static __always_inline struct nw_exec_event *take_from_stack(void)
{
    int zero = 0;
    struct exec_build *b = exec_build.lookup(&zero);
    if (!b)
        return 0;
    struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(
        (struct task_struct *)bpf_get_current_task_btf());
    u64 sp = 0, argc = 0, end = 1;
    bpf_probe_read_kernel(&sp, sizeof(sp), &PT_REGS_SP(regs));
    /* a 64-bit layout: argc fits in 31 bits and argv[argc] is the NULL that ends argv (a
     * 32-bit process's stack, 4-byte entries, fails one or the other) */
    if (!sp || bpf_probe_read_user(&argc, sizeof(argc), (void *)sp) < 0 || !argc ||
        argc > 0x7fffffff ||
        bpf_probe_read_user(&end, sizeof(end), (void *)(sp + 8 + 8 * argc)) < 0 || end)
        return 0;
    const char *const *argv = (const char *const *)(sp + 8);
    take_exec(b, argv, argv + argc + 1);
    if (b->e.flags & NW_EXEC_ARGS_FAULT)
        return 0;
    return &b->e;   /* the caller fills the rest (ts_ns ... cgroup_id, comm, filename) */
}
#endif

#ifdef NW_TASK_START_BOOTTIME_0
/* What /proc/PID/stat, status and ns/net would say (start time, parent, effective uid,
 * network namespace), read from the task at the offsets the running kernel's BTF names
 * (agent/sources/btf.py passes them: the headers BCC compiles with may be another
 * kernel's, so no struct layout of theirs is used). The observer then reads only the
 * executable's path and identity from /proc. Without the offsets, or when a read fails,
 * NW_EXEC_TASK stays clear and it reads all of them. */
static __always_inline u64 task_ptr(u64 at)
{
    u64 p = 0;
    if (bpf_probe_read_kernel(&p, sizeof(p), (void *)at) < 0)
        return 0;
    return p;
}

static __always_inline void take_task(struct nw_exec_event *x)
{
    u64 task = bpf_get_current_task();
    u64 parent = task_ptr(task + NW_TASK_REAL_PARENT_0);
    u64 cred = task_ptr(task + NW_TASK_CRED_0);
    u64 nsproxy = task_ptr(task + NW_TASK_NSPROXY_0);
    u64 net = nsproxy ? task_ptr(nsproxy + NW_TASK_NSPROXY_1) : 0;
    u32 inum = 0;
    if (!parent || !cred || !net ||
        bpf_probe_read_kernel(&x->start_ns, 8, (void *)(task + NW_TASK_START_BOOTTIME_0)) < 0 ||
        bpf_probe_read_kernel(&x->ppid, 4, (void *)(parent + NW_TASK_REAL_PARENT_1)) < 0 ||
        bpf_probe_read_kernel(&x->euid, 4, (void *)(cred + NW_TASK_CRED_1)) < 0 ||
        bpf_probe_read_kernel(&inum, 4, (void *)(net + NW_TASK_NSPROXY_2)) < 0)
        return;
    x->netns = inum;
    x->flags |= NW_EXEC_TASK;
}
#endif

TRACEPOINT_PROBE(syscalls, sys_enter_execve)
{
    return exec_enter(args->argv, args->envp);
}

TRACEPOINT_PROBE(syscalls, sys_enter_execveat)
{
    return exec_enter(args->argv, args->envp);
}

/* a failed exec: its arguments go (a successful one took them at sched_process_exec) */
TRACEPOINT_PROBE(syscalls, sys_exit_execve)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    if (args->ret < 0)
        exec_pending.delete(&tid);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_execveat)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    if (args->ret < 0)
        exec_pending.delete(&tid);
    return 0;
}

/* The exec record is judged in place (exec_pending's entry, or exec_scratch without one)
 * and only then sent: a full ring buffer (a flood of TCP records) therefore loses the
 * record but never the in-kernel kill. */
TRACEPOINT_PROBE(sched, sched_process_exec)
{
    int zero = 0;
    u32 old = args->old_pid;
    struct nw_exec_event *x = exec_pending.lookup(&old);
#ifdef NW_EXEC_STACK
    /* The strings the kernel copied, from the new image's stack, come first: argv read at
     * the syscall's entry can differ from them when another thread of the caller rewrites
     * it before the kernel's copy (a race a tenant can run to hide its arguments). What
     * sys_enter took serves when the stack cannot be read. */
    struct nw_exec_event *y = take_from_stack();
    if (y)
        x = y;
#endif
    if (!x) {
        x = exec_scratch.lookup(&zero);
        if (!x)
            return 0;
        __builtin_memset(x, 0, NW_EXEC_FIXED);
    }
    u64 id = bpf_get_current_pid_tgid();
    x->ts_ns = bpf_ktime_get_ns();
    x->kind = NW_EXEC;
    x->pid = id >> 32;
    x->uid = (u32)bpf_get_current_uid_gid();
    x->slot = 0;
    x->verdict = 0;
    x->cgroup_id = bpf_get_current_cgroup_id();
    x->start_ns = 0;
    x->ppid = 0;
    x->euid = 0;
    x->netns = 0;
    x->flags &= ~NW_EXEC_TASK;
#ifdef NW_TASK_START_BOOTTIME_0
    take_task(x);
#endif
    bpf_get_current_comm(&x->comm, sizeof(x->comm));
    __builtin_memset(x->filename, 0, NW_FILENAME_LEN);
    TP_DATA_LOC_READ_STR(&x->filename, filename, sizeof(x->filename));
    /* comm and filename are zero-padded: map keys */
    u64 mask = 0;
    u64 *m = kexec_names.lookup((struct comm_key *)x->comm);
    if (m)
        mask |= *m;
    m = kexec_paths.lookup((struct path_key *)x->filename);
    if (m)
        mask |= *m;
    if (mask) {
        u32 slot = lowest_slot(mask);
        x->slot = slot;
        /* pid 1 re-executing itself (systemd daemon-reexec) is never killed, whatever
         * path rule matches; protected names never enter the maps at all */
        if ((cfg_get(NW_KCFG_EXEC_ENFORCE) & (1ULL << slot)) && x->pid != 1) {
            /* delivered before the new image returns to userspace: it runs nothing */
            bpf_send_signal(9);
            x->verdict = NW_VERDICT_KILLED;
        } else {
            x->verdict = NW_VERDICT_WOULD_KILL;
        }
    }
    u32 len = x->args_len;
    if (len > NW_ARGS_LEN)
        len = NW_ARGS_LEN;
#ifdef NW_PERF
    if (events.perf_submit(args, x, NW_EXEC_FIXED + len) < 0)
        count_lost();
#else
    if (events.ringbuf_output(x, NW_EXEC_FIXED + len, exec_wakeup(x->verdict)) < 0)
        count_lost();
#endif
    exec_pending.delete(&old);
    return 0;
}

/* task_newtask carries clone_flags, so new threads (CLONE_THREAD) can be told from new
 * processes; it runs in the parent's context. */
TRACEPOINT_PROBE(task, task_newtask)
{
    if (args->clone_flags & CLONE_THREAD)
        return 0;
    struct nw_proc_event *e = reserve_proc();
    if (!e)
        return 0;
    fill_task(e, NW_FORK);
    e->ppid = e->pid;
    e->pid = args->pid;
    send_proc(args, e);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit)
{
    u64 id = bpf_get_current_pid_tgid();
    if ((u32)id != (u32)(id >> 32))
        return 0;   /* a thread, not the thread group leader */
    struct nw_proc_event *e = reserve_proc();
    if (!e)
        return 0;
    fill_task(e, NW_EXIT);
    send_proc(args, e);
    return 0;
}
