# The part of wasmtime's C API (wasmtime.h, wasmtime 50 and 51: the same in both) the native
# call path uses.
#
# Nothing here is linked: the functions are reached through pointers that
# cclb_wire._codec.bind_wasmtime() takes from the libwasmtime wasmtime-py has loaded,
# so the extension does not depend on how wasmtime was built. The structs mirror the
# header's layouts; bind_wasmtime() compares their sizes and offsets with wasmtime-py's
# own ctypes declarations and refuses to bind on any difference.

from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t


cdef struct wt_func:            # wasmtime_func_t
    uint64_t store_id
    void* private_

cdef struct wt_memory:          # wasmtime_memory_t: {{u64 store_id; u32}; u32}
    uint64_t store_id
    uint32_t private1
    uint32_t padding
    uint32_t private2

cdef struct wt_global:          # wasmtime_global_t
    uint64_t store_id
    uint32_t private1
    uint32_t private2
    uint32_t private3

cdef struct wt_instance:        # wasmtime_instance_t
    uint64_t store_id
    size_t private_

cdef union wt_extern_union:     # wasmtime_extern_union_t (the members we read)
    wt_func func
    wt_global global_
    wt_memory memory

cdef struct wt_extern:          # wasmtime_extern_t
    uint8_t kind
    wt_extern_union of

cdef union wt_val_raw:          # wasmtime_val_raw_t
    int32_t i32
    int64_t i64
    uint8_t v128[16]

cdef union wt_val_union:        # wasmtime_valunion_t (24 bytes)
    int32_t i32
    int64_t i64
    uint8_t raw[24]

cdef struct wt_val:             # wasmtime_val_t
    uint8_t kind
    wt_val_union of

cdef enum:
    WT_EXTERN_FUNC = 0
    WT_EXTERN_GLOBAL = 1
    WT_EXTERN_MEMORY = 3
    WT_I32 = 0

# Opaque handles are void*: wasm_engine_t, wasmtime_store_t, wasmtime_context_t,
# wasmtime_instance_pre_t, wasm_trap_t, wasmtime_error_t. C's bool is a uint8_t.
ctypedef void* (*wt_store_new_f)(void* engine, void* data, void* finalizer) noexcept nogil
ctypedef void* (*wt_store_context_f)(void* store) noexcept nogil
ctypedef void (*wt_store_limiter_f)(void* store, int64_t memory_size, int64_t table_elements,
                                    int64_t instances, int64_t tables, int64_t memories) noexcept nogil
ctypedef void (*wt_store_delete_f)(void* store) noexcept nogil
ctypedef void (*wt_context_set_epoch_deadline_f)(void* context, uint64_t ticks_beyond_current) noexcept nogil
ctypedef void* (*wt_context_set_fuel_f)(void* context, uint64_t fuel) noexcept nogil
ctypedef void* (*wt_instance_pre_instantiate_f)(const void* pre, void* context, wt_instance* out,
                                                void** trap) noexcept nogil
ctypedef uint8_t (*wt_instance_export_get_f)(void* context, const wt_instance* instance, const char* name,
                                             size_t name_len, wt_extern* item) noexcept nogil
ctypedef void* (*wt_func_call_unchecked_f)(void* context, const wt_func* func, wt_val_raw* args_and_results,
                                           size_t args_and_results_len, void** trap) noexcept nogil
ctypedef uint8_t* (*wt_memory_data_f)(const void* context, const wt_memory* memory) noexcept nogil
ctypedef size_t (*wt_memory_data_size_f)(const void* context, const wt_memory* memory) noexcept nogil
ctypedef void (*wt_global_get_f)(void* context, const wt_global* global_, wt_val* out) noexcept nogil
ctypedef void* (*wt_global_set_f)(void* context, const wt_global* global_, const wt_val* value) noexcept nogil
ctypedef void (*wt_engine_increment_epoch_f)(void* engine) noexcept nogil


cdef struct WasmtimeApi:
    wt_store_new_f store_new
    wt_store_context_f store_context
    wt_store_limiter_f store_limiter
    wt_store_delete_f store_delete
    wt_context_set_epoch_deadline_f context_set_epoch_deadline
    wt_context_set_fuel_f context_set_fuel
    wt_instance_pre_instantiate_f instance_pre_instantiate
    wt_instance_export_get_f instance_export_get
    wt_func_call_unchecked_f func_call_unchecked
    wt_memory_data_f memory_data
    wt_memory_data_size_f memory_data_size
    wt_global_get_f global_get
    wt_global_set_f global_set
    wt_engine_increment_epoch_f engine_increment_epoch  # the native ticker's (_ticker.pxi)
