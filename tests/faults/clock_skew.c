/* A clock-offset store for tests/faults.rs: preloaded into redis-server (LD_PRELOAD), it adds
 * an offset to the wall clock (gettimeofday, time, clock_gettime of CLOCK_REALTIME*), so Redis's
 * `TIME`, its scripts' `now` and its key expiry follow a clock that steps and lags as a failed
 * over replica's or an NTP-stepped host's would. The monotonic clock is left alone.
 *
 * The offset, in milliseconds as a little-endian int64, is read from the first 8 bytes of the
 * file named by DDS_CLOCK_SKEW_FILE (mapped, so the test changes it with one pwrite while Redis
 * runs). libfaketime does the same job but recurses inside redis-server's static jemalloc, so
 * this uses raw syscalls and allocates nothing. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static volatile int64_t *skew;
static int skew_tried;

static int64_t skew_ms(void) {
    if (!__atomic_load_n(&skew_tried, __ATOMIC_ACQUIRE)) {
        const char *path = getenv("DDS_CLOCK_SKEW_FILE");
        int fd = path ? open(path, O_RDONLY | O_CLOEXEC) : -1;
        if (fd >= 0) {
            void *map = mmap(NULL, 8, PROT_READ, MAP_SHARED, fd, 0);
            close(fd);
            if (map != MAP_FAILED) __atomic_store_n(&skew, (int64_t *)map, __ATOMIC_RELEASE);
        }
        __atomic_store_n(&skew_tried, 1, __ATOMIC_RELEASE);
    }
    volatile int64_t *at = __atomic_load_n(&skew, __ATOMIC_ACQUIRE);
    return at ? *at : 0;
}

static int real_clock_gettime(clockid_t clock, struct timespec *ts) {
    return (int)syscall(SYS_clock_gettime, clock, ts);
}

static int is_wall(clockid_t clock) {
    return clock == CLOCK_REALTIME || clock == CLOCK_REALTIME_COARSE;
}

int clock_gettime(clockid_t clock, struct timespec *ts) {
    int rc = real_clock_gettime(clock, ts);
    if (rc == 0 && is_wall(clock)) {
        int64_t ns = (int64_t)ts->tv_sec * 1000000000 + ts->tv_nsec + skew_ms() * 1000000;
        ts->tv_sec = ns / 1000000000;
        ts->tv_nsec = ns % 1000000000;
    }
    return rc;
}

int gettimeofday(struct timeval *restrict tv, void *restrict tz) {
    (void)tz;
    struct timespec ts;
    int rc = clock_gettime(CLOCK_REALTIME, &ts);
    if (rc == 0) {
        tv->tv_sec = ts.tv_sec;
        tv->tv_usec = ts.tv_nsec / 1000;
    }
    return rc;
}

time_t time(time_t *out) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (out) *out = ts.tv_sec;
    return ts.tv_sec;
}
