/*
 * shape_passthrough: a `shape` plugin that forwards the request unchanged.
 *
 * url = the upstream's base_url without one trailing slash (default
 * `https://api.anthropic.com` when base_url is None) + path + (`?` + query when
 * query is Some). Method, headers (names and values as they came, in order) and
 * body are echoed.
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

static const char DEFAULT_BASE[] = "https://api.anthropic.com";

CCLB_EXPORT("cc_lb_shape") cclb_u64 cc_lb_shape(cclb_u32 in_ptr, cclb_u32 in_len) {
    cclb_shape_request req;
    cclb_read_shape_request(in_ptr, in_len, &req);

    cclb_str base = req.upstream.base_url.is_some ? req.upstream.base_url.value
                                                  : cclb_str_make(DEFAULT_BASE, sizeof(DEFAULT_BASE) - 1);
    if (base.len && base.ptr[base.len - 1] == '/') base.len--;

    cclb_u64 url_len64 = (cclb_u64)base.len + req.path.len + (req.query.is_some ? 1u + req.query.value.len : 0u);
    if (url_len64 > 0x7fffffffu) CCLB_TRAP();
    cclb_u32 url_len = (cclb_u32)url_len64;
    cclb_u8 *url = (cclb_u8 *)cclb_xalloc(url_len);
    cclb_u32 pos = 0;
    cclb_memcpy(url, base.ptr, base.len);
    pos += base.len;
    cclb_memcpy(url + pos, req.path.ptr, req.path.len);
    pos += req.path.len;
    if (req.query.is_some) {
        url[pos++] = '?';
        cclb_memcpy(url + pos, req.query.value.ptr, req.query.value.len);
        pos += req.query.value.len;
    }

    cclb_u32 n = req.headers.len;
    cclb_header *headers = (cclb_header *)cclb_xalloc(n * (cclb_u32)sizeof(cclb_header));
    for (cclb_u32 i = 0; i < n; i++) headers[i] = cclb_header_at(req.headers, i);

    cclb_u64 out = cclb_write_shape_response(cclb_str_make(url, url_len), req.method, headers, n, req.body);

    cclb_xfree(headers);
    cclb_xfree(url);
    cclb_free_input(in_ptr);
    return out;
}
