/*
 * The test workload: a counter holding MIB MiB of random memory.
 *
 *   counter [MIB] [PERIOD_MS]        (defaults 16 and 100; COUNTER_MIB overrides MIB)
 *
 * At start it fills its memory with a xorshift64 stream (incompressible, every
 * page touched), prints `sum=<checksum> mib=<MIB>`, writes /ferry-state.txt
 * (`born=<seed>`, a file in its rootfs that tests expect to travel), deletes
 * /ferry-delete-me (a file of its image that must stay deleted), and prints
 * `found=<old state>` if a previous life left /ferry-state.txt behind. Then it
 * prints `count=N` every PERIOD_MS. SIGUSR1 makes it checksum its memory again
 * and print `check=<checksum> count=N`; a restore that lost a page shows here.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t check_requested;
static volatile sig_atomic_t stop_requested;

static void on_usr1(int sig) { (void)sig; check_requested = 1; }
static void on_term(int sig) { (void)sig; stop_requested = 1; }

static uint64_t checksum(const volatile uint64_t *words, size_t count) {
    uint64_t hash = 1469598103934665603ULL; /* FNV-1a over 64-bit words */
    for (size_t i = 0; i < count; i++) {
        hash ^= words[i];
        hash *= 1099511628211ULL;
    }
    return hash;
}

int main(int argc, char **argv) {
    long mib = argc > 1 ? atol(argv[1]) : 16;
    long period_ms = argc > 2 ? atol(argv[2]) : 100;
    const char *env_mib = getenv("COUNTER_MIB");
    if (env_mib && *env_mib) mib = atol(env_mib);
    if (mib < 1) mib = 1;
    if (period_ms < 1) period_ms = 1;
    setvbuf(stdout, NULL, _IOLBF, 0);

    struct sigaction action = {0};
    action.sa_handler = on_usr1;
    sigaction(SIGUSR1, &action, NULL);
    action.sa_handler = on_term;
    sigaction(SIGTERM, &action, NULL);
    sigaction(SIGINT, &action, NULL);

    size_t count = (size_t)mib * 1024 * 1024 / sizeof(uint64_t);
    volatile uint64_t *words = malloc(count * sizeof(uint64_t));
    if (!words) { perror("malloc"); return 1; }
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    uint64_t seed = ((uint64_t)now.tv_sec << 32) ^ (uint64_t)now.tv_nsec ^ ((uint64_t)getpid() << 16);
    if (!seed) seed = 88172645463325252ULL;
    uint64_t x = seed;
    for (size_t i = 0; i < count; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        words[i] = x;
    }
    printf("sum=%016llx mib=%ld\n", (unsigned long long)checksum(words, count), mib);

    FILE *old = fopen("/ferry-state.txt", "r");
    if (old) {
        char line[128] = {0};
        if (fgets(line, sizeof line, old)) {
            line[strcspn(line, "\n")] = 0;
            printf("found=%s\n", line);
        }
        fclose(old);
    }
    FILE *state = fopen("/ferry-state.txt", "w");
    if (state) {
        fprintf(state, "born=%016llx\n", (unsigned long long)seed);
        fclose(state);
    }
    unlink("/ferry-delete-me");
    printf("born=%016llx\n", (unsigned long long)seed);

    unsigned long long counter = 0;
    while (!stop_requested) {
        struct timespec wait = { period_ms / 1000, (period_ms % 1000) * 1000000L };
        while (nanosleep(&wait, &wait) == -1 && errno == EINTR && !stop_requested && !check_requested) {}
        if (stop_requested) break;
        if (check_requested) {
            check_requested = 0;
            printf("check=%016llx count=%llu\n", (unsigned long long)checksum(words, count), counter);
            continue;
        }
        counter++;
        printf("count=%llu\n", counter);
    }
    return 0;
}
