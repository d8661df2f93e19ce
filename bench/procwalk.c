/* A C walk of /proc: the floor a procfs scan in Python is measured against (bench/scan.py).
 *
 *   procwalk ROUNDS [--environ-pids FILE] FILE...
 *
 *   FILE: stat, cmdline, environ, status, cgroup (read); status.root (status only when the
 *   pid directory is root's, as the reader does for the uid); exe, ns/net (readlink);
 *   exe.stat (stat through the link); dir.fstat (fstat of the pid directory).
 *   --environ-pids: read environ only of the pids listed in FILE (one per line), the ones a
 *   first scan reads (those not inside a workspace already).
 *
 * Each round lists /proc, opens every /proc/PID directory once and reads the named files
 * relative to it (as agent/sources/procfs/reader.py does), reading each file to its end in
 * 64 KiB chunks. Prints one line per round: "<processes> <nanoseconds>".
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static char buf[65536];
static unsigned char *environ_pids; /* NULL: every pid */
#define MAX_PID (1 << 22)

static void read_file(int dfd, const char *name) {
    int fd = openat(dfd, name, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    while (read(fd, buf, sizeof buf) > 0) {
    }
    close(fd);
}

static void load_pids(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) {
        perror(path);
        exit(2);
    }
    environ_pids = calloc(MAX_PID, 1);
    long pid;
    while (fscanf(f, "%ld", &pid) == 1)
        if (pid > 0 && pid < MAX_PID)
            environ_pids[pid] = 1;
    fclose(f);
}

static void one(int dfd, long pid, int nfiles, char **files) {
    struct stat st;
    char link[4096];
    for (int i = 0; i < nfiles; i++) {
        const char *f = files[i];
        if (!strcmp(f, "exe") || !strcmp(f, "ns/net"))
            (void)readlinkat(dfd, f, link, sizeof link);
        else if (!strcmp(f, "exe.stat"))
            (void)fstatat(dfd, "exe", &st, 0);
        else if (!strcmp(f, "dir.fstat"))
            (void)fstat(dfd, &st);
        else if (!strcmp(f, "status.root")) {
            if (fstat(dfd, &st) == 0 && st.st_uid == 0)
                read_file(dfd, "status");
        } else if (!strcmp(f, "environ")) {
            if (!environ_pids || (pid < MAX_PID && environ_pids[pid]))
                read_file(dfd, f);
        }
        else
            read_file(dfd, f);
    }
}

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s ROUNDS FILE...\n", argv[0]);
        return 2;
    }
    int rounds = atoi(argv[1]);
    int first = 2;
    if (argc > 4 && !strcmp(argv[2], "--environ-pids")) {
        load_pids(argv[3]);
        first = 4;
    }
    for (int r = 0; r < rounds; r++) {
        long long t0 = now_ns();
        int n = 0;
        DIR *d = opendir("/proc");
        if (!d)
            return 1;
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (!isdigit((unsigned char)e->d_name[0]))
                continue;
            int dfd = openat(dirfd(d), e->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            if (dfd < 0)
                continue;
            one(dfd, atol(e->d_name), argc - first, argv + first);
            close(dfd);
            n++;
        }
        closedir(d);
        printf("%d %lld\n", n, now_ns() - t0);
    }
    return 0;
}
