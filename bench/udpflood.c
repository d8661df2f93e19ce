/* UDP flood for bench/udp_cost.py: COUNT datagrams of 64 bytes to a socket of its own
 * bound on 127.0.0.1 (never read: the kernel drops what its buffer cannot hold, the
 * sender does not wait), as fast as it can.
 *
 *   udpflood sendto COUNT   sendto() with the address on every datagram
 *   udpflood send COUNT     connect() once, then send() without an address (glibc's
 *                           resolver's way)
 *
 * Prints "secs=S sent=N failures=N" (CLOCK_MONOTONIC seconds of the send loop).
 * Built by bench/udp_cost.py: gcc -O2 -o DIR/udpflood bench/udpflood.c */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <signal.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: udpflood sendto|send COUNT\n");
        return 2;
    }
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    int connected = strcmp(argv[1], "send") == 0;
    long count = atol(argv[2]);
    int rx = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    if (rx < 0 || bind(rx, (struct sockaddr *)&sa, sizeof(sa)) < 0
        || getsockname(rx, (struct sockaddr *)&sa, &len) < 0) {
        perror("udpflood: receiver");
        return 1;
    }
    int tx = socket(AF_INET, SOCK_DGRAM, 0);
    if (tx < 0 || (connected && connect(tx, (struct sockaddr *)&sa, sizeof(sa)) < 0)) {
        perror("udpflood: sender");
        return 1;
    }
    char buf[64];
    memset(buf, 'x', sizeof(buf));
    long failures = 0;
    double t0 = now();
    for (long i = 0; i < count; i++) {
        ssize_t n = connected ? send(tx, buf, sizeof(buf), 0)
                              : sendto(tx, buf, sizeof(buf), 0, (struct sockaddr *)&sa,
                                       sizeof(sa));
        if (n < 0)
            failures++;
    }
    double t1 = now();
    printf("secs=%.6f sent=%ld failures=%ld\n", t1 - t0, count, failures);
    return 0;
}
