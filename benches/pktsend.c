/* A paced load generator for benches/bridge-compare.sh: 60-byte UDP/IPv4 frames (64 on the
 * wire) out of one interface through an AF_PACKET socket, sendmmsg bursts of 32, at RATE frames
 * a second (0: as fast as it can) for SECS seconds, then prints the frames the kernel took.
 * (This machine's kernel has no pktgen module; a process stands in for it, and its own CPU is
 * reported apart from the forwarder's.)
 *
 * usage: pktsend IFACE DST_MAC RATE SECS        build: cc -O2 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BURST 32
#define LEN 60

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: pktsend IFACE DST_MAC RATE SECS\n");
        return 2;
    }
    unsigned char dst[6], frame[LEN];
    if (sscanf(argv[2], "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", &dst[0], &dst[1], &dst[2], &dst[3], &dst[4],
               &dst[5]) != 6) {
        fprintf(stderr, "bad MAC %s\n", argv[2]);
        return 2;
    }
    double rate = atof(argv[3]), secs = atof(argv[4]);
    int fd = socket(AF_PACKET, SOCK_RAW, 0);
    if (fd < 0) {
        perror("socket");
        return 1;
    }
    struct ifreq ifr = {0};
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", argv[1]);
    if (ioctl(fd, SIOCGIFHWADDR, &ifr) < 0) {
        perror(argv[1]);
        return 1;
    }
    struct sockaddr_ll sll = {.sll_family = AF_PACKET, .sll_ifindex = (int)if_nametoindex(argv[1])};
    if (bind(fd, (struct sockaddr *)&sll, sizeof sll) < 0) {
        perror("bind");
        return 1;
    }
    /* Ethernet, IPv4 10.99.0.1 -> 10.99.0.2 (no host has them: the sink drops the frames in
     * IP input, answering nothing), UDP 9 -> 9, zero payload, no UDP checksum (UDP allows it). */
    memset(frame, 0, sizeof frame);
    memcpy(frame, dst, 6);
    memcpy(frame + 6, ifr.ifr_hwaddr.sa_data, 6);
    frame[12] = 0x08;
    unsigned char *ip = frame + 14;
    ip[0] = 0x45;
    ip[3] = LEN - 14;
    ip[8] = 64;
    ip[9] = 17;
    memcpy(ip + 12, (unsigned char[]){10, 99, 0, 1}, 4);
    memcpy(ip + 16, (unsigned char[]){10, 99, 0, 2}, 4);
    ip[21] = 9;
    ip[23] = 9;
    ip[25] = LEN - 34;
    /* The IPv4 header checksum: the bridge's netfilter hook (br_netfilter) drops a bad one. */
    unsigned sum = 0;
    for (int i = 0; i < 20; i += 2)
        sum += (unsigned)ip[i] << 8 | ip[i + 1];
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    ip[10] = (unsigned char)(~sum >> 8);
    ip[11] = (unsigned char)~sum;

    struct mmsghdr msgs[BURST];
    struct iovec iov = {.iov_base = frame, .iov_len = LEN};
    memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < BURST; i++) {
        msgs[i].msg_hdr.msg_iov = &iov;
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    double t0 = now(), end = t0 + secs;
    unsigned long long sent = 0;
    for (;;) {
        double t = now();
        if (t >= end)
            break;
        if (rate > 0) {
            double due = t0 + (sent + BURST) / rate;
            if (due > t) {
                double d = due - t;
                struct timespec ts = {(time_t)d, (long)((d - (time_t)d) * 1e9)};
                nanosleep(&ts, NULL);
            }
        }
        int n = sendmmsg(fd, msgs, BURST, 0);
        if (n > 0)
            sent += (unsigned)n;
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    /* frames sent, then this process's CPU time in ns */
    printf("%llu %.0f\n", sent,
           (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e9 + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e3);
    return 0;
}
