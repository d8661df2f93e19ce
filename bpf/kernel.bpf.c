/* The `kernel` sensor: mounts, namespaces, kernel modules and BPF programs, from the
 * syscall tracepoints.
 *
 * - mount: source, target and type read from the caller's memory, and the MS_* flags;
 *   and mounts through the new API (util-linux 2.39+ mount(8) uses it): fsopen's type,
 *   fsconfig's "source" and fsmount's attributes (or open_tree's path, for a bind) are
 *   kept by process until its move_mount, which is sent as the mount.
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

static __always_inline int kern_skipped(u32 kind)
{
    int zero = 0;
    u64 *skip = kern_skip.lookup(&zero);
    return skip && (*skip >> kind) & 1;
}

/* Records wake the reader at once: they are rare, and setns is resolved from /proc while
 * the caller still holds the descriptor (nsenter execs right after). */
NW_RECORD_IO(kern, struct nw_kern_event, NW_SCRATCH_KERN, NW_WAKE_NOW, 1)
NW_RECORD_IO(mount, struct nw_mount_event, NW_SCRATCH_MOUNT, NW_WAKE_NOW, 1)

/* a record of this kind with the caller's task fields; 0 when no rule wants the kind */
static __always_inline struct nw_kern_event *new_kern(u32 kind)
{
    struct nw_kern_event *e = kern_skipped(kind) ? 0 : reserve_kern();
    if (e)
        fill_task(e, kind);
    return e;
}

static __always_inline struct nw_mount_event *new_mount(void)
{
    struct nw_mount_event *e = kern_skipped(NW_MOUNT) ? 0 : reserve_mount();
    if (e)
        fill_task(e, NW_MOUNT);
    return e;
}

TRACEPOINT_PROBE(syscalls, sys_enter_mount)
{
    struct nw_mount_event *e = new_mount();
    if (!e)
        return 0;
    e->flags = args->flags;
    if (args->type)
        bpf_probe_read_user_str(e->fstype, sizeof(e->fstype), args->type);
    if (args->dev_name)
        bpf_probe_read_user_str(e->source, sizeof(e->source), args->dev_name);
    bpf_probe_read_user_str(e->target, sizeof(e->target), args->dir_name);
    submit_mount(args, e);
    return 0;
}

/* The new mount API, by process: what its last fsopen/fsconfig/fsmount or open_tree
 * said, until its move_mount. LRU: a context never moved is evicted, not kept. */
#define FSCONFIG_SET_STRING 1
struct fs_pending {
    u64 flags;
    char fstype[NW_FSTYPE_LEN];
    char source[NW_MOUNT_PATH_LEN];
};
BPF_TABLE("lru_hash", u32, struct fs_pending, fs_pending, 1024);
BPF_PERCPU_ARRAY(fs_scratch, struct fs_pending, 1);

static __always_inline struct fs_pending *fs_context(int fresh)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!fresh)
        return fs_pending.lookup(&tgid);
    int zero = 0;
    struct fs_pending *blank = fs_scratch.lookup(&zero);
    if (!blank)
        return 0;
    __builtin_memset(blank, 0, sizeof(*blank));
    fs_pending.update(&tgid, blank);
    return fs_pending.lookup(&tgid);
}

TRACEPOINT_PROBE(syscalls, sys_enter_fsopen)
{
    if (kern_skipped(NW_MOUNT))
        return 0;
    struct fs_pending *p = fs_context(1);
    if (p)
        bpf_probe_read_user_str(p->fstype, sizeof(p->fstype), args->_fs_name);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_fsconfig)
{
    if (args->cmd != FSCONFIG_SET_STRING || kern_skipped(NW_MOUNT))
        return 0;
    char key[8] = {};
    bpf_probe_read_user_str(key, sizeof(key), args->_key);
    if (key[0] != 's' || key[1] != 'o' || key[2] != 'u' || key[3] != 'r' || key[4] != 'c'
            || key[5] != 'e' || key[6] != 0)
        return 0;
    struct fs_pending *p = fs_context(0);
    if (p)
        bpf_probe_read_user_str(p->source, sizeof(p->source), args->_value);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_fsmount)
{
    struct fs_pending *p = kern_skipped(NW_MOUNT) ? 0 : fs_context(0);
    if (p)
        p->flags = args->attr_flags & 0xf;   /* MOUNT_ATTR_RDONLY..NOEXEC = MS_* bits */
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_open_tree)
{
    if (kern_skipped(NW_MOUNT))
        return 0;
    struct fs_pending *p = fs_context(1);
    if (p)
        bpf_probe_read_user_str(p->source, sizeof(p->source), args->filename);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_move_mount)
{
    struct nw_mount_event *e = new_mount();
    if (!e)
        return 0;
    e->call = NW_CALL_MOVE_MOUNT;
    u32 tgid = e->pid;
    struct fs_pending *p = fs_pending.lookup(&tgid);
    if (p) {
        e->flags = p->flags;
        __builtin_memcpy(e->fstype, p->fstype, sizeof(e->fstype));
        __builtin_memcpy(e->source, p->source, sizeof(e->source));
        fs_pending.delete(&tgid);
    } else {
        bpf_probe_read_user_str(e->source, sizeof(e->source), args->from_pathname);
    }
    bpf_probe_read_user_str(e->target, sizeof(e->target), args->to_pathname);
    submit_mount(args, e);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_setns)
{
    struct nw_kern_event *e = new_kern(NW_SETNS);
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
    struct nw_kern_event *e = new_kern(NW_UNSHARE);
    if (!e)
        return 0;
    e->flags = args->unshare_flags;
    submit_kern(args, e);
    return 0;
}

#ifndef NW_NO_sys_enter_init_module
TRACEPOINT_PROBE(syscalls, sys_enter_init_module)
{
    struct nw_kern_event *e = new_kern(NW_MODULE);
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
    struct nw_kern_event *e = new_kern(NW_MODULE);
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
    struct nw_kern_event *e = new_kern(NW_BPF);
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
