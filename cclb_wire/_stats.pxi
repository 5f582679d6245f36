# Per-slot call counters in C: the extension's twin of host_stats.SlotCounters.
# Every method runs with the GIL held and calls no Python code between its reads and
# writes (the error name's dict update only hashes a str), so each is atomic.

from . import host_stats as _host_stats

cdef extern from *:
    """
    #ifdef _WIN32
    #define WIN32_LEAN_AND_MEAN
    #include <windows.h>
    static long long cclb_monotonic_ns(void) {
        static LARGE_INTEGER frequency;
        LARGE_INTEGER counter;
        if (!frequency.QuadPart) QueryPerformanceFrequency(&frequency);
        QueryPerformanceCounter(&counter);
        return (long long)((double)counter.QuadPart * 1e9 / (double)frequency.QuadPart);
    }
    #else
    #include <time.h>
    static long long cclb_monotonic_ns(void) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        return (long long)now.tv_sec * 1000000000LL + now.tv_nsec;
    }
    #endif
    """
    long long cclb_monotonic_ns() nogil


def monotonic_ns():
    """A monotonic clock in nanoseconds, read in C (what ``SlotCounters.record_since``
    measures against)."""
    return cclb_monotonic_ns()

cdef int _LATENCY_MIN_BITS = _host_stats.LATENCY_MIN_BITS
cdef int _LATENCY_BUCKETS = _host_stats.LATENCY_BUCKETS
if _LATENCY_BUCKETS + 1 > 64:
    raise ImportError("cclb_wire._codec: host_stats.LATENCY_BUCKETS exceeds the C counters' 64 buckets")


cdef inline int _latency_bucket(long long elapsed_ns) noexcept:
    cdef int bits = 0
    cdef unsigned long long ns = <unsigned long long>elapsed_ns if elapsed_ns > 0 else 0
    while ns:
        ns >>= 1
        bits += 1
    bits -= _LATENCY_MIN_BITS
    if bits < 0:
        return 0
    return bits if bits < _LATENCY_BUCKETS else _LATENCY_BUCKETS


cdef class SlotCounters:
    """One slot's counters (the C twin of ``host_stats.SlotCounters``)."""

    cdef readonly str kind
    cdef readonly str slot_key
    cdef unsigned long long _calls
    cdef unsigned long long _pass_throughs
    cdef unsigned long long _sum_ns
    cdef unsigned long long _buckets[64]
    cdef dict _errors

    def __cinit__(self, str kind, str slot_key):
        self.kind = kind
        self.slot_key = slot_key
        self._errors = {}
        memset(self._buckets, 0, sizeof(self._buckets))

    cdef inline void _count(self, long long elapsed_ns) noexcept:
        self._calls += 1
        self._sum_ns += <unsigned long long>elapsed_ns if elapsed_ns > 0 else 0
        self._buckets[_latency_bucket(elapsed_ns)] += 1

    cdef inline void _count_error(self, str error) except *:
        self._errors[error] = self._errors.get(error, 0) + 1

    def record(self, long long elapsed_ns):
        """Count a call that succeeded."""
        self._count(elapsed_ns)

    def record_error(self, long long elapsed_ns, str error):
        """Count a call that raised; ``error`` is the class name of what it raised."""
        self._count(elapsed_ns)
        self._count_error(error)

    def record_since(self, long long started_ns):
        """``record`` for a call that started at ``monotonic_ns()`` == started_ns."""
        self._count(cclb_monotonic_ns() - started_ns)

    def record_error_since(self, long long started_ns, str error):
        """``record_error`` for a call that started at started_ns."""
        self._count(cclb_monotonic_ns() - started_ns)
        self._count_error(error)

    def record_pass_through(self):
        """Count a failure the failure policy passed through."""
        self._pass_throughs += 1

    def snapshot(self):
        """The counters now, as a host_stats.SlotStats."""
        cdef int i
        counts = tuple([self._buckets[i] for i in range(_LATENCY_BUCKETS + 1)])
        return _host_stats.SlotStats(
            self.kind,
            self.slot_key,
            self._calls,
            dict(self._errors),
            self._pass_throughs,
            _host_stats.LATENCY_BOUNDS_S,
            counts,
            self._sum_ns / 1e9,
        )
