# Included by _codec.pyx: linear memories for FRESH instances, reset page by page.
#
# wasmtime's pooling allocator resets a freed memory by zeroing its first
# ``linear_memory_keep_resident`` bytes and giving the rest back to the kernel (madvise);
# the C API has no switch for the dirty-page scan wasmtime can do instead. A guest laid
# out like a Rust one (a 1 MiB stack whose top sits near the 1 MiB mark, data and heap
# above it) touches pages far above any sensible keep-resident size, so every fresh call
# paid a madvise, its TLB flush, and a page fault per touched page on the next call.
#
# This pool is a wasmtime memory creator (wasmtime_config_host_memory_creator_set) that
# hands out slots of one reservation each (the memory limit, then a guard region; nothing
# accessible past the memory's current size) and, when a store frees a memory, asks the
# kernel which of its pages hold anything (PAGEMAP_SCAN, Linux 6.7+: present or swapped,
# not the shared zero page) and zeroes exactly those, so they stay resident for the next
# instance. A resident page that is zero already (an earlier reset zeroed it and this
# instance did not write it) is given back instead, so one large writer does not make every
# later reset zero its pages. Past ``keep_bytes`` of such pages the rest of the memory is
# given back with madvise, as wasmtime does. Data segments are copied in at instantiation (a custom
# memory has no copy-on-write image).
#
# - One pool per engine: it belongs to wasmtime from the moment the creator is set, and
#   wasmtime's finalizer frees it with the engine, after the last store (memories hold
#   the engine).
# - ``slots`` bounds the memories alive at once; one more fails instantiation with
#   wasmtime's own wording for a full pool ("maximum concurrent limit of N for memories
#   reached"), so both allocators' failures are classified alike.
# - wasmtime passes the reservation and guard it compiled code for; a slot with less of
#   either refuses the memory (fail closed), which the host's settings never cause.
# - fork(): the child reopens /proc/self/pagemap (the parent's descriptor reads the
#   parent's page tables). The free list is in the child's memory, like the slots; slots
#   (and the pool's lock) held by calls of threads the child does not have are not
#   repaired here: the host gives such a child a new engine, and with it a new pool.
# - Where PAGEMAP_SCAN is missing (other systems, older kernels, no /proc)
#   memory_pool_supported() is False and hosts keep wasmtime's pooling allocator.

cdef extern from *:
    """
    #if defined(__linux__)
    #define CCLB_MEMPOOL_SUPPORTED 1
    #include <errno.h>
    #include <fcntl.h>
    #include <pthread.h>
    #include <stdlib.h>
    #include <string.h>
    #include <sys/ioctl.h>
    #include <sys/mman.h>
    #include <unistd.h>
    #else
    #define CCLB_MEMPOOL_SUPPORTED 0
    #endif
    #include <stdint.h>
    #include <stdio.h>
    #include <stdlib.h>
    #include <string.h>

    /* wasmtime_error_new, looked up by the caller in the libwasmtime wasmtime-py loaded. */
    typedef void* (*cclb_error_new_f)(const char* message);

    typedef struct cclb_mem_stats {
        uint64_t memories;      /* memories handed out */
        uint64_t slots_used;    /* slots handed out at least once (at most the pool's size) */
        uint64_t in_use;        /* memories alive now */
        uint64_t resets;        /* memories reset by the page scan */
        uint64_t pages_zeroed;  /* pages zeroed and kept resident by those resets */
        uint64_t pages_released; /* resident pages found zero already (an earlier reset's), given back */
        uint64_t decommits;     /* resets that gave pages back with madvise */
        uint64_t refused;       /* memories refused: every slot in use, or too large */
    } cclb_mem_stats;

    #if CCLB_MEMPOOL_SUPPORTED
    struct cclb_pm_scan_arg {
        uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages,
                 category_inverted, category_mask, category_anyof_mask, return_mask;
    };
    struct cclb_page_region { uint64_t start, end, categories; };
    #define CCLB_PAGEMAP_SCAN _IOWR('f', 16, struct cclb_pm_scan_arg)
    #define CCLB_PAGE_IS_FILE (1ULL << 2)
    #define CCLB_PAGE_IS_PRESENT (1ULL << 3)
    #define CCLB_PAGE_IS_SWAPPED (1ULL << 4)
    #define CCLB_PAGE_IS_PFNZERO (1ULL << 5)
    #define CCLB_SCAN_REGIONS 32

    static int cclb_pagemap_fd = -1;
    static pthread_once_t cclb_pagemap_once = PTHREAD_ONCE_INIT;

    static void cclb_pagemap_after_fork(void) {
        /* The inherited descriptor reads the parent's page tables. open/dup2/close are
           async-signal-safe; on failure scans fail and resets fall back to madvise. */
        int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
        if (fd >= 0 && cclb_pagemap_fd >= 0) { dup2(fd, cclb_pagemap_fd); close(fd); }
        else if (cclb_pagemap_fd >= 0) { close(cclb_pagemap_fd); cclb_pagemap_fd = -1; }
    }
    static void cclb_pagemap_open(void) {
        cclb_pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
        if (cclb_pagemap_fd >= 0) pthread_atfork(NULL, NULL, cclb_pagemap_after_fork);
    }

    /* Scan [start, start+len) for pages that may hold anything: present or swapped, and
       neither the shared zero page nor a file page. Returns the region count (-1: the
       scan failed) and sets *walked to the bytes the scan covered. */
    static int cclb_scan_dirty(uint8_t* start, size_t len, size_t max_pages,
                               struct cclb_page_region* regions, size_t* walked) {
        struct cclb_pm_scan_arg arg;
        memset(&arg, 0, sizeof arg);
        arg.size = sizeof arg;
        arg.start = (uint64_t)(uintptr_t)start;
        arg.end = (uint64_t)(uintptr_t)(start + len);
        arg.vec = (uint64_t)(uintptr_t)regions;
        arg.vec_len = CCLB_SCAN_REGIONS;
        arg.max_pages = max_pages;
        arg.category_inverted = CCLB_PAGE_IS_PFNZERO | CCLB_PAGE_IS_FILE;
        arg.category_mask = CCLB_PAGE_IS_PFNZERO | CCLB_PAGE_IS_FILE;
        arg.category_anyof_mask = CCLB_PAGE_IS_PRESENT | CCLB_PAGE_IS_SWAPPED;
        int found = ioctl(cclb_pagemap_fd, CCLB_PAGEMAP_SCAN, &arg);
        if (found < 0) return -1;
        *walked = (size_t)(arg.walk_end - arg.start);
        return found;
    }

    /* Whether a scan finds exactly the page written in a fresh mapping. */
    static int cclb_mempool_supported(void) {
        pthread_once(&cclb_pagemap_once, cclb_pagemap_open);
        if (cclb_pagemap_fd < 0) return 0;
        long page = sysconf(_SC_PAGESIZE);
        uint8_t* probe = mmap(NULL, 4 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (probe == MAP_FAILED) return 0;
        volatile uint8_t sink = probe[0];  /* read: maps the zero page, which is not dirty */
        (void)sink;
        probe[2 * page + 5] = 1;
        struct cclb_page_region regions[CCLB_SCAN_REGIONS];
        size_t walked = 0;
        int found = cclb_scan_dirty(probe, 4 * page, 4, regions, &walked);
        int ok = found == 1 && walked == (size_t)(4 * page)
                 && regions[0].start == (uint64_t)(uintptr_t)(probe + 2 * page)
                 && regions[0].end == (uint64_t)(uintptr_t)(probe + 3 * page);
        munmap(probe, 4 * page);
        return ok;
    }

    typedef struct cclb_mem_slot {
        struct cclb_mempool* pool;
        uint8_t* base;
        size_t size;        /* the memory's size in bytes */
        size_t accessible;  /* bytes readable and writable from base, whole host pages */
        int used;           /* handed out at least once */
        struct cclb_mem_slot* next_free;
    } cclb_mem_slot;

    typedef struct cclb_mempool {
        pthread_mutex_t lock;
        cclb_mem_slot* free_slots;
        cclb_mem_slot* slot_table;
        uint8_t* slab;
        size_t slab_bytes;
        size_t slots;
        size_t reservation;  /* bytes a memory may grow to */
        size_t guard;        /* inaccessible bytes after it */
        size_t keep_pages;   /* dirty pages zeroed in place per reset; the rest: madvise */
        size_t page;
        cclb_error_new_f error_new;
        cclb_mem_stats stats;
    } cclb_mempool;

    typedef struct {
        void* env;
        uint8_t* (*get_memory)(void* env, size_t* byte_size, size_t* maximum_byte_size);
        void* (*grow_memory)(void* env, size_t new_size);
        void (*finalizer)(void* env);
    } cclb_linear_memory;

    /* wasmtime_memory_creator_t: new_memory's prototype depends on the C API's major, so
       it is kept as a plain pointer here (the two prototypes are below). */
    typedef struct {
        void* env;
        void* new_memory;
        void (*finalizer)(void* env);
    } cclb_memory_creator;

    /* wasmtime 51's wasmtime_memory_request_t (memory.h); checked against wasmtime-py's
       declaration before the pool is used (pool.py). */
    typedef struct {
        const void* ty;
        size_t minimum;
        size_t maximum;
        size_t reserved_size_in_bytes;
        size_t guard_size_in_bytes;
        uint8_t kind;
    } cclb_memory_request;

    static size_t cclb_page_up(cclb_mempool* pool, size_t n) {
        return (n + pool->page - 1) / pool->page * pool->page;
    }

    static void* cclb_mempool_error(cclb_mempool* pool, const char* message) {
        pthread_mutex_lock(&pool->lock);
        pool->stats.refused++;
        pthread_mutex_unlock(&pool->lock);
        return pool->error_new(message);
    }

    /* Make [base, base+want) exactly the accessible part of a slot. */
    static int cclb_slot_resize(cclb_mem_slot* slot, size_t want) {
        if (want > slot->accessible) {
            if (mprotect(slot->base + slot->accessible, want - slot->accessible, PROT_READ | PROT_WRITE) != 0)
                return -1;
        } else if (want < slot->accessible) {
            if (mprotect(slot->base + want, slot->accessible - want, PROT_NONE) != 0) return -1;
        }
        slot->accessible = want;
        return 0;
    }

    static uint8_t* cclb_slot_get(void* env, size_t* byte_size, size_t* maximum_byte_size) {
        cclb_mem_slot* slot = (cclb_mem_slot*)env;
        *byte_size = slot->size;
        *maximum_byte_size = slot->pool->reservation;
        return slot->base;
    }

    static void* cclb_slot_grow(void* env, size_t new_size) {
        cclb_mem_slot* slot = (cclb_mem_slot*)env;
        cclb_mempool* pool = slot->pool;
        if (new_size > pool->reservation)
            return cclb_mempool_error(pool, "memory pool: growth past the slot's reservation (the memory limit)");
        size_t want = cclb_page_up(pool, new_size);
        if (want > slot->accessible && cclb_slot_resize(slot, want) != 0)
            return cclb_mempool_error(pool, "memory pool: mprotect failed while growing a memory");
        slot->size = new_size;
        return NULL;
    }

    static int cclb_page_is_zero(const uint8_t* page, size_t bytes) {
        const uint64_t* word = (const uint64_t*)page;
        for (size_t i = 0; i < bytes / 8; i += 8) {
            if (word[i] | word[i + 1] | word[i + 2] | word[i + 3] | word[i + 4] | word[i + 5] | word[i + 6] | word[i + 7])
                return 0;
        }
        return 1;
    }

    /* Give [start, start+bytes) back to the kernel; zero it where that fails, so a slot never
       keeps the last instance's bytes. Returns ``bytes``. */
    static size_t cclb_release(uint8_t* start, size_t bytes) {
        if (bytes && madvise(start, bytes, MADV_DONTNEED) != 0) memset(start, 0, bytes);
        return bytes;
    }

    /* Zero what the instance left in the slot. The scan finds every resident page that is
       not the shared zero page: pages this instance wrote, and pages an earlier reset
       zeroed in place, which are still resident. The first are zeroed in place (they stay
       resident for the next instance); the second are already zero and are given back, so
       a large writer once does not make every later reset of the slot zero its pages again
       (found by the hostile review: 3.5 -> 22.8 us a call). What the scan did not reach
       (past keep_pages of pages, or more regions than it reports) is given back too. A
       failed scan gives back everything. */
    static void cclb_slot_reset(cclb_mem_slot* slot) {
        cclb_mempool* pool = slot->pool;
        size_t len = slot->accessible, page = pool->page;
        if (len == 0) return;
        struct cclb_page_region regions[CCLB_SCAN_REGIONS];
        size_t walked = 0, zeroed = 0, released = 0;
        /* max_pages 0 would mean no limit to the kernel: keep nothing, give it all back. */
        int found = pool->keep_pages ? cclb_scan_dirty(slot->base, len, pool->keep_pages, regions, &walked) : -1;
        if (found < 0) {
            walked = 0;
            found = 0;
        }
        for (int i = 0; i < found; i++) {
            uint8_t* at = (uint8_t*)(uintptr_t)regions[i].start;
            uint8_t* end = (uint8_t*)(uintptr_t)regions[i].end;
            uint8_t* stale = NULL;  /* the start of a run of pages that are zero already */
            for (; at < end; at += page) {
                if (cclb_page_is_zero(at, page)) {
                    if (!stale) stale = at;
                    continue;
                }
                if (stale) {
                    released += cclb_release(stale, (size_t)(at - stale));
                    stale = NULL;
                }
                memset(at, 0, page);
                zeroed += page;
            }
            if (stale) released += cclb_release(stale, (size_t)(end - stale));
        }
        int decommitted = walked < len;
        if (decommitted) cclb_release(slot->base + walked, len - walked);
        pthread_mutex_lock(&pool->lock);
        pool->stats.resets++;
        pool->stats.pages_zeroed += zeroed / page;
        pool->stats.pages_released += released / page;
        pool->stats.decommits += decommitted;
        pthread_mutex_unlock(&pool->lock);
    }

    static void cclb_slot_free(void* env) {
        cclb_mem_slot* slot = (cclb_mem_slot*)env;
        cclb_mempool* pool = slot->pool;
        cclb_slot_reset(slot);
        pthread_mutex_lock(&pool->lock);
        slot->next_free = pool->free_slots;
        pool->free_slots = slot;
        pool->stats.in_use--;
        pthread_mutex_unlock(&pool->lock);
    }

    static void* cclb_mempool_new_memory(cclb_mempool* pool, size_t minimum, size_t reserved, size_t guard,
                                         cclb_linear_memory* out) {
        char message[160];
        if (reserved > pool->reservation || guard > pool->guard) {
            /* Compiled code may count on that much reserved and guarded: never less. */
            snprintf(message, sizeof message,
                     "memory pool: wasmtime asks for %zu reserved and %zu guard bytes; a slot has %zu and %zu",
                     reserved, guard, pool->reservation, pool->guard);
            return cclb_mempool_error(pool, message);
        }
        if (minimum > pool->reservation) {
            snprintf(message, sizeof message,
                     "memory pool: a minimum of %zu bytes exceeds the slot's %zu (the memory limit)",
                     minimum, pool->reservation);
            return cclb_mempool_error(pool, message);
        }
        pthread_mutex_lock(&pool->lock);
        cclb_mem_slot* slot = pool->free_slots;
        if (!slot) {
            pthread_mutex_unlock(&pool->lock);
            snprintf(message, sizeof message, "maximum concurrent limit of %zu for memories reached", pool->slots);
            return cclb_mempool_error(pool, message);
        }
        pool->free_slots = slot->next_free;
        pool->stats.in_use++;
        pool->stats.memories++;
        if (!slot->used) {
            slot->used = 1;
            pool->stats.slots_used++;
        }
        pthread_mutex_unlock(&pool->lock);
        if (cclb_slot_resize(slot, cclb_page_up(pool, minimum)) != 0) {
            cclb_slot_free(slot);
            return cclb_mempool_error(pool, "memory pool: mprotect failed while sizing a memory");
        }
        slot->size = minimum;
        out->env = slot;
        out->get_memory = cclb_slot_get;
        out->grow_memory = cclb_slot_grow;
        out->finalizer = cclb_slot_free;
        return NULL;
    }

    /* wasmtime_new_memory_callback_t of wasmtime 50: the request as arguments. */
    static void* cclb_mempool_new_memory_args(void* env, const void* ty, size_t minimum, size_t maximum,
                                              size_t reserved, size_t guard, cclb_linear_memory* out) {
        (void)ty; (void)maximum;
        return cclb_mempool_new_memory((cclb_mempool*)env, minimum, reserved, guard, out);
    }

    /* wasmtime_new_memory_callback_t of wasmtime 51: the request as a struct (a GC heap's
       memory comes through here too, and takes a slot like any memory). */
    static void* cclb_mempool_new_memory_request(void* env, const cclb_memory_request* request,
                                                 cclb_linear_memory* out) {
        return cclb_mempool_new_memory((cclb_mempool*)env, request->minimum, request->reserved_size_in_bytes,
                                       request->guard_size_in_bytes, out);
    }

    static void cclb_mempool_delete(void* env) {
        /* wasmtime drops the creator with its engine, after every store: all slots are free. */
        cclb_mempool* pool = (cclb_mempool*)env;
        munmap(pool->slab, pool->slab_bytes);
        pthread_mutex_destroy(&pool->lock);
        free(pool->slot_table);
        free(pool);
    }

    /* A creator for wasmtime_config_host_memory_creator_set (which copies the struct), or
       NULL without memory. */
    static cclb_memory_creator* cclb_mempool_creator(size_t slots, size_t reservation, size_t guard,
                                                     size_t keep_bytes, cclb_error_new_f error_new, int request_struct) {
        cclb_mempool* pool = (cclb_mempool*)calloc(1, sizeof *pool);
        cclb_memory_creator* creator = (cclb_memory_creator*)calloc(1, sizeof *creator);
        cclb_mem_slot* table = (cclb_mem_slot*)calloc(slots ? slots : 1, sizeof *table);
        if (!pool || !creator || !table) { free(pool); free(creator); free(table); return NULL; }
        pool->page = (size_t)sysconf(_SC_PAGESIZE);
        pool->slots = slots;
        pool->reservation = cclb_page_up(pool, reservation);
        pool->guard = cclb_page_up(pool, guard);
        pool->keep_pages = keep_bytes / pool->page;
        pool->error_new = error_new;
        /* One slab, as wasmtime's pool: a guard region, then per slot its reservation and a
           guard region. Inaccessible and unbacked until a memory is sized in it. */
        size_t stride = pool->reservation + pool->guard;
        pool->slab_bytes = pool->guard + slots * stride;
        void* slab = mmap(NULL, pool->slab_bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (slab == MAP_FAILED) { free(pool); free(creator); free(table); return NULL; }
        pthread_mutex_init(&pool->lock, NULL);
        pool->slab = (uint8_t*)slab;
        pool->slot_table = table;
        for (size_t i = slots; i-- > 0;) {  /* slot 0 first */
            table[i].pool = pool;
            table[i].base = pool->slab + pool->guard + i * stride;
            table[i].next_free = pool->free_slots;
            pool->free_slots = &table[i];
        }
        creator->env = pool;
        creator->new_memory = request_struct ? (void*)cclb_mempool_new_memory_request
                                             : (void*)cclb_mempool_new_memory_args;
        creator->finalizer = cclb_mempool_delete;
        return creator;
    }

    static void cclb_mempool_stats(void* env, cclb_mem_stats* out) {
        cclb_mempool* pool = (cclb_mempool*)env;
        pthread_mutex_lock(&pool->lock);
        *out = pool->stats;
        pthread_mutex_unlock(&pool->lock);
    }
    #else
    typedef struct { void* env; void* new_memory; void (*finalizer)(void* env); } cclb_memory_creator;
    typedef struct {
        const void* ty; size_t minimum, maximum, reserved_size_in_bytes, guard_size_in_bytes; uint8_t kind;
    } cclb_memory_request;
    static int cclb_mempool_supported(void) { return 0; }
    static cclb_memory_creator* cclb_mempool_creator(size_t slots, size_t reservation, size_t guard,
                                                     size_t keep_bytes, cclb_error_new_f error_new, int request_struct) {
        (void)slots; (void)reservation; (void)guard; (void)keep_bytes; (void)error_new; (void)request_struct;
        return NULL;
    }
    static void cclb_mempool_stats(void* env, cclb_mem_stats* out) {
        (void)env; memset(out, 0, sizeof *out);
    }
    #endif
    static void* cclb_mempool_of(cclb_memory_creator* creator) { return creator->env; }
    """
    ctypedef void* (*cclb_error_new_f)(const char* message) noexcept nogil
    ctypedef struct cclb_mem_stats:
        uint64_t memories
        uint64_t slots_used
        uint64_t in_use
        uint64_t resets
        uint64_t pages_zeroed
        uint64_t pages_released
        uint64_t decommits
        uint64_t refused
    ctypedef struct cclb_memory_creator:
        pass
    ctypedef struct cclb_memory_request:
        void* ty
        size_t minimum
        size_t maximum
        size_t reserved_size_in_bytes
        size_t guard_size_in_bytes
        uint8_t kind
    int cclb_mempool_supported() nogil
    cclb_memory_creator* cclb_mempool_creator(size_t slots, size_t reservation, size_t guard,
                                              size_t keep_bytes, cclb_error_new_f error_new, int request_struct) nogil
    void cclb_mempool_stats(void* pool, cclb_mem_stats* out) nogil
    void* cclb_mempool_of(cclb_memory_creator* creator) nogil
    void free(void* pointer) nogil


def memory_pool_supported():
    """Whether this system can reset memories page by page (Linux 6.7+ with /proc)."""
    return bool(cclb_mempool_supported())


#: The C layout of wasmtime 51's wasmtime_memory_request_t this file assumes: (size, {field: offset}).
MEMORY_REQUEST_LAYOUT = (sizeof(cclb_memory_request), {
    "ty": 0,
    "minimum": <size_t>&(<cclb_memory_request*>0).minimum,
    "maximum": <size_t>&(<cclb_memory_request*>0).maximum,
    "reserved_size_in_bytes": <size_t>&(<cclb_memory_request*>0).reserved_size_in_bytes,
    "guard_size_in_bytes": <size_t>&(<cclb_memory_request*>0).guard_size_in_bytes,
    "kind": <size_t>&(<cclb_memory_request*>0).kind,
})


def memory_pool_creator(size_t slots, size_t reservation, size_t guard, size_t keep_bytes, size_t error_new,
                        bint request_struct):
    """A memory creator (the address of a wasmtime_memory_creator_t) for a pool of ``slots``
    memories of ``reservation`` bytes, each followed by ``guard`` inaccessible bytes, that
    keeps up to ``keep_bytes`` of dirty pages resident per slot. ``error_new`` is the
    address of libwasmtime's wasmtime_error_new. ``request_struct``: new_memory takes the
    request as a struct (wasmtime 51's C API, MEMORY_REQUEST_LAYOUT), else as arguments
    (wasmtime 50's). Returns (creator, pool) addresses.
    wasmtime_config_host_memory_creator_set copies the creator struct: release it with
    memory_pool_release_struct() right after; the pool then belongs to the config (and the
    engine made from it), which frees it. Nothing else frees a creator never handed over."""
    if not cclb_mempool_supported():
        raise RuntimeError("this system cannot reset memories page by page (PAGEMAP_SCAN)")
    if not error_new:
        raise ValueError("memory_pool_creator: no address for wasmtime_error_new")
    cdef cclb_memory_creator* creator = cclb_mempool_creator(
        slots, reservation, guard, keep_bytes, <cclb_error_new_f><size_t>error_new, request_struct)
    if creator == NULL:
        raise MemoryError("memory_pool_creator: out of memory")
    return <size_t>creator, <size_t>cclb_mempool_of(creator)


def memory_pool_release_struct(size_t creator):
    """Free the creator struct (not its pool) once wasmtime has copied it."""
    free(<void*>creator)


def memory_pool_stats(size_t pool):
    """The counters of a pool (the address memory_pool_creator() returned; valid while
    its engine lives)."""
    cdef cclb_mem_stats stats
    cclb_mempool_stats(<void*>pool, &stats)
    return {
        "memories": stats.memories, "slots_used": stats.slots_used, "in_use": stats.in_use,
        "resets": stats.resets, "pages_zeroed": stats.pages_zeroed, "pages_released": stats.pages_released,
        "decommits": stats.decommits,
        "refused": stats.refused,
    }
