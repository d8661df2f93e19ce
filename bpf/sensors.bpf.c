/* nodewarden's eBPF sensors, loaded through BCC (agent/sources/bpf.py).
 *
 * Tracepoints only (this kernel has no kprobes), reading only tracepoint arguments and
 * UAPI structs: process exec/fork/exit and TCP connect/accept/close, sent through a ring
 * buffer (or a perf buffer on kernels without one, with -DNW_PERF). A failed reserve is
 * counted in `lost` so userspace can reconcile with a procfs scan; BCC does not report
 * ring-buffer losses itself. */
#include <uapi/linux/ptrace.h>
#include <uapi/linux/in.h>
#include <uapi/linux/in6.h>
#include "events.h"

#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_SYN_RECV 3
#define TCP_CLOSE 7
#define TCP_LISTEN 10
#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif
#ifndef IPPROTO_TCP
#define IPPROTO_TCP 6
#endif
#define CLONE_THREAD 0x00010000

#ifdef NW_PERF
BPF_PERF_OUTPUT(events);
#else
BPF_RINGBUF_OUTPUT(events, NW_RINGBUF_PAGES);
#endif
BPF_ARRAY(lost, u64, 1);

/* In-kernel enforcement, filled by userspace from the rules the kernel can test: an
 * executable name (the comm set at exec) or full path -> a bitmask of kernel rule slots;
 * kcfg[0] has the bit of every slot in enforce mode (the others report would_kill). */
struct comm_key {
    char comm[16];
};
struct path_key {
    char path[NW_FILENAME_LEN];
};
BPF_HASH(kexec_names, struct comm_key, u64, 4096);
BPF_HASH(kexec_paths, struct path_key, u64, 1024);
/* Connect rules: destination network (IPv4 mapped into IPv6) and port -> slot bitmask.
 * kcfg[1]: connect slots in enforce mode; [2]: slots that need a network match; [3]:
 * slots that need a port match; [4]: every connect slot (0: skip the lookups). */
struct lpm_key {
    u32 prefixlen;
    u8 addr[16];
};
BPF_LPM_TRIE(kconn_net, struct lpm_key, u64, 10240);
BPF_HASH(kconn_ports, u16, u64, 65536);
BPF_ARRAY(kcfg, u64, 5);

#define NW_VERDICT_WOULD_KILL 1
#define NW_VERDICT_KILLED 2
/* Sockets we saw connect(), by socket address: the process that called connect. The
 * source port is assigned only after the move to SYN_SENT, and the moves out of SYN_SENT
 * (to ESTABLISHED, or to CLOSE when refused) and to CLOSE run in softirq context, so the
 * owner recorded here attributes them. LRU: bounded whatever the load. */
struct owner {
    u32 pid;
    u32 uid;
    char comm[16];
};
BPF_TABLE("lru_hash", u64, struct owner, sock_owner, 65536);

/* Inbound connections that reached ESTABLISHED (softirq, no process yet), by the peer's
 * address and port, so accept() can be given its whole 4-tuple in the kernel. */
struct peer {
    u8 addr[16];
    u16 port;
    u16 family;
    u32 pad;
};
struct local {
    u8 addr[16];
    u16 port;
    u16 pad[3];
};
BPF_TABLE("lru_hash", struct peer, struct local, inbound, 65536);
/* accept()/accept4() in flight, by thread: where the caller wants the peer's address */
BPF_HASH(accepting, u64, u64, 16384);

static __always_inline void count_lost(void)
{
    int zero = 0;
    u64 *n = lost.lookup(&zero);
    if (n)
        __sync_fetch_and_add(n, 1);
}

#ifdef NW_PERF
/* The perf path fills a per-CPU scratch record, then copies it out. */
BPF_PERCPU_ARRAY(scratch, struct nw_event, 1);
static __always_inline struct nw_event *reserve(void)
{
    int zero = 0;
    struct nw_event *e = scratch.lookup(&zero);
    if (e)
        __builtin_memset(e, 0, sizeof(*e));
    return e;
}
static __always_inline void submit(void *ctx, struct nw_event *e)
{
    if (events.perf_submit(ctx, e, sizeof(*e)) < 0)
        count_lost();
}
#else
static __always_inline struct nw_event *reserve(void)
{
    struct nw_event *e = events.ringbuf_reserve(sizeof(struct nw_event));
    if (!e) {
        count_lost();
        return 0;
    }
    __builtin_memset(e, 0, sizeof(*e));
    return e;
}
static __always_inline void submit(void *ctx, struct nw_event *e)
{
    events.ringbuf_submit(e, 0);
}
#endif

static __always_inline void fill_task(struct nw_event *e, u32 kind)
{
    u64 id = bpf_get_current_pid_tgid();
    e->ts_ns = bpf_ktime_get_ns();
    e->kind = kind;
    e->pid = id >> 32;
    e->uid = (u32)bpf_get_current_uid_gid();
    bpf_get_current_comm(&e->comm, sizeof(e->comm));
}

static __always_inline u32 lowest_slot(u64 mask)
{
#pragma unroll
    for (u32 i = 0; i < 64; i++)
        if (mask & (1ULL << i))
            return i;
    return 0;
}

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
        u64 *enforce = kcfg.lookup(&zero);
        x->fd = slot;
        /* pid 1 re-executing itself (systemd daemon-reexec) is never killed, whatever
         * path rule matches; protected names never enter the maps at all */
        if (enforce && (*enforce & (1ULL << slot)) && x->pid != 1) {
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
    struct nw_event *e = reserve();
    if (!e)
        return 0;
    fill_task(e, NW_FORK);
    e->ppid = e->pid;
    e->pid = args->pid;
    submit(args, e);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit)
{
    u64 id = bpf_get_current_pid_tgid();
    if ((u32)id != (u32)(id >> 32))
        return 0;   /* a thread, not the thread group leader */
    struct nw_event *e = reserve();
    if (!e)
        return 0;
    fill_task(e, NW_EXIT);
    submit(args, e);
    return 0;
}

/* A macro, not a function: BCC defines the tracepoint's args struct only inside its probe. */
#define COPY_ADDRS(e, args) do {                                    \
        (e)->family = (args)->family;                               \
        (e)->sport = (args)->sport;                                 \
        (e)->dport = (args)->dport;                                 \
        if ((args)->family == AF_INET) {                            \
            __builtin_memcpy((e)->saddr, (args)->saddr, 4);         \
            __builtin_memcpy((e)->daddr, (args)->daddr, 4);         \
        } else {                                                    \
            __builtin_memcpy((e)->saddr, (args)->saddr_v6, 16);     \
            __builtin_memcpy((e)->daddr, (args)->daddr_v6, 16);     \
        }                                                           \
    } while (0)

TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
    if (args->protocol != IPPROTO_TCP)
        return 0;
    u64 sk = (u64)args->skaddr;
    if (args->newstate == TCP_SYN_SENT) {
        /* connect(): process context, the caller owns the socket */
        struct owner o = {};
        o.pid = bpf_get_current_pid_tgid() >> 32;
        o.uid = (u32)bpf_get_current_uid_gid();
        bpf_get_current_comm(&o.comm, sizeof(o.comm));
        sock_owner.update(&sk, &o);
        return 0;
    }
    if (args->oldstate == TCP_SYN_RECV && args->newstate == TCP_ESTABLISHED) {
        struct peer k = {};
        struct local v = {};
        k.family = args->family;
        k.port = args->dport;
        v.port = args->sport;
        if (args->family == AF_INET) {
            __builtin_memcpy(k.addr, args->daddr, 4);
            __builtin_memcpy(v.addr, args->saddr, 4);
        } else {
            __builtin_memcpy(k.addr, args->daddr_v6, 16);
            __builtin_memcpy(v.addr, args->saddr_v6, 16);
        }
        inbound.update(&k, &v);
        return 0;
    }
    struct owner *o = sock_owner.lookup(&sk);
    if (args->oldstate == TCP_SYN_SENT) {
        /* the connect attempt is decided: report it, with both ports known now */
        struct nw_event *e = reserve();
        if (!e)
            return 0;
        e->ts_ns = bpf_ktime_get_ns();
        e->kind = NW_CONNECT;
        e->state = args->newstate;   /* ESTABLISHED, or CLOSE when refused */
        if (o) {
            e->pid = o->pid;
            e->uid = o->uid;
            __builtin_memcpy(e->comm, o->comm, sizeof(e->comm));
        }
        COPY_ADDRS(e, args);
        submit(args, e);
    }
    if (args->newstate == TCP_CLOSE && args->oldstate != TCP_LISTEN) {
        struct nw_event *e = reserve();
        if (!e)
            return 0;
        e->ts_ns = bpf_ktime_get_ns();
        e->kind = NW_CLOSE;
        e->state = args->oldstate;
        if (o) {
            e->pid = o->pid;   /* 0 for inbound: userspace knows it from the accept */
            e->uid = o->uid;
            __builtin_memcpy(e->comm, o->comm, sizeof(e->comm));
            sock_owner.delete(&sk);
        }
        COPY_ADDRS(e, args);
        submit(args, e);
    }
    return 0;
}

static __always_inline u64 cfg_get(int i)
{
    u64 *v = kcfg.lookup(&i);
    return v ? *v : 0;
}

/* connect(): in-kernel connect rules, as cgroup connect4/connect6 programs on the root
 * cgroup v2, which run before the kernel sends anything. A tracepoint could signal but
 * not stop the syscall (the SYN leaves before the signal lands), and this kernel forbids
 * writing user memory (lockdown) and loading BPF LSM programs here; denying here means
 * no packet leaves. In enforce mode the connect fails with EPERM and the record asks
 * userspace to SIGKILL the caller (through a pidfd); in audit it only reports. The address
 * comes from struct bpf_sock_addr, a UAPI struct. TCP only. */
static __always_inline int connect_guard(struct bpf_sock_addr *ctx, int v6)
{
    u64 all = cfg_get(4);
    if (!all || ctx->protocol != IPPROTO_TCP)
        return 1;
    struct lpm_key k = {};
    k.prefixlen = 128;
    if (v6) {
        u32 w[4];
        w[0] = ctx->user_ip6[0];
        w[1] = ctx->user_ip6[1];
        w[2] = ctx->user_ip6[2];
        w[3] = ctx->user_ip6[3];
        __builtin_memcpy(k.addr, w, 16);
    } else {
        u32 ip = ctx->user_ip4;
        k.addr[10] = 0xff;
        k.addr[11] = 0xff;
        __builtin_memcpy(&k.addr[12], &ip, 4);
    }
    u16 port = bpf_ntohs((u16)ctx->user_port);
    u64 net = 0, ports = 0;
    u64 *m = kconn_net.lookup(&k);
    if (m)
        net = *m;
    m = kconn_ports.lookup(&port);
    if (m)
        ports = *m;
    u64 match = (net | ~cfg_get(2)) & (ports | ~cfg_get(3)) & (net | ports) & all;
    if (!match)
        return 1;
    u32 slot = lowest_slot(match);
    int enforce = (cfg_get(1) >> slot) & 1;
    struct nw_event *e = reserve();
    if (e) {
        u64 id = bpf_get_current_pid_tgid();
        e->ts_ns = bpf_ktime_get_ns();
        e->kind = NW_CONNECT_VERDICT;
        e->pid = id >> 32;
        e->family = v6 ? AF_INET6 : AF_INET;
        e->dport = port;
        if (v6)
            __builtin_memcpy(e->daddr, k.addr, 16);
        else
            __builtin_memcpy(e->daddr, &k.addr[12], 4);
        e->fd = slot;
        e->state = enforce ? NW_VERDICT_KILLED : NW_VERDICT_WOULD_KILL;
        submit(ctx, e);
    }
    return enforce ? 0 : 1;
}

int nw_connect4(struct bpf_sock_addr *ctx)
{
    return connect_guard(ctx, 0);
}

int nw_connect6(struct bpf_sock_addr *ctx)
{
    return connect_guard(ctx, 1);
}

/* accept: the peer comes from the sockaddr the caller passed (a UAPI struct in user
 * memory), the local side from `inbound`; the new fd is sent too, so userspace can resolve
 * the connection from /proc when the caller passed no sockaddr. */
static __always_inline int on_accept_enter(u64 upeer)
{
    u64 tid = bpf_get_current_pid_tgid();
    accepting.update(&tid, &upeer);
    return 0;
}

static __always_inline int on_accept_exit(void *ctx, long ret)
{
    u64 tid = bpf_get_current_pid_tgid();
    u64 *upeer = accepting.lookup(&tid);
    u64 uaddr = upeer ? *upeer : 0;
    accepting.delete(&tid);
    if (ret < 0)
        return 0;
    struct nw_event *e = reserve();
    if (!e)
        return 0;
    fill_task(e, NW_ACCEPT);
    e->fd = (u32)ret;
    if (uaddr) {
        struct sockaddr_in6 sa = {};
        bpf_probe_read_user(&sa, sizeof(sa), (void *)uaddr);
        struct peer k = {};
        k.family = sa.sin6_family;
        if (sa.sin6_family == AF_INET) {
            struct sockaddr_in *sin = (struct sockaddr_in *)&sa;
            k.port = bpf_ntohs(sin->sin_port);
            __builtin_memcpy(k.addr, &sin->sin_addr, 4);
        } else if (sa.sin6_family == AF_INET6) {
            k.port = bpf_ntohs(sa.sin6_port);
            __builtin_memcpy(k.addr, &sa.sin6_addr, 16);
        }
        struct local *l = inbound.lookup(&k);
        if (l) {
            /* the socket's own view, as for close: saddr local, daddr the peer */
            e->family = k.family;
            e->sport = l->port;
            e->dport = k.port;
            __builtin_memcpy(e->saddr, l->addr, 16);
            __builtin_memcpy(e->daddr, k.addr, 16);
            inbound.delete(&k);
        }
    }
    submit(ctx, e);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_accept4)
{
    return on_accept_enter((u64)args->upeer_sockaddr);
}

TRACEPOINT_PROBE(syscalls, sys_enter_accept)
{
    return on_accept_enter((u64)args->upeer_sockaddr);
}

TRACEPOINT_PROBE(syscalls, sys_exit_accept4)
{
    return on_accept_exit(args, args->ret);
}

TRACEPOINT_PROBE(syscalls, sys_exit_accept)
{
    return on_accept_exit(args, args->ret);
}
