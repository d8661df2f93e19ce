/* The one event record every sensor sends to userspace (agent/sources/kevents.py decodes it
 * with struct.unpack_from; keep the two in sync: NW_EVENT_FORMAT there). Only tracepoint
 * fields and UAPI values go in here, so no kernel struct layout is ever read. */
#ifndef NODEWARDEN_EVENTS_H
#define NODEWARDEN_EVENTS_H

#define NW_EXEC    1
#define NW_FORK    2
#define NW_EXIT    3
#define NW_CONNECT 4
#define NW_ACCEPT  5
#define NW_CLOSE   6
#define NW_CONNECT_VERDICT 7   /* an in-kernel connect rule matched (sys_enter_connect) */

#define NW_FILENAME_LEN 256

struct nw_event {
    u64 ts_ns;          /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
    u32 kind;           /* NW_* */
    u32 pid;            /* tgid of the process concerned (the child for fork) */
    u32 ppid;           /* fork: the parent's tgid; otherwise 0 */
    u32 uid;
    u32 fd;             /* accept: the returned fd; exec with a verdict: the kernel rule slot */
    u16 family;         /* AF_INET 2, AF_INET6 10 */
    u16 sport;          /* host byte order */
    u16 dport;
    u16 state;          /* close: TCP state left; connect: state entered; exec: in-kernel
                         * verdict (1 would_kill, 2 killed) */
    u8 saddr[16];       /* IPv4 in the first 4 bytes */
    u8 daddr[16];
    char comm[16];
    char filename[NW_FILENAME_LEN];   /* exec only */
};

#endif
