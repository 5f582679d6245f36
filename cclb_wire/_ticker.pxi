# Included by _codec.pyx: the native epoch ticker.
#
# Deadlines are epoch deadlines: a guest traps once its engine's epoch passes the mark
# armed before the call. Something must advance the epoch every tick; a Python thread
# cannot do it while other Python code holds the GIL (a 2 s regex stalled every deadline
# for 2 s). This is a C thread that never takes the GIL: it calls
# wasmtime_engine_increment_epoch (an atomic add, no GIL, no allocation) for each
# registered engine at that engine's tick interval.
#
# - One thread per process, started on the first registration, detached, all signals
#   blocked. With nothing registered it waits on a condition variable (no wake-ups).
# - Never early, by construction: an engine's next tick is due ``tick`` after its previous
#   tick *ended* (the clock is read after the increment), and a wake-up ticks only what is
#   due by the clock read after waking. A late wake never shortens the next interval, and
#   missed ticks are never made up in a burst, so a deadline of ceil(d/tick)+1 ticks lasts
#   at least d: it may run long under load, never short. Each interval is the tick plus
#   the wake-up latency (on Linux the thread asks for 1 us of timer slack, not 50 us).
# - The thread ticks with the lock held, so after native_ticker_remove() returns it never
#   touches that engine again: the caller may free the engine right away.
# - fork(): a pthread_atfork handler takes the lock around fork() (the child gets a
#   consistent table), and in the child makes a new lock and condition variable and marks
#   the thread as not running. The child keeps the registered engines (they are in its
#   memory); the thread is started again by os.register_at_fork's after-in-child hook
#   below, or at the latest by the next native_ticker_add().
# - Interpreter exit: an atexit hook stops the ticker: from then on the thread touches no
#   engine (it ends), so the engines wasmtime-py frees at shutdown are never ticked after
#   they are freed; native_ticker_add() refuses, native_ticker_available() is False. A
#   guest still running on a daemon thread then has no deadline, as with the Python
#   ticker, whose daemon thread stops at shutdown too; the process ends anyway.
# - Windows (no pthreads): native_ticker_available() is False; hosts keep the Python ticker.

import atexit as _atexit
import operator as _operator
import os as _os
from libc.stdint cimport int64_t

cdef extern from *:
    """
    #if defined(__linux__) || defined(__APPLE__) || defined(__unix__)
    #define CCLB_TICKER_SUPPORTED 1
    #include <errno.h>
    #include <limits.h>
    #include <pthread.h>
    #include <signal.h>
    #include <stdlib.h>
    #include <string.h>
    #include <time.h>
    #if defined(__linux__)
    #include <sys/prctl.h>
    #endif
    #else
    #define CCLB_TICKER_SUPPORTED 0
    #endif
    #include <stdint.h>

    #define CCLB_TICK_RECORD 64        /* the last tick times kept per engine, for tests */
    #define CCLB_TICKER_EXITING (-1)   /* an error code: the interpreter is exiting */
    #define CCLB_NS 1000000000LL

    typedef void (*cclb_increment_epoch_f)(void* engine);

    #if CCLB_TICKER_SUPPORTED
    typedef struct {
        uint64_t handle;
        void* engine;
        cclb_increment_epoch_f increment;
        int64_t tick_ns;
        int64_t due_ns;                    /* CLOCK_MONOTONIC: not before this */
        uint64_t ticks;
        int64_t recent[CCLB_TICK_RECORD];  /* ring: the time each tick ended */
    } cclb_tick_entry;

    static struct {
        pthread_mutex_t lock;              /* everything below */
        pthread_cond_t wake;               /* an engine was added, or the ticker stops */
        int ready, running, stopped;
        uint64_t threads_started;          /* in this process (a forked child starts at 0) */
        uint64_t ticks;                    /* since import; a child inherits its parent's */
        uint64_t next_handle;
        cclb_tick_entry* entries;
        size_t count, capacity;
    } cclb_ticker;

    static int64_t cclb_ticker_now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * CCLB_NS + ts.tv_nsec;
    }

    static int cclb_ticker_init_sync(void) {
        pthread_condattr_t attr;
        int err = pthread_mutex_init(&cclb_ticker.lock, NULL);
        if (err) return err;
        if ((err = pthread_condattr_init(&attr))) return err;
    #if !defined(__APPLE__)  /* macOS waits with a relative timeout instead */
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    #endif
        err = pthread_cond_init(&cclb_ticker.wake, &attr);
        pthread_condattr_destroy(&attr);
        return err;
    }

    /* Wait on the condition variable (the lock held) until ``when`` at most. */
    static void cclb_ticker_wait_until(int64_t when) {
    #if defined(__APPLE__)
        int64_t left = when - cclb_ticker_now();
        struct timespec rel;
        if (left <= 0) return;
        rel.tv_sec = (time_t)(left / CCLB_NS);
        rel.tv_nsec = (long)(left % CCLB_NS);
        pthread_cond_timedwait_relative_np(&cclb_ticker.wake, &cclb_ticker.lock, &rel);
    #else
        struct timespec at;
        at.tv_sec = (time_t)(when / CCLB_NS);
        at.tv_nsec = (long)(when % CCLB_NS);
        pthread_cond_timedwait(&cclb_ticker.wake, &cclb_ticker.lock, &at);
    #endif
    }

    static void* cclb_ticker_main(void* unused) {
        (void)unused;
    #if defined(__linux__)
        pthread_setname_np(pthread_self(), "cclb-epoch");
        prctl(PR_SET_TIMERSLACK, 1000UL, 0UL, 0UL, 0UL);  /* wake within ~1 us, not 50 us, of due */
    #elif defined(__APPLE__)
        pthread_setname_np("cclb-epoch");
    #endif
        pthread_mutex_lock(&cclb_ticker.lock);
        while (!cclb_ticker.stopped) {
            /* Whatever woke us (a timeout, a signal, a spurious wake-up, an add), only
               what is due by the clock now is ticked: never early. */
            int64_t now = cclb_ticker_now(), next = INT64_MAX;
            size_t i;
            for (i = 0; i < cclb_ticker.count; i++) {
                cclb_tick_entry* e = &cclb_ticker.entries[i];
                if (e->due_ns <= now) {
                    int64_t ended;
                    e->increment(e->engine);
                    ended = cclb_ticker_now();
                    e->due_ns = ended + e->tick_ns;  /* after the actual tick, not the schedule */
                    e->recent[e->ticks % CCLB_TICK_RECORD] = ended;
                    e->ticks++;
                    cclb_ticker.ticks++;
                }
                if (e->due_ns < next) next = e->due_ns;
            }
            if (next == INT64_MAX)
                pthread_cond_wait(&cclb_ticker.wake, &cclb_ticker.lock);
            else
                cclb_ticker_wait_until(next);
        }
        cclb_ticker.running = 0;
        pthread_mutex_unlock(&cclb_ticker.lock);
        return NULL;
    }

    /* Start the thread unless it runs (the lock held). 0 or an errno value. */
    static int cclb_ticker_start_locked(void) {
        pthread_attr_t attr;
        pthread_t thread;
        sigset_t all, old;
        size_t stack = 256 * 1024;  /* it needs little; small also under a tight RLIMIT_AS */
        int err;
        if (cclb_ticker.running || cclb_ticker.stopped) return 0;
    #ifdef PTHREAD_STACK_MIN
        if (stack < (size_t)PTHREAD_STACK_MIN) stack = (size_t)PTHREAD_STACK_MIN;
    #endif
        if ((err = pthread_attr_init(&attr))) return err;
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&attr, stack);
        sigfillset(&all);  /* signals go to Python's threads, never to this one */
        pthread_sigmask(SIG_SETMASK, &all, &old);
        err = pthread_create(&thread, &attr, cclb_ticker_main, NULL);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        pthread_attr_destroy(&attr);
        if (err) return err;
        cclb_ticker.running = 1;
        cclb_ticker.threads_started++;
        return 0;
    }

    static int cclb_ticker_add(cclb_increment_epoch_f increment, void* engine, int64_t tick_ns, uint64_t* handle) {
        int err = 0;
        cclb_tick_entry* e;
        pthread_mutex_lock(&cclb_ticker.lock);
        if (cclb_ticker.stopped) { err = CCLB_TICKER_EXITING; goto done; }
        if (cclb_ticker.count == cclb_ticker.capacity) {
            size_t capacity = cclb_ticker.capacity ? 2 * cclb_ticker.capacity : 8;
            cclb_tick_entry* grown = (cclb_tick_entry*)realloc(cclb_ticker.entries, capacity * sizeof(cclb_tick_entry));
            if (!grown) { err = ENOMEM; goto done; }
            cclb_ticker.entries = grown;
            cclb_ticker.capacity = capacity;
        }
        if ((err = cclb_ticker_start_locked())) goto done;
        e = &cclb_ticker.entries[cclb_ticker.count++];
        memset(e, 0, sizeof(*e));
        e->handle = *handle = cclb_ticker.next_handle++;
        e->engine = engine;
        e->increment = increment;
        e->tick_ns = tick_ns;
        e->due_ns = cclb_ticker_now() + tick_ns;
        pthread_cond_signal(&cclb_ticker.wake);  /* it may be due before what the thread waits for */
    done:
        pthread_mutex_unlock(&cclb_ticker.lock);
        return err;
    }

    static int cclb_ticker_remove(uint64_t handle) {
        size_t i;
        int found = 0;
        pthread_mutex_lock(&cclb_ticker.lock);
        for (i = 0; i < cclb_ticker.count; i++) {
            if (cclb_ticker.entries[i].handle == handle) {
                cclb_ticker.entries[i] = cclb_ticker.entries[--cclb_ticker.count];
                found = 1;
                break;
            }
        }
        if (cclb_ticker.count == 0) {
            free(cclb_ticker.entries);
            cclb_ticker.entries = NULL;
            cclb_ticker.capacity = 0;
        }
        pthread_mutex_unlock(&cclb_ticker.lock);
        return found;
    }

    static void cclb_ticker_stats(uint64_t* threads, uint64_t* engines, uint64_t* ticks, int* running) {
        pthread_mutex_lock(&cclb_ticker.lock);
        *threads = cclb_ticker.threads_started;
        *engines = cclb_ticker.count;
        *ticks = cclb_ticker.ticks;
        *running = cclb_ticker.running;
        pthread_mutex_unlock(&cclb_ticker.lock);
    }

    /* The engine's tick count and its last tick times, oldest first; -1: no such handle. */
    static int cclb_ticker_record(uint64_t handle, uint64_t* ticks, int64_t* times) {
        size_t i;
        int kept = -1;
        pthread_mutex_lock(&cclb_ticker.lock);
        for (i = 0; i < cclb_ticker.count; i++) {
            cclb_tick_entry* e = &cclb_ticker.entries[i];
            if (e->handle == handle) {
                uint64_t first = e->ticks > CCLB_TICK_RECORD ? e->ticks - CCLB_TICK_RECORD : 0, k;
                for (k = first; k < e->ticks; k++) times[k - first] = e->recent[k % CCLB_TICK_RECORD];
                *ticks = e->ticks;
                kept = (int)(e->ticks - first);
                break;
            }
        }
        pthread_mutex_unlock(&cclb_ticker.lock);
        return kept;
    }

    /* Test hook: hold the ticker's lock for ``ns``, as a stalled ticker thread would. */
    static void cclb_ticker_hold(int64_t ns) {
        struct timespec left, rest;
        left.tv_sec = (time_t)(ns / CCLB_NS);
        left.tv_nsec = (long)(ns % CCLB_NS);
        pthread_mutex_lock(&cclb_ticker.lock);
        while (nanosleep(&left, &rest) != 0 && errno == EINTR) left = rest;
        pthread_mutex_unlock(&cclb_ticker.lock);
    }

    static int cclb_ticker_stopped(void) {
        int stopped;
        pthread_mutex_lock(&cclb_ticker.lock);
        stopped = cclb_ticker.stopped;
        pthread_mutex_unlock(&cclb_ticker.lock);
        return stopped;
    }

    /* At interpreter exit: the thread ends and never touches an engine again. */
    static void cclb_ticker_stop(void) {
        pthread_mutex_lock(&cclb_ticker.lock);
        cclb_ticker.stopped = 1;
        pthread_cond_broadcast(&cclb_ticker.wake);
        pthread_mutex_unlock(&cclb_ticker.lock);
    }

    /* In a forked child, from Python's after-in-child hook: tick the inherited engines. */
    static int cclb_ticker_resume(void) {
        int err = 0;
        pthread_mutex_lock(&cclb_ticker.lock);
        if (cclb_ticker.count) err = cclb_ticker_start_locked();
        pthread_mutex_unlock(&cclb_ticker.lock);
        return err;
    }

    static void cclb_ticker_before_fork(void) { pthread_mutex_lock(&cclb_ticker.lock); }
    static void cclb_ticker_after_fork_parent(void) { pthread_mutex_unlock(&cclb_ticker.lock); }
    static void cclb_ticker_after_fork_child(void) {
        /* Only the forking thread exists here: no ticker thread, and the lock it took in
           before_fork and the condition variable (with the parent thread's wait in it)
           are made anew. The table is kept: the engines are in this process too. */
        cclb_ticker_init_sync();
        cclb_ticker.running = 0;
        cclb_ticker.threads_started = 0;
    }

    /* Once per process, at import (under the import lock). */
    static int cclb_ticker_setup(void) {
        int err;
        if (cclb_ticker.ready) return 0;
        cclb_ticker.next_handle = 1;
        if ((err = cclb_ticker_init_sync())) return err;
        if ((err = pthread_atfork(cclb_ticker_before_fork, cclb_ticker_after_fork_parent,
                                  cclb_ticker_after_fork_child))) return err;
        cclb_ticker.ready = 1;
        return 0;
    }

    #else  /* no pthreads: nothing runs; native_ticker_available() says so */
    static int cclb_ticker_setup(void) { return 0; }
    static int cclb_ticker_add(cclb_increment_epoch_f increment, void* engine, int64_t tick_ns, uint64_t* handle) {
        (void)increment; (void)engine; (void)tick_ns; (void)handle; return CCLB_TICKER_EXITING;
    }
    static int cclb_ticker_remove(uint64_t handle) { (void)handle; return 0; }
    static void cclb_ticker_stats(uint64_t* threads, uint64_t* engines, uint64_t* ticks, int* running) {
        *threads = 0; *engines = 0; *ticks = 0; *running = 0;
    }
    static int cclb_ticker_record(uint64_t handle, uint64_t* ticks, int64_t* times) {
        (void)handle; (void)ticks; (void)times; return -1;
    }
    static void cclb_ticker_hold(int64_t ns) { (void)ns; }
    static int cclb_ticker_stopped(void) { return 1; }
    static void cclb_ticker_stop(void) {}
    static int cclb_ticker_resume(void) { return 0; }
    #endif
    """
    ctypedef void (*cclb_increment_epoch_f)(void* engine) noexcept nogil
    int CCLB_TICKER_SUPPORTED
    int CCLB_TICK_RECORD
    int CCLB_TICKER_EXITING
    int cclb_ticker_setup() noexcept
    int cclb_ticker_add(cclb_increment_epoch_f increment, void* engine, int64_t tick_ns, uint64_t* handle) noexcept nogil
    int cclb_ticker_remove(uint64_t handle) noexcept nogil
    void cclb_ticker_stats(uint64_t* threads, uint64_t* engines, uint64_t* ticks, int* running) noexcept nogil
    int cclb_ticker_record(uint64_t handle, uint64_t* ticks, int64_t* times) noexcept nogil
    void cclb_ticker_hold(int64_t ns) noexcept nogil
    int cclb_ticker_stopped() noexcept nogil
    void cclb_ticker_stop() noexcept nogil
    int cclb_ticker_resume() noexcept nogil


#: The longest tick native_ticker_add() takes, in nanoseconds (a day; HostConfig allows 1 s).
NATIVE_TICKER_MAX_TICK_NS = 86_400 * 1_000_000_000


def native_ticker_available():
    """Whether native_ticker_add() can be used: the platform has POSIX threads,
    bind_wasmtime() has run, and the interpreter is not exiting."""
    cdef int stopped
    with nogil:
        stopped = cclb_ticker_stopped()
    return bool(CCLB_TICKER_SUPPORTED and _WT_BOUND and not stopped)


def native_ticker_add(engine_address, tick_ns):
    """Tick the engine at ``engine_address`` (a ``wasm_engine_t*``) every ``tick_ns``
    nanoseconds from the native ticker thread (started now if it does not run); returns a
    handle for native_ticker_remove(). The first tick comes ``tick_ns`` after this call;
    each next one at least ``tick_ns`` after the previous one ended. The engine must stay
    alive until native_ticker_remove(handle) has returned. Registering one engine twice
    ticks it twice per interval. Raises RuntimeError where native_ticker_available() is
    False, ValueError for a bad argument, OSError if the thread cannot be started."""
    cdef size_t address
    cdef int64_t tick
    cdef uint64_t handle = 0
    cdef int err
    if not CCLB_TICKER_SUPPORTED:
        raise RuntimeError("the native epoch ticker needs POSIX threads: use the Python ticker on this platform")
    if not _WT_BOUND:
        raise RuntimeError("bind_wasmtime() has not run")
    engine_address = _operator.index(engine_address)
    tick_ns = _operator.index(tick_ns)
    if not 0 < engine_address <= <size_t>-1:
        raise ValueError(f"native_ticker_add: engine_address {engine_address} is not an address")
    if not 0 < tick_ns <= NATIVE_TICKER_MAX_TICK_NS:
        raise ValueError(f"native_ticker_add: tick_ns must be in (0, {NATIVE_TICKER_MAX_TICK_NS}], got {tick_ns}")
    address = engine_address
    tick = tick_ns
    with nogil:  # the thread may hold the lock for a tick; never wait for it with the GIL
        err = cclb_ticker_add(<cclb_increment_epoch_f>_WT.engine_increment_epoch, <void*>address, tick, &handle)
    if err == CCLB_TICKER_EXITING:
        raise RuntimeError("the native epoch ticker has stopped: the interpreter is exiting")
    if err:
        raise OSError(err, f"cannot start the native epoch ticker thread: {_os.strerror(err)}")
    return handle


def native_ticker_remove(handle):
    """Stop ticking the engine of ``handle``. When this returns the ticker thread is not
    touching that engine and never will again, so the engine may be freed at once. An
    unknown or already removed handle is ignored. The thread keeps running (waiting, with
    no wake-ups, while no engine is registered)."""
    cdef uint64_t h = _operator.index(handle)
    with nogil:
        cclb_ticker_remove(h)


def native_ticker_stats():
    """(threads started in this process, engines registered, ticks since import, whether
    the thread runs now). A forked child starts again at 0 threads; it inherits the
    registered engines and the tick count."""
    cdef uint64_t threads, engines, ticks
    cdef int running
    with nogil:
        cclb_ticker_stats(&threads, &engines, &ticks, &running)
    return (threads, engines, ticks, bool(running))


def _native_ticker_record(handle):
    """Test hook: (ticks of this engine, the CLOCK_MONOTONIC times in ns at which its last
    ticks ended, oldest first, at most 64). KeyError for an unknown handle."""
    cdef uint64_t h = _operator.index(handle)
    cdef uint64_t ticks = 0
    cdef int64_t times[64]
    cdef int kept
    assert CCLB_TICK_RECORD == 64
    with nogil:
        kept = cclb_ticker_record(h, &ticks, times)
    if kept < 0:
        raise KeyError(handle)
    return ticks, [times[i] for i in range(kept)]


def _native_ticker_hold(seconds):
    """Test hook: hold the ticker's lock for ``seconds`` (without the GIL), as a ticker
    thread that is not scheduled would: every due tick waits until it is released."""
    cdef int64_t ns = <int64_t>(float(seconds) * 1e9)
    if ns < 0:
        raise ValueError("seconds must be >= 0")
    with nogil:
        cclb_ticker_hold(ns)


def _native_ticker_after_fork_in_child():
    err = cclb_ticker_resume()
    if err:
        raise OSError(err, f"cannot restart the native epoch ticker in the forked child: {_os.strerror(err)}")


def _native_ticker_at_exit():
    with nogil:
        cclb_ticker_stop()


if cclb_ticker_setup() != 0:
    raise ImportError("cclb_wire._codec: cannot set up the native epoch ticker's lock or fork handler")
if CCLB_TICKER_SUPPORTED:
    _atexit.register(_native_ticker_at_exit)
    if hasattr(_os, "register_at_fork"):
        _os.register_at_fork(after_in_child=_native_ticker_after_fork_in_child)
