/* The `tcp` sensor: TCP connect (reported when the socket leaves SYN_SENT, so refused
 * connects and port scans are seen), accept with its whole 4-tuple, and close, from
 * sock:inet_sock_set_state and the accept/accept4 syscall tracepoints. A kind no loaded
 * rule wants (kcfg[NW_KCFG_SKIP_KINDS]) is not sent: with the shipped rules, which judge
 * connects only, a loopback connection costs one record instead of four.
 *
 * Repeats are counted here, not sent (the udp sensor's pattern): the first connect of a
 * (process, destination) is sent at once (so a kill rule kills on it), and the repeats
 * within NW_TCP_WINDOW_NS after it are counted in `tcp_seen`; the next record of that key,
 * sent once the window is over, carries them in `count`. Userspace asks for the count of
 * a key whose window is over and that nothing has sent (a burst that stopped): the agent
 * calls accept4(NW_FLUSH_FD, &key, 0, 0), which fails with EBADF and sends a flush record.
 * The kernel is the only one that takes a count (an atomic exchange), so no repeat is
 * counted twice. Accepts are counted the same way while no rule wants closes (an inbound
 * close is attributed through its own accept). */
#include "sensor.h"

#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_SYN_RECV 3
#define TCP_CLOSE 7
#define TCP_LISTEN 10

/* Sockets we saw connect(), by socket address: the process that called connect. The
 * source port is assigned only after the move to SYN_SENT, and the moves out of SYN_SENT
 * (to ESTABLISHED, or to CLOSE when refused) and to CLOSE run in softirq context, so the
 * owner recorded here attributes them. LRU: bounded whatever the load. */
struct owner {
    u32 pid;
    u32 uid;
    char comm[NW_COMM_LEN];
};
BPF_TABLE("lru_hash", u64, struct owner, sock_owner, 65536);

/* Inbound connections that reached ESTABLISHED (softirq, no process yet), by the peer's
 * address and port, so accept() can be given its whole 4-tuple in the kernel. */
struct peer {
    u8 addr[NW_ADDR_LEN];
    u16 port;
    u16 family;
    u32 pad;
};
struct local {
    u8 addr[NW_ADDR_LEN];
    u16 port;
    u16 pad[3];
};
BPF_TABLE("lru_hash", struct peer, struct local, inbound, 65536);
/* accept()/accept4() in flight, by thread: where the caller wants the peer's address */
BPF_HASH(accepting, u64, u64, 16384);

#define NW_TCP_WINDOW_NS 1000000000ULL   /* a (process, destination): a record per second */
#define NW_FLUSH_FD -7                   /* accept4()'s fd when the agent asks for a flush */
#ifndef NW_AGENT_TGID
#define NW_AGENT_TGID 0
#endif

/* A (process, destination): connect (kind NW_CONNECT) to addr:port, ending in `state`
 * (ESTABLISHED, or CLOSE when refused), or accept (NW_ACCEPT) from the peer addr on the
 * local port. `gen` is the process's last exec (exec_gen), so the first connect of a new
 * program is never a repeat of the old one's. agent/sources/tcp_sensor.py packs it too. */
struct tcp_key {
    u32 tgid;
    u32 uid;
    u64 gen;
    u16 kind;
    u16 state;
    u16 family;
    u16 port;
    u8 addr[NW_ADDR_LEN];
};
struct tcp_count {
    u64 since;      /* when its last record was sent */
    u64 count;      /* repeats since, not yet sent */
    u32 pid;
    u32 pad;
    char comm[NW_COMM_LEN];
};
BPF_TABLE("lru_hash", struct tcp_key, struct tcp_count, tcp_seen, 8192);
/* tgid -> when it last exec'd (0: not since the sensor started, or forgotten) */
BPF_TABLE("lru_hash", u32, u64, exec_gen, 16384);

/* sched:sched_process_exec, attached by TcpSensor.start(): exec.bpf.c has that
 * tracepoint's TRACEPOINT_PROBE, and one program cannot define it twice (nor is it needed:
 * nothing of the tracepoint's record is read) */
int tcp_on_exec(void *ctx)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    u64 now = bpf_ktime_get_ns();
    exec_gen.update(&tgid, &now);
    return 0;
}

static __always_inline void tcp_key_of(struct tcp_key *k, u32 tgid, u32 uid, u32 kind)
{
    k->tgid = tgid;
    k->uid = uid;
    k->kind = kind;
    u64 *gen = exec_gen.lookup(&tgid);
    k->gen = gen ? *gen : 0;
}

/* Whether the call of `k` at `now` is a repeat within its window (counted, nothing to
 * send); if not, `*repeats` is what was counted before it, to send with it. */
static __always_inline int counted_repeat(struct tcp_key *k, u64 now, u32 pid,
                                          const char *comm, u32 *repeats)
{
    struct tcp_count *s = tcp_seen.lookup(k);
    if (s && now - s->since < NW_TCP_WINDOW_NS) {
        __sync_fetch_and_add(&s->count, 1);
        return 1;
    }
    if (s) {
        u64 n = __sync_lock_test_and_set(&s->count, 0);
        *repeats = n > 0xfffffffeULL ? 0xfffffffe : (u32)n;
        s->since = now;
        s->pid = pid;
        __builtin_memcpy(s->comm, comm, NW_COMM_LEN);
        return 0;
    }
    struct tcp_count fresh = {.since = now, .pid = pid};
    __builtin_memcpy(fresh.comm, comm, NW_COMM_LEN);
    tcp_seen.update(k, &fresh);
    *repeats = 0;
    return 0;
}

/* accept4(NW_FLUSH_FD, &key, 0, 0) by the agent: the repeats counted for `key`, sent
 * without a new call (the record's source port is 0; an accept's peer port too) */
static __always_inline int flush_repeats(void *ctx, u64 ukey)
{
    struct tcp_key k = {};
    if (bpf_probe_read_user(&k, sizeof(k), (void *)ukey))
        return 0;
    struct tcp_count *s = tcp_seen.lookup(&k);
    if (!s || !s->count)
        return 0;
    u64 n = __sync_lock_test_and_set(&s->count, 0);
    if (!n)
        return 0;
    struct nw_conn_event *e = reserve_conn();
    if (!e)
        return 0;
    e->ts_ns = bpf_ktime_get_ns();
    e->kind = k.kind;
    e->pid = s->pid;
    e->uid = k.uid;
    e->family = k.family;
    e->state = k.state;
    if (k.kind == NW_ACCEPT)
        e->sport = k.port;
    else
        e->dport = k.port;
    __builtin_memcpy(e->daddr, k.addr, NW_ADDR_LEN);
    __builtin_memcpy(e->comm, s->comm, NW_COMM_LEN);
    e->count = n > 0xffffffffULL ? 0xffffffff : (u32)n;
    submit_conn(ctx, e);
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

/* The connect attempt is decided: report it, with both ports known now, unless it repeats
 * its (process, destination) within the window. A macro: BCC defines the tracepoint's
 * args struct only inside its probe. */
#define on_connect(args, o) do {                                                    \
        u32 repeats = 0;                                                            \
        struct tcp_key k = {};                                                     \
        u64 now = bpf_ktime_get_ns();                                               \
        if (o) {                                                                    \
            tcp_key_of(&k, (o)->pid, (o)->uid, NW_CONNECT);                        \
            k.state = (args)->newstate;                                             \
            k.family = (args)->family;                                              \
            k.port = (args)->dport;                                                 \
            if ((args)->family == AF_INET)                                          \
                __builtin_memcpy(k.addr, (args)->daddr, 4);                         \
            else                                                                    \
                __builtin_memcpy(k.addr, (args)->daddr_v6, 16);                     \
            if (counted_repeat(&k, now, (o)->pid, (o)->comm, &repeats))             \
                break;                                                              \
        }                                                                           \
        struct nw_conn_event *e = reserve_conn();                                   \
        if (!e)                                                                     \
            break;                                                                  \
        e->ts_ns = now;                                                             \
        e->kind = NW_CONNECT;                                                       \
        e->state = (args)->newstate;   /* ESTABLISHED, or CLOSE when refused */     \
        e->count = repeats + 1;                                                     \
        if (o) {                                                                    \
            e->pid = (o)->pid;                                                      \
            e->uid = (o)->uid;                                                      \
            __builtin_memcpy(e->comm, (o)->comm, sizeof(e->comm));                  \
        }                                                                           \
        COPY_ADDRS(e, args);                                                        \
        submit_conn(args, e);                                                       \
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
        if (kind_skipped(NW_ACCEPT))
            return 0;   /* only accept records read `inbound` */
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
    if (args->oldstate == TCP_SYN_SENT && !kind_skipped(NW_CONNECT))
        on_connect(args, o);
    if (args->newstate == TCP_CLOSE && args->oldstate != TCP_LISTEN) {
        struct nw_conn_event *e = kind_skipped(NW_CLOSE) ? 0 : reserve_conn();
        if (e) {
            e->ts_ns = bpf_ktime_get_ns();
            e->kind = NW_CLOSE;
            e->state = args->oldstate;
            if (o) {
                e->pid = o->pid;   /* 0 for inbound: userspace knows it from the accept */
                e->uid = o->uid;
                __builtin_memcpy(e->comm, o->comm, sizeof(e->comm));
            }
            COPY_ADDRS(e, args);
            submit_conn(args, e);
        }
        if (o)
            sock_owner.delete(&sk);
    }
    return 0;
}

/* accept: the peer comes from the sockaddr the caller passed (a UAPI struct in user
 * memory), the local side from `inbound`; the new fd is sent too, so userspace can resolve
 * the connection from /proc when the caller passed no sockaddr. */
static __always_inline int on_accept_enter(u64 upeer)
{
    if (kind_skipped(NW_ACCEPT))
        return 0;
    u64 tid = bpf_get_current_pid_tgid();
    accepting.update(&tid, &upeer);
    return 0;
}

static __always_inline int on_accept_exit(void *ctx, long ret)
{
    u64 tid = bpf_get_current_pid_tgid();
    u64 *upeer = accepting.lookup(&tid);
    u64 uaddr = upeer ? *upeer : 0;
    if (upeer)
        accepting.delete(&tid);
    if (ret < 0 || kind_skipped(NW_ACCEPT))
        return 0;
    struct peer k = {};
    struct local l = {};
    int known = 0;
    if (uaddr) {
        struct sockaddr_in6 sa = {};
        bpf_probe_read_user(&sa, sizeof(sa), (void *)uaddr);
        k.family = sa.sin6_family;
        if (sa.sin6_family == AF_INET) {
            struct sockaddr_in *sin = (struct sockaddr_in *)&sa;
            k.port = bpf_ntohs(sin->sin_port);
            __builtin_memcpy(k.addr, &sin->sin_addr, 4);
        } else if (sa.sin6_family == AF_INET6) {
            k.port = bpf_ntohs(sa.sin6_port);
            __builtin_memcpy(k.addr, &sa.sin6_addr, 16);
        }
        struct local *found = inbound.lookup(&k);
        if (found) {
            l = *found;
            known = 1;
            inbound.delete(&k);
        }
    }
    u64 now = bpf_ktime_get_ns();
    u32 repeats = 0;
    if (known && kind_skipped(NW_CLOSE)) {
        /* a repeat: the same process accepting from the same peer address on the same
         * local port (while a close rule needs each accept, none is one) */
        u64 id = bpf_get_current_pid_tgid();
        struct tcp_key sk = {};
        tcp_key_of(&sk, id >> 32, (u32)bpf_get_current_uid_gid(), NW_ACCEPT);
        sk.family = k.family;
        sk.port = l.port;
        __builtin_memcpy(sk.addr, k.addr, NW_ADDR_LEN);
        char comm[NW_COMM_LEN];
        bpf_get_current_comm(&comm, sizeof(comm));
        if (counted_repeat(&sk, now, id >> 32, comm, &repeats))
            return 0;
    }
    struct nw_conn_event *e = reserve_conn();
    if (!e)
        return 0;
    fill_task(e, NW_ACCEPT);
    e->ts_ns = now;
    e->fd = (u32)ret;
    e->count = repeats + 1;
    if (known) {
        /* the socket's own view, as for close: saddr local, daddr the peer */
        e->family = k.family;
        e->sport = l.port;
        e->dport = k.port;
        __builtin_memcpy(e->saddr, l.addr, 16);
        __builtin_memcpy(e->daddr, k.addr, 16);
    }
    submit_conn(ctx, e);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_accept4)
{
    /* the kernel reads fd as an int; the slot is 64 bits, and glibc sign-extends it on one
     * path (a process with threads: the cancellable syscall) and not on the other */
    if ((int)args->fd == NW_FLUSH_FD && (bpf_get_current_pid_tgid() >> 32) == NW_AGENT_TGID)
        return flush_repeats(args, (u64)args->upeer_sockaddr);
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
