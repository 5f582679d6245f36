# Included by _codec.pyx: the native call path of the plugin host.
#
# One call into NativePlugin does a whole hook call on wasmtime's C API: instantiate
# (FRESH) or take the thread's instance (REUSE_PER_THREAD), arm the deadline and fuel,
# cc_lb_alloc, encode straight into guest memory, call the hook with the GIL released,
# check the answer, decode it in place into host types, cc_lb_free (reuse). Policy stays
# in cclb_wire/runtime/: it builds every error through a ``faults`` object, so both call paths
# word them the same way, and it decides when this path is used at all.

from .wasmtime_capi cimport *

cdef extern from *:
    """
    #if defined(__linux__) || defined(__APPLE__)
    #include <pthread.h>
    #endif
    #if defined(_MSC_VER)
    #define CCLB_THREAD_LOCAL __declspec(thread)
    #else
    #define CCLB_THREAD_LOCAL __thread
    #endif
    /* The calling thread's stack (lowest address, size), looked up once per thread;
       size 0 where the platform does not tell. */
    static CCLB_THREAD_LOCAL int cclb_stack_known = 0;
    static CCLB_THREAD_LOCAL size_t cclb_stack_low = 0, cclb_stack_size = 0;
    static void cclb_stack_bounds(size_t* low, size_t* size) {
        if (!cclb_stack_known) {
            cclb_stack_known = 1;
    #if defined(__linux__)
            pthread_attr_t attr;
            if (pthread_getattr_np(pthread_self(), &attr) == 0) {
                void* base = NULL; size_t bytes = 0;
                if (pthread_attr_getstack(&attr, &base, &bytes) == 0 && base) {
                    cclb_stack_low = (size_t)base; cclb_stack_size = bytes;
                }
                pthread_attr_destroy(&attr);
            }
    #elif defined(__APPLE__)
            size_t bytes = pthread_get_stacksize_np(pthread_self());
            cclb_stack_low = (size_t)pthread_get_stackaddr_np(pthread_self()) - bytes;
            cclb_stack_size = bytes;
    #endif
        }
        *low = cclb_stack_low; *size = cclb_stack_size;
    }
    """
    void cclb_stack_bounds(size_t* low, size_t* size) nogil


cdef WasmtimeApi _WT
cdef bint _WT_BOUND = False

#: wasmtime's major versions this file's struct layouts and prototypes are written for. Their
#: C APIs agree on every function and struct used here (compared in wasmtime-py's ctypes
#: declarations of each, 50.0.1 and 51.0.0); a major whose C API differs needs its own
#: prototypes here before it joins. bind_wasmtime() still checks each layout and symbol.
SUPPORTED_WASMTIME_MAJORS = (50, 51)

#: C API symbol -> struct layout this file assumes: (size, {field: offset}).
_WASMTIME_LAYOUTS = {
    "wasmtime_func_t": (sizeof(wt_func), {"store_id": 0}),
    "wasmtime_memory_t": (sizeof(wt_memory), {"_anon_1": 0, "__private2": <size_t>&(<wt_memory*>0).private2}),
    "wasmtime_global_t": (sizeof(wt_global), {"store_id": 0, "__private3": <size_t>&(<wt_global*>0).private3}),
    "wasmtime_instance_t": (sizeof(wt_instance), {"store_id": 0}),
    "wasmtime_extern_t": (sizeof(wt_extern), {"kind": 0, "of": <size_t>&(<wt_extern*>0).of}),
    "wasmtime_val_raw_t": (sizeof(wt_val_raw), {"i32": 0, "i64": 0}),
    "wasmtime_val_t": (sizeof(wt_val), {"kind": 0, "of": <size_t>&(<wt_val*>0).of}),
}

_WASMTIME_SYMBOLS = (
    "wasmtime_store_new", "wasmtime_store_context", "wasmtime_store_limiter", "wasmtime_store_delete",
    "wasmtime_context_set_epoch_deadline", "wasmtime_context_set_fuel", "wasmtime_instance_pre_instantiate",
    "wasmtime_instance_export_get", "wasmtime_func_call_unchecked", "wasmtime_memory_data",
    "wasmtime_memory_data_size", "wasmtime_global_get", "wasmtime_global_set", "wasmtime_engine_increment_epoch",
)


def bind_wasmtime(version, addresses, layouts):
    """Bind the native call path to the libwasmtime wasmtime-py loaded.

    ``version``: wasmtime-py's version; ``addresses``: {symbol: address} for every name
    in _WASMTIME_SYMBOLS; ``layouts``: {struct: (size, {field: offset})} from wasmtime-py's
    ctypes declarations. Raises RuntimeError naming the first mismatch; binds nothing then.
    """
    global _WT, _WT_BOUND
    cdef WasmtimeApi api
    major = str(version).split(".")[0]
    if major not in [str(supported) for supported in SUPPORTED_WASMTIME_MAJORS]:
        majors = ", ".join(str(supported) for supported in SUPPORTED_WASMTIME_MAJORS)
        raise RuntimeError(f"wasmtime {version} is not a major version the native call path is built for ({majors})")
    for name, (size, fields) in _WASMTIME_LAYOUTS.items():
        theirs = layouts.get(name)
        if theirs is None or theirs[0] != size or any(theirs[1].get(f) != offset for f, offset in fields.items()):
            raise RuntimeError(f"wasmtime {version}: {name} is laid out as {theirs}, not {(size, fields)}")
    for symbol in _WASMTIME_SYMBOLS:
        if not addresses.get(symbol):
            raise RuntimeError(f"wasmtime {version}: libwasmtime does not export {symbol}")

    def at(symbol):
        return <size_t>addresses[symbol]

    api.store_new = <wt_store_new_f><size_t>at("wasmtime_store_new")
    api.store_context = <wt_store_context_f><size_t>at("wasmtime_store_context")
    api.store_limiter = <wt_store_limiter_f><size_t>at("wasmtime_store_limiter")
    api.store_delete = <wt_store_delete_f><size_t>at("wasmtime_store_delete")
    api.context_set_epoch_deadline = <wt_context_set_epoch_deadline_f><size_t>at("wasmtime_context_set_epoch_deadline")
    api.context_set_fuel = <wt_context_set_fuel_f><size_t>at("wasmtime_context_set_fuel")
    api.instance_pre_instantiate = <wt_instance_pre_instantiate_f><size_t>at("wasmtime_instance_pre_instantiate")
    api.instance_export_get = <wt_instance_export_get_f><size_t>at("wasmtime_instance_export_get")
    api.func_call_unchecked = <wt_func_call_unchecked_f><size_t>at("wasmtime_func_call_unchecked")
    api.memory_data = <wt_memory_data_f><size_t>at("wasmtime_memory_data")
    api.memory_data_size = <wt_memory_data_size_f><size_t>at("wasmtime_memory_data_size")
    api.global_get = <wt_global_get_f><size_t>at("wasmtime_global_get")
    api.global_set = <wt_global_set_f><size_t>at("wasmtime_global_set")
    api.engine_increment_epoch = <wt_engine_increment_epoch_f><size_t>at("wasmtime_engine_increment_epoch")
    _WT = api
    _WT_BOUND = True


# -- the call gate: calls and registrations in flight, for close() -------------------------


cdef class CallGate:
    """Counts a host's calls and registrations in flight. Every change happens under the
    GIL without releasing it, so no lock is needed; ``idle`` (a Condition) wakes close()."""

    cdef readonly Py_ssize_t active
    cdef readonly bint closed
    cdef readonly object idle

    def __init__(self, idle):
        self.idle = idle

    cpdef bint enter(self):
        """Count one more in flight; False (nothing counted) once the host is closed."""
        if self.closed:
            return False
        self.active += 1
        return True

    cpdef leave(self):
        self.active -= 1
        if self.closed and self.active == 0:
            with self.idle:
                self.idle.notify_all()

    def close(self):
        """Close the gate; returns whether it was closed already."""
        already = self.closed
        self.closed = True
        return already

    def wait_idle(self, timeout):
        with self.idle:
            return self.idle.wait_for(lambda: self.active == 0, timeout)

    def after_fork(self, idle):
        """In a forked child: no call of the parent's threads is in flight here."""
        self.idle = idle
        self.active = 0


# -- one store and instance ----------------------------------------------------------------

cdef enum:
    HOOK_FILTER = 0
    HOOK_SHAPE = 1
    HOOK_OBSERVE = 2
    HOOK_TRANSFORM_RESPONSE = 3
    HOOK_TRANSFORM_SSE_EVENT = 4
    HOOK_COUNT = 5

cdef tuple _HOOK_NAMES = ("filter", "shape", "observe", "transform_response", "transform_sse_event")
#: the generated root each transform hook answers, by (hook - HOOK_TRANSFORM_RESPONSE)
cdef tuple _TRANSFORM_ANSWERS = (schema.TRANSFORM_RESPONSE_RESULT, schema.TRANSFORM_SSE_EVENT_RESULT)
cdef int _TRANSFORM_ANSWER_INDEX[2]
_TRANSFORM_ANSWER_INDEX[0] = _GENERATED_ROOTS.index(schema.TRANSFORM_RESPONSE_RESULT)
_TRANSFORM_ANSWER_INDEX[1] = _GENERATED_ROOTS.index(schema.TRANSFORM_SSE_EVENT_RESULT)


cdef struct Guest:
    void* store
    void* context
    wt_instance instance
    wt_memory memory
    wt_func alloc
    wt_func free
    wt_func hooks[5]  # HOOK_COUNT
    wt_global grow_flag
    uint32_t out_pointer


cdef class ReusedGuest:
    """A REUSE_PER_THREAD instance: its store dies with this object."""

    cdef Guest g
    cdef object owners  # keeps the engine alive while the store exists
    cdef object __weakref__

    def __dealloc__(self):
        if self.g.store != NULL:
            _WT.store_delete(self.g.store)
            self.g.store = NULL


cdef class PinnedGuest:
    """One instance that a stream's calls share (an InstanceScope): opened by its first
    call, released by ``close()`` or with this object; after a failed call, the next one
    opens a fresh instance. One call at a time: a second one meanwhile is refused (two
    threads in one store would abort the process)."""

    cdef Guest g
    cdef object owners  # keeps the engine alive while the store exists
    cdef object plugin  # the NativePlugin whose instances this holds
    cdef bint busy, closed
    cdef object __weakref__

    def __cinit__(self, plugin):
        self.plugin = plugin
        self.owners = (<NativePlugin?>plugin).owners

    cdef void _release(self) noexcept:
        if self.g.store != NULL:
            _WT.store_delete(self.g.store)
            self.g.store = NULL

    def close(self):
        """Release the instance (its pool slot); later calls through this scope are refused."""
        if self.busy:
            raise (<NativePlugin>self.plugin).faults.scope_in_call()
        self.closed = True
        self._release()

    @property
    def holds_instance(self):
        """Whether an instance is open (taken by a call, not yet released)."""
        return self.g.store != NULL

    def __dealloc__(self):
        self._release()


cdef class NativePlugin:
    """The native call path of one admitted plugin (see the top of this file)."""

    cdef void* engine
    cdef void* pre
    cdef object owners
    cdef object faults
    cdef object local
    cdef CallGate gate
    cdef bint reuse, has_start, use_fuel, cookie_redaction
    cdef bint has_hook[5]  # HOOK_COUNT
    cdef uint64_t deadline_ticks, fuel
    cdef int64_t memory_limit, table_elements, max_tables
    cdef size_t stack_needed
    cdef Py_ssize_t output_bound, reason_cap
    cdef object bounds, origin_policy
    cdef bytes grow_flag_export, start_export
    cdef tuple hook_exports, hook_export_bytes  # the hooks' export names, by HOOK_* index
    cdef Guest spare  # FRESH: the next call's instance, opened ahead by prepare()
    cdef bint has_spare, preparing, prepare_held
    cdef uint64_t discards  # discard_prepared() calls: a prepare() they overlapped keeps nothing

    def __init__(self, engine_address, pre_address, owners, faults, local, CallGate gate, hooks, *,
                 bint reuse, bint has_start, deadline_ticks, fuel, memory_limit, table_elements, max_tables,
                 stack_needed, bounds, origin_policy, bint cookie_redaction, hook_exports, str grow_flag_export,
                 str start_export):
        if not _WT_BOUND:
            raise RuntimeError("bind_wasmtime() has not run")
        self.engine = <void*><size_t>engine_address
        self.pre = <void*><size_t>pre_address
        self.owners = owners
        self.faults = faults
        self.local = local
        self.gate = gate
        for i in range(HOOK_COUNT):
            self.has_hook[i] = _HOOK_NAMES[i] in hooks
        self.reuse = reuse
        self.has_start = has_start
        self.deadline_ticks = deadline_ticks
        self.use_fuel = fuel is not None
        self.fuel = fuel if fuel is not None else 0
        self.memory_limit = memory_limit
        self.table_elements = table_elements
        self.max_tables = max_tables
        self.stack_needed = stack_needed
        self.bounds = bounds
        self.output_bound = _bound(bounds.output_body_bytes)
        self.reason_cap = _bound(bounds.reason_bytes)
        self.origin_policy = origin_policy
        self.cookie_redaction = cookie_redaction
        self.hook_exports = tuple(hook_exports[name] for name in _HOOK_NAMES)
        self.hook_export_bytes = tuple(name.encode() for name in self.hook_exports)
        self.grow_flag_export = grow_flag_export.encode()
        self.start_export = start_export.encode()

    def __dealloc__(self):
        if self.has_spare and self.spare.store != NULL:
            _WT.store_delete(self.spare.store)  # self.owners still holds the engine here

    def prepare(self, str hook):
        """FRESH: open the next call's instance now, while nothing waits; the next fresh
        call, or the next ``pin()``, takes it instead of instantiating (``_fresh``). It is as
        fresh as one opened at the call (nothing has run in it but the start function, which
        runs at instantiation either way; the deadline and fuel are armed again for the
        call). True once one is ready;
        False under REUSE_PER_THREAD or while another thread prepares. Raises what
        instantiation raises (``hook`` names the call for its errors)."""
        cdef Guest g
        cdef int index = _HOOK_NAMES.index(hook)
        cdef uint64_t discards = self.discards
        if self.reuse or self.preparing or self.prepare_held:
            return False
        if self.has_spare:
            return True
        memset(&g, 0, sizeof(Guest))
        self._enter(index)
        self.preparing = True  # _open releases the GIL: one prepare at a time
        try:
            self._open(&g, index)
        except BaseException:
            if g.store != NULL:
                _WT.store_delete(g.store)
            raise
        finally:
            self.preparing = False
            self.gate.leave()
        if self.discards != discards or self.prepare_held:  # discarded while it opened (a swap)
            _WT.store_delete(g.store)
            return False
        self.spare = g
        self.has_spare = True
        return True

    def discard_prepared(self, bint hold=False):
        """Close the prepared instance, if one waits, and any prepare() running now keeps
        nothing; with ``hold``, prepare() opens none until allow_prepare()."""
        cdef Guest g
        self.discards += 1
        if hold:
            self.prepare_held = True
        if self._take_prepared(&g):
            _WT.store_delete(g.store)

    def allow_prepare(self):
        """prepare() may open instances again (after discard_prepared(hold=True))."""
        self.prepare_held = False

    @property
    def has_prepared(self):
        """Whether a prepared instance waits for the next fresh call or ``pin()``."""
        return self.has_spare

    # -- the pieces of a call ------------------------------------------------------

    cdef bint _take_prepared(self, Guest* into) noexcept:
        """Move the prepared instance, if one waits, into ``into`` (the GIL held: one taker)."""
        if not self.has_spare:
            return False
        into[0] = self.spare
        memset(&self.spare, 0, sizeof(Guest))
        self.has_spare = False
        return True

    cdef int _fresh(self, Guest* g, int hook) except -1:
        """A fresh instance into ``g``: the prepared one (never used, as fresh as a new one),
        else a new one."""
        if not self._take_prepared(g):
            self._open(g, hook)
        return 0

    cdef int _enter(self, int hook) except -1:
        """The thread's stack check, then the gate (the ctypes path's order)."""
        cdef size_t low, size, left
        cdef char here = 0
        cclb_stack_bounds(&low, &size)
        if size:
            left = <size_t>&here - low
            if left < self.stack_needed:
                raise self.faults.stack(_HOOK_NAMES[hook], left, size)
        if not self.gate.enter():
            raise self.faults.closed(_HOOK_NAMES[hook])
        return 0

    cdef int _arm(self, Guest* g, int hook) except -1:
        cdef void* error
        if self.deadline_ticks:
            _WT.context_set_epoch_deadline(g.context, self.deadline_ticks)
        if self.use_fuel:
            error = _WT.context_set_fuel(g.context, self.fuel)
            if error != NULL:
                raise self.faults.call("arm", _HOOK_NAMES[hook], 0, <size_t>error, False)
        return 0

    cdef bint _refused_a_grow(self, Guest* g) noexcept:
        cdef wt_val value
        value.of.i64 = 0
        _WT.global_get(g.context, &g.grow_flag, &value)
        return value.of.i32 != 0

    cdef int _clear_refused_grow(self, Guest* g, int hook) except -1:
        cdef wt_val value
        value.kind = WT_I32
        value.of.i64 = 0
        cdef void* error = _WT.global_set(g.context, &g.grow_flag, &value)
        if error != NULL:  # the global is ours, mutable and i32
            raise self.faults.call("arm", _HOOK_NAMES[hook], 0, <size_t>error, False)
        return 0

    cdef int _call(self, Guest* g, wt_func* func, wt_val_raw* args, size_t nargs, object phase, int hook) except -1:
        """Run guest code without the GIL; a trap or error becomes the typed PluginError."""
        cdef void* trap = NULL
        cdef void* error
        with nogil:
            error = _WT.func_call_unchecked(g.context, func, args, nargs, &trap)
        if error != NULL or trap != NULL:
            raise self.faults.call(phase, _HOOK_NAMES[hook], <size_t>trap, <size_t>error, self._refused_a_grow(g))
        return 0

    cdef int _export(self, Guest* g, bytes name, int kind, int hook, void* out) except -1:
        cdef wt_extern item
        if not _WT.instance_export_get(g.context, &g.instance, name, len(name), &item) or item.kind != kind:
            raise self.faults.missing_export(_HOOK_NAMES[hook], name.decode())
        if kind == WT_EXTERN_FUNC:
            (<wt_func*>out)[0] = item.of.func
        elif kind == WT_EXTERN_MEMORY:
            (<wt_memory*>out)[0] = item.of.memory
        else:
            (<wt_global*>out)[0] = item.of.global_
        return 0

    cdef int _open(self, Guest* g, int hook) except -1:
        """A new store and instance under the limits; the start function runs armed."""
        cdef void* trap = NULL
        cdef void* error
        cdef int i
        g.store = _WT.store_new(self.engine, NULL, NULL)
        if g.store == NULL:
            raise MemoryError()
        _WT.store_limiter(g.store, self.memory_limit, self.table_elements, 1, self.max_tables, 1)
        g.context = _WT.store_context(g.store)
        self._arm(g, hook)
        with nogil:
            error = _WT.instance_pre_instantiate(self.pre, g.context, &g.instance, &trap)
        if error != NULL or trap != NULL:
            raise self.faults.instantiate(_HOOK_NAMES[hook], <size_t>trap, <size_t>error)
        # The exports in the order the ctypes path looks them up (the first missing is named).
        self._export(g, b"memory", WT_EXTERN_MEMORY, hook, &g.memory)
        self._export(g, b"cc_lb_alloc", WT_EXTERN_FUNC, hook, &g.alloc)
        self._export(g, b"cc_lb_free", WT_EXTERN_FUNC, hook, &g.free)
        self._export(g, self.grow_flag_export, WT_EXTERN_GLOBAL, hook, &g.grow_flag)
        for i in range(HOOK_COUNT):
            if self.has_hook[i]:
                self._export(g, self.hook_export_bytes[i], WT_EXTERN_FUNC, hook, &g.hooks[i])
        if self.has_start:
            self._run_start(g, hook)
        return 0

    cdef int _run_start(self, Guest* g, int hook) except -1:
        cdef wt_func start
        cdef wt_val_raw args[1]
        self._export(g, self.start_export, WT_EXTERN_FUNC, hook, &start)
        self._call(g, &start, args, 0, "start function", hook)
        self._clear_refused_grow(g, hook)  # a refusal the start function survived is not the hook's
        return 0

    cdef int _request(self, Guest* g, int hook, Job* job, bytes encoded, uint32_t* pointer, uint32_t* size) except -1:
        """cc_lb_alloc, then the request written straight into guest memory."""
        cdef wt_val_raw args[2]
        cdef uint32_t at
        cdef size_t length = job.size if encoded is None else PyBytes_GET_SIZE(encoded)
        cdef size_t memory_size
        cdef uint8_t* base
        args[0].i64 = 0
        args[0].i32 = <int32_t>length
        args[1].i32 = 16
        self._call(g, &g.alloc, args, 2, "cc_lb_alloc", hook)
        at = <uint32_t>args[0].i32
        memory_size = _WT.memory_data_size(g.context, &g.memory)
        if at == 0 or at % 16 or at + length > memory_size:
            raise self.faults.alloc(_HOOK_NAMES[hook], length, at, memory_size, at == 0 and self._refused_a_grow(g))
        base = _WT.memory_data(g.context, &g.memory)  # re-read: the guest may have grown it
        if encoded is None:
            try:
                _write(job, <char*>base + at)
            except _Refused:
                name = _GENERATED_ROOTS[job.generated].name if job.root == ROOT_GENERATED else _ROOT_NAMES[job.root]
                raise _fallback.changed_error(name) from None  # the caller's error
        else:
            memcpy(base + at, PyBytes_AS_STRING(encoded), length)
        pointer[0] = at
        size[0] = <uint32_t>length
        return 0

    cdef const uint8_t* _hook(self, Guest* g, int hook, uint32_t pointer, uint32_t size, uint32_t* out_length) except? NULL:
        """Call the hook; returns the checked output in guest memory (NULL: observe said nothing)."""
        cdef wt_val_raw args[2]
        cdef uint64_t packed
        cdef uint32_t out_pointer, length
        cdef size_t memory_size
        args[0].i64 = 0
        args[0].i32 = <int32_t>pointer
        args[1].i32 = <int32_t>size
        self._call(g, &g.hooks[hook], args, 2, self.hook_exports[hook], hook)
        packed = <uint64_t>args[0].i64
        if hook == HOOK_OBSERVE and packed == 0:
            out_length[0] = 0
            return NULL
        out_pointer = <uint32_t>(packed >> 32)
        length = <uint32_t>(packed & 0xFFFFFFFF)
        memory_size = _WT.memory_data_size(g.context, &g.memory)  # after the call: it may have grown
        if (out_pointer == 0 or length == 0 or length > <size_t>self.output_bound
                or <uint64_t>out_pointer + length > 0xFFFFFFFF or <uint64_t>out_pointer + length > memory_size):
            raise self.faults.output(_HOOK_NAMES[hook], out_pointer, length, memory_size)
        g.out_pointer = out_pointer
        out_length[0] = length
        return _WT.memory_data(g.context, &g.memory) + out_pointer

    cdef int _free(self, Guest* g, int hook, uint32_t length) except -1:
        cdef wt_val_raw args[3]
        args[0].i64 = 0
        args[0].i32 = <int32_t>g.out_pointer
        args[1].i32 = <int32_t>length
        args[2].i32 = 16
        self._call(g, &g.free, args, 3, "cc_lb_free", hook)
        return 0

    cdef object _convert(self, int hook, const uint8_t* output, uint32_t length, object upstream):
        """The answer decoded in place; what the fast decoder refuses, the fallback judges
        (it raises the canonical error) from a view of the same guest bytes."""
        cdef In s
        s.p = output
        s.n = length
        try:
            if hook == HOOK_FILTER:
                return _filter_output(&s, self.reason_cap)
            if hook >= HOOK_TRANSFORM_RESPONSE:  # the wire answer; the host converts it
                return _gread_root(&s, _TRANSFORM_ANSWER_INDEX[hook - HOOK_TRANSFORM_RESPONSE])
            return _shaped_request(&s, upstream, self.origin_policy, self.bounds)
        except Exception:
            # A copy: the error's traceback may outlive the store, and this memory with it.
            data = PyBytes_FromStringAndSize(<const char*>output, length)
            if hook >= HOOK_TRANSFORM_RESPONSE:
                return _fallback.decode(_TRANSFORM_ANSWERS[hook - HOOK_TRANSFORM_RESPONSE], data)
            if hook == HOOK_FILTER:
                return _fallback.decode_filter_output(data, self.bounds)
            return _fallback.decode_shaped_request(data, upstream, origin_policy=self.origin_policy, bounds=self.bounds)

    cdef object _run(self, int hook, Job* job, bytes encoded, object upstream, PinnedGuest pinned=None):
        """A whole call; ``job`` is measured, or ``encoded`` holds the fallback's archive.
        With ``pinned``, the call takes (or opens) that scope's instance."""
        cdef Guest fresh
        cdef Guest* g
        cdef ReusedGuest reused = None
        cdef bint keep
        cdef uint32_t pointer, size, length
        cdef const uint8_t* output
        memset(&fresh, 0, sizeof(Guest))
        if pinned is not None:
            if pinned.plugin is not self or pinned.closed or pinned.busy:
                raise self.faults.scope(_HOOK_NAMES[hook], pinned.plugin is not self, pinned.closed)
            pinned.busy = True
        try:
            self._enter(hook)
        except BaseException:
            if pinned is not None:
                pinned.busy = False
            raise
        keep = self.reuse or pinned is not None
        try:
            if pinned is not None:
                if pinned.g.store == NULL:
                    self._open(&pinned.g, hook)  # on failure the half-open store is released below
                else:
                    self._clear_refused_grow(&pinned.g, hook)
                g = &pinned.g
            elif self.reuse:
                reused = getattr(self.local, "instance", None)
                if reused is None:
                    reused = ReusedGuest()
                    reused.owners = self.owners
                    self._open(&reused.g, hook)  # on failure the store dies with ``reused``
                    self.local.instance = reused
                else:
                    self._clear_refused_grow(&reused.g, hook)
                g = &reused.g
            else:
                g = &fresh
                self._fresh(g, hook)
            try:
                self._arm(g, hook)
                self._request(g, hook, job, encoded, &pointer, &size)
                output = self._hook(g, hook, pointer, size, &length)
                result = None if output == NULL or hook == HOOK_OBSERVE else self._convert(hook, output, length, upstream)
                if keep and output != NULL:
                    self._free(g, hook, length)
                return result
            except BaseException:
                if self.reuse and pinned is None:
                    self.local.instance = None  # a failed instance is never reused
                raise
        except BaseException:
            if pinned is not None:
                pinned._release()  # nor a pinned one, nor a half-open one
            raise
        finally:
            if fresh.store != NULL:
                _WT.store_delete(fresh.store)
            if pinned is not None:
                pinned.busy = False
            self.gate.leave()

    def pin(self, str hook):
        """A PinnedGuest holding a new instance of this plugin: the prepared one, if one
        waits (never used, as fresh as a new one), else opened now (``hook`` names the call
        its errors are reported for)."""
        cdef PinnedGuest pinned = PinnedGuest(self)
        cdef int index = _HOOK_NAMES.index(hook)
        self._enter(index)
        try:
            self._fresh(&pinned.g, index)
        except BaseException:
            pinned._release()
            raise
        finally:
            self.gate.leave()
        return pinned

    # -- the hooks -----------------------------------------------------------------

    def filter(self, ctx, principal, candidates):
        """FilterPlugin.filter's machinery: returns the FilterOutput."""
        cdef Job job
        cdef bytes encoded = None
        try:
            _request_job(&job, ROOT_FILTER_REQUEST, ctx, principal, self.cookie_redaction)
            job.src[9] = <PyObject*>candidates
            _measure(&job)
        except _Refused:
            # the fallback raises the canonical error, or encodes what the fast path does not take
            encoded = _fallback.encode_filter_request(ctx, principal, candidates, cookie_redaction=self.cookie_redaction)
        return self._run(HOOK_FILTER, &job, encoded, None)

    def shape(self, ctx, principal, upstream):
        """UpstreamDialect.shape's machinery: returns the ShapedRequest."""
        cdef Job job
        cdef bytes encoded = None
        cdef object base_url
        try:
            if type(upstream) is not AnthropicDirect:
                _refuse()
            _request_job(&job, ROOT_SHAPE_REQUEST, ctx, principal, self.cookie_redaction)
            base_url = _upstream_base_url(upstream, True)  # held by the frozen AnthropicDirect
            job.src[9] = NULL if base_url is None else <PyObject*>base_url
            _measure(&job)
        except _Refused:
            encoded = _fallback.encode_shape_request(ctx, principal, upstream, cookie_redaction=self.cookie_redaction)
        return self._run(HOOK_SHAPE, &job, encoded, upstream)

    def observe(self, event, PinnedGuest pinned=None):
        """ObservabilityHook.observe's machinery."""
        self._observe(event, pinned)

    cdef int _observe(self, object event, PinnedGuest pinned) except -1:
        cdef Job job
        cdef bytes encoded = None
        cdef tuple fields = None  # owns the fields the job points at, until the call ends
        try:
            fields = _host_event_job(&job, event)
            _measure(&job)
        except (_Refused, TypeError, ValueError):
            encoded = _fallback.encode_observe_event(event)
        self._run(HOOK_OBSERVE, &job, encoded, None, pinned)
        return 0

    def observe_many(self, list events, Py_ssize_t start, PinnedGuest pinned, SlotCounters counters):
        """ObservabilityHook.observe_batch's machinery: ``events[start:]`` observed in
        order in ``pinned``'s instance, each counted in ``counters`` once it succeeded;
        stops at the first that raises. Returns (the index it stopped at, that call's start
        on monotonic_ns(), what it raised), or (len(events), None, None). A signal handler
        that raises between two calls (Ctrl-C) stops it too, with no call started: (the
        next index, None, what the handler raised)."""
        cdef Py_ssize_t index
        cdef long long started
        for index in range(start, len(events)):
            if index > start:
                try:
                    PyErr_CheckSignals()  # as between two calls from Python
                except BaseException as exc:
                    return index, None, exc
            started = cclb_monotonic_ns()
            try:
                self._observe(events[index], pinned)
            except BaseException as exc:
                return index, started, exc
            counters._count(cclb_monotonic_ns() - started)
        return len(events), None, None

    def call_wire(self, str hook, value, PinnedGuest pinned=None):
        """A call whose request is a wire root value (the cc-lb 1.0 hooks): a filter answers
        its FilterOutput, a transform the wire answer value (DecodeError for an archive
        rkyv would refuse)."""
        cdef Job job
        cdef bytes encoded = None
        cdef int index = _HOOK_NAMES.index(hook)
        try:
            _value_job(&job, value)
            _measure(&job)
        except _Refused:
            encoded = _fallback.encode(value)  # the canonical error, or the fallback's archive
        return self._run(index, &job, encoded, None, pinned)
