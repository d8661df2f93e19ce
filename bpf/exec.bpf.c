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

/* The exec record is built in a per-CPU scratch slot and judged there; only then is it
 * copied to the buffer. A full ring buffer (a flood of TCP records) therefore loses the
 * record but never the in-kernel kill. */
BPF_PERCPU_ARRAY(exec_scratch, struct nw_event, 1);

TRACEPOINT_PROBE(sched, sched_process_exec)
{
    int zero = 0;
    struct nw_event *x = exec_scratch.lookup(&zero);
    if (!x)
        return 0;
    __builtin_memset(x, 0, sizeof(*x));
    fill_task(x, NW_EXEC);
    TP_DATA_LOC_READ_STR(&x->filename, filename, sizeof(x->filename));
    /* the record was zeroed, so comm and filename are zero-padded map keys */
    u64 mask = 0;
    u64 *m = kexec_names.lookup((struct comm_key *)x->comm);
    if (m)
        mask |= *m;
    m = kexec_paths.lookup((struct path_key *)x->filename);
    if (m)
        mask |= *m;
    if (mask) {
        u32 slot = lowest_slot(mask);
        x->fd = slot;
        /* pid 1 re-executing itself (systemd daemon-reexec) is never killed, whatever
         * path rule matches; protected names never enter the maps at all */
        if ((cfg_get(NW_KCFG_EXEC_ENFORCE) & (1ULL << slot)) && x->pid != 1) {
            /* delivered before the new image returns to userspace: it runs nothing */
            bpf_send_signal(9);
            x->state = NW_VERDICT_KILLED;
        } else {
            x->state = NW_VERDICT_WOULD_KILL;
        }
    }
    struct nw_event *e = reserve();
    if (!e)
        return 0;
    __builtin_memcpy(e, x, sizeof(*e));
    submit(args, e);
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
    submit_proc(args, e);
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
    submit_proc(args, e);
    return 0;
}
