/* Cache-line hand-over latency between two cores, in TSC cycles: two threads pinned to the
 * given cores take turns incrementing one shared counter, so every step moves the counter's
 * cache line from one core to the other. Prints the one-way figure (half a round trip).
 *
 * Why: on this project's 2-vCPU KVM guest the hypervisor places the two vCPUs differently
 * from time to time (one-way ~115 cycles, or ~500), and everything that passes frames
 * between cores (vhost-user rings above all) runs at a fraction of its speed in the slow
 * placement. benches/vm2vm.sh prints this next to every round.
 *
 * usage: core-latency CORE_A CORE_B [ROUND_TRIPS]      build: cc -O2 -pthread */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <x86intrin.h>

static volatile uint64_t counter __attribute__((aligned(64)));
static uint64_t trips = 1000000;

static int pin(int core) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(core, &set);
    return pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

/* Waits for an odd value, makes it even: the second half of every round trip. */
static void *responder(void *arg) {
    if (pin(*(int *)arg) != 0) {
        fprintf(stderr, "core-latency: cannot pin to core %d\n", *(int *)arg);
        exit(1);
    }
    for (uint64_t i = 1; i < 2 * trips; i += 2) {
        while (counter != i)
            _mm_pause();
        counter = i + 1;
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: core-latency CORE_A CORE_B [ROUND_TRIPS]\n");
        return 2;
    }
    int a = atoi(argv[1]), b = atoi(argv[2]);
    if (argc > 3)
        trips = strtoull(argv[3], NULL, 10);
    pthread_t t;
    if (pthread_create(&t, NULL, responder, &b) != 0)
        return 1;
    if (pin(a) != 0) {
        fprintf(stderr, "core-latency: cannot pin to core %d\n", a);
        return 1;
    }
    uint64_t t0 = __rdtsc();
    for (uint64_t i = 0; i < 2 * trips; i += 2) {
        while (counter != i)
            _mm_pause();
        counter = i + 1;
    }
    while (counter != 2 * trips)
        _mm_pause();
    uint64_t t1 = __rdtsc();
    pthread_join(t, NULL);
    printf("%.0f\n", (double)(t1 - t0) / (2.0 * trips));
    return 0;
}
