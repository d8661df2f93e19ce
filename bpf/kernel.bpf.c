/* The `kernel` sensor: mounts, namespaces, kernel modules and BPF programs, from the
 * syscall tracepoints.
 *
 * - mount: source, target and type read from the caller's memory, and the MS_* flags.
 * - setns (the descriptor and nstype: userspace reads what the descriptor names from
 *   /proc/PID/fd while it is open) and unshare (only with a CLONE_NEW* flag).
 * - init_module and finit_module (the file is read from /proc/PID/fd). A kernel built
 *   without module support has neither tracepoint: userspace then compiles this file with
 *   -DNW_NO_sys_enter_init_module / -DNW_NO_sys_enter_finit_module and says so once.
 * - bpf(BPF_PROG_LOAD): the program type and name from the caller's union bpf_attr (UAPI
 *   offsets), by any process but the agent: NW_AGENT_TGID is the agent's pid, given when
 *   it compiles this, so its own loads (which happen while this program attaches) are
 *   never sent.
 *
 * A kind no loaded rule (nor a recording) is on is not sent: bit (1 << kind) of
 * kern_skip, set by agent/sources/kernel_sensor.py. */
#include "sensor.h"

#ifndef NW_AGENT_TGID
#define NW_AGENT_TGID 0
#endif

#define BPF_PROG_LOAD 5
/* union bpf_attr for BPF_PROG_LOAD: prog_type at 0, prog_name[16] at 48 */
#define BPF_ATTR_PROG_NAME 48
#define BPF_ATTR_PROG_NAME_END 64

/* every CLONE_NEW* flag: CLONE_NEWTIME, NS, CGROUP, UTS, IPC, USER, PID, NET */
#define NW_CLONE_NEW_ANY 0xfe020080UL

BPF_ARRAY(kern_skip, u64, 1);

#ifdef NW_PERF
BPF_PERCPU_ARRAY(mount_scratch, struct nw_mount_event, 1);
BPF_PERCPU_ARRAY(kern_scratch, struct nw_kern_event, 1);
#endif

static __always_inline int kern_skipped(u32 kind)
{
    int zero = 0;
    u64 *skip = kern_skip.lookup(&zero);
    return skip && (*skip >> kind) & 1;
}

static __always_inline struct nw_kern_event *reserve_kern(u32 kind)
{
    if (kern_skipped(kind))
        return 0;
#ifdef NW_PERF
    int zero = 0;
    struct nw_kern_event *e = kern_scratch.lookup(&zero);
#else
    struct nw_kern_event *e = events.ringbuf_reserve(sizeof(struct nw_kern_event));
#endif
    if (!e) {
        count_lost();
        return 0;
    }
    __builtin_memset(e, 0, sizeof(*e));
    fill_task(e, kind);
    return e;
}

/* Records wake the reader at once: they are rare, and setns is resolved from /proc while
 * the caller still holds the descriptor (nsenter execs right after). */
static __always_inline void submit_kern(void *ctx, struct nw_kern_event *e)
{
#ifdef NW_PERF
    if (events.perf_submit(ctx, e, sizeof(*e)) < 0)
        count_lost();
#else
    events.ringbuf_submit(e, BPF_RB_FORCE_WAKEUP);
#endif
}

TRACEPOINT_PROBE(syscalls, sys_enter_mount)
{
    if (kern_skipped(NW_MOUNT))
        return 0;
#ifdef NW_PERF
    int zero = 0;
    struct nw_mount_event *e = mount_scratch.lookup(&zero);
#else
    struct nw_mount_event *e = events.ringbuf_reserve(sizeof(struct nw_mount_event));
#endif
    if (!e) {
        count_lost();
        return 0;
    }
    __builtin_memset(e, 0, sizeof(*e));
    fill_task(e, NW_MOUNT);
    e->flags = args->flags;
    if (args->type)
        bpf_probe_read_user_str(e->fstype, sizeof(e->fstype), args->type);
    if (args->dev_name)
        bpf_probe_read_user_str(e->source, sizeof(e->source), args->dev_name);
    bpf_probe_read_user_str(e->target, sizeof(e->target), args->dir_name);
#ifdef NW_PERF
    if (events.perf_submit(args, e, sizeof(*e)) < 0)
        count_lost();
#else
    events.ringbuf_submit(e, BPF_RB_FORCE_WAKEUP);
#endif
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_setns)
{
    struct nw_kern_event *e = reserve_kern(NW_SETNS);
    if (!e)
        return 0;
    e->fd = (u32)args->fd;
    e->flags = (u32)args->flags;
    submit_kern(args, e);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_unshare)
{
    if (!(args->unshare_flags & NW_CLONE_NEW_ANY))
        return 0;
    struct nw_kern_event *e = reserve_kern(NW_UNSHARE);
    if (!e)
        return 0;
    e->flags = args->unshare_flags;
    submit_kern(args, e);
    return 0;
}

#ifndef NW_NO_sys_enter_init_module
TRACEPOINT_PROBE(syscalls, sys_enter_init_module)
{
    struct nw_kern_event *e = reserve_kern(NW_MODULE);
    if (!e)
        return 0;
    e->call = NW_CALL_INIT_MODULE;
    e->fd = (u32)-1;
    submit_kern(args, e);
    return 0;
}
#endif

#ifndef NW_NO_sys_enter_finit_module
TRACEPOINT_PROBE(syscalls, sys_enter_finit_module)
{
    struct nw_kern_event *e = reserve_kern(NW_MODULE);
    if (!e)
        return 0;
    e->call = NW_CALL_FINIT_MODULE;
    e->fd = (u32)args->fd;
    e->flags = args->flags;
    submit_kern(args, e);
    return 0;
}
#endif

TRACEPOINT_PROBE(syscalls, sys_enter_bpf)
{
    if (args->cmd != BPF_PROG_LOAD || bpf_get_current_pid_tgid() >> 32 == NW_AGENT_TGID)
        return 0;
    struct nw_kern_event *e = reserve_kern(NW_BPF);
    if (!e)
        return 0;
    e->flags = BPF_PROG_LOAD;
    const char *attr = (const char *)args->uattr;
    bpf_probe_read_user(&e->prog_type, sizeof(e->prog_type), attr);
    if (args->size >= BPF_ATTR_PROG_NAME_END)
        bpf_probe_read_user(e->name, sizeof(e->name), attr + BPF_ATTR_PROG_NAME);
    submit_kern(args, e);
    return 0;
}
