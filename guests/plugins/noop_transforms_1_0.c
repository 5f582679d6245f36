/*
 * noop_transforms_1_0: a cc-lb 1.0 shape plugin that forwards the request
 * unchanged (as shape_passthrough.c: url = base_url without one trailing `/`,
 * default https://api.anthropic.com, + path + `?query`; method, headers and body
 * echoed) and declares both transform hooks with "mode": "noop".
 *
 * The 1.0 rules: a plugin declaring `shape` must declare both transform hooks,
 * each with an explicit mode; a noop hook still needs its export and its
 * fingerprint section, and a host never probes or calls it. The two transform
 * exports therefore exist, and trap (`unreachable`) if a host calls them anyway.
 */
#include "cclb_guest_1_0.h"

CCLB_PLUGIN_METADATA({
    "name": "noop-transforms-1-0",
    "version": "0.1.0",
    "description": "Sends the request to the selected upstream unchanged; its response transforms are declared noop (cc-lb 1.0 contract).",
    "usage": "Register for the shape slot of a cc-lb 1.0 host. No configuration.",
    "hooks": {
        "shape": {
            "wire_version": 1,
            "mode": "active",
            "description": "Builds the URL from the upstream base_url (default https://api.anthropic.com), the path and the query, and echoes method, headers and body.",
            "usage": "No claims or settings are read."
        },
        "transform_response": {
            "wire_version": 1,
            "mode": "noop",
            "description": "Declared noop: the buffered response passes as it came. The export traps if called.",
            "usage": "Never called by a host."
        },
        "transform_sse_event": {
            "wire_version": 1,
            "mode": "noop",
            "description": "Declared noop: every SSE event passes as it came. The export traps if called.",
            "usage": "Never called by a host."
        }
    }
});
CCLB_HOOK_SCHEMA_1_0(shape);
CCLB_HOOK_SCHEMA_1_0(transform_response);
CCLB_HOOK_SCHEMA_1_0(transform_sse_event);

CCLB_EXPORT("cc_lb_shape") cclb_u64 cc_lb_shape(cclb_u32 in_ptr, cclb_u32 in_len) {
    return cclb_shape_passthrough(in_ptr, in_len);
}

/* A host must never call a noop hook: these trap. */
CCLB_EXPORT("cc_lb_transform_response") cclb_u64 cc_lb_transform_response(cclb_u32 in_ptr, cclb_u32 in_len) {
    (void)in_ptr;
    (void)in_len;
    __builtin_trap();
}

CCLB_EXPORT("cc_lb_transform_sse_event") cclb_u64 cc_lb_transform_sse_event(cclb_u32 in_ptr, cclb_u32 in_len) {
    (void)in_ptr;
    (void)in_len;
    __builtin_trap();
}
