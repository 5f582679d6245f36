/*
 * observe_counter: an `observe` plugin that counts the events it is given.
 *
 * Every event is validated (an invalid archive traps) and counted in a global;
 * the hook returns 0 (observe answers nothing). The extra export
 * `cc_lb_observe_count() -> i64` reads the counter; a host never needs it (the
 * reference host uses a fresh instance per call, so it would read 0 or 1).
 */
#include "cclb_guest.h"

CCLB_PLUGIN_METADATA({
    "name": "observe-counter",
    "version": "0.1.0",
    "description": "Counts the observability events it receives.",
    "usage": "Register for the observe slot. The optional export cc_lb_observe_count returns the count of this instance.",
    "hooks": {
        "observe": {
            "wire_version": 1,
            "description": "Validates each event and increments a counter; answers nothing.",
            "usage": "No configuration; the count lives only as long as the instance."
        }
    }
});
CCLB_HOOK_SCHEMA(observe);

static cclb_u64 event_count;

CCLB_EXPORT("cc_lb_observe") cclb_u64 cc_lb_observe(cclb_u32 in_ptr, cclb_u32 in_len) {
    cclb_observe_event ev;
    cclb_read_observe_event(in_ptr, in_len, &ev);
    event_count++;
    cclb_free_input(in_ptr);
    return 0;
}

CCLB_EXPORT("cc_lb_observe_count") cclb_u64 cc_lb_observe_count(void) { return event_count; }
