/* The `tcp` sensor: TCP connect (reported when the socket leaves SYN_SENT, so refused
 * connects and port scans are seen), accept with its whole 4-tuple, and close, from
 * sock:inet_sock_set_state and the accept/accept4 syscall tracepoints. A kind no loaded
 * rule wants (kcfg[NW_KCFG_SKIP_KINDS]) is not sent: with the shipped rules, which judge
 * connects only, a loopback connection costs one record instead of four. */
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
    if (args->oldstate == TCP_SYN_SENT && !kind_skipped(NW_CONNECT)) {
        /* the connect attempt is decided: report it, with both ports known now */
        struct nw_conn_event *e = reserve_conn();
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
        submit_conn(args, e);
    }
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
    struct nw_conn_event *e = reserve_conn();
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
    submit_conn(ctx, e);
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
