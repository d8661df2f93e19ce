/* The `udp` sensor: UDP destinations (connect, sendto, sendmsg, sendmmsg) and the DNS
 * queries sent to port 53, from syscall tracepoints and the UAPI structs the caller passes
 * (sockaddr, msghdr, iovec, mmsghdr), never a kernel struct.
 *
 * A send tracepoint has an fd, not a socket, so the socket's type is taken where it is made:
 * socket() for AF_INET/AF_INET6 (enter: family, type, protocol; exit: the fd) fills `socks`,
 * (tgid, fd) -> UDP or not, and close() empties the entry. connect() on a known UDP socket
 * remembers its destination there, so a send without an address (glibc's resolver:
 * connect(), then send() or sendmmsg()) still has one. An fd of unknown type (made before
 * the sensor was on, inherited across fork, dup'ed, passed over a unix socket) counts as UDP
 * when it sends WITH an address (what TCP never does, but for fast open, which is left
 * out); its connect() and its sends without an address are not seen (a TCP connect is the
 * tcp sensor's).
 *
 * No wake-up per packet: a (process, destination) is reported at most once per
 * NW_UDP_WINDOW_NS (LRU `udp_seen`); the sends in between are counted and the next record
 * carries the count. A DNS query is reported once per (process, query name) per
 * NW_DNS_WINDOW_NS (LRU `dns_seen`, keyed by a hash of the name taken in the kernel).
 * Nothing at all runs past the first map lookup while no loaded rule is on udp or dns
 * (`udp_want`, filled by agent/sources/udp_sensor.py at every rules load). */
#include "sensor.h"

#define NW_UDP_WINDOW_NS 10000000000ULL   /* a (process, destination): once per 10 s */
#define NW_DNS_WINDOW_NS 2000000000ULL    /* a (process, query name): once per 2 s */
#define NW_UDP_CLOCK_EVERY 64             /* a power of two: see on_send */
#define NW_DNS_PORT 53
#define NW_DNS_HEADER 12
#ifndef SOCK_DGRAM
#define SOCK_DGRAM 2
#endif
#ifndef IPPROTO_UDP
#define IPPROTO_UDP 17
#endif
#define NW_IPPROTO_UDPLITE 136
#define NW_SOCK_TYPE_MASK 0xf
#define NW_MSG_FASTOPEN 0x20000000
#define NW_AF_UNSPEC 0

/* bit (1 << enum nw_kind) of the kinds some loaded rule is on: NW_UDP, NW_DNS; 0: off */
BPF_ARRAY(udp_want, u64, 1);

struct udp_dest {
    u16 family;
    u16 port;       /* host byte order */
    u32 pad;
    u8 addr[NW_ADDR_LEN];
};

struct sock_info {
    u8 udp;         /* 1: a UDP socket; 0: another inet socket (TCP, raw, ICMP) */
    u8 connected;   /* dest holds connect()'s destination */
    u16 pad[3];
    struct udp_dest dest;
};
/* inet sockets by (tgid << 32 | fd) */
BPF_TABLE("lru_hash", u64, struct sock_info, socks, 65536);
/* socket() in flight, by thread: 1 for UDP, 2 for another inet socket */
BPF_HASH(socket_pending, u64, u32, 4096);
/* Processes that made inet sockets since the sensor turned on (tgid -> how many), so that
 * close() of anything else (files, pipes: nearly every close) costs one lookup and no
 * deletion attempt in `socks`. An entry outlives its process until evicted: a pid reused
 * only costs the new process the deletion attempts. */
BPF_TABLE("lru_hash", u32, u32, sock_owners, 32768);

struct seen_key {
    u32 tgid;
    u32 pad;
    struct udp_dest dest;
};
struct seen {
    u64 last_ns;
    u64 suppressed;
};
BPF_TABLE("lru_hash", struct seen_key, struct seen, udp_seen, 16384);

struct dns_name_key {
    u32 tgid;
    u32 pad;
    u64 hash;       /* FNV-1a of the query name's wire bytes, ASCII lower-cased */
};
BPF_TABLE("lru_hash", struct dns_name_key, struct seen, dns_seen, 16384);

/* the UAPI layouts (struct msghdr / mmsghdr of the syscall ABI; struct iovec) */
struct nw_msghdr {
    u64 name;
    s32 namelen;
    u32 pad;
    u64 iov;
    u64 iovlen;
    u64 control;
    u64 controllen;
    u32 flags;
    u32 pad2;
};
struct nw_iovec {
    u64 base;
    u64 len;
};

NW_RECORD_IO(udp, struct nw_udp_event, NW_SCRATCH_UDP, NW_WAKE_TCP, 0)
NW_RECORD_IO(dns, struct nw_dns_event, NW_SCRATCH_DNS, NW_WAKE_TCP, 0)

/* a query not worth a record: given back without waking anyone */
static __always_inline void discard_dns(struct nw_dns_event *e)
{
#ifndef NW_PERF
    events.ringbuf_discard(e, BPF_RB_NO_WAKEUP);
#endif
}

static __always_inline u64 wanted(void)
{
    int zero = 0;
    u64 *w = udp_want.lookup(&zero);
    return w ? *w : 0;
}

static __always_inline u64 sock_key(u32 fd)
{
    return (bpf_get_current_pid_tgid() & 0xffffffff00000000ULL) | fd;
}

/* the destination of a user sockaddr: 0, or -1 when it is not AF_INET/AF_INET6 */
static __always_inline int read_dest(u64 uaddr, int addrlen, struct udp_dest *d)
{
    struct sockaddr_in6 sa = {};
    if (addrlen < (int)sizeof(struct sockaddr_in))
        return -1;
    if (bpf_probe_read_user(&sa, addrlen < (int)sizeof(sa) ? sizeof(struct sockaddr_in)
                                                           : sizeof(sa), (void *)uaddr))
        return -1;
    if (sa.sin6_family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&sa;
        d->family = AF_INET;
        d->port = bpf_ntohs(sin->sin_port);
        __builtin_memcpy(d->addr, &sin->sin_addr, 4);
        return 0;
    }
    if (sa.sin6_family == AF_INET6 && addrlen >= (int)sizeof(sa)) {
        d->family = AF_INET6;
        d->port = bpf_ntohs(sa.sin6_port);
        __builtin_memcpy(d->addr, &sa.sin6_addr, 16);
        return 0;
    }
    return -1;
}

/* whether this (process, destination) was reported less than a window ago (then counted) */
/* Report a (process, destination) unless it was reported less than a window ago (then
 * count the send). Returns when it was last reported (`now` when it is now). */
static __always_inline u64 udp_record(void *ctx, u32 fd, struct udp_dest *d, u64 now)
{
    struct seen_key k = {};
    k.tgid = bpf_get_current_pid_tgid() >> 32;
    k.dest = *d;
    struct seen *s = udp_seen.lookup(&k);
    if (s && now - s->last_ns < NW_UDP_WINDOW_NS) {
        __sync_fetch_and_add(&s->suppressed, 1);
        return s->last_ns;
    }
    u64 suppressed = s ? s->suppressed : 0;
    struct seen fresh = {.last_ns = now};
    udp_seen.update(&k, &fresh);
    struct nw_udp_event *e = reserve_udp();
    if (!e)
        return now;
    fill_task(e, NW_UDP);
    e->fd = fd;
    e->suppressed = suppressed > 0xffffffffULL ? 0xffffffff : (u32)suppressed;
    e->family = d->family;
    e->dport = d->port;
    __builtin_memcpy(e->daddr, d->addr, NW_ADDR_LEN);
    submit_udp(ctx, e);
    return now;
}

/* The flood path. Each CPU keeps the last (process, fd, destination) it saw and when that
 * was last reported: a send that repeats it within the window is counted there and
 * nothing else is looked up (no socket lookup, no LRU lookup, no atomic). Any other send
 * takes the full path, which first adds the count to the destination's `udp_seen` entry,
 * so the next record's `suppressed` includes it. `udp_gen` changes when a UDP socket
 * connects elsewhere or a known socket closes, so a send without an address never reuses
 * an old connection's destination. A DNS destination is never cached: each query's name
 * is looked at. */
struct udp_cache {
    u32 tgid;
    u32 fd;
    u64 gen;
    u64 since;      /* when the destination was last reported */
    u64 count;      /* sends counted here since the cache was filled */
    u32 has_addr;   /* the send gave an address (else: the connected destination) */
    u32 pad;
    struct udp_dest dest;
};
BPF_PERCPU_ARRAY(udp_cache, struct udp_cache, 1);
BPF_ARRAY(udp_gen, u64, 1);

static __always_inline u64 udp_generation(void)
{
    int zero = 0;
    u64 *g = udp_gen.lookup(&zero);
    return g ? *g : 0;
}

static __always_inline void udp_generation_bump(void)
{
    int zero = 0;
    u64 *g = udp_gen.lookup(&zero);
    if (g)
        __sync_fetch_and_add(g, 1);
}

static __always_inline int same_dest(struct udp_dest *a, struct udp_dest *b)
{
    u64 *x = (u64 *)a;
    u64 *y = (u64 *)b;
    return x[0] == y[0] && x[1] == y[1] && x[2] == y[2];
}

static __always_inline void cache_flush(struct udp_cache *c)
{
    if (!c->count)
        return;
    struct seen_key k = {};
    k.tgid = c->tgid;
    k.dest = c->dest;
    struct seen *s = udp_seen.lookup(&k);
    if (s)
        __sync_fetch_and_add(&s->suppressed, c->count);
    c->count = 0;
}

/* FNV-1a of the question's name as the wire has it (length bytes and labels, ASCII lower
 * case): 0 when the payload holds no whole name (no query worth a record; the udp record,
 * if wanted, still names the destination). Two loops the verifier can follow: the label
 * walk finds where the name ends, then its bytes are hashed without a branch. */
#define NW_LABELS_MAX 128
static __always_inline u64 qname_hash(struct nw_dns_event *e, u32 n)
{
    u32 pos = NW_DNS_HEADER;
    u32 end = 0;
    for (int j = 0; j < NW_LABELS_MAX; j++) {
        if (pos >= n)
            return 0;
        u8 b = e->payload[pos & (NW_DNS_LEN - 1)];
        if (b == 0 || (b & 0xc0)) {
            end = pos + 1;   /* the root label, or a compression pointer, ends it */
            break;
        }
        pos += b + 1;
    }
    if (!end)
        return 0;
    u64 h = 0xcbf29ce484222325ULL;
#pragma clang loop unroll(disable)
    for (u32 i = NW_DNS_HEADER; i < NW_DNS_LEN; i++) {
        if (i >= end)
            break;
        u8 b = e->payload[i & (NW_DNS_LEN - 1)];
        b |= (u8)((u8)(b - 'A') < 26) << 5;
        h = (h ^ b) * 0x100000001b3ULL;
    }
    return h | 1;
}

static __always_inline void dns_record(void *ctx, u32 fd, struct udp_dest *d, u64 buf,
                                       u64 len)
{
    if (!buf || len < NW_DNS_HEADER + 5)
        return;
    struct nw_dns_event *e = reserve_dns();
    if (!e)
        return;
    u32 n = len < NW_DNS_LEN ? (u32)len : NW_DNS_LEN;
    if (bpf_probe_read_user(e->payload, n, (void *)buf)) {
        discard_dns(e);
        return;
    }
    u64 h = qname_hash(e, n);
    struct dns_name_key k = {};
    k.tgid = bpf_get_current_pid_tgid() >> 32;
    k.hash = h;
    u64 now = bpf_ktime_get_ns();
    struct seen *s = h ? dns_seen.lookup(&k) : 0;
    if (!h || (s && now - s->last_ns < NW_DNS_WINDOW_NS)) {
        if (s)
            __sync_fetch_and_add(&s->suppressed, 1);
        discard_dns(e);
        return;
    }
    u64 suppressed = s ? s->suppressed : 0;
    struct seen fresh = {.last_ns = now};
    dns_seen.update(&k, &fresh);
    fill_task(e, NW_DNS);
    e->fd = fd;
    e->suppressed = suppressed > 0xffffffffULL ? 0xffffffff : (u32)suppressed;
    e->family = d->family;
    e->dport = d->port;
    __builtin_memcpy(e->daddr, d->addr, NW_ADDR_LEN);
    e->len = n;
    e->sent = len > 0xffffffffULL ? 0xffffffff : (u32)len;
    submit_dns(ctx, e);
}

/* a send: its destination (the address given, else the connected socket's), then the
 * records the rules want. `iov`: the payload is iov[0] of a msghdr (read only for DNS). */
static __always_inline int on_send(void *ctx, u32 fd, u64 uaddr, int addrlen, u32 flags,
                                   u64 buf, u64 len, u64 iov, u64 iovlen)
{
    u64 want = wanted();
    if (!want)
        return 0;
    struct udp_dest d = {};
    if (uaddr && read_dest(uaddr, addrlen, &d) < 0)
        return 0;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    u64 gen = udp_generation();
    int zero = 0;
    struct udp_cache *c = udp_cache.lookup(&zero);
    if (c && c->tgid == tgid && c->fd == fd && c->gen == gen && c->has_addr == (uaddr != 0)
        && (!uaddr || same_dest(&c->dest, &d))) {
        /* the clock is read on one hit in NW_UDP_CLOCK_EVERY: a flood's destination is
         * reported again that many sends after its window ends, at most */
        c->count++;
        if ((c->count & (NW_UDP_CLOCK_EVERY - 1))
            || bpf_ktime_get_ns() - c->since < NW_UDP_WINDOW_NS)
            return 0;
        c->count--;   /* this send is the one reported */
    }
    u64 now = bpf_ktime_get_ns();
    u64 key = sock_key(fd);
    struct sock_info *si = socks.lookup(&key);
    if (uaddr) {
        if (si ? !si->udp : (flags & NW_MSG_FASTOPEN) != 0)
            return 0;
    } else {
        if (!si || !si->udp || !si->connected)
            return 0;
        d = si->dest;
    }
    int dns = d.port == NW_DNS_PORT && (want & (1ULL << NW_DNS));
    if (dns) {
        if (iov && iovlen) {
            struct nw_iovec v = {};
            bpf_probe_read_user(&v, sizeof(v), (void *)iov);
            buf = v.base;
            len = v.len;
        }
        dns_record(ctx, fd, &d, buf, len);
    }
    if (c)
        cache_flush(c);
    u64 since = now;
    if (want & (1ULL << NW_UDP))
        since = udp_record(ctx, fd, &d, now);
    if (c && !dns) {
        c->tgid = tgid;
        c->fd = fd;
        c->gen = gen;
        c->since = since;
        c->has_addr = uaddr != 0;
        c->dest = d;
    }
    return 0;
}

static __always_inline int on_msghdr(void *ctx, u32 fd, u64 umsg, u32 flags)
{
    if (!umsg || !wanted())
        return 0;
    struct nw_msghdr m = {};
    if (bpf_probe_read_user(&m, sizeof(m), (void *)umsg))
        return 0;
    return on_send(ctx, fd, m.name, m.namelen, flags, 0, 0, m.iov, m.iovlen);
}

TRACEPOINT_PROBE(syscalls, sys_enter_sendto)
{
    return on_send(args, args->fd, (u64)args->addr, args->addr_len, args->flags,
                   (u64)args->buff, args->len, 0, 0);
}

TRACEPOINT_PROBE(syscalls, sys_enter_sendmsg)
{
    return on_msghdr(args, args->fd, (u64)args->msg, args->flags);
}

/* the first message's destination and payload (glibc sends its A and AAAA queries as two
 * messages of one sendmmsg, to one resolver: the name is the same) */
TRACEPOINT_PROBE(syscalls, sys_enter_sendmmsg)
{
    if (!args->vlen)
        return 0;
    return on_msghdr(args, args->fd, (u64)args->mmsg, args->flags);
}

TRACEPOINT_PROBE(syscalls, sys_enter_connect)
{
    u64 want = wanted();
    if (!want)
        return 0;
    u64 key = sock_key(args->fd);
    struct sock_info *si = socks.lookup(&key);
    if (!si || !si->udp)
        return 0;   /* TCP is the tcp sensor's; an unknown fd is most likely TCP too */
    u16 family = 0;
    bpf_probe_read_user(&family, sizeof(family), (void *)args->uservaddr);
    if (family == NW_AF_UNSPEC) {
        si->connected = 0;   /* connect(AF_UNSPEC) dissolves the association */
        udp_generation_bump();
        return 0;
    }
    struct udp_dest d = {};
    if (read_dest((u64)args->uservaddr, args->addrlen, &d) < 0)
        return 0;
    si->dest = d;
    si->connected = 1;
    udp_generation_bump();
    if (want & (1ULL << NW_UDP))
        udp_record(args, args->fd, &d, bpf_ktime_get_ns());
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_socket)
{
    int family = args->family;
    if ((family != AF_INET && family != AF_INET6) || !wanted())
        return 0;
    int proto = args->protocol;
    u32 cls = 2;
    if ((args->type & NW_SOCK_TYPE_MASK) == SOCK_DGRAM
        && (proto == 0 || proto == IPPROTO_UDP || proto == NW_IPPROTO_UDPLITE))
        cls = 1;
    u64 tid = bpf_get_current_pid_tgid();
    socket_pending.update(&tid, &cls);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_socket)
{
    u64 tid = bpf_get_current_pid_tgid();
    u32 *cls = socket_pending.lookup(&tid);
    if (!cls)
        return 0;
    u8 udp = *cls == 1;
    socket_pending.delete(&tid);
    if (args->ret < 0)
        return 0;
    u64 key = sock_key((u32)args->ret);
    struct sock_info si = {};
    si.udp = udp;
    socks.update(&key, &si);
    u32 tgid = key >> 32;
    u32 *owned = sock_owners.lookup(&tgid);
    if (owned) {
        __sync_fetch_and_add(owned, 1);
    } else {
        u32 one = 1;
        sock_owners.update(&tgid, &one);
    }
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_close)
{
    if (!wanted())
        return 0;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!sock_owners.lookup(&tgid))
        return 0;
    u64 key = sock_key(args->fd);
    if (socks.delete(&key) == 0)
        udp_generation_bump();
    return 0;
}
