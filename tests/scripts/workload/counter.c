/*
 * The test workload: a counter holding MIB MiB of random memory.
 *
 *   counter [MIB] [PERIOD_MS] [DIRTY]   (defaults 16, 100 and 0; COUNTER_MIB overrides MIB,
 *                                        COUNTER_DIRTY_MIB_S overrides DIRTY)
 *
 * At start it fills its memory with a xorshift64 stream (incompressible, every
 * page touched), prints `sum=<checksum> mib=<MIB>`, writes /ferry-state.txt
 * (`born=<seed>`, a file in its rootfs that tests expect to travel), deletes
 * /ferry-delete-me (a file of its image that must stay deleted), and prints
 * `found=<old state>` if a previous life left /ferry-state.txt behind. Then it
 * prints `count=N` every PERIOD_MS. SIGUSR1 makes it checksum its memory again
 * and print `check=<checksum> count=N`; a restore that lost a page shows here.
 * SIGUSR2 makes it call keyctl(KEYCTL_GET_KEYRING_ID) and print
 * `keyctl_errno=<errno, 0 on success>`: Docker's default seccomp profile
 * answers EPERM (1), an unconfined process gets 0 or ENOKEY — which filter
 * the process itself runs under, after a restore as before.
 *
 * DIRTY (MiB per second, a decimal: 0.5, 1, 8) makes the memory change at that
 * rate, for pre-copy and delta migration (issue 14): every period, before it
 * counts, it rewrites DIRTY × PERIOD_MS worth of whole pages (the fraction of a
 * page left over carries to the next period), each at a random page index and
 * with new xorshift64 content, so a content-based delta between two checkpoints
 * has to carry them. The rate is per nominal period, not per wall-clock second:
 * a counter frozen for a checkpoint does not catch up afterwards, and a loop
 * that runs late dirties a little less than DIRTY. Pages are picked with
 * replacement, so over t seconds the distinct pages changed are
 * P·(1 − e^(−DIRTY·t/MIB)) of P pages: ≈ DIRTY·t while that is small beside MIB.
 *
 * With DIRTY > 0 the memory no longer matches `sum=`, so the check changes
 * (with DIRTY = 0 nothing here differs from the above). It prints
 * `dirty=<MiB/s> page=<bytes>` after `sum=`, keeps the FNV-1a checksum of every
 * page in an array, and keeps one running digest of the memory in a variable:
 * the sum (mod 2^64) over pages of mix(index, page checksum), updated by each
 * rewrite (old term out, new term in). SIGUSR1 prints
 *   check=<digest recomputed from every page's content> expect=<the running digest> stale=<pages> count=N
 * check equals expect when the memory is what the process last wrote;
 * otherwise (but for a 2^-64 chance) they differ: a page
 * lost or carried from an older checkpoint changes check, and so does a page
 * rewritten but with the running digest (or the array) left from an earlier
 * state, since every rewrite moves the digest. stale= counts the pages whose
 * content disagrees with their entry in the array, to say how much was lost.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t check_requested;
static volatile sig_atomic_t keyctl_requested;
static volatile sig_atomic_t stop_requested;

static void on_usr1(int sig) { (void)sig; check_requested = 1; }
static void on_usr2(int sig) { (void)sig; keyctl_requested = 1; }
static void on_term(int sig) { (void)sig; stop_requested = 1; }

static uint64_t checksum(const volatile uint64_t *words, size_t count) {
    uint64_t hash = 1469598103934665603ULL; /* FNV-1a over 64-bit words */
    for (size_t i = 0; i < count; i++) {
        hash ^= words[i];
        hash *= 1099511628211ULL;
    }
    return hash;
}

static uint64_t xorshift64(uint64_t *state) {
    uint64_t x = *state;
    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
    return *state = x;
}

/* One page's term in the running digest: splitmix64's finaliser over its
 * checksum and its index, so that two pages swapped also show. */
static uint64_t page_term(size_t index, uint64_t page_sum) {
    uint64_t z = page_sum ^ ((uint64_t)index * 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* The memory as pages, for DIRTY > 0: each page's checksum and the running digest. */
struct dirtier {
    volatile uint64_t *words;
    size_t page_words, pages;
    uint64_t *page_sums;
    uint64_t digest;
    double pages_per_period, carry;
};

static void dirtier_init(struct dirtier *d, volatile uint64_t *words, size_t count, size_t page_bytes,
                         double dirty_mib_s, long period_ms) {
    d->words = words;
    d->page_words = page_bytes / sizeof(uint64_t);
    d->pages = count / d->page_words;
    d->page_sums = malloc(d->pages * sizeof(uint64_t));
    if (!d->page_sums) { perror("malloc"); exit(1); }
    d->digest = 0;
    for (size_t p = 0; p < d->pages; p++) {
        d->page_sums[p] = checksum(words + p * d->page_words, d->page_words);
        d->digest += page_term(p, d->page_sums[p]);
    }
    d->pages_per_period = dirty_mib_s * 1024 * 1024 / page_bytes * period_ms / 1000.0;
    d->carry = 0;
}

/* Rewrites one period's worth of random whole pages with new content. */
static void dirtier_period(struct dirtier *d, uint64_t *rng) {
    d->carry += d->pages_per_period;
    while (d->carry >= 1.0) {
        d->carry -= 1.0;
        size_t p = (size_t)(xorshift64(rng) % d->pages);
        volatile uint64_t *page = d->words + p * d->page_words;
        for (size_t i = 0; i < d->page_words; i++) page[i] = xorshift64(rng);
        uint64_t page_sum = checksum(page, d->page_words);
        d->digest += page_term(p, page_sum) - page_term(p, d->page_sums[p]);
        d->page_sums[p] = page_sum;
    }
}

/* Prints the digest recomputed from every page against the running one. */
static void dirtier_check(const struct dirtier *d, unsigned long long counter) {
    uint64_t digest = 0;
    size_t stale = 0;
    for (size_t p = 0; p < d->pages; p++) {
        uint64_t page_sum = checksum(d->words + p * d->page_words, d->page_words);
        digest += page_term(p, page_sum);
        if (page_sum != d->page_sums[p]) stale++;
    }
    printf("check=%016llx expect=%016llx stale=%zu count=%llu\n", (unsigned long long)digest,
           (unsigned long long)d->digest, stale, counter);
}

int main(int argc, char **argv) {
    long mib = argc > 1 ? atol(argv[1]) : 16;
    long period_ms = argc > 2 ? atol(argv[2]) : 100;
    const char *env_mib = getenv("COUNTER_MIB");
    if (env_mib && *env_mib) mib = atol(env_mib);
    double dirty_mib_s = argc > 3 ? strtod(argv[3], NULL) : 0;
    const char *env_dirty = getenv("COUNTER_DIRTY_MIB_S");
    if (env_dirty && *env_dirty) dirty_mib_s = strtod(env_dirty, NULL);
    if (mib < 1) mib = 1;
    if (period_ms < 1) period_ms = 1;
    if (!(dirty_mib_s > 0)) dirty_mib_s = 0; /* also NaN */
    setvbuf(stdout, NULL, _IOLBF, 0);

    struct sigaction action = {0};
    action.sa_handler = on_usr1;
    sigaction(SIGUSR1, &action, NULL);
    action.sa_handler = on_usr2;
    sigaction(SIGUSR2, &action, NULL);
    action.sa_handler = on_term;
    sigaction(SIGTERM, &action, NULL);
    sigaction(SIGINT, &action, NULL);

    size_t count = (size_t)mib * 1024 * 1024 / sizeof(uint64_t);
    /* Page-aligned, so that a page DIRTY rewrites is one page of the process. */
    size_t page_bytes = (size_t)sysconf(_SC_PAGESIZE);
    void *memory = NULL;
    if (posix_memalign(&memory, page_bytes, count * sizeof(uint64_t)) != 0) { perror("posix_memalign"); return 1; }
    volatile uint64_t *words = memory;
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
    struct dirtier dirtier = {0};
    if (dirty_mib_s > 0) {
        dirtier_init(&dirtier, words, count, page_bytes, dirty_mib_s, period_ms);
        printf("dirty=%g page=%zu\n", dirty_mib_s, page_bytes);
    }

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
        while (nanosleep(&wait, &wait) == -1 && errno == EINTR && !stop_requested && !check_requested && !keyctl_requested) {}
        if (stop_requested) break;
        if (keyctl_requested) {
            keyctl_requested = 0;
            /* KEYCTL_GET_KEYRING_ID (0) of KEY_SPEC_PROCESS_KEYRING (-2), no create */
            long id = syscall(SYS_keyctl, 0L, -2L, 0L);
            printf("keyctl_errno=%d\n", id == -1 ? errno : 0);
            continue;
        }
        if (check_requested) {
            check_requested = 0;
            if (dirty_mib_s > 0)
                dirtier_check(&dirtier, counter);
            else
                printf("check=%016llx count=%llu\n", (unsigned long long)checksum(words, count), counter);
            continue;
        }
        if (dirty_mib_s > 0) dirtier_period(&dirtier, &x);
        counter++;
        printf("count=%llu\n", counter);
    }
    return 0;
}
