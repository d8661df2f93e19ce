/* What every BPF sensor includes: the record (events.h), the one ring buffer (or perf
 * buffer with -DNW_PERF, on kernels before 5.8) all sensors share, the counter of records
 * it could not take, reserve/submit of each record layout, and the kernel config array
 * userspace fills.
 *
 * agent/sources/bpf.py compiles this once with the .bpf.c files of the enabled sensors
 * only, so a sensor that is off has no program in the kernel. A failed reserve is counted
 * in `lost` so userspace can reconcile with a procfs scan; BCC does not report ring-buffer
 * losses itself. */
#ifndef NODEWARDEN_SENSOR_H
#define NODEWARDEN_SENSOR_H

#include <uapi/linux/ptrace.h>
#include <uapi/linux/in.h>
#include <uapi/linux/in6.h>
#include "events.h"

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif
#ifndef IPPROTO_TCP
#define IPPROTO_TCP 6
#endif

#ifdef NW_PERF
BPF_PERF_OUTPUT(events);
#else
BPF_RINGBUF_OUTPUT(events, NW_RINGBUF_PAGES);
#endif
/* mmapable: userspace reads the count from the map's page on every turn of its loop,
 * without a syscall */
BPF_F_TABLE("array", int, u64, lost, 1, BPF_F_MMAPABLE);
BPF_ARRAY(kcfg, u64, NW_KCFG_SLOTS);

static __always_inline void count_lost(void)
{
    int zero = 0;
    u64 *n = lost.lookup(&zero);
    if (n)
        __sync_fetch_and_add(n, 1);
}

/* Wake-ups. By default the ring buffer wakes its consumer for every record that finds it
 * caught up: at a few thousand records a second that is a wake-up per record, which costs
 * the consumer more than the record (on a VM, 20-40 us of CPU per wake-up, whatever the
 * consumer does). In-kernel verdicts (a kill to carry out, a finding to report) wake it
 * at once. TCP records wake it at most once per NW_WAKE_GAP_NS. Exec, fork and exit
 * records wake it by the rules of bpf/exec.bpf.c (lifecycle_wake): an exec at once unless
 * another exec woke it less than 1.5 ms before, a fork or exit only when no lifecycle
 * record was sent in the last NW_WAKE_GAP_NS. One sent without a wake-up waits for the
 * next one, and agent/sources/bpf.py polls with a timeout of 2 * NW_WAKE_GAP_NS while
 * records flow, so none waits longer. (The perf buffer wakes its reader by its own rule.) */
#define NW_WAKE_GAP_NS 1000000ULL
#define NW_WAKE_TCP 0     /* last_wake slots: TCP records' last wake-up */
#define NW_WAKE_PROC 1    /* fork/exit (NW_RECORD_IO); exec.bpf.c sends them by lifecycle_wake */
#define NW_WAKE_NOW 2     /* not a slot: the record wakes the consumer at once */

/* The per-CPU scratch slot of each record layout filled in place on the perf path, where
 * a record is built in a scratch slot and copied out by perf_submit; one slot a layout,
 * so two layouts never share one. */
enum nw_scratch_slot {
    NW_SCRATCH_PROC = 0,
    NW_SCRATCH_CONN = 1,
    NW_SCRATCH_FILE = 2,
    NW_SCRATCH_PRIV = 3,
    NW_SCRATCH_MOUNT = 4,
    NW_SCRATCH_KERN = 5,
    NW_SCRATCH_UDP = 6,
    NW_SCRATCH_DNS = 7,
    NW_SCRATCH_SLOTS = 8,
};

#ifdef NW_PERF
union nw_scratch_record {
    struct nw_proc_event proc;
    struct nw_conn_event conn;
    struct nw_file_event file;
    struct nw_priv_event priv;
    struct nw_mount_event mount;
    struct nw_kern_event kern;
    struct nw_udp_event udp;
    struct nw_dns_event dns;
};
BPF_PERCPU_ARRAY(record_scratch, union nw_scratch_record, NW_SCRATCH_SLOTS);
#else
BPF_ARRAY(last_wake, u64, 2);
static __always_inline u64 coalesced_wakeup_of(int slot)
{
    u64 *last = last_wake.lookup(&slot);
    if (!last)
        return 0;
    u64 now = bpf_ktime_get_ns();
    if (now - *last < NW_WAKE_GAP_NS)
        return BPF_RB_NO_WAKEUP;
    *last = now;   /* two CPUs racing here wake it twice: harmless */
    return BPF_RB_FORCE_WAKEUP;
}

/* an exec record: it wakes the consumer at once, and the fork and exit records that follow
 * within NW_WAKE_GAP_NS need not */
static __always_inline u64 immediate_wakeup(void)
{
    int slot = NW_WAKE_PROC;
    u64 *last = last_wake.lookup(&slot);
    if (last)
        *last = bpf_ktime_get_ns();
    return BPF_RB_FORCE_WAKEUP;
}
#endif

/* A record of `size` bytes: from the ring buffer (the compact records: as long as their
 * layout), or with NW_PERF the per-CPU scratch `slot`; zeroed when `zero`. 0, counted in
 * `lost`, when there is no room. */
static __always_inline void *nw_reserve(u32 size, int slot, int zero)
{
#ifdef NW_PERF
    void *e = record_scratch.lookup(&slot);
#else
    void *e = events.ringbuf_reserve(size);
#endif
    if (!e) {
        count_lost();
        return 0;
    }
    if (zero)
        __builtin_memset(e, 0, size);
    return e;
}

/* Send a reserved record (a copy of the scratch one with NW_PERF, counted in `lost` when
 * the perf buffer is full), waking the consumer as `wake` says. */
static __always_inline void nw_submit(void *ctx, void *e, u32 size, int wake)
{
#ifdef NW_PERF
    if (events.perf_submit(ctx, e, size) < 0)
        count_lost();
#else
    events.ringbuf_submit(e, wake == NW_WAKE_NOW ? BPF_RB_FORCE_WAKEUP
                                                 : coalesced_wakeup_of(wake));
#endif
}

/* reserve_NAME(): a record of layout TYPE (zeroed when ZERO, else as the buffer left it),
 * or 0 when the buffer is full (counted in `lost`); submit_NAME(ctx, e) sends it, waking
 * the consumer as WAKE says (NW_WAKE_NOW, or a last_wake slot to coalesce with). SLOT is
 * its perf scratch slot. A macro of calls only: BCC refuses map calls written in macros. */
#define NW_RECORD_IO(name, type, slot, wake, zero)                          \
    static __always_inline type *reserve_##name(void)                       \
    {                                                                       \
        return nw_reserve(sizeof(type), slot, zero);                        \
    }                                                                       \
    static __always_inline void submit_##name(void *ctx, type *e)           \
    {                                                                       \
        nw_submit(ctx, e, sizeof(type), wake);                              \
    }

NW_RECORD_IO(proc, struct nw_proc_event, NW_SCRATCH_PROC, NW_WAKE_PROC, 1)
NW_RECORD_IO(conn, struct nw_conn_event, NW_SCRATCH_CONN, NW_WAKE_TCP, 1)

/* a record that must be handled at once (an in-kernel verdict: a caller to kill) */
static __always_inline void submit_conn_now(void *ctx, struct nw_conn_event *e)
{
    nw_submit(ctx, e, sizeof(*e), NW_WAKE_NOW);
}

/* The task fields every record kind has (ts_ns, kind, pid, uid, comm): a macro, so it
 * fills any of the record structs. */
#define fill_task(e, k) do {                                        \
        u64 __id = bpf_get_current_pid_tgid();                      \
        (e)->ts_ns = bpf_ktime_get_ns();                            \
        (e)->kind = (k);                                            \
        (e)->pid = __id >> 32;                                      \
        (e)->uid = (u32)bpf_get_current_uid_gid();                  \
        bpf_get_current_comm(&(e)->comm, sizeof((e)->comm));        \
    } while (0)

static __always_inline u64 cfg_get(int slot)
{
    u64 *v = kcfg.lookup(&slot);
    return v ? *v : 0;
}

/* whether no loaded rule (and no recording) wants records of this kind: userspace sets
 * kcfg[NW_KCFG_SKIP_KINDS] after every rules load; 0 until then, so all are sent */
static __always_inline int kind_skipped(u32 kind)
{
    return (cfg_get(NW_KCFG_SKIP_KINDS) >> kind) & 1;
}

/* the kernel rule a bitmask of rule slots names: the first in file order */
static __always_inline u32 lowest_slot(u64 mask)
{
#pragma unroll
    for (u32 i = 0; i < 64; i++)
        if (mask & (1ULL << i))
            return i;
    return 0;
}

#endif
