/* The `connect_guard` sensor: in-kernel connect rules. Destination network (IPv4 mapped
 * into IPv6) and port -> a bitmask of kernel rule slots, filled by
 * agent/sources/connect_guard.py, which attaches the two programs below to the root
 * cgroup v2. */
#include "sensor.h"

struct lpm_key {
    u32 prefixlen;
    u8 addr[NW_ADDR_LEN];
};
BPF_LPM_TRIE(kconn_net, struct lpm_key, u64, 10240);
BPF_HASH(kconn_ports, u16, u64, 65536);

/* connect(): in-kernel connect rules, as cgroup connect4/connect6 programs on the root
 * cgroup v2, which run before the kernel sends anything. A tracepoint could signal but
 * not stop the syscall (the SYN leaves before the signal lands), and this kernel forbids
 * writing user memory (lockdown) and loading BPF LSM programs here; denying here means
 * no packet leaves. In enforce mode the connect fails with EPERM and the record asks
 * userspace to SIGKILL the caller (through a pidfd); in audit it only reports. The address
 * comes from struct bpf_sock_addr, a UAPI struct. TCP only. */
static __always_inline int connect_guard(struct bpf_sock_addr *ctx, int v6)
{
    u64 all = cfg_get(NW_KCFG_CONNECT_ALL);
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
    u64 match = (net | ~cfg_get(NW_KCFG_CONNECT_NET)) & (ports | ~cfg_get(NW_KCFG_CONNECT_PORT))
                & (net | ports) & all;
    if (!match)
        return 1;
    u32 slot = lowest_slot(match);
    int enforce = (cfg_get(NW_KCFG_CONNECT_ENFORCE) >> slot) & 1;
    struct nw_conn_event *e = reserve_conn();
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
        submit_conn_now(ctx, e);
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
