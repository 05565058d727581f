/*
 * The lowest CPU cost of moving 1 GiB through one process over loopback TCP on this machine,
 * with no HTTP, no runtime and no hashing: the lower bound that issue 27's "CPU per GiB" goal
 * is measured against in docs/benchmarks.md ("What moving bytes costs without any HTTP").
 *
 *   gcc -O2 -o socket-relay docs/experiments/socket-relay.c
 *   ./socket-relay sink 41002 & ./socket-relay send 41001 &
 *   CHUNK=409600 /usr/bin/time -f '%U %S' ./socket-relay copy 41001 41002; wait
 *
 * Modes of the relay (the process timed; sender and sink are separate processes):
 *   copy        read(2) CHUNK bytes from the source socket, write(2) them to the target
 *               (two kernel copies, as every user-space copier does);
 *   splice      socket -> pipe -> socket with splice(2): no copy into the process at all;
 *   splice-read as splice, plus tee(2) into a second pipe read into the process, which is
 *               what hashing every byte in the process would need (one copy).
 * CHUNK defaults to 1 MiB; hyper reads at most 409,600 bytes at a time.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define TOTAL (1L << 30)
#define MAX_CHUNK (16L << 20)

static char buf[MAX_CHUNK];

static struct sockaddr_in loopback(int port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    return a;
}

static int accept_one(int port) {
    int s = socket(AF_INET, SOCK_STREAM, 0), on = 1;
    struct sockaddr_in a = loopback(port);
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    if (bind(s, (void *)&a, sizeof a) || listen(s, 1)) { perror("bind"); exit(1); }
    return accept(s, 0, 0);
}

static int connect_to(int port) {
    struct sockaddr_in a = loopback(port);
    for (;;) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        if (!connect(s, (void *)&a, sizeof a)) return s;
        close(s);
        usleep(10000);
    }
}

static void write_all(int fd, const char *p, long n) {
    while (n > 0) {
        long w = write(fd, p, n);
        if (w <= 0) { perror("write"); exit(2); }
        p += w; n -= w;
    }
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: send|sink PORT, or copy|splice|splice-read SRC DST\n"); return 1; }
    long chunk = getenv("CHUNK") ? atol(getenv("CHUNK")) : 1L << 20;
    if (chunk <= 0 || chunk > MAX_CHUNK) { fprintf(stderr, "CHUNK out of range\n"); return 1; }
    const char *mode = argv[1];
    memset(buf, 7, sizeof buf);
    if (!strcmp(mode, "send")) {
        int s = accept_one(atoi(argv[2]));
        for (long sent = 0; sent < TOTAL; sent += 1L << 20) write_all(s, buf, 1L << 20);
        return close(s);
    }
    if (!strcmp(mode, "sink")) {
        int s = accept_one(atoi(argv[2]));
        while (read(s, buf, MAX_CHUNK) > 0) {}
        return 0;
    }
    if (argc < 4) { fprintf(stderr, "%s needs SRC and DST ports\n", mode); return 1; }
    int src = connect_to(atoi(argv[2])), dst = connect_to(atoi(argv[3]));
    long moved = 0, r;
    if (!strcmp(mode, "copy")) {
        while ((r = read(src, buf, chunk)) > 0) { write_all(dst, buf, r); moved += r; }
    } else {
        int in[2], side[2], hashed = !strcmp(mode, "splice-read");
        if (pipe(in) || pipe(side)) { perror("pipe"); return 1; }
        fcntl(in[1], F_SETPIPE_SZ, chunk);
        fcntl(side[1], F_SETPIPE_SZ, chunk);
        while ((r = splice(src, 0, in[1], 0, chunk, SPLICE_F_MOVE)) > 0) {
            if (hashed) {
                if (tee(in[0], side[1], r, 0) != r) { perror("tee"); return 3; }
                for (long got = 0, x; got < r; got += x)
                    if ((x = read(side[0], buf, r - got)) <= 0) { perror("read"); return 4; }
            }
            for (long out = 0, w; out < r; out += w)
                if ((w = splice(in[0], 0, dst, 0, r - out, SPLICE_F_MOVE | SPLICE_F_MORE)) <= 0) {
                    perror("splice"); return 5;
                }
            moved += r;
        }
    }
    if (moved != TOTAL) { fprintf(stderr, "moved %ld of %ld bytes\n", moved, TOTAL); return 6; }
    return 0;
}
