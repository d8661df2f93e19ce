/* Load generator for bench/events.py and bench/latency.py: makes the kernel events
 * nodewarden's eBPF sensors report, as fast as it can or paced to a target rate.
 *
 *   loadgen exec    RATE SECONDS [PATH [ARG]]  fork + execve(PATH, ARG) + waitpid, in a loop
 *   loadgen connect RATE SECONDS               connect/accept/close to its own 127.0.0.1 listener
 *   loadgen connect-rst RATE SECONDS           the same, the client closing with RST (SO_LINGER 0):
 *                                              fewer packets and no TIME_WAIT, so a higher rate
 *   loadgen mix     RATE SECONDS [PATH [ARG]]  one exec, then MIX_CONNECTS connects, in a loop
 *   loadgen spawn   COUNT INTERVAL_US PATH [ARG]
 *                   COUNT execs INTERVAL_US apart, not waited for one by one (each may keep
 *                   running, e.g. `sleep`); prints "pid N" for each child, reaps all at the end
 *
 * RATE is in kernel records per second, 0 = as fast as possible. Records per operation, as
 * bpf/exec.bpf.c and bpf/tcp.bpf.c emit them: exec = fork + exec + exit = 3; connect =
 * connect (SYN_SENT -> ESTABLISHED) + accept + close of the client socket + close of the accepted one = 4.
 * Paced runs sleep (absolute CLOCK_MONOTONIC deadlines) whenever they are ahead of schedule.
 * The accept passes a sockaddr, as servers do, so the kernel resolves the accept's 4-tuple.
 *
 * Prints one summary line at the end (T0, T1: CLOCK_MONOTONIC seconds, as Python's
 * time.monotonic(), when the loop started and ended):
 *   done ops=N execs=N connects=N records=N secs=S failures=N t0=T0 t1=T1
 * It dies with its parent (PR_SET_PDEATHSIG), and so do its children.
 *
 * Built by the benchmarks at run time: gcc -O2 -o DIR/loadgen bench/loadgen.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define EXEC_RECORDS 3
#define CONNECT_RECORDS 4
#define MIX_CONNECTS 10

static volatile sig_atomic_t stop;
static pid_t parent;
static char *child_argv[3];
static int listener = -1;
static struct sockaddr_in listen_addr;
static long long execs, connects, records, failures;
static int rst;

static void on_signal(int sig) { (void)sig; stop = 1; }

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
    perror(what);
    exit(2);
}

static pid_t start_child(void)
{
    pid_t pid = fork();
    if (pid < 0) {
        if (errno == EAGAIN || errno == EINTR) {
            failures++;
            return -1;
        }
        die("fork");
    }
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
        if (getppid() == 1)
            _exit(127);
        int null = open("/dev/null", 1);
        if (null >= 0) {
            dup2(null, 1);
            close(null);
        }
        execv(child_argv[0], child_argv);
        _exit(127);
    }
    return pid;
}

static void one_exec(void)
{
    pid_t pid = start_child();
    if (pid < 0)
        return;
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
        ;
    execs++;
    records += EXEC_RECORDS;
}

static void open_listener(void)
{
    listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (listener < 0)
        die("socket");
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    memset(&listen_addr, 0, sizeof(listen_addr));
    listen_addr.sin_family = AF_INET;
    listen_addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(listener, (struct sockaddr *)&listen_addr, sizeof(listen_addr)) < 0)
        die("bind");
    socklen_t len = sizeof(listen_addr);
    if (getsockname(listener, (struct sockaddr *)&listen_addr, &len) < 0)
        die("getsockname");
    if (listen(listener, 1024) < 0)
        die("listen");
}

static void one_connect(void)
{
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        die("socket");
    if (connect(s, (struct sockaddr *)&listen_addr, sizeof(listen_addr)) < 0) {
        /* EADDRNOTAVAIL: ephemeral ports exhausted (TIME_WAIT); count it and go on */
        failures++;
        close(s);
        return;
    }
    struct sockaddr_in peer;
    socklen_t len = sizeof(peer);
    int c = accept4(listener, (struct sockaddr *)&peer, &len, SOCK_CLOEXEC);
    if (c < 0) {
        failures++;
        close(s);
        return;
    }
    if (rst) {
        /* abortive close: RST instead of FIN, no TIME_WAIT; the same 4 records */
        struct linger lg = {1, 0};
        setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    }
    close(s);
    close(c);
    connects++;
    records += CONNECT_RECORDS;
}

static void pace(double t0, double rate)
{
    if (rate <= 0)
        return;
    double due = t0 + records / rate;
    double t = now();
    if (due - t > 20e-6) {
        struct timespec ts;
        ts.tv_sec = (time_t)due;
        ts.tv_nsec = (long)((due - ts.tv_sec) * 1e9);
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
    }
}

static int spawn(long count, long interval_us)
{
    double t0 = now();
    long started = 0;
    for (long i = 0; i < count && !stop; i++) {
        double due = t0 + i * interval_us / 1e6;
        struct timespec ts;
        ts.tv_sec = (time_t)due;
        ts.tv_nsec = (long)((due - ts.tv_sec) * 1e9);
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
        pid_t pid = start_child();
        if (pid < 0)
            continue;
        started++;
        printf("pid %d\n", (int)pid);
        fflush(stdout);
        while (waitpid(-1, NULL, WNOHANG) > 0)
            ;
    }
    while (wait(NULL) > 0 || errno == EINTR)
        ;
    double t1 = now();
    printf("done ops=%ld execs=%ld connects=0 records=%ld secs=%.6f t0=%.6f t1=%.6f\n", started,
           started, started * EXEC_RECORDS, t1 - t0, t0, t1);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: loadgen exec|connect|connect-rst|mix RATE SECONDS [PATH [ARG]]\n"
                        "       loadgen spawn COUNT INTERVAL_US PATH [ARG]\n");
        return 2;
    }
    parent = getppid();
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    if (getppid() != parent)
        return 1;
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    const char *mode = argv[1];
    int argi = 4;   /* PATH [ARG] follow the first three arguments in every mode */
    child_argv[0] = argc > argi ? argv[argi] : "/bin/true";
    child_argv[1] = argc > argi + 1 ? argv[argi + 1] : NULL;
    child_argv[2] = NULL;
    if (strcmp(mode, "spawn") == 0)
        return spawn(atol(argv[2]), atol(argv[3]));

    double rate = atof(argv[2]);
    double secs = atof(argv[3]);
    int do_exec = strcmp(mode, "exec") == 0 || strcmp(mode, "mix") == 0;
    rst = strcmp(mode, "connect-rst") == 0;
    int do_connect = strcmp(mode, "connect") == 0 || rst || strcmp(mode, "mix") == 0;
    if (!do_exec && !do_connect) {
        fprintf(stderr, "loadgen: unknown mode %s\n", mode);
        return 2;
    }
    if (do_connect)
        open_listener();

    double t0 = now(), end = t0 + secs;
    long long ops = 0;
    while (!stop) {
        if (do_exec) {
            one_exec();
            ops++;
            pace(t0, rate);
        }
        if (do_connect) {
            for (int i = 0; i < (do_exec ? MIX_CONNECTS : 64) && !stop; i++) {
                one_connect();
                ops++;
                pace(t0, rate);
            }
        }
        if (now() >= end)
            break;
    }
    double t1 = now();
    printf("done ops=%lld execs=%lld connects=%lld records=%lld secs=%.6f failures=%lld "
           "t0=%.6f t1=%.6f\n", ops, execs, connects, records, t1 - t0, failures, t0, t1);
    return 0;
}
