/*
 * shape_passthrough: a `shape` plugin that forwards the request unchanged.
 *
 * url = the upstream's base_url without one trailing slash (default
 * `https://api.anthropic.com` when base_url is None) + path + (`?` + query when
 * query is Some). Method, headers (names and values as they came, in order) and
 * body are echoed (cclb_guest.h's cclb_shape_passthrough).
 */
#include "cclb_guest.h"

CCLB_PLUGIN_METADATA({
    "name": "shape-passthrough",
    "version": "0.1.0",
    "description": "Sends the request to the selected upstream unchanged.",
    "usage": "Register for the shape slot. No configuration.",
    "hooks": {
        "shape": {
            "wire_version": 1,
            "description": "Builds the URL from the upstream base_url (default https://api.anthropic.com), the path and the query, and echoes method, headers and body.",
            "usage": "No claims or settings are read."
        }
    }
});
CCLB_HOOK_SCHEMA(shape);

CCLB_EXPORT("cc_lb_shape") cclb_u64 cc_lb_shape(cclb_u32 in_ptr, cclb_u32 in_len) {
    return cclb_shape_passthrough(in_ptr, in_len);
}
