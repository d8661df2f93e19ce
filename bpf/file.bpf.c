/* The `file` sensor: path-taking syscalls (open, openat, openat2, creat, unlink, unlinkat,
 * rename, renameat, renameat2, truncate, chmod, fchmodat, fchmodat2) on the paths the
 * loaded rules watch, and nothing else: the filter runs here, so an unwatched open never
 * reaches userspace.
 *
 * Userspace (agent/sources/file_sensor.py) fills, from the rules (agent/engine/filewatch.py):
 *  - file_watch: an LPM trie of byte prefixes. An exact path is its bytes and the NUL
 *    (so /etc/shadow does not match /etc/shadow.bak), a directory prefix its bytes alone.
 *    Relative forms of each watched path (`shadow`, `etc/shadow`, `cron.d/`) are in it
 *    too, so `cd /etc && cat shadow` or `openat(etc_fd, "shadow")` is sent and resolved
 *    in userspace against the caller's cwd or dirfd.
 *  - file_names: watched last components (file.name rules), tried at each length of
 *    file_cfg.lens, so only as many lookups as there are distinct name lengths; and, in
 *    the values' high 16 bits, the last components of watched exact paths, which count
 *    only for an absolute path spelled otherwise (`/etc//shadow`).
 *  - file_cfg: the union of every entry's ops (an op no rule wants returns before the path
 *    is read), the watched names' lengths, and two bit filters that answer "surely not watched" in a
 *    few instructions for almost every path, so the trie and the names map (hundreds of ns
 *    each) are looked up only for paths that may be watched: `first` has a bit per trie
 *    entry's first 16, 8 or 4 bytes (first_ks: which of those lengths occur), `names` a
 *    bit per watched name's (length, first two bytes, last byte). The hashes are
 *    agent/engine/filewatch.py's first_hash and name_hash.
 *  - file_cwd: processes whose working directory is under a watched directory (chdir
 *    there, inherited at fork, seeded from /proc at start): their relative paths are sent.
 * Every value is a bitmask of (1 << enum nw_file_op): a watch on /etc/cron.d/ for writes
 * lets cron's own reads of it through without a record. */
#include "sensor.h"

#define NW_O_ACCMODE 3
#define NW_O_CREAT 0100
#define NW_O_TRUNC 01000
#define NW_AT_FDCWD_S (-100)
#ifndef NW_O_DIRECTORY
#define NW_O_DIRECTORY 0200000        /* x86's; the agent passes its own arch's */
#endif
/* not an op of enum nw_file_op: no watch has it, so the call returns before the path is
 * read. A read-only open with O_DIRECTORY opens a directory to list it (find, ls, fts
 * walks): no file's contents are read, and listing is not what a file rule is about */
#define NW_FILE_LISTING 31

struct file_key {
    u32 prefixlen;                    /* bits: 8 * bytes compared */
    char path[NW_FILE_PATH_LEN];
};
BPF_LPM_TRIE(file_watch, struct file_key, u32, 4096);

struct name_key {
    u64 word[NW_FILE_NAME_LEN / 8];   /* the name's bytes, zero-padded */
};
BPF_HASH(file_names, struct name_key, u32, 1024);

#define NW_FILE_FIRST_WORDS ((1 << NW_FILE_FIRST_BITS) / 64)
#define NW_FILE_NAME_WORDS ((1 << NW_FILE_NAME_BITS) / 64)
struct file_cfg {
    u32 ops;                          /* union of every watch's ops; 0: nothing watched */
    u32 lens_mask;                    /* bit n: some watched name is n bytes long */
    u32 first_ks;                     /* bit k: some trie entry's filter key is k bytes */
    u32 has_cwd;                      /* some process may be marked in file_cwd */
    u64 first[NW_FILE_FIRST_WORDS];   /* filter of the trie entries' first bytes */
    u64 names[NW_FILE_NAME_WORDS];    /* filter of the watched names */
};
BPF_ARRAY(file_cfg, struct file_cfg, 1);

/* tgid -> ops of the watched directory its cwd is under */
BPF_TABLE("lru_hash", u32, u32, file_cwd, 16384);

/* The path being judged, and slack after it: the name lookups copy up to
 * NW_FILE_NAME_LEN bytes from a variable offset inside `key.path`. */
struct file_scratch {
    struct file_key key;
    char slack[NW_FILE_NAME_LEN];
    struct name_key name;
    /* Values passed through memory, read back volatile: the verifier then goes on with
     * one state of an unknown value where the loops that compare with them would leave
     * one state per exit, each with its own range (which multiplied past its limit) */
    u32 got;    /* the path's bytes, the NUL counted */
    u32 last;   /* the last component's length */
};

static __always_inline u32 reread(u32 *p)
{
    return *(volatile u32 *)p;
}
BPF_PERCPU_ARRAY(file_scratch, struct file_scratch, 1);

static __always_inline struct file_cfg *file_config(void)
{
    int zero = 0;
    return file_cfg.lookup(&zero);
}

/* the op of an open(2)-family call from its flags */
static __always_inline u32 open_op(u64 flags)
{
    u32 acc = flags & NW_O_ACCMODE;
    if (flags & NW_O_CREAT)
        return NW_FILE_CREATE;
    if ((flags & NW_O_TRUNC) && acc)
        return NW_FILE_TRUNCATE;
    if (acc)
        return NW_FILE_WRITE;
    return (flags & NW_O_DIRECTORY) ? NW_FILE_LISTING : NW_FILE_READ;
}

/* Whether some trie entry may be a prefix of the path in s->key (got bytes, the NUL
 * counted): the filter has every entry's first k bytes, k the largest of 16, 8 and 4 not
 * over its length (its whole length when under 4), so a path none of whose first k bytes,
 * for each k some entry has, are in it is not watched by the trie (no false "no"). Few
 * k, few tries, few false "maybe"s; 16: `/usr/lib/systemd/` is watched, `/usr/lib/python3/`
 * opened all day. */
static __always_inline int trie_may_match(struct file_scratch *s, struct file_cfg *c)
{
    u32 got = reread(&s->got);
    u64 w[2];
    __builtin_memcpy(w, s->key.path, sizeof(w));
    u32 ks = c->first_ks;
#pragma unroll
    for (u32 k = 1; k <= 16; k++) {
        if (!(ks & (1U << k)) || got < k)
            continue;
        u64 lo = k >= 8 ? w[0] : w[0] & ((1ULL << (k * 8)) - 1);
        u64 hi = k <= 8 ? 0 : (k == 16 ? w[1] : w[1] & ((1ULL << ((k - 8) * 8)) - 1));
        u64 x = ((lo ^ ((u64)k << 56)) * 0x9E3779B97F4A7C15ULL) ^ hi;
        u32 h = (x * 0xC2B2AE3D27D4EB4FULL) >> (64 - NW_FILE_FIRST_BITS);
        if (c->first[(h >> 6) & (NW_FILE_FIRST_WORDS - 1)] & (1ULL << (h & 63)))
            return 1;
    }
    return 0;
}

/* The value of the watched name that ends the path in s->key (n bytes, the NUL not
 * counted), 0 when none: its low 16 bits the ops of a name watch, its high 16 bits those of
 * exact watched paths with that last component (see non_canonical). The last component is
 * found by a backward scan of at most NW_FILE_NAME_LEN bytes (a longer one is no watched
 * name); its length must be one a watched name has, then the filter must have it, and only
 * then is the names map looked up. */
static __always_inline u32 name_watched(struct file_scratch *s, struct file_cfg *c)
{
    u32 n = reread(&s->got) - 1;
    if (n >= NW_FILE_PATH_LEN)
        return 0;
    s->last = NW_FILE_NAME_LEN;
    for (u32 j = 0; j < NW_FILE_NAME_LEN; j++) {
        if (j >= n || s->key.path[(n - 1 - j) & (NW_FILE_PATH_LEN - 1)] == '/') {
            s->last = j;   /* reached a '/', or the start of a relative path */
            break;
        }
    }
    u32 len = reread(&s->last);
    n = reread(&s->got) - 1;
    if (n >= NW_FILE_PATH_LEN || len > n)
        return 0;
    if (len == 0 || len >= NW_FILE_NAME_LEN || !(c->lens_mask & (1U << len)))
        return 0;
    u32 start = n - len;
    /* the filter: (length, first two bytes, last byte); a 1-byte name's second is the
     * NUL the read left after it */
    u32 i0 = start, i1 = start + 1, il = n - 1;
    /* the masks below are what the verifier bounds the reads by: keep clang from dropping
     * them as redundant */
    asm volatile("" : "+r"(i0), "+r"(i1), "+r"(il));
    u32 v = (len << 24) | ((u32)(u8)s->key.path[i0 & (NW_FILE_PATH_LEN - 1)] << 16) |
            ((u32)(u8)s->key.path[i1 & (NW_FILE_PATH_LEN - 1)] << 8) |
            (u32)(u8)s->key.path[il & (NW_FILE_PATH_LEN - 1)];
    u32 h = (v * 0x9E3779B1U) >> (32 - NW_FILE_NAME_BITS);
    if (!(c->names[(h >> 6) & (NW_FILE_NAME_WORDS - 1)] & (1ULL << (h & 63))))
        return 0;
    /* a fixed-size copy (the slack covers its end), then the bytes after the name zeroed a
     * word at a time: keys are zero-padded */
    bpf_probe_read_kernel(&s->name, sizeof(s->name),
                          &s->key.path[start & (NW_FILE_PATH_LEN - 1)]);
#pragma unroll
    for (int w = 0; w < NW_FILE_NAME_LEN / 8; w++) {
        u32 keep = len > (u32)w * 8 ? len - (u32)w * 8 : 0;
        if (keep < 8)
            s->name.word[w] &= keep ? (1ULL << (keep * 8)) - 1 : 0;
    }
    u32 *ops = file_names.lookup(&s->name);
    return ops ? *ops : 0;
}

/* Whether the last NW_FILE_SPELLING_SCAN bytes of an absolute path of n bytes have `//`,
 * `/./` or `/../` in them (or end in `/.` or `/..`): another spelling of a path the trie
 * may hold (a `..` that climbs back to a watched file is followed by that file's path).
 * Only run for a path whose last component is a watched exact path's; bounded short
 * because the verifier walks every iteration of every program. */
#define NW_FILE_SPELLING_SCAN 64
static __always_inline int non_canonical(struct file_scratch *s, u32 n)
{
    u32 start = n > NW_FILE_SPELLING_SCAN ? n - NW_FILE_SPELLING_SCAN : 0;
    for (u32 j = 0; j < NW_FILE_SPELLING_SCAN; j++) {
        u32 i = start + j;
        if (i + 1 >= n)
            break;
        if (s->key.path[i & (NW_FILE_PATH_LEN - 1)] != '/')
            continue;
        char a = s->key.path[(i + 1) & (NW_FILE_PATH_LEN - 1)];
        char b = s->key.path[(i + 2) & (NW_FILE_PATH_LEN - 1)];
        char d = s->key.path[(i + 3) & (NW_FILE_PATH_LEN - 1)];
        if (a == '/')
            return 1;
        if (a == '.' && (b == '/' || b == 0 || (b == '.' && (d == '/' || d == 0))))
            return 1;
    }
    return 0;
}

/* Whether `upath` (a user pointer) is watched for op `op`. A relative path (dirfd, or the
 * cwd) matches by its relative forms, its name, or a cwd under a watched directory. */
static __always_inline int path_watched(const char *upath, u32 op, int dirfd)
{
    u32 bit = 1U << op;
    struct file_cfg *c = file_config();
    if (!c || !(c->ops & bit))
        return 0;
    int zero = 0;
    struct file_scratch *s = file_scratch.lookup(&zero);
    if (!s)
        return 0;
    long got = bpf_probe_read_user_str(&s->key.path, NW_FILE_PATH_LEN, upath);
    if (got <= 0)
        return 0;
    if (s->key.path[0] != '/') {
        /* ./ and ../ in front say nothing about which file it is: skip them */
        u32 skip = 0;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            char a = s->key.path[skip & (NW_FILE_PATH_LEN - 1)];
            char b = s->key.path[(skip + 1) & (NW_FILE_PATH_LEN - 1)];
            char d = s->key.path[(skip + 2) & (NW_FILE_PATH_LEN - 1)];
            if (a == '.' && b == '/')
                skip += 2;
            else if (a == '.' && b == '.' && d == '/')
                skip += 3;
            else
                break;
        }
        if (skip) {
            got = bpf_probe_read_user_str(&s->key.path, NW_FILE_PATH_LEN, upath + skip);
            if (got <= 0)
                return 0;
        }
        if (dirfd == NW_AT_FDCWD_S && c->has_cwd) {
            u32 tgid = bpf_get_current_pid_tgid() >> 32;
            u32 *cwd = file_cwd.lookup(&tgid);
            if (cwd && (*cwd & bit))
                return 1;
        }
    }
    s->got = (u32)got;
    if (trie_may_match(s, c)) {
        s->key.prefixlen = (u32)got * 8;
        u32 *ops = file_watch.lookup(&s->key);
        if (ops && (*ops & bit))
            return 1;
    }
    if (!c->lens_mask)
        return 0;
    u32 names = name_watched(s, c);
    if (names & bit)
        return 1;
    /* `/etc//shadow`, `/etc/./shadow`: userspace makes them `/etc/shadow` */
    return ((names >> 16) & bit) && s->key.path[0] == '/' && non_canonical(s, (u32)got - 1);
}

NW_RECORD_IO(file, struct nw_file_event, NW_SCRATCH_FILE, NW_WAKE_TCP, 0)

/* Send the record of a watched call (paths read again into the record). */
static __always_inline int send_file(void *ctx, u32 op, const char *upath, int dirfd,
                                     u64 flags, u64 mode, const char *udest, int dest_dirfd)
{
    struct nw_file_event *e = reserve_file();
    if (!e)
        return 0;
    fill_task(e, NW_FILE);
    e->op = op;
    e->flags = (u32)flags;
    e->mode = (u32)mode;
    e->dirfd = (u32)dirfd;
    e->dest_dirfd = (u32)dest_dirfd;
    e->path[0] = 0;
    e->dest[0] = 0;
    bpf_probe_read_user_str(&e->path, sizeof(e->path), upath);
    if (udest)
        bpf_probe_read_user_str(&e->dest, sizeof(e->dest), udest);
    submit_file(ctx, e);
    return 0;
}

static __always_inline int on_path(void *ctx, u32 op, const char *upath, int dirfd,
                                   u64 flags, u64 mode)
{
    if (!path_watched(upath, op, dirfd))
        return 0;
    return send_file(ctx, op, upath, dirfd, flags, mode, 0, 0);
}

static __always_inline int on_rename(void *ctx, const char *old, int olddfd,
                                     const char *new, int newdfd, u64 flags)
{
    if (!path_watched(old, NW_FILE_RENAME, olddfd) &&
        !path_watched(new, NW_FILE_RENAME, newdfd))
        return 0;
    return send_file(ctx, NW_FILE_RENAME, old, olddfd, flags, 0, new, newdfd);
}

TRACEPOINT_PROBE(syscalls, sys_enter_openat)
{
    return on_path(args, open_op(args->flags), args->filename, (int)args->dfd, args->flags,
                   args->mode);
}

TRACEPOINT_PROBE(syscalls, sys_enter_open)
{
    return on_path(args, open_op(args->flags), args->filename, NW_AT_FDCWD_S, args->flags,
                   args->mode);
}

#ifndef NW_NO_sys_enter_openat2
TRACEPOINT_PROBE(syscalls, sys_enter_openat2)
{
    /* struct open_how (UAPI): u64 flags, mode, resolve */
    u64 how[2] = {};
    bpf_probe_read_user(&how, sizeof(how), (void *)args->how);
    return on_path(args, open_op(how[0]), args->filename, (int)args->dfd, how[0], how[1]);
}
#endif

TRACEPOINT_PROBE(syscalls, sys_enter_creat)
{
    /* creat(p, m) is open(p, O_CREAT|O_WRONLY|O_TRUNC, m) */
    return on_path(args, NW_FILE_CREATE, args->pathname, NW_AT_FDCWD_S,
                   NW_O_CREAT | NW_O_TRUNC | 1, args->mode);
}

TRACEPOINT_PROBE(syscalls, sys_enter_truncate)
{
    return on_path(args, NW_FILE_TRUNCATE, args->path, NW_AT_FDCWD_S, 0, 0);
}

TRACEPOINT_PROBE(syscalls, sys_enter_unlink)
{
    return on_path(args, NW_FILE_UNLINK, args->pathname, NW_AT_FDCWD_S, 0, 0);
}

TRACEPOINT_PROBE(syscalls, sys_enter_unlinkat)
{
    return on_path(args, NW_FILE_UNLINK, args->pathname, (int)args->dfd, args->flag, 0);
}

TRACEPOINT_PROBE(syscalls, sys_enter_chmod)
{
    return on_path(args, NW_FILE_CHMOD, args->filename, NW_AT_FDCWD_S, 0, args->mode);
}

TRACEPOINT_PROBE(syscalls, sys_enter_fchmodat)
{
    return on_path(args, NW_FILE_CHMOD, args->filename, (int)args->dfd, 0, args->mode);
}

#ifndef NW_NO_sys_enter_fchmodat2
TRACEPOINT_PROBE(syscalls, sys_enter_fchmodat2)
{
    return on_path(args, NW_FILE_CHMOD, args->filename, (int)args->dfd, args->flags,
                   args->mode);
}
#endif

TRACEPOINT_PROBE(syscalls, sys_enter_rename)
{
    return on_rename(args, args->oldname, NW_AT_FDCWD_S, args->newname, NW_AT_FDCWD_S, 0);
}

TRACEPOINT_PROBE(syscalls, sys_enter_renameat)
{
    return on_rename(args, args->oldname, (int)args->olddfd, args->newname,
                     (int)args->newdfd, 0);
}

TRACEPOINT_PROBE(syscalls, sys_enter_renameat2)
{
    return on_rename(args, args->oldname, (int)args->olddfd, args->newname,
                     (int)args->newdfd, args->flags);
}

/* The cwd marks: a chdir into a watched directory marks the process (its relative paths
 * are sent), a chdir elsewhere by absolute path clears it; a relative chdir keeps a mark
 * (userspace resolves what it can) and makes one when its text is a watched relative
 * form. fchdir is not followed (SECURITY.md). */
TRACEPOINT_PROBE(syscalls, sys_enter_chdir)
{
    struct file_cfg *c = file_config();
    if (!c || !c->ops)
        return 0;
    int zero = 0;
    struct file_scratch *s = file_scratch.lookup(&zero);
    if (!s)
        return 0;
    long got = bpf_probe_read_user_str(&s->key.path, NW_FILE_PATH_LEN - 1, args->filename);
    if (got <= 0)
        return 0;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    int absolute = s->key.path[0] == '/';
    if (!absolute && file_cwd.lookup(&tgid))
        return 0;
    /* "/etc/cron.d" is under the watch "/etc/cron.d/": compare it with a '/' after it */
    u32 n = (u32)got - 1;
    if (n > 0 && s->key.path[(n - 1) & (NW_FILE_PATH_LEN - 1)] != '/') {
        s->key.path[n & (NW_FILE_PATH_LEN - 1)] = '/';
        n++;
    }
    s->key.prefixlen = n * 8;
    u32 *ops = file_watch.lookup(&s->key);
    if (ops) {
        file_cwd.update(&tgid, ops);
        c->has_cwd = 1;
    } else if (absolute)
        file_cwd.delete(&tgid);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_fork)
{
    u32 parent = bpf_get_current_pid_tgid() >> 32;   /* the forking thread's process */
    u32 *ops = file_cwd.lookup(&parent);
    if (ops) {
        u32 child = args->child_pid;
        u32 v = *ops;
        file_cwd.update(&child, &v);
    }
    return 0;
}
