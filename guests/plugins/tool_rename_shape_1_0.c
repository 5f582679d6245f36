/*
 * tool_rename_shape_1_0: cc-lb 1.0's own use case for the transform hooks. A
 * client's tool `bash` is renamed `Bash` on the way up, and the name is mapped
 * back on the way down, in the buffered JSON answer and in every SSE event.
 *
 * The rename is a byte-level replace of exact tokens, never a JSON parse:
 *   up   (shape):     `"name":"bash"` -> `"name":"Bash"` and `"name": "bash"` -> `"name": "Bash"`
 *   down (transforms): `"name":"Bash"` -> `"name":"bash"` and `"name": "Bash"` -> `"name": "bash"`
 * Each token begins with the quote before `name` and ends with the quote after the
 * tool name, so `"toolname":"bash"` or `"name":"bash_x"` are left alone. Both
 * forms have the same length, so the body length never changes.
 *
 * - shape: url/method/headers as shape_passthrough.c (url = base_url without one
 *   trailing `/`, default https://api.anthropic.com, + path + `?query`); the body
 *   with the up rename applied.
 * - transform_response: Replace{status: None, headers: None, body: Some(renamed)}
 *   when the body holds a down token, else Unchanged.
 * - transform_sse_event: an event named `ping` is answered Drop; otherwise
 *   Replace{events: [the same event with renamed data]} when its data holds a
 *   down token, else Unchanged.
 */
#include "cclb_guest_1_0.h"

CCLB_PLUGIN_METADATA({
    "name": "tool-rename-shape-1-0",
    "version": "0.1.0",
    "description": "Renames the client tool bash to Bash on the way up and back to bash in the answer (cc-lb 1.0 contract).",
    "usage": "Register for the shape slot of a cc-lb 1.0 host; the transform hooks come with it. No configuration.",
    "hooks": {
        "shape": {
            "wire_version": 1,
            "mode": "active",
            "description": "Forwards the request to the selected upstream with every \"name\":\"bash\" in the body replaced by \"name\":\"Bash\".",
            "usage": "No claims or settings are read."
        },
        "transform_response": {
            "wire_version": 1,
            "mode": "active",
            "description": "Maps \"name\":\"Bash\" back to \"name\":\"bash\" in the buffered body; Unchanged when there is none.",
            "usage": "No claims or settings are read."
        },
        "transform_sse_event": {
            "wire_version": 1,
            "mode": "active",
            "description": "Maps \"name\":\"Bash\" back to \"name\":\"bash\" in each event's data; drops ping events; Unchanged otherwise.",
            "usage": "No claims or settings are read."
        }
    }
});
CCLB_HOOK_SCHEMA_1_0(shape);
CCLB_HOOK_SCHEMA_1_0(transform_response);
CCLB_HOOK_SCHEMA_1_0(transform_sse_event);

/* Counts the tokens `"name":"<from>ash"` and `"name": "<from>ash"` in src[0..n),
 * left to right without overlap; when dst is not 0, writes src to dst with the
 * first letter of each such tool name replaced by `to`. */
static cclb_u32 rename_tool(const cclb_u8 *src, cclb_u8 *dst, cclb_u32 n, cclb_u8 from, cclb_u8 to) {
    static const char key[] = "\"name\":"; /* 7 bytes */
    cclb_u32 count = 0, i = 0;
    if (dst) cclb_memcpy(dst, src, n);
    while (i + 13 <= n) {
        if (src[i] != '"' || __builtin_memcmp(src + i, key, 7) != 0) {
            i++;
            continue;
        }
        cclb_u32 q = i + 7; /* the opening quote of the value */
        if (src[q] == ' ') q++;
        if (q + 6 <= n && src[q] == '"' && src[q + 1] == from && src[q + 2] == 'a' && src[q + 3] == 's' &&
            src[q + 4] == 'h' && src[q + 5] == '"') {
            if (dst) dst[q + 1] = to;
            count++;
            i = q + 6;
        } else {
            i++;
        }
    }
    return count;
}

/* A renamed copy of b in a new block (to be freed), or b.ptr == 0 when nothing matched. */
static cclb_bytes renamed(cclb_bytes b, cclb_u8 from, cclb_u8 to) {
    cclb_bytes r;
    r.ptr = 0;
    r.len = b.len;
    if (rename_tool(b.ptr, 0, b.len, from, to) == 0) return r;
    cclb_u8 *copy = (cclb_u8 *)cclb_xalloc(b.len);
    rename_tool(b.ptr, copy, b.len, from, to);
    r.ptr = copy;
    return r;
}

CCLB_EXPORT("cc_lb_shape") cclb_u64 cc_lb_shape(cclb_u32 in_ptr, cclb_u32 in_len) {
    cclb_shape_request req;
    cclb_read_shape_request(in_ptr, in_len, &req);
    cclb_bytes body = renamed(req.body, 'b', 'B');
    cclb_u64 out = cclb_shape_forward(&req, body.ptr ? body : req.body);
    if (body.ptr) cclb_xfree((void *)body.ptr);
    cclb_free_input(in_ptr);
    return out;
}

CCLB_EXPORT("cc_lb_transform_response") cclb_u64 cc_lb_transform_response(cclb_u32 in_ptr, cclb_u32 in_len) {
    cclb_transform_response_request req;
    cclb_read_transform_response_request(in_ptr, in_len, &req);
    cclb_bytes body = renamed(req.body, 'B', 'b');
    cclb_u64 out;
    if (body.ptr) {
        out = cclb_write_transform_response_replace(cclb_none_u16(), cclb_none_headers(), cclb_some_bytes(body));
        cclb_xfree((void *)body.ptr);
    } else {
        out = cclb_write_transform_response_unchanged();
    }
    cclb_free_input(in_ptr);
    return out;
}

CCLB_EXPORT("cc_lb_transform_sse_event") cclb_u64 cc_lb_transform_sse_event(cclb_u32 in_ptr, cclb_u32 in_len) {
    cclb_transform_sse_event_request req;
    cclb_read_transform_sse_event_request(in_ptr, in_len, &req);
    cclb_u64 out;
    if (cclb_mem_eq(req.event.event.ptr, req.event.event.len, "ping", 4)) {
        out = cclb_write_sse_event_drop();
    } else {
        cclb_bytes data = renamed(req.event.data, 'B', 'b');
        if (data.ptr) {
            cclb_sse_event ev;
            ev.event = req.event.event;
            ev.data = data;
            out = cclb_write_sse_event_replace(&ev, 1);
            cclb_xfree((void *)data.ptr);
        } else {
            out = cclb_write_sse_event_unchanged();
        }
    }
    cclb_free_input(in_ptr);
    return out;
}
