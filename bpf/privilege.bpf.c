/* The `privilege` sensor: code injection and privilege grabs, from the syscall
 * tracepoints.
 *
 * - ptrace requests that take hold of another process or write into it (attach, seize,
 *   pokes, register writes), and process_vm_writev (writing another process's memory
 *   without ptrace). PTRACE_TRACEME is not sent: it only names the caller's parent as its
 *   tracer, and whatever that tracer then writes is a poke, sent here.
 * - setuid/setreuid/setresuid/setfsuid and the gid calls asking for id 0 by a process
 *   whose real uid is not 0 (sent whether the kernel then grants it or refuses it).
 * - memfd_create, with the name read from the caller's memory.
 *
 * The target's executable and uid are read in userspace from /proc while it lives. A
 * kind no loaded rule (nor a recording) is on is not sent: bit (1 << kind) of priv_skip,
 * set by agent/sources/privilege_sensor.py. Records wake the reader at once: they are rare,
 * and the target is read from /proc. */
#include "sensor.h"

#define PTRACE_POKETEXT 4
#define PTRACE_POKEDATA 5
#define PTRACE_POKEUSR 6
#define PTRACE_SETREGS 13
#define PTRACE_SETFPREGS 15
#define PTRACE_ATTACH 16
#define PTRACE_SETFPXREGS 19
#define PTRACE_SETREGSET 0x4205
#define PTRACE_SEIZE 0x4206

BPF_ARRAY(priv_skip, u64, 1);

NW_RECORD_IO(priv, struct nw_priv_event, NW_SCRATCH_PRIV, NW_WAKE_NOW, 1)

/* a record of this kind with the caller's task fields; 0 when no rule wants the kind */
static __always_inline struct nw_priv_event *new_priv(u32 kind)
{
    int zero = 0;
    u64 *skip = priv_skip.lookup(&zero);
    struct nw_priv_event *e = skip && (*skip >> kind) & 1 ? 0 : reserve_priv();
    if (e)
        fill_task(e, kind);
    return e;
}

static __always_inline int injects(long request)
{
    switch (request) {
    case PTRACE_POKETEXT:
    case PTRACE_POKEDATA:
    case PTRACE_POKEUSR:
    case PTRACE_SETREGS:
    case PTRACE_SETFPREGS:
    case PTRACE_ATTACH:
    case PTRACE_SETFPXREGS:
    case PTRACE_SETREGSET:
    case PTRACE_SEIZE:
        return 1;
    }
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_ptrace)
{
    if (!injects(args->request))
        return 0;
    struct nw_priv_event *e = new_priv(NW_PTRACE);
    if (!e)
        return 0;
    e->call = NW_CALL_PTRACE;
    e->arg = (u64)args->request;
    e->target = (u32)args->pid;
    submit_priv(args, e);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_process_vm_writev)
{
    struct nw_priv_event *e = new_priv(NW_PTRACE);
    if (!e)
        return 0;
    e->call = NW_CALL_PROCESS_VM_WRITEV;
    e->target = (u32)args->pid;
    submit_priv(args, e);
    return 0;
}

/* A set*id call asking for id 0 by a process whose real uid is not root. An id of -1
 * leaves that id as it is, so only an explicit 0 counts. */
static __always_inline int to_root(void *ctx, u32 call, int asks_root)
{
    if (!asks_root || (u32)bpf_get_current_uid_gid() == 0)
        return 0;
    struct nw_priv_event *e = new_priv(NW_SETUID);
    if (!e)
        return 0;
    e->call = call;
    submit_priv(ctx, e);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_setuid)
{
    return to_root(args, NW_CALL_SETUID, args->uid == 0);
}

TRACEPOINT_PROBE(syscalls, sys_enter_setreuid)
{
    return to_root(args, NW_CALL_SETREUID, args->ruid == 0 || args->euid == 0);
}

TRACEPOINT_PROBE(syscalls, sys_enter_setresuid)
{
    return to_root(args, NW_CALL_SETRESUID,
                   args->ruid == 0 || args->euid == 0 || args->suid == 0);
}

TRACEPOINT_PROBE(syscalls, sys_enter_setfsuid)
{
    return to_root(args, NW_CALL_SETFSUID, args->uid == 0);
}

TRACEPOINT_PROBE(syscalls, sys_enter_setgid)
{
    return to_root(args, NW_CALL_SETGID, args->gid == 0);
}

TRACEPOINT_PROBE(syscalls, sys_enter_setregid)
{
    return to_root(args, NW_CALL_SETREGID, args->rgid == 0 || args->egid == 0);
}

TRACEPOINT_PROBE(syscalls, sys_enter_setresgid)
{
    return to_root(args, NW_CALL_SETRESGID,
                   args->rgid == 0 || args->egid == 0 || args->sgid == 0);
}

TRACEPOINT_PROBE(syscalls, sys_enter_setfsgid)
{
    return to_root(args, NW_CALL_SETFSGID, args->gid == 0);
}

TRACEPOINT_PROBE(syscalls, sys_enter_memfd_create)
{
    struct nw_priv_event *e = new_priv(NW_MEMFD);
    if (!e)
        return 0;
    e->arg = args->flags;
    bpf_probe_read_user_str(e->name, sizeof(e->name), args->uname);
    submit_priv(args, e);
    return 0;
}
